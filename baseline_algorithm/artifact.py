"""The trained artifact: ``model.pt`` (state dict) + ``config.json`` (how to rebuild and
feed the network). Training writes it to /output; the T3 platform copies /output into
``inference/artifact/`` and the inference image serves it from /opt/algorithm/artifact/."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from baseline_algorithm.model import InflatedConvNet3D, ModelConfig
from baseline_algorithm.preprocess import PreprocessConfig

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"
FORMAT = "heldout-baseline/1"
DEFAULT_ARTIFACT_DIR = Path("/opt/algorithm/artifact")
# Weights shipped inside the package, used when no artifact directory holds any.
PACKAGED_ARTIFACT_DIR = Path(__file__).resolve().parent / "default_artifact"


class ArtifactError(RuntimeError):
    """The artifact is missing or unusable; the message says which file and why."""


@dataclass
class Artifact:
    model_config: ModelConfig
    preprocess_config: PreprocessConfig
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    def build_model(self, device: torch.device | str = "cpu") -> InflatedConvNet3D:
        model = InflatedConvNet3D(self.model_config)
        model.load_state_dict(self.state_dict)
        return model.to(device).eval()


def save_artifact(
    directory: str | Path,
    model: InflatedConvNet3D,
    preprocess_config: PreprocessConfig,
    metadata: dict[str, Any] | None = None,
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, directory / WEIGHTS_FILE)
    config = {
        "format": FORMAT,
        "model": model.config.to_dict(),
        "preprocess": preprocess_config.to_dict(),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        **(metadata or {}),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def has_artifact(directory: Path) -> bool:
    return (directory / WEIGHTS_FILE).is_file() and (directory / CONFIG_FILE).is_file()


def resolve_artifact_dir(directory: str | Path | None = None) -> Path:
    """The given (or default) directory if it holds an artifact, else the packaged one."""
    requested = Path(directory) if directory is not None else DEFAULT_ARTIFACT_DIR
    for candidate in (requested, PACKAGED_ARTIFACT_DIR):
        if has_artifact(candidate):
            return candidate
    raise ArtifactError(
        f"no trained weights: neither {requested} nor the packaged {PACKAGED_ARTIFACT_DIR} "
        f"holds both {WEIGHTS_FILE} and {CONFIG_FILE}"
    )


def load_artifact(directory: str | Path | None = None) -> Artifact:
    root = resolve_artifact_dir(directory)
    try:
        config = json.loads((root / CONFIG_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{root / CONFIG_FILE} is not valid JSON: {exc}") from exc
    if config.get("format") != FORMAT:
        raise ArtifactError(
            f"{root / CONFIG_FILE} has format {config.get('format')!r}, expected {FORMAT!r}"
        )
    # weights_only: a weights file must never be able to run code when loaded.
    state = torch.load(root / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    metadata = {k: v for k, v in config.items() if k not in {"model", "preprocess"}}
    metadata["directory"] = str(root)
    return Artifact(
        ModelConfig.from_dict(config["model"]),
        PreprocessConfig.from_dict(config["preprocess"]),
        state,
        metadata,
    )
