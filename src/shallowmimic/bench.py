"""Throughput of student training, all in one process, on the same data, model and batch size:

  (a) a plain PyTorch loop that slices in-memory tensors (the reference),
  (b) our training path: System + InMemoryLoader + run.make_trainer from the composed Hydra config
      (MLFlowLogger writing to a real store, progress bar on),
  (c) the mimic step on cached logits vs online distillation (the frozen teacher run forward every step),
  (d) the student's achieved GFLOP/s against a plain matmul's on this machine.

    python -m shallowmimic.bench --width 2048 8192 --batch-size 256 --inputs 50000 --epochs 3
    python -m shallowmimic.bench --width 8192 --rank 32 --inputs 1000000 --epochs 2

Inputs are random standard-normal tensors (N, 40) (already standardised) with random logits (N, 10), and the
teacher of (c) is conf/model/cnn1d.yaml untrained: throughput does not depend on the values, and random data needs
no MNIST-1D generation (~5k samples/s), so a million inputs are ready at once. Each (width, rank, batch size) is
one MLflow run tagged role=bench in the experiment `mnist1d`, in the store train.py uses. With another job on the
cores, `--threads 1` gives steadier figures (torch's threads otherwise spin-wait on each other).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from mlflow.entities import Metric
from omegaconf import DictConfig
from torch import nn

from shallowmimic import conf_dir
from shallowmimic.data import Batch, InMemoryLoader
from shallowmimic.nets import n_params
from shallowmimic.objectives import mimic_loss
from shallowmimic.run import Run, make_trainer, variant
from shallowmimic.system import System
from shallowmimic.tracking import git_commit, open_store, redact, start_run

IN_DIM, NUM_CLASSES = 40, 10  # MNIST-1D's shapes


def random_data(n: int, seed: int = 0) -> Batch:
    """N standard-normal inputs (N, 40) and random logits (N, 10): the shapes of the MNIST-1D mimic."""
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, IN_DIM, generator=g), "z": torch.randn(n, NUM_CLASSES, generator=g)}


def bench_config(width: int, rank: int | None, batch_size: int, epochs: int, tracking_uri: str | None = None,
                 outputs: str | None = None) -> DictConfig:
    """The real conf/train.yaml composed for a mimic of this shape (what `train experiment=mimic ...` runs)."""
    overrides = ["experiment=mimic", f"model.width={width}", f"model.rank={'null' if rank is None else rank}",
                 f"data.batch_size={batch_size}", f"trainer.max_epochs={epochs}",
                 # no validation loader here, so no val metric to checkpoint on: both are per-epoch costs, not
                 # per-step ones, and the plain loop has neither
                 "+trainer.enable_checkpointing=false"]
    if tracking_uri:
        overrides.append(f"logger.tracking_uri={tracking_uri}")
    if outputs:
        overrides.append(f"paths.outputs={outputs}")
    return compose_train(overrides)


def compose_train(overrides: list[str]) -> DictConfig:
    """conf/train.yaml composed with these overrides."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=overrides)


def make_net(cfg: DictConfig) -> nn.Module:
    """The student exactly as train.py instantiates it, seeded so every contender starts from the same weights."""
    torch.manual_seed(cfg.seed)
    return instantiate(cfg.model, in_shape=IN_DIM, num_classes=NUM_CLASSES)


def make_teacher() -> nn.Module:
    """The teacher net of `train experiment=teacher` (untrained: speed does not depend on weights), frozen."""
    cfg = compose_train(["experiment=teacher"])
    return instantiate(cfg.model, in_shape=IN_DIM, num_classes=NUM_CLASSES).eval().requires_grad_(False)


def linear_macs(net: nn.Module) -> int:
    """Multiply-adds of one sample's forward pass through the net's linear layers."""
    return sum(m.in_features * m.out_features for m in net.modules() if isinstance(m, nn.Linear))


