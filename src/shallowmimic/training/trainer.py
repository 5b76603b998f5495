"""The Lightning Trainer of a job: its logger into the job's MLflow run, its checkpoints and callbacks, and the
command line Lightning's DDP relaunches ranks > 0 with."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from omegaconf import DictConfig, open_dict, read_write

from shallowmimic.checks import build
from shallowmimic.errors import UserError
from shallowmimic.objectives import Objective
from shallowmimic.tracking.logger import StepOnceMLFlowLogger, logged_steps
from shallowmimic.tracking.run import Run


def run_trainer(run: Run, cfg: DictConfig, system: L.LightningModule, callbacks: list[Callback]) -> L.Trainer:
    """The configured Trainer, logging into `run` (a resumed one skips the steps it logged already)."""
    logged = logged_steps(run.client, run.run_id) if run.resumed else {}
    trainer = make_trainer(cfg, run.run_id, system, callbacks, run.dir, logged)
    run.params({"trainer.world_size": trainer.world_size,
                 "data.global_batch_size": cfg.data.batch_size * trainer.world_size})
    return trainer


def make_trainer(cfg: DictConfig, run_id: str | None, system: L.LightningModule, callbacks: list[Callback],
                 run_dir: Path, logged: dict[str, set[int]] | None = None) -> L.Trainer:
    """The configured Lightning Trainer for `system`, logging into MLflow run `run_id` at its optimizer steps
    (skipping the `logged` points)."""
    logger = StepOnceMLFlowLogger(tracking_uri=str(cfg.logger.tracking_uri), run_id=run_id, logged=logged or {},
                                  optimizer_step=lambda: system.global_step)
    # Lightning's default bar redraws many times a second from a thread: a tenth of a small net's step time
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks = [*callbacks, RichProgressBar(refresh_rate=2)]
    # Lightning refuses gradient_clip_val under manual optimization: the System clips (trainer.gradient_clip_val)
    return instantiate(cfg.trainer, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir),
                       gradient_clip_val=None, gradient_clip_algorithm=None)


def checkpoints(folder: Path, objective: Objective) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """best.ckpt, chosen on validation (the one the test split sees), and last.ckpt, written
    every epoch for resume= (Lightning's save_last writes it only in epochs that improve on the best)."""
    best = ModelCheckpoint(dirpath=folder, filename="best", monitor=objective.monitor, mode=objective.mode)
    return best, ModelCheckpoint(dirpath=folder, filename="last", enable_version_counter=False)


def build_callback(name: str, node: DictConfig) -> L.Callback:
    """One callback of conf/callbacks/; keys set for a callback the chosen option does not have are refused."""
    if "_target_" not in node:
        raise UserError(f"callbacks.{name}.{next(iter(node), '')}: the chosen callbacks= option has no {name}; "
                        "choose one that has (e.g. callbacks=early_stopping)")
    return build("callbacks", node)


def relaunch_here(run: Run, teacher_ids: list[str]) -> None:
    """Lightning's DDP re-executes `sys.argv` for ranks > 0, adding `hydra.run.dir=<run.dir>`: inside a
    multirun that would relaunch the whole sweep into a fresh dir. Make it this one job, in this job's dir, in
    this run, with this run's teachers."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    # quoted: an id of digits alone would otherwise be read as a number
    ours = {"logger.run_id": f"'{run.run_id}'"}
    if teacher_ids:
        ours |= {"teacher.run_id": "[" + ",".join(f"'{i}'" for i in teacher_ids) + "]", "teacher.ensemble": "1",
                 "teacher.model": "null"}  # the run a teacher.model= URI resolved to, named by its id above
    kept = [o for o in hydra_cfg.overrides.task if o.split("=", 1)[0].lstrip("+~") not in ours]
    sys.argv = [sys.argv[0], *kept, *(f"{k}={v}" for k, v in ours.items())]
    with read_write(hydra_cfg.run), open_dict(hydra_cfg.run):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


