"""The contenders, each timed over whole epochs after one warm-up epoch, from the same seeded weights on the same data:

  (a) plain: a PyTorch loop that slices in-memory tensors (randperm per epoch, forward, mimic loss, backward, Adam);
  (b) lightning: System + InMemoryLoader + trainer.make_trainer from the composed config (MLflow logger, progress bar),
      training only;
  (c) full: (b) plus what `train` adds each epoch: a validation pass, ModelCheckpoint (best + last) and RunState,
      the epoch's metrics logged to MLflow; timed to the end of the fit's last epoch, its logging included.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, open_dict
from torch import nn

from shallowmimic import conf_dir
from shallowmimic.data import Batch, InMemoryLoader
from shallowmimic.objectives import mimic_loss
from shallowmimic.tracking.resume import RunState
from shallowmimic.training.pipeline import build_objective
from shallowmimic.training.system import System
from shallowmimic.training.trainer import checkpoints, make_trainer

NUM_CLASSES = 10
BENCH_EXPERIMENT = "bench"


def random_data(n: int, in_dim: int = 40, seed: int = 0) -> Batch:
    """N standard-normal inputs (N, in_dim), already standardised, and random logits (N, 10): speed does not depend
    on the values."""
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, in_dim, generator=g), "z": torch.randn(n, NUM_CLASSES, generator=g)}


def bench_config(width: int, rank: int | None, batch_size: int, tracking_uri: str | None = None,
                 outputs: str | None = None, extra: list[str] | None = None) -> DictConfig:
    """The real conf/train.yaml composed for a mimic of this shape (what `train experiment=mimic ...` runs), with
    `extra` Hydra overrides (e.g. loop.steps_per_batch=32)."""
    # the bench's runs go to an experiment of their own, not among the data set's runs that users browse
    overrides = ["experiment=mimic", f"model.width={width}", f"model.rank={'null' if rank is None else rank}",
                 f"data.batch_size={batch_size}", f"logger.experiment_name={BENCH_EXPERIMENT}", *(extra or [])]
    overrides += [f"logger.tracking_uri={tracking_uri}"] if tracking_uri else []
    overrides += [f"paths.outputs={outputs}"] if outputs else []
    return compose_train(overrides)


def compose_train(overrides: list[str]) -> DictConfig:
    """conf/train.yaml composed with these overrides."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=overrides)


def make_net(cfg: DictConfig, in_dim: int) -> nn.Module:
    """The student exactly as train.py instantiates it, seeded so every contender starts from the same weights."""
    torch.manual_seed(cfg.seed)
    return instantiate(cfg.model, in_shape=in_dim, num_classes=NUM_CLASSES)


def plain_sps(net: nn.Module, data: Batch, batch_size: int, epochs: int, teacher: nn.Module | None = None,
              max_steps: int | None = None, lr: float = 1e-3) -> float:
    """Samples/s of a plain loop over epochs 1.. (epoch 0 warms up); targets are the cached logits, or the frozen
    teacher's run on each batch. `max_steps` cuts every epoch short (for the slow online teacher on big sets)."""
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
    """Samples/s from the start of epoch 1 to the end of training (epoch 0 warms up): the last epoch's validation,
    checkpoints and logging included."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.ended: float | None = None
        self.samples = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 1:
            self.started = time.perf_counter()
            self.samples = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object,
                           batch: Batch | list[Batch], batch_idx: int) -> None:
        if trainer.current_epoch >= 1:
            self.samples += sum(len(b["x"]) for b in (batch if isinstance(batch, list) else [batch]))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ended = time.perf_counter()

    @property
    def sps(self) -> float:
        if self.started is None or self.ended is None:
            raise RuntimeError("need at least 2 epochs: the first one is warm-up")
        return self.samples / (self.ended - self.started)


def lightning_sps(cfg: DictConfig, data: Batch, run_id: str, epochs: int, val: Batch | None = None,
                  run_dir: Path | None = None, profile: Path | None = None) -> float:
    """Samples/s of our path, logging into run `run_id`: (b) training only, or (c) with `val` and `run_dir`, the
    validation pass, checkpoints and per-epoch MLflow logging that train.py adds. `profile`: Lightning's
    SimpleProfiler (time per hook and loop stage) writes its table to `<profile>/fit-profile.txt`."""
    system = System(make_net(cfg, data["x"].shape[1]), mimic_loss, instantiate(cfg.optimizer), NUM_CLASSES,
                    compile=cfg.loop.compile)
    loader = InMemoryLoader(data, cfg.data.batch_size, shuffle=True, seed=cfg.data.shuffle_seed,
                            steps=cfg.loop.steps_per_batch)
    speed = Throughput()
    callbacks: list[Callback] = [speed]
    full = val is not None and run_dir is not None
    if full:
        shutil.rmtree(run_dir, ignore_errors=True)  # each repeat writes its checkpoints afresh, as a new run would
        # train's own checkpoint callbacks (best on validation, last every epoch), not a copy of them
        callbacks += [*checkpoints(run_dir / "checkpoints", build_objective(cfg.objective)), RunState(run_id)]
    cfg = cfg.copy()
    with open_dict(cfg):  # (b) checkpoints nothing: Lightning would otherwise add its default ModelCheckpoint
        cfg.trainer.max_epochs, cfg.trainer.enable_checkpointing = epochs, full
        if profile is not None:
            cfg.trainer.profiler = {"_target_": "lightning.pytorch.profilers.SimpleProfiler", "dirpath": str(profile),
                                    "filename": "profile"}
    trainer = make_trainer(cfg, run_id, system, callbacks, run_dir or Path(cfg.paths.outputs) / "bench")
    val_loader = InMemoryLoader(val, cfg.data.eval_batch_size, shuffle=False) if val is not None else None
    trainer.fit(system, train_dataloaders=loader, val_dataloaders=val_loader)
    return speed.sps
