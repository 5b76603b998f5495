"""`--extras`: the mimic step on cached logits against online distillation (the frozen teacher run every step), and
the student's achieved GFLOP/s against a plain matmul's on this machine."""

from __future__ import annotations

import time

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from shallowmimic.bench.contenders import NUM_CLASSES, compose_train, make_net, plain_sps
from shallowmimic.data import Batch


def make_teacher(in_dim: int) -> nn.Module:
    """The teacher net of `train experiment=teacher` (untrained: speed does not depend on weights), frozen."""
    cfg = compose_train(["experiment=teacher"])
    return instantiate(cfg.model, in_shape=in_dim, num_classes=NUM_CLASSES).eval().requires_grad_(False)


def linear_macs(net: nn.Module) -> int:
    """Multiply-adds of one sample's forward pass through the net's linear layers."""
    return sum(m.in_features * m.out_features for m in net.modules() if isinstance(m, nn.Linear))


def matmul_gflops(n: int, min_seconds: float = 0.5) -> float:
    """GFLOP/s of a plain (n, n) @ (n, n) fp32 matmul, repeated for at least `min_seconds`."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):  # warm up the BLAS threads
        a @ b
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < min_seconds or count < 3:
        a @ b
        count += 1
    return 2 * n**3 * count / elapsed / 1e9


def extras(cfg: DictConfig, data: Batch, plain: float, online_steps: int, matmul_seconds: float) -> dict[str, float]:
    """Cached vs online targets over the same steps, and GFLOP/s of the plain loop (`plain` samples/s) vs a matmul
    of as many FLOPs as one training step."""
    in_dim, batch_size = data["x"].shape[1], cfg.data.batch_size
    teacher = make_teacher(in_dim)
    cached = plain_sps(make_net(cfg, in_dim), data, batch_size, 2, max_steps=online_steps)
    online = plain_sps(make_net(cfg, in_dim), data, batch_size, 2, teacher=teacher, max_steps=online_steps)
    # fwd + bwd of a linear layer costs 3 matmuls of 2 FLOPs per multiply-add: 6 * MACs per sample
    flops_per_sample = 6 * linear_macs(make_net(cfg, in_dim))
    n = max(64, round((flops_per_sample * batch_size / 2) ** (1 / 3) / 32) * 32)
    peak = matmul_gflops(n, matmul_seconds)
    gflops = flops_per_sample * plain / 1e9
    return {"bench/cached_sps": cached, "bench/online_sps": online, "bench/ratio_cached_online": cached / online,
            "bench/gflops": gflops, "bench/matmul_gflops": peak, "bench/matmul_n": float(n),
            "bench/ratio_gflops_matmul": gflops / peak}
