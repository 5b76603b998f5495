"""Hydra entry point: fit one teacher, baseline or mimic, test it once, and record it in MLflow.

    python -m shallowmimic.train experiment=teacher
    python -m shallowmimic.train experiment=mimic model.width=8192 model.rank=32
    python -m shallowmimic.train -m experiment=mimic model.width=512,2048 model.rank=null,32
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from shallowmimic import project_root
from shallowmimic.checks import check
from shallowmimic.nets import n_params
from shallowmimic.resume import (
    RunState,
    StepOnceMLFlowLogger,
    interrupted_run,
    logged_steps,
    reopen_run,
    resume_point,
)
from shallowmimic.system import NEEDS_LOGITS, System
from shallowmimic.teacher import CONFIG, check_teacher, data_params, ensemble_logits, find_teachers, teacher_ids
from shallowmimic.tracking import (
    RunLog,
    UserError,
    flat_params,
    git_commit,
    open_store,
    redact,
    start_run,
    sweep_parent,
)

log = logging.getLogger(__name__)

# Rank 0 hands the run and the teacher it chose to the DDP processes Lightning starts (they inherit its env).
RUN_ENV, TEACHER_ENV = "SHALLOWMIMIC_RUN_ID", "SHALLOWMIMIC_TEACHER_RUN_ID"


OmegaConf.register_new_resolver("sm.root", lambda: str(project_root()), replace=True)


def role_of(cfg: DictConfig) -> str:
    """teacher = (deep net, labels); baseline = (shallow net, labels); mimic or kd = (any net, teacher logits)."""
    if cfg.objective.name in NEEDS_LOGITS:
        return cfg.objective.name
    return "baseline" if cfg.model._target_.endswith(".ShallowNet") else "teacher"


def run_name(cfg: DictConfig, role: str) -> str:
    """Readable run names: `mimic w=2048 k=32 seed=0`, `kd w=512 conv=16 T=4.0 seed=1`, `teacher CNN1D seed=0`."""
    model = cfg.model
    if "width" in model:
        shape = f"w={model.width}" + (f" k={model.rank}" if model.rank is not None else "")
        shape += f" conv={model.conv_channels}" if model.get("conv_channels") else ""
    else:
        shape = model._target_.rsplit(".", 1)[-1]
    if "temperature" in cfg.objective:
        shape += f" T={cfg.objective.temperature}"
    return f"{role} {shape} seed={cfg.seed}"


def prepare_ddp_relaunch(hydra_cfg: HydraConfig | None) -> None:
    """Lightning's DDP re-executes `sys.argv` for ranks > 0, adding `hydra.run.dir=<run.dir>`: inside a multirun
    that would relaunch the whole sweep into a fresh timestamped dir. Make it this one job, in this job's dir."""
    if hydra_cfg is None:
        return
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg.run), open_dict(hydra_cfg.run):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


def build_trainer(cfg: DictConfig, run_id: str | None, callbacks: list[Callback], run_dir: Path,
                  logged: dict[str, set[int]] | None = None) -> L.Trainer:
    """The configured Lightning Trainer, logging into MLflow run `run_id` (skipping the `logged` points of a
    resumed run)."""
    logger = StepOnceMLFlowLogger(tracking_uri=str(cfg.logger.tracking_uri), run_id=run_id, logged=logged or {})
    # Lightning's default bar redraws many times a second from a thread: a tenth of a small net's step time
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks = [*callbacks, RichProgressBar(refresh_rate=2)]
    return instantiate(cfg.trainer, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir))


