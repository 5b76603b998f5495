"""Hydra entry point: fit one teacher, baseline or mimic, test it once, and record it in MLflow.

    python -m shallowmimic.train experiment=teacher
    python -m shallowmimic.train experiment=mimic model.width=8192 model.rank=32
    python -m shallowmimic.train -m experiment=mimic model.width=512,2048 model.rank=null,32
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from shallowmimic.checks import check
from shallowmimic.nets import n_params
from shallowmimic.system import System
from shallowmimic.teacher import CONFIG, find_teacher, load_teacher, teacher_logits
from shallowmimic.tracking import (
    UserError,
    finished_or_failed,
    flat_params,
    git_commit,
    open_store,
    redact,
    start_run,
    sweep_parent,
)

log = logging.getLogger(__name__)


def project_root() -> str:
    """The folder holding pyproject.toml (editable install), else the working directory."""
    root = Path(__file__).resolve().parents[2]
    return str(root if (root / "pyproject.toml").exists() else Path.cwd())


OmegaConf.register_new_resolver("sm.root", project_root, replace=True)


def role_of(cfg: DictConfig) -> str:
    """teacher = (deep net, labels); baseline = (shallow net, labels); mimic = (shallow net, teacher logits)."""
    if cfg.objective.name == "mimic":
        return "mimic"
    return "baseline" if cfg.model._target_.endswith(".ShallowNet") else "teacher"


def run_name(cfg: DictConfig, role: str) -> str:
    """Readable run names: `mimic w=2048 k=32 seed=0`, `teacher CNN1D seed=0`."""
    if "width" in cfg.model:
        shape = f"w={cfg.model.width}" + (f" k={cfg.model.rank}" if cfg.model.rank is not None else "")
    else:
        shape = cfg.model._target_.rsplit(".", 1)[-1]
    return f"{role} {shape} seed={cfg.seed}"


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured model, test its best-on-validation checkpoint once, log everything; return test metrics."""
    started = time.perf_counter()
    check(cfg)
    role = role_of(cfg)
    client, experiment_id = open_store(cfg.logger)
    # A mimic without a teacher fails here, before any MLflow run exists.
    teacher_run = find_teacher(client, experiment_id, cfg.teacher.run_id) if role == "mimic" else None

    L.seed_everything(cfg.seed, workers=True)
    dm = instantiate(cfg.data)
    dm.setup()
    net = instantiate(cfg.model, in_dim=dm.in_dim, num_classes=dm.num_classes)

    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    multirun = hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN
    tags = {"role": role, "git_commit": git_commit(), "tracking_uri": redact(str(cfg.logger.tracking_uri)),
            "hydra.overrides": " ".join(hydra_cfg.overrides.task) if hydra_cfg else ""}
    parent = sweep_parent(hydra_cfg.sweep.dir) if multirun else None
    if parent:
        tags["mlflow.parentRunId"] = parent
    if teacher_run:
        tags["teacher_run_id"] = teacher_run.info.run_id
    params = flat_params(cfg, ("data", "model", "objective", "optimizer", "trainer"))
    params |= {"seed": str(cfg.seed), "n_params": str(n_params(net))}
    run_id = start_run(client, experiment_id, run_name(cfg, role), tags, params)

    with finished_or_failed(client, run_id):
        run_dir = Path(hydra_cfg.runtime.output_dir) if hydra_cfg else Path(cfg.paths.outputs) / "runs" / run_id
        client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), CONFIG)
        if teacher_run:
            teacher_net, checkpoint_sha = load_teacher(client, teacher_run, dm)
            logits, logits_sha, hit = teacher_logits(teacher_net, checkpoint_sha, dm, Path(cfg.paths.cache) / "logits")
            dm.attach_logits(logits)
            client.set_tag(run_id, "teacher_checkpoint_sha256", checkpoint_sha)
            client.set_tag(run_id, "teacher_logits_sha256", logits_sha)
            client.set_tag(run_id, "logits_cache", "hit" if hit else "miss")
            client.log_param(run_id, "data.n_transfer", len(dm.transfer_inputs()))
            client.log_param(run_id, "data.n_duplicates_dropped", dm.n_duplicates_dropped)

        system = System(net, cfg.objective.name, instantiate(cfg.optimizer), dm.num_classes)
        checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints" / run_id, filename="best",
                                     monitor=cfg.objective.monitor, mode=cfg.objective.mode)
        logger = MLFlowLogger(tracking_uri=str(cfg.logger.tracking_uri), run_id=run_id)
        trainer: L.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=[checkpoint],
                                         default_root_dir=str(run_dir))
        fit_started = time.perf_counter()
        trainer.fit(system, datamodule=dm)
        fit_s = time.perf_counter() - fit_started
        metrics = trainer.test(system, datamodule=dm, ckpt_path="best", verbose=False)[0]

        client.log_artifact(run_id, checkpoint.best_model_path, "checkpoints")
        best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
        client.log_metric(run_id, "val/best_epoch", best["epoch"])
        client.log_metric(run_id, "train/epochs", trainer.current_epoch)
        client.log_metric(run_id, "time/fit_s", fit_s)
        client.log_metric(run_id, "time/total_s", time.perf_counter() - started)
    summary = " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
    print(f"[{run_name(cfg, role)}] run {run_id}: {summary} ({time.perf_counter() - started:.0f} s)")
    return metrics


@hydra.main(config_path="../../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Run one job; a user's mistake ends it with one line on stderr and exit status 2."""
    try:
        return train(cfg).get("test/acc")
    except UserError as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra records the failed job and goes on with the others
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
