"""Output rules implied by the phase's metrics, checked on the worker like declared ones.

An output an AUC metric scores is a probability even when its interface declares no
range. Left to the evaluator, 1.7 would fail there with the private case names beside the
values, so a participant could map chosen values to cases; checked per case here, it is
an `invalid_output` naming the interface and the rule only.
"""

from __future__ import annotations

from server.challenges.schemas import Interface, InterfaceKind, JsonValueType, PhaseSpec

PROBABILITY_METRICS = frozenset({"auc"})


def scored_outputs(spec: PhaseSpec) -> list[Interface]:
    """The phase's output interfaces with the ranges its metrics imply narrowed in."""
    metrics = spec.metrics.metrics if spec.metrics else []  # an organizer's image: its own
    probability = {m.output for m in metrics if m.kind.value in PROBABILITY_METRICS}
    out = []
    for interface in spec.outputs:
        numeric = interface.value_type in (JsonValueType.number, JsonValueType.integer)
        if interface.kind is InterfaceKind.json and numeric and interface.slug in probability:
            lo = 0.0 if interface.minimum is None else max(0.0, interface.minimum)
            hi = 1.0 if interface.maximum is None else min(1.0, interface.maximum)
            interface = interface.model_copy(update={"minimum": lo, "maximum": hi})
        out.append(interface)
    return out
