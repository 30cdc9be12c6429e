"""An inflated 3D ConvNet (I3D-style) with a COVID-19 head and a severity head.

The STOIC2021 baseline inflates an ImageNet-trained 2D network to 3D (Carreira & Zisserman,
"Quo Vadis, Action Recognition?"). Here the 2D network is small and randomly initialised
(no pretrained weights can be fetched), but the construction is the same: every 2D
convolution kernel is repeated along depth and divided by the depth, so a volume whose
slices are all the same image yields, slice by slice, the 2D network's response.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from baseline_algorithm.preprocess import N_CLINICAL_FEATURES


@dataclass(frozen=True)
class ModelConfig:
    """Architecture; stored next to the weights so inference rebuilds the same network."""

    widths: tuple[int, ...] = (8, 16, 32, 64)
    stem_kernel: int = 5
    stem_stride: int = 2
    # Age/sex features concatenated before the heads; 0 turns them off.
    n_clinical: int = N_CLINICAL_FEATURES
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if not self.widths:
            raise ValueError("widths must name at least one stage")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["widths"] = list(self.widths)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "widths" in known:
            known["widths"] = tuple(int(w) for w in known["widths"])
        return cls(**known)


class ConvNet2D(nn.Module):
    """The 2D network that gets inflated: conv-BN-ReLU stages with max pooling."""

    def __init__(self, config: ModelConfig, in_channels: int = 1) -> None:
        super().__init__()
        w0 = config.widths[0]
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                w0,
                config.stem_kernel,
                stride=config.stem_stride,
                padding=config.stem_kernel // 2,
                bias=False,
            ),
            nn.BatchNorm2d(w0),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        for i, (w_in, w_out) in enumerate(zip(config.widths, config.widths[1:], strict=False)):
            layers += [
                nn.Conv2d(w_in, w_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(w_out),
                nn.ReLU(inplace=True),
            ]
            # No pooling after the last stage: keep some resolution for small cubes.
            if i < len(config.widths) - 2:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def inflate_conv2d(
    conv2d: nn.Conv2d,
    time_dim: int,
    time_stride: int = 1,
    time_padding: int | None = None,
) -> nn.Conv3d:
    """Conv2d → Conv3d whose kernel is the 2D kernel repeated ``time_dim`` times / time_dim.

    With ``time_padding`` None the depth padding is ``time_dim // 2`` ("same" for odd sizes).
    """
    if isinstance(conv2d.padding, str):
        raise ValueError("string padding cannot be inflated; give explicit integers")
    if time_dim < 1:
        raise ValueError(f"time_dim must be at least 1, got {time_dim}")
    if time_padding is None:
        time_padding = time_dim // 2
    kh, kw = _pair(conv2d.kernel_size)
    sh, sw = _pair(conv2d.stride)
    ph, pw = _pair(conv2d.padding)
    dh, dw = _pair(conv2d.dilation)
    conv3d = nn.Conv3d(
        conv2d.in_channels,
        conv2d.out_channels,
        (time_dim, kh, kw),
        stride=(time_stride, sh, sw),
        padding=(time_padding, ph, pw),
        dilation=(1, dh, dw),
        groups=conv2d.groups,
        bias=conv2d.bias is not None,
        padding_mode=conv2d.padding_mode,
    )
    with torch.no_grad():
        weight = conv2d.weight.unsqueeze(2).repeat(1, 1, time_dim, 1, 1) / time_dim
        conv3d.weight.copy_(weight)
        if conv2d.bias is not None and conv3d.bias is not None:
            conv3d.bias.copy_(conv2d.bias)
    return conv3d


def inflate_batchnorm2d(bn: nn.BatchNorm2d) -> nn.BatchNorm3d:
    """BatchNorm is per channel, so its parameters and running statistics carry over."""
    bn3d = nn.BatchNorm3d(
        bn.num_features,
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
    )
    bn3d.load_state_dict(bn.state_dict())
    return bn3d


def inflate_maxpool2d(pool: nn.MaxPool2d) -> nn.MaxPool3d:
    k = _pair(pool.kernel_size)
    s = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
    p = _pair(pool.padding)
    return nn.MaxPool3d((k[0], *k), stride=(s[0], *s), padding=(p[0], *p), ceil_mode=pool.ceil_mode)


def inflate_module(module: nn.Module) -> nn.Module:
    """Inflate a 2D module tree. Convolutions become cubes (depth = height) since CT is
    resampled to isotropic voxels, unlike video, where time is kept apart from space."""
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str):
            raise ValueError("string padding cannot be inflated; give explicit integers")
        return inflate_conv2d(
            module,
            _pair(module.kernel_size)[0],
            time_stride=_pair(module.stride)[0],
            time_padding=_pair(module.padding)[0],
        )
    if isinstance(module, nn.BatchNorm2d):
        return inflate_batchnorm2d(module)
    if isinstance(module, nn.MaxPool2d):
        return inflate_maxpool2d(module)
    if isinstance(module, nn.Sequential):
        return nn.Sequential(*(inflate_module(child) for child in module))
    if isinstance(module, nn.ReLU | nn.Identity | nn.Dropout):
        return module
    raise TypeError(f"cannot inflate {type(module).__name__}")


class InflatedConvNet3D(nn.Module):
    """I3D-style backbone with two binary heads: COVID-19 presence and severe COVID-19.

    ``forward`` returns logits (for a numerically stable BCE loss); ``predict_proba``
    returns the sigmoid probabilities that the algorithm writes out.
    """

    def __init__(self, config: ModelConfig | None = None, net2d: ConvNet2D | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        net2d = net2d if net2d is not None else ConvNet2D(self.config)
        self.features = inflate_module(net2d.features)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(self.config.dropout)
        n_features = self.config.widths[-1] + self.config.n_clinical
        self.covid_head = nn.Linear(n_features, 1)
        self.severity_head = nn.Linear(n_features, 1)

    def forward(
        self, volume: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """volume (B, 1, D, H, W) in [0, 1]; clinical (B, n_clinical) or None → two (B,)."""
        x = self.pool(self.features(volume)).flatten(1)
        if self.config.n_clinical:
            if clinical is None:
                # Unknown age and sex: the all-zero vector is what PatientInfo() gives.
                clinical = x.new_zeros(x.shape[0], self.config.n_clinical)
            x = torch.cat([x, clinical.to(x.dtype)], dim=1)
        x = self.dropout(x)
        return self.covid_head(x).squeeze(1), self.severity_head(x).squeeze(1)

    @torch.no_grad()
    def predict_proba(
        self, volume: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        covid, severe = self(volume, clinical)
        return torch.sigmoid(covid), torch.sigmoid(severe)


def build_model(config: ModelConfig | None = None, seed: int | None = None) -> InflatedConvNet3D:
    """A fresh network; with ``seed`` the initial weights are reproducible."""
    if seed is not None:
        torch.manual_seed(seed)
    return InflatedConvNet3D(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
