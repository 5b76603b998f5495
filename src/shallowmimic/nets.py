"""Plain nn.Modules: the deep teachers and the shallow (optionally factorised) student."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch import nn

from shallowmimic import checks
from shallowmimic.errors import BadValue

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


def as_shape(in_shape: int | Sequence[int]) -> tuple[int, ...]:
    """One sample's input shape: (D,) for vectors, (C, H, W) for images; an int means (D,)."""
    return (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)


def n_params(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def conv_front(shape: tuple[int, ...], channels: int, kernel: int, pool: int,
               activation: str = "relu") -> nn.Sequential:
    """One conv + nonlinearity + max-pool layer: Conv1d for (L,) or (C, L) inputs, Conv2d for (C, H, W) images."""
    if len(shape) not in (1, 2, 3):
        raise ValueError(f"a conv front needs an input of shape (L,), (C, L) or (C, H, W), not {shape}")
    conv, max_pool = (nn.Conv2d, nn.MaxPool2d) if len(shape) == 3 else (nn.Conv1d, nn.MaxPool1d)
    in_channels = 1 if len(shape) == 1 else shape[0]
    return nn.Sequential(conv(in_channels, channels, kernel, padding=kernel // 2), ACTIVATIONS[activation](),
                         max_pool(pool))


def fits_memory(key: str, value: int, weights: int) -> None:
    """Refuse a net whose training state (float32 weights, gradients and Adam's two moments: 16 bytes a weight)
    exceeds this machine's memory, before torch tries to allocate it."""
    need, have = 16 * weights, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise BadValue(key, value, f"small enough to train here: {weights:.3g} weights need {need / 2**30:,.0f} GiB "
                       f"for weights, gradients and Adam's state; this machine has {have / 2**30:.0f} GiB")


class ShallowNet(nn.Module):
    """One hidden layer: input -> [linear bottleneck of `rank` units] -> `width` nonlinear units -> logits.

    The bottleneck has no bias and no nonlinearity: it factorises the D x H weight matrix as U (D x k) V (k x H),
    which adds no representational power but cuts parameters to k(D + H) and speeds up SGD (paper, section 2.2).
    `conv_channels` puts one conv + max-pool layer in front (the paper's SNN-CNN-MIMIC on CIFAR-10); `dropout` on
    the hidden units regularises the label-trained baseline (the paper's SNNs had it; its mimics needed none).
    """

    def __init__(self, in_shape: int | Sequence[int], num_classes: int, width: int = 2048, rank: int | None = None,
                 activation: str = "relu", conv_channels: int | None = None, conv_kernel: int = 5,
                 conv_pool: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        checks.integer("width", width)
        checks.integer("rank", rank, optional=True)
        checks.choice("activation", activation, list(ACTIVATIONS))
        checks.integer("conv_channels", conv_channels, optional=True)
        checks.integer("conv_kernel", conv_kernel)
        if conv_kernel % 2 == 0:  # odd: the conv keeps the input's size, the pool alone shrinks it
            raise BadValue("conv_kernel", conv_kernel, "an odd integer")
        checks.integer("conv_pool", conv_pool)
        checks.number("dropout", dropout, 0, 0.99)
        self.in_shape = as_shape(in_shape)
        # without a conv front the module holds no extra weights: checkpoints and param counts stay as they were
        self.front: nn.Module | None = None
        in_dim = math.prod(self.in_shape)
        if conv_channels is not None:
            self.front = conv_front(self.in_shape, conv_channels, conv_kernel, conv_pool, activation)
            with torch.no_grad():  # the flattened size after conv + pool, whatever the padding and rounding
                in_dim = self.front(torch.zeros(1, *self._conv_shape())).numel()
        weights = (in_dim * rank + rank * width if rank else in_dim * width) + (width + 1) * num_classes + width
        fits_memory("rank" if rank and rank > width else "width", rank if rank and rank > width else width, weights)
        layers: list[nn.Module] = []
        if rank is not None:
            layers.append(nn.Linear(in_dim, rank, bias=False))
        layers += [nn.Linear(rank or in_dim, width), ACTIVATIONS[activation]()]
        if dropout:  # only then: the layers' indices, and so old checkpoints' keys, stay as they were without it
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def _conv_shape(self) -> tuple[int, ...]:
        """One sample's shape as the conv front reads it: a 1-channel sequence for (L,) inputs."""
        return (1, *self.in_shape) if len(self.in_shape) == 1 else self.in_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *in_shape) -> (B, C) logits."""
        if self.front is not None:
            x = self.front(x.reshape(-1, *self._conv_shape()))  # (B, conv_channels, L / pool[, W / pool])
        return self.layers(x.flatten(1))


class DeepMLP(nn.Module):
    """The paper's DNN teacher: a stack of fully connected nonlinear layers (e.g. 3 x 2000)."""

    def __init__(self, in_shape: int | Sequence[int], num_classes: int, hidden: Sequence[int] = (2000, 2000, 2000),
                 activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        checks.int_list("hidden", hidden)
        checks.choice("activation", activation, list(ACTIVATIONS))
        checks.number("dropout", dropout, 0, 0.99)
        in_dim = math.prod(as_shape(in_shape))
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), ACTIVATIONS[activation](), nn.Dropout(dropout)]
            in_dim = width
        layers.append(nn.Linear(in_dim, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, C) logits."""
        return self.layers(x.flatten(1))


class CNN1D(nn.Module):
    """A 1D CNN teacher for sequences such as MNIST-1D: `depth` same-length conv layers, then a global max pool
    (translation invariant, as MNIST-1D's digits move by up to 48 steps) or a flatten, then a linear layer."""

    def __init__(self, in_shape: int | Sequence[int], num_classes: int, channels: int = 64, depth: int = 4,
                 kernel_size: int = 3, pool: str = "max", activation: str = "relu") -> None:
        super().__init__()
        for key, value in (("channels", channels), ("depth", depth), ("kernel_size", kernel_size)):
            checks.integer(key, value)
        checks.choice("pool", pool, ["max", "flatten"])
        checks.choice("activation", activation, list(ACTIVATIONS))
        length = math.prod(as_shape(in_shape))  # forward reads the whole sample as one sequence
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Conv1d(1 if i == 0 else channels, channels, kernel_size, padding=kernel_size // 2),
                       ACTIVATIONS[activation]()]
        self.features = nn.Sequential(*layers)
        self.pool = pool
        self.head = nn.Linear(channels if pool == "max" else channels * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, C) logits."""
        h = self.features(x.flatten(1).unsqueeze(1))  # (B, 1, L) -> (B, channels, L)
        h = h.amax(-1) if self.pool == "max" else h.flatten(1)
        return self.head(h)


class CNN2D(nn.Module):
    """A deep 2D CNN teacher for images (VGG-like): per entry of `channels` a block of `convs_per_block`
    same-size conv layers (optionally batch-normalised) and a 2x2 max pool, then a global average pool and a
    linear layer."""

    def __init__(self, in_shape: int | Sequence[int], num_classes: int, channels: Sequence[int] = (32, 64, 128),
                 convs_per_block: int = 2, kernel_size: int = 3, batch_norm: bool = True, activation: str = "relu",
                 dropout: float = 0.0) -> None:
        super().__init__()
        checks.int_list("channels", channels)
        checks.integer("convs_per_block", convs_per_block)
        checks.integer("kernel_size", kernel_size)
        checks.flag("batch_norm", batch_norm)
        checks.choice("activation", activation, list(ACTIVATIONS))
        checks.number("dropout", dropout, 0, 0.99)
        self.in_shape = as_shape(in_shape)
        if len(self.in_shape) != 3:
            raise ValueError(f"CNN2D needs images of shape (C, H, W), not {self.in_shape}")
        in_channels = self.in_shape[0]
        layers: list[nn.Module] = []
        for out_channels in channels:
            for _ in range(convs_per_block):
                # no conv bias before batch norm: its shift makes the bias redundant
                layers.append(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                                        bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out_channels))
                layers.append(ACTIVATIONS[activation]())
                in_channels = out_channels
            layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: odd sizes (e.g. 7x7) keep their edge
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes) logits."""
        h = self.features(x.reshape(-1, *self.in_shape))  # (B, channels[-1], H / 2^n, W / 2^n)
        return self.head(h.mean((2, 3)))  # global average pool


class Standardising(nn.Module):
    """A net with a mean and std held as buffers (saved with its weights), which its subclasses apply."""

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("std", std.detach().clone().float())


class RawInputs(Standardising):
    """A trained net behind the standardisation it was trained with: takes inputs as the data files hold them (raw
    pixels 0..255, raw features) and standardises each dimension with the training split's mean and std, held as
    buffers, before the net sees them. This is the model a run logs: users hold raw data, not ours."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *in_shape) raw inputs of any dtype -> (B, C) logits."""
        return self.net((x.float() - self.mean) / self.std)


class Destandardised(Standardising):
    """A net that learns per-class standardised logits (objective=mimic_standardised), with its outputs mapped back
    into the teacher's units by the teacher's per-class mean and std (buffers): argmax, agreement, the test metrics
    and the logged model all see net(x) * std + mean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *in_shape) -> (B, C) logits in the teacher's units."""
        return self.net(x) * self.std + self.mean
