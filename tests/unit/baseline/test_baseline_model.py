"""The inflated 3D ConvNet: inflation is exact on temporally constant input, the heads give
probabilities, and the network learns the synthetic task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from baseline_algorithm.model import (
    ConvNet2D,
    InflatedConvNet3D,
    ModelConfig,
    build_model,
    inflate_batchnorm2d,
    inflate_conv2d,
    inflate_maxpool2d,
    inflate_module,
)
from baseline_algorithm.preprocess import PreprocessConfig
from baseline_algorithm.train import cached_volume, read_cases, train_model

from .conftest import CUBE


def constant_in_depth(x2d: torch.Tensor, depth: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, D, H, W) with every depth slice equal to x2d."""
    return x2d.unsqueeze(2).expand(-1, -1, depth, -1, -1).contiguous()


@pytest.mark.parametrize("time_dim", [1, 3, 5])
def test_inflated_conv_on_constant_input_gives_the_2d_response(time_dim: int) -> None:
    torch.manual_seed(0)
    conv2d = nn.Conv2d(3, 5, kernel_size=3, padding=1, bias=True)
    x2d = torch.randn(2, 3, 12, 12)
    expected = conv2d(x2d)

    valid = inflate_conv2d(conv2d, time_dim, time_padding=0)
    out = valid(constant_in_depth(x2d, 8))
    assert out.shape == (2, 5, 8 - time_dim + 1, 12, 12)
    for d in range(out.shape[2]):
        torch.testing.assert_close(out[:, :, d], expected, rtol=1e-5, atol=1e-5)

    # With "same" depth padding the zero padding only touches the first and last slices.
    same = inflate_conv2d(conv2d, time_dim)
    out = same(constant_in_depth(x2d, 8))
    assert out.shape == (2, 5, 8, 12, 12)
    half = time_dim // 2
    for d in range(half, 8 - half):
        torch.testing.assert_close(out[:, :, d], expected, rtol=1e-5, atol=1e-5)
    if half:
        assert not torch.allclose(out[:, :, 0], expected, atol=1e-4)


def test_inflated_kernel_is_the_2d_kernel_repeated_over_depth() -> None:
    conv2d = nn.Conv2d(1, 2, kernel_size=(3, 5), stride=2, padding=(1, 2), bias=False)
    conv3d = inflate_conv2d(conv2d, 4, time_stride=2)
    assert conv3d.weight.shape == (2, 1, 4, 3, 5)
    assert conv3d.stride == (2, 2, 2) and conv3d.padding == (2, 1, 2)
    assert conv3d.bias is None
    for d in range(4):
        torch.testing.assert_close(conv3d.weight[:, :, d], conv2d.weight / 4)
    # Depth sum of the inflated kernel is the 2D kernel: constant input, same response.
    torch.testing.assert_close(conv3d.weight.sum(2), conv2d.weight)


def test_string_padding_is_refused() -> None:
    with pytest.raises(ValueError, match="padding"):
        inflate_conv2d(nn.Conv2d(1, 1, 3, padding="same"), 3)
    with pytest.raises(TypeError, match="LSTM"):
        inflate_module(nn.LSTM(2, 2))


def test_batchnorm_and_pool_inflation_carry_parameters_and_statistics() -> None:
    bn = nn.BatchNorm2d(4)
    bn.train()
    bn(torch.randn(8, 4, 5, 5) * 3 + 1)  # move the running statistics off their defaults
    bn3d = inflate_batchnorm2d(bn)
    torch.testing.assert_close(bn3d.running_mean, bn.running_mean)
    torch.testing.assert_close(bn3d.running_var, bn.running_var)
    bn.eval()
    bn3d.eval()
    x2d = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(bn3d(constant_in_depth(x2d, 3))[:, :, 1], bn(x2d))
    pool = inflate_maxpool2d(nn.MaxPool2d(2))
    assert pool(torch.zeros(1, 1, 8, 8, 8)).shape == (1, 1, 4, 4, 4)


def test_inflated_network_shapes_and_probabilities() -> None:
    config = ModelConfig()
    net2d = ConvNet2D(config)
    model = InflatedConvNet3D(config, net2d)
    assert sum(isinstance(m, nn.Conv3d) for m in model.modules()) == len(config.widths)
    assert not any(isinstance(m, nn.Conv2d) for m in model.modules())
    model.eval()
    x = torch.rand(3, 1, CUBE, CUBE, CUBE)
    covid, severe = model(x)
    assert covid.shape == severe.shape == (3,)
    p_covid, p_severe = model.predict_proba(x, torch.tensor([[0.55, 1, 1, 0]] * 3))
    assert ((p_covid >= 0) & (p_covid <= 1)).all() and ((p_severe >= 0) & (p_severe <= 1)).all()
    # Unknown age/sex is the zero vector.
    torch.testing.assert_close(model(x)[0], model(x, torch.zeros(3, 4))[0])


def test_model_config_round_trip_and_seeded_init() -> None:
    config = ModelConfig(widths=(4, 8), stem_stride=1, n_clinical=0)
    assert ModelConfig.from_dict(config.to_dict()) == config
    a, b = build_model(config, seed=3), build_model(config, seed=3)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    c = build_model(config, seed=4)
    assert not torch.equal(a.covid_head.weight, c.covid_head.weight)


def test_model_learns_the_synthetic_task(t3_input: Path, tmp_path: Path) -> None:
    """Loss falls over a few dozen optimiser steps (24 cases, batch 8, 12 epochs = 36)."""
    cases = read_cases(t3_input / "data" / "mha", t3_input / "metadata" / "reference.csv")
    config = PreprocessConfig(cube=CUBE)
    volumes = [cached_volume(c, config, tmp_path) for c in cases]
    torch.manual_seed(0)
    model = InflatedConvNet3D(ModelConfig())
    history = train_model(
        cases,
        volumes,
        model,
        torch.device("cpu"),
        epochs=12,
        batch_size=8,
        lr=3e-3,
        weight_decay=1e-2,
        seed=0,
        augment=False,
        log=False,
    )
    first = history[0].loss
    last = sum(h.loss for h in history[-3:]) / 3
    assert last < 0.75 * first, [round(h.loss, 3) for h in history]