def plain_sps(net: nn.Module, data: Batch, batch_size: int, epochs: int, teacher: nn.Module | None = None,
              max_steps: int | None = None, lr: float = 1e-3) -> float:
    """Samples/s of a plain loop (randperm per epoch, slice, forward, mimic loss, backward, Adam step), timed over
    epochs 1.. (epoch 0 warms up); targets are the cached logits, or the frozen teacher's run on each batch.
    `max_steps` cuts every epoch short (for the slow online teacher on big sets)."""
    if epochs < 2:
        raise ValueError("need at least 2 epochs: the first one is warm-up")
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n = len(data["x"])
    used = n if max_steps is None else min(n, max_steps * batch_size)
    started = 0.0
    for epoch in range(epochs):
        if epoch == 1:
            started = time.perf_counter()
        order = torch.randperm(n)[:used]
        x, z = data["x"][order], data["z"][order]  # one gather per epoch, then cheap views (as InMemoryLoader)
        for i in range(0, used, batch_size):
            xb = x[i : i + batch_size]
            if teacher is None:
                zb = z[i : i + batch_size]
            else:
                with torch.no_grad():
                    zb = teacher(xb)
            loss = mimic_loss(net(xb), {"z": zb})
            opt.zero_grad()
            loss.backward()
            opt.step()
    return (epochs - 1) * used / (time.perf_counter() - started)


