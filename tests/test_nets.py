"""The plain nn.Modules: parameter counts and shapes."""

import pytest
import torch

from shallowmimic.nets import CNN1D, CNN2D, DeepMLP, ShallowNet, n_params


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


def test_conv_front_is_off_by_default() -> None:
    net = ShallowNet(40, 10, width=16, rank=4)
    assert net.front is None and all(k.startswith("layers.") for k in net.state_dict())  # old checkpoints load


@pytest.mark.parametrize(("kernel", "pool"), [(5, 2), (3, 4), (1, 1)])
def test_conv_front_on_sequences(kernel: int, pool: int) -> None:
    L, C, channels, width, rank = 40, 10, 8, 32, 4
    net = ShallowNet((L,), C, width=width, rank=rank, conv_channels=channels, conv_kernel=kernel, conv_pool=pool)
    assert isinstance(net.front[0], torch.nn.Conv1d) and net.front[0].in_channels == 1
    conv = channels * kernel + channels  # one input channel
    flat = channels * (L // pool)  # odd kernels keep the length; the pool divides it
    assert n_params(net) == conv + rank * (flat + width) + width + width * C + C
    assert net(torch.randn(5, L)).shape == (5, C)


def test_conv_front_on_images() -> None:
    shape, C, channels, width = (3, 32, 32), 10, 16, 64
    net = ShallowNet(shape, C, width=width, rank=None, conv_channels=channels, conv_kernel=5, conv_pool=2)
    assert isinstance(net.front[0], torch.nn.Conv2d)
    conv = channels * 3 * 5 * 5 + channels
    flat = channels * 16 * 16
    assert n_params(net) == conv + flat * width + width + width * C + C
    assert net(torch.randn(5, *shape)).shape == (5, C)
    assert net(torch.randn(5, 3 * 32 * 32)).shape == (5, C)  # flattened images are reshaped


def test_conv_front_on_multichannel_sequences() -> None:
    net = ShallowNet((2, 40), 10, width=16, conv_channels=4, conv_kernel=3, conv_pool=2)
    assert isinstance(net.front[0], torch.nn.Conv1d) and net.front[0].in_channels == 2
    assert net(torch.randn(5, 2, 40)).shape == (5, 10)


@pytest.mark.parametrize(("shape", "channels"), [((3, 32, 32), (8, 16, 32)), ((1, 28, 28), (4, 8, 8)),
                                                 ((3, 7, 5), (4,))])
def test_cnn2d_shapes(shape: tuple[int, ...], channels: tuple[int, ...]) -> None:
    net = CNN2D(shape, 10, channels=channels)
    assert net(torch.randn(5, *shape)).shape == (5, 10)
    assert net.head[-1].in_features == channels[-1]  # global average pool: the head sees one value per channel


def test_cnn2d_params_without_batch_norm() -> None:
    net = CNN2D((3, 8, 8), 10, channels=(4, 8), convs_per_block=2, batch_norm=False)
    convs = (3 * 9 * 4 + 4) + (4 * 9 * 4 + 4) + (4 * 9 * 8 + 8) + (8 * 9 * 8 + 8)
    assert n_params(net) == convs + 8 * 10 + 10


def test_cnn2d_needs_images() -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        CNN2D((40,), 10)
