"""The plain nn.Modules: parameter counts and shapes."""

import pytest
import torch

from shallowmimic.nets import CNN1D, DeepMLP, ShallowNet, n_params


@pytest.mark.parametrize("width", [1, 64, 2048])
def test_shallow_params_without_bottleneck(width: int) -> None:
    D, C = 40, 10
    assert n_params(ShallowNet(D, C, width=width, rank=None)) == D * width + width + width * C + C


@pytest.mark.parametrize(("width", "rank"), [(64, 1), (2048, 32), (8192, 250)])
def test_shallow_params_with_bottleneck(width: int, rank: int) -> None:
    D, C = 40, 10
    # U (D x k, no bias) then V (k x H) with bias: k(D + H) + H, plus the output layer
    assert n_params(ShallowNet(D, C, width=width, rank=rank)) == rank * (D + width) + width + width * C + C


def test_bottleneck_is_linear_and_bias_free() -> None:
    net = ShallowNet(40, 10, width=16, rank=4)
    first = net.layers[0]
    assert isinstance(first, torch.nn.Linear) and first.bias is None and first.out_features == 4
    assert isinstance(net.layers[1], torch.nn.Linear)  # no nonlinearity between U and V


@pytest.mark.parametrize("net", [ShallowNet(40, 10, 16), ShallowNet(40, 10, 16, 4), DeepMLP(40, 10, (8, 8)),
                                 CNN1D(40, 10, channels=4, depth=3)])
def test_logits_shape(net: torch.nn.Module) -> None:
    assert net(torch.randn(5, 40)).shape == (5, 10)