class Throughput(Callback):
    """Samples/s of training from the start of epoch 1 to the end of the last epoch (epoch 0 warms up)."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.ended: float | None = None
        self.samples = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 1:
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: Batch,
                           batch_idx: int) -> None:
        if trainer.current_epoch >= 1:
            self.samples += len(batch["x"])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ended = time.perf_counter()

    @property
    def sps(self) -> float:
        if self.started is None or self.ended is None:
            raise RuntimeError("need at least 2 epochs: the first one is warm-up")
        return self.samples / (self.ended - self.started)


def lightning_sps(cfg: DictConfig, data: Batch, run_id: str) -> float:
    """Samples/s of our path: System + InMemoryLoader + the configured Trainer, logging into run `run_id`."""
    system = System(make_net(cfg), mimic_loss, instantiate(cfg.optimizer), NUM_CLASSES)
    loader = InMemoryLoader(data, cfg.data.batch_size, shuffle=True, seed=cfg.data.shuffle_seed)
    speed = Throughput()
    trainer = make_trainer(cfg, run_id, [speed], Path(cfg.paths.outputs) / "bench")
    trainer.fit(system, train_dataloaders=loader)
    return speed.sps


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


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_one(width: int, rank: int | None, batch_size: int, data: Batch, epochs: int, online_steps: int,
              tracking_uri: str | None = None, outputs: str | None = None,
              matmul_seconds: float = 0.5) -> tuple[str, dict[str, float]]:
    """Measure (a)-(d) for one student shape and record them as a role=bench run; return (shape name, metrics)."""
    cfg = bench_config(width, rank, batch_size, epochs, tracking_uri, outputs)
    client, experiment_id = open_store(cfg.logger)
    net = make_net(cfg)
    params = {"width": str(width), "rank": str(rank), "batch_size": str(batch_size), "n_inputs": str(len(data["x"])),
              "epochs": str(epochs), "online_steps": str(online_steps), "torch_threads": str(torch.get_num_threads()),
              "n_params": str(n_params(net))}
    tags = {"role": "bench", "git_commit": git_commit(), "tracking_uri": redact(str(cfg.logger.tracking_uri)),
            "inputs": "random",
            # a progress bar costs more when it draws to a terminal than when stderr goes to a file
            "stderr_tty": str(sys.stderr.isatty())}
    name = f"{variant(cfg)} b={batch_size}"
    run_id = start_run(client, experiment_id, f"bench {name}", tags | {"variant": variant(cfg)}, params)

    with Run(client, run_id, Path(cfg.paths.outputs) / "bench", resumed=False).closing():
        plain = plain_sps(net, data, batch_size, epochs)
        lightning = lightning_sps(cfg, data, run_id)
        # (c) same loop, same number of steps; only where the targets come from differs
        teacher = make_teacher()
        cached = plain_sps(make_net(cfg), data, batch_size, 2, max_steps=online_steps)
        online = plain_sps(make_net(cfg), data, batch_size, 2, teacher=teacher, max_steps=online_steps)
        # (d) fwd + bwd of a linear layer costs 3 matmuls of 2 FLOPs per multiply-add: 6 * MACs per sample
        flops_per_sample = 6 * linear_macs(net)
        # a square matmul doing as many FLOPs as one training step: the best this machine does at that size
        n = max(64, round((flops_per_sample * batch_size / 2) ** (1 / 3) / 32) * 32)
        peak = matmul_gflops(n, matmul_seconds)
        metrics = {"bench/plain_sps": plain, "bench/lightning_sps": lightning,
                   "bench/ratio_lightning_plain": lightning / plain,
                   "bench/cached_sps": cached, "bench/online_sps": online, "bench/ratio_cached_online": cached / online,
                   "bench/gflops": flops_per_sample * plain / 1e9,
                   "bench/lightning_gflops": flops_per_sample * lightning / 1e9,
                   "bench/matmul_gflops": peak, "bench/matmul_n": float(n),
                   "bench/ratio_gflops_matmul": flops_per_sample * plain / 1e9 / peak,
                   "bench/peak_rss_mb": peak_rss_mb()}
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    return name, metrics


COLUMNS = [  # (header, metric, format)
    ("plain/s", "bench/plain_sps", "{:,.0f}"), ("lightning/s", "bench/lightning_sps", "{:,.0f}"),
    ("(b)/(a)", "bench/ratio_lightning_plain", "{:.3f}"),
    ("cached/s", "bench/cached_sps", "{:,.0f}"), ("online/s", "bench/online_sps", "{:,.0f}"),
    ("cached/online", "bench/ratio_cached_online", "{:.2f}"),
    ("GFLOP/s", "bench/gflops", "{:.1f}"), ("matmul GFLOP/s", "bench/matmul_gflops", "{:.1f}"),
    ("(d) ratio", "bench/ratio_gflops_matmul", "{:.2f}"), ("peak RSS MiB", "bench/peak_rss_mb", "{:,.0f}"),
]


def table(rows: list[tuple[str, dict[str, float]]]) -> str:
    """The measured figures, one line per student shape (row labels are the run names)."""
    cells = [["shape", *(h for h, _, _ in COLUMNS)]]
    cells += [[name, *(fmt.format(m[key]) for _, key, fmt in COLUMNS)] for name, m in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def parse_rank(text: str) -> int | None:
    """A bottleneck rank, or `none` for the unfactorised net."""
    return None if text.lower() in ("none", "null") else int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults finish in a few minutes on 2 CPU cores."""
    p = argparse.ArgumentParser(prog="python -m shallowmimic.bench", description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, nargs="+", default=[2048, 8192], help="hidden units (several: one run each)")
    p.add_argument("--rank", type=parse_rank, nargs="+", default=[None], help="bottleneck ranks, `none` for none")
    p.add_argument("--batch-size", type=int, nargs="+", default=[256])
    p.add_argument("--inputs", type=int, default=50_000, help="number of random (40-dim) training inputs")
    p.add_argument("--epochs", type=int, default=3, help="epochs per contender; the first one is warm-up")
    p.add_argument("--online-steps", type=int, default=100, help="steps per epoch for the cached-vs-online pair")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: as train.py, outputs/mlflow.db)")
    p.add_argument("--outputs", default=None, help="outputs folder (default: the project's outputs/)")
    p.add_argument("--matmul-seconds", type=float, default=0.5, help="time spent measuring the matmul")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[tuple[str, dict[str, float]]]:
    """Run every (width, rank, batch size), print the table, return (run name, metrics) per shape."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = random_data(args.inputs)
    rows = []
    for width in args.width:
        for rank in args.rank:
            for batch_size in args.batch_size:
                rows.append(bench_one(width, rank, batch_size, data, args.epochs, args.online_steps,
                                      args.tracking_uri, args.outputs, args.matmul_seconds))
    print(f"\n{args.inputs:,} random inputs, {args.epochs} epochs (first is warm-up), "
          f"{torch.get_num_threads()} torch threads; samples/s of student training")
    print(table(rows))
    print("(b)/(a): our Lightning path / plain loop (goal >= 0.95); cached/online: mimic step on cached logits / "
          "teacher forward every step; (d): student GFLOP/s / same-size matmul GFLOP/s")
    return rows


if __name__ == "__main__":
    main()
