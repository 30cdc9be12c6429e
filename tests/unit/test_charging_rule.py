"""The charging rule on its own: which first outcomes count against a team, and that the
rule recomputed from the recorded transition notes agrees with the one decided live."""

from __future__ import annotations

import pytest

from server.submissions.charging import PLATFORM_NOTE, TEAM_NOTE, Step, charged_from_history, decide
from server.submissions.states import SubmissionStatus as S

CASES = [
    # (from, to, code, platform_caused, team_caused, charged)
    (S.evaluating, S.succeeded, None, False, False, True),
    (S.inferring, S.failed, "cases_failed", False, False, True),
    (S.inferring, S.failed, "cases_failed", True, False, False),
    (S.evaluating, S.failed, "evaluation_config_error", False, False, False),
    (S.validating, S.failed, "canary:exit_code", False, False, False),  # T2: public, free
    (S.training, S.failed, "canary:exit_code", False, True, True),  # T3: after private training
    (S.training, S.failed, "canary:platform_error", False, True, False),  # still ours
    (S.validating, S.failed, "invalid_image", False, False, False),  # refused at intake
    (S.validating, S.cancelled, None, False, False, False),
    (S.inferring, S.cancelled, None, False, False, True),
]


@pytest.mark.parametrize(("current", "target", "code", "platform", "team", "charged"), CASES)
def test_rule_and_its_recomputation_from_history_agree(
    current: S, target: S, code: str | None, platform: bool, team: bool, charged: bool
) -> None:
    assert decide(current, target, code, platform_caused=platform, team_caused=team) is charged
    flag = PLATFORM_NOTE if platform else TEAM_NOTE if team else ""
    note = f"{code or ''} {flag}".strip() if flag else (code or "")
    steps = [Step(None, S.received.value), Step(S.received.value, current.value)]
    steps.append(Step(current.value, target.value, note))
    assert charged_from_history(steps) is charged
