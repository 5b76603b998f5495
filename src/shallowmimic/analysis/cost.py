"""Inference cost of a net on CPU: FLOPs, parameters and latency per sample (the paper's section 5.3 argument)."""

from __future__ import annotations

import math
import statistics
import time

import torch
from torch import nn

from shallowmimic import checks
from shallowmimic.nets import n_params

__all__ = ["flops_per_sample", "latency_per_sample", "n_params"]


def _sample(net: nn.Module, shape: tuple[int, ...], zeros: bool) -> torch.Tensor:
    """An input of `shape` on the net's device and in its floating dtype (float32 for a net without parameters)."""
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    if zeros:
        return torch.zeros(*shape, device=device, dtype=dtype)
    # a generator of its own: timing a net must not move the global RNG that seeds training
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-adds of one call of a Linear or Conv layer, given its output (biases are adds only: not counted)."""
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features  # numel, not out_features: also right for (B, T, D) inputs
    assert isinstance(module, nn.Conv1d | nn.Conv2d)
    return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)


def flops_per_sample(net: nn.Module, in_shape: tuple[int, ...]) -> int:
    """2 x the multiply-adds of one sample's forward pass through the net's Linear, Conv1d and Conv2d layers."""
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += _macs(module, output)

    # hooks on a real forward pass, so conv output sizes (padding, stride, pooling in between) come out right
    layers = [m for m in net.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]
    handles = [m.register_forward_hook(count) for m in layers]
    was_training = net.training
    try:
        net.eval()
        with torch.inference_mode():
            net(_sample(net, (1, *in_shape), zeros=True))
    finally:
        net.train(was_training)
        for handle in handles:
            handle.remove()
    return 2 * total


def _time_forward(net: nn.Module, x: torch.Tensor, min_seconds: float) -> float:
    """Seconds per sample of forward passes on `x`, looped until at least `min_seconds` have gone by."""
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < min_seconds or count == 0:
        net(x)
        if x.is_cuda:  # kernels run asynchronously: wait for them, or the clock measures only the launches
            torch.cuda.synchronize(x.device)
        count += 1
    return elapsed / (count * len(x))


def latency_per_sample(net: nn.Module, in_shape: tuple[int, ...], batch_size: int, min_seconds: float = 1.0,
                       repeats: int = 5) -> tuple[float, float, float]:
    """(median, min, max) over `repeats` timings of the seconds per sample of an eval-mode forward pass."""
    checks.integer("batch_size", batch_size)
    checks.number("min_seconds", min_seconds, 0.0, low_open=True)
    checks.integer("repeats", repeats)
    was_training = net.training
    try:
        net.eval()
        with torch.inference_mode():
            x = _sample(net, (batch_size, *in_shape), zeros=False)
            _time_forward(net, x, min_seconds / 10)  # warm-up: allocator, kernel choice, caches
            times = [_time_forward(net, x, min_seconds) for _ in range(repeats)]
    finally:
        net.train(was_training)
    return statistics.median(times), min(times), max(times)
