"""Plain nn.Modules: the deep teachers and the shallow (optionally factorised) student."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


def as_shape(in_shape: int | Sequence[int]) -> tuple[int, ...]:
    """One sample's input shape: (D,) for vectors, (C, H, W) for images; an int means (D,)."""
    return (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)


def n_params(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


class ShallowNet(nn.Module):
    """One hidden layer: input -> [linear bottleneck of `rank` units] -> `width` nonlinear units -> logits.

    The bottleneck has no bias and no nonlinearity: it factorises the D x H weight matrix as U (D x k) V (k x H),
    which adds no representational power but cuts parameters to k(D + H) and speeds up SGD (paper, section 2.2).
    """

    def __init__(self, in_shape: int | Sequence[int], num_classes: int, width: int = 2048, rank: int | None = None,
                 activation: str = "relu") -> None:
        super().__init__()
        in_dim = math.prod(as_shape(in_shape))
        layers: list[nn.Module] = []
        if rank is not None:
            layers.append(nn.Linear(in_dim, rank, bias=False))
        layers += [nn.Linear(rank or in_dim, width), ACTIVATIONS[activation](), nn.Linear(width, num_classes)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, C) logits."""
        return self.layers(x.flatten(1))


class DeepMLP(nn.Module):
    """The paper's DNN teacher: a stack of fully connected nonlinear layers (e.g. 3 x 2000)."""

    def __init__(self, in_shape: int | Sequence[int], num_classes: int, hidden: Sequence[int] = (2000, 2000, 2000),
                 activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
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
        length = as_shape(in_shape)[-1]
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