@contextmanager
def job_scoped_distributed_state() -> Iterator[None]:
    """Lightning's DDP leaves its environment (LOCAL_RANK, MASTER_PORT, ...) and process group behind in rank 0;
    the next job of a multirun would take them for an external launcher's and hang. Undo both after each job."""
    env = dict(os.environ)
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key in set(os.environ) - set(env):
            del os.environ[key]
        os.environ.update(env)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured model, test its best-on-validation checkpoint once, log everything; return test metrics."""
    started = time.perf_counter()
    check(cfg)
    role = role_of(cfg)
    # resume=<run dir or .ckpt>: continue that run's fit, in its MLflow run, from its last epoch's checkpoint
    ckpt_path, resumed_id = resume_point(cfg.resume) if cfg.resume else (None, None)
    rank = rank_zero_only.rank  # > 0 in the processes Lightning's DDP launches: they log nothing themselves
    client, experiment_id = open_store(cfg.logger)
    resumed = interrupted_run(client, resumed_id, cfg.resume) if resumed_id else None
    teacher_id = (os.environ.get(TEACHER_ENV) if rank else None) or cfg.teacher.run_id  # rank 0's choice wins
    recorded = resumed.data.tags.get("teacher_run_id") if resumed else None
    if recorded:  # a resumed student keeps its teachers, even if newer ones exist now
        if teacher_id and set(teacher_ids(teacher_id)) != set(teacher_ids(recorded)):
            raise UserError(f"teacher.run_id={','.join(teacher_ids(teacher_id))}: run {resumed_id} learnt from "
                            f"{recorded}; resume it with its own teachers")
        teacher_id = recorded
    # A student without a teacher fails here, before any MLflow run exists; two or more teachers: an ensemble.
    teacher_runs = []
    if role in NEEDS_LOGITS:
        teacher_runs = find_teachers(client, experiment_id, teacher_id, cfg.teacher.ensemble)

    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # parallel sweep jobs share the cores instead of oversubscribing them
    L.seed_everything(cfg.seed, workers=True)
    dm = instantiate(cfg.data)
    dm.setup()
    for teacher_run in teacher_runs:
        check_teacher(teacher_run, dm)
    try:
        net = instantiate(cfg.model, in_shape=dm.in_shape, num_classes=dm.num_classes)
    except InstantiationException as err:  # a net that cannot take this data (CNN2D on sequences, a pool too big)
        if not isinstance(err.__cause__, ValueError | RuntimeError | TypeError):
            raise
        raise UserError(f"model={cfg.model._target_.rsplit('.', 1)[-1]}: {err.__cause__} (data={dm.name})") from None

    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    multirun = hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN
    params = flat_params(cfg, ("data", "model", "objective", "optimizer", "trainer"))
    params |= {"seed": str(cfg.seed), "n_params": str(n_params(net))} | data_params(dm)
    if rank == 0 and resumed_id:
        reopen_run(client, resumed, cfg.resume, params)  # its params and tags are already in the store
        os.environ[RUN_ENV] = resumed_id
    elif rank == 0:
        tags = {"role": role, "git_commit": git_commit(), "tracking_uri": redact(str(cfg.logger.tracking_uri)),
                "hydra.overrides": redact(" ".join(hydra_cfg.overrides.task)) if hydra_cfg else ""}
        parent = sweep_parent(hydra_cfg.sweep.dir) if multirun else None
        if parent:
            tags["mlflow.parentRunId"] = parent
        if teacher_runs:
            tags["teacher_run_id"] = os.environ[TEACHER_ENV] = ",".join(r.info.run_id for r in teacher_runs)
        os.environ[RUN_ENV] = start_run(client, experiment_id, run_name(cfg, role), tags, params)
    run = RunLog(client, os.environ.get(RUN_ENV), writer=rank == 0)
    fresh = RunLog(client, run.run_id, writer=rank == 0 and not resumed_id)  # what a resumed run logged already

    with run.closing(), job_scoped_distributed_state():
        run_dir = Path(hydra_cfg.runtime.output_dir) if hydra_cfg else Path(cfg.paths.outputs) / "runs" / run.run_id
        if ckpt_path:
            run_dir = ckpt_path.parent.parent  # the interrupted run's dir: its checkpoints continue there
        fresh.text(redact(OmegaConf.to_yaml(cfg, resolve=True)), CONFIG)
        if teacher_runs:
            # rank 0 builds the cache before Lightning starts the other ranks; they find it there
            logits, teacher_tags = ensemble_logits(client, teacher_runs, dm, Path(cfg.paths.cache) / "logits")
            dm.attach_logits(logits)
            run.tags(teacher_tags)
            fresh.params({"data.n_transfer": len(dm.transfer_inputs()),
                          "data.n_duplicates_dropped": dm.n_duplicates_dropped})

        system = System(net, cfg.objective, instantiate(cfg.optimizer), dm.num_classes)
        # best.ckpt: chosen on validation; last.ckpt: written every epoch, for resume=
        checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", save_last=True,
                                     monitor=cfg.objective.monitor, mode=cfg.objective.mode)
        logged = logged_steps(client, run.run_id) if resumed_id else None
        trainer = build_trainer(cfg, run.run_id, [checkpoint, RunState(run.run_id)], run_dir, logged)
        fresh.params({"trainer.world_size": trainer.world_size,
                      "data.global_batch_size": cfg.data.batch_size * trainer.world_size})
        prepare_ddp_relaunch(hydra_cfg)
        fit_started = time.perf_counter()
        trainer.fit(system, datamodule=dm, ckpt_path=ckpt_path)
        fit_s = time.perf_counter() - fit_started
        metrics = trainer.test(system, datamodule=dm, ckpt_path="best", verbose=False)[0]

        run.artifact(checkpoint.best_model_path, "checkpoints")
        best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
        # validation accuracy of the chosen checkpoint: what sweepers may optimise (never the test split)
        metrics["val/best_acc"] = system.val_acc_by_epoch[best["epoch"]]
        run.metrics({"val/best_acc": metrics["val/best_acc"], "val/best_epoch": best["epoch"],
                     "train/epochs": trainer.current_epoch, "time/fit_s": fit_s,
                     "time/total_s": time.perf_counter() - started})
    if rank == 0:
        summary = " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
        print(f"[{run_name(cfg, role)}] run {run.run_id}: {summary} ({time.perf_counter() - started:.0f} s)")
    return metrics


@hydra.main(config_path="../../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Run one job and return its best validation accuracy (the value a sweeper such as Optuna maximises); a
    user's mistake ends it with one line on stderr and exit status 2."""
    try:
        return train(cfg)["val/best_acc"]
    except UserError as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra records the failed job and goes on with the others
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
