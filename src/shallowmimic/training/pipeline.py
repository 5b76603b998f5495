"""One job, top to bottom: check -> store -> data -> net -> teachers -> run -> teachers' logits -> system -> fit ->
test once -> record. `python -m shallowmimic.train` (train.py) runs it from the command line."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from mlflow import MlflowClient
from mlflow.entities import Run as MlflowRun
from omegaconf import DictConfig, OmegaConf

from shallowmimic import settings
from shallowmimic.checks import build, target
from shallowmimic.data import ArrayDataModule
from shallowmimic.errors import BadValue, UserError, redact
from shallowmimic.nets import Destandardised, n_params
from shallowmimic.objectives import Objective, StandardisedMimicLoss
from shallowmimic.tracking.datasets import log_datasets
from shallowmimic.tracking.descriptions import run_tags, variant
from shallowmimic.tracking.keys import REUSE_KEY, ROLE, SELECT_ON, STAGE, TEACHER_RUN_ID, VARIANT
from shallowmimic.tracking.logged_models import record_model
from shallowmimic.tracking.registry import maybe_register
from shallowmimic.tracking.resume import Resume, RunState
from shallowmimic.tracking.reuse import finished_run, reuse, reuse_key
from shallowmimic.tracking.run import Run, flat_params
from shallowmimic.tracking.search import teacher_ids as ids_of
from shallowmimic.tracking.store import Store, open_store
from shallowmimic.tracking.sweep import sweep_parent
from shallowmimic.tracking.system_metrics import system_metrics
from shallowmimic.training import external
from shallowmimic.training.system import System
from shallowmimic.training.teachers import (
    CONFIG,
    check_keys,
    data_params,
    ensemble_logits,
    find_teachers,
)
from shallowmimic.training.teachers import teacher_device as device_for
from shallowmimic.training.trainer import build_callback, checkpoints, relaunch_here, run_trainer


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured model, test its best-on-validation checkpoint once, log everything; return test metrics."""
    started = time.perf_counter()
    settings.check(cfg)
    store = open_store(cfg.logger)  # a store that cannot be used fails now, before any work
    client = store.client
    objective, schedule = build_objective(cfg.objective), build_schedule(cfg.get("scheduler"))
    optimizer = build_optimizer(cfg.optimizer)
    target("trainer", cfg.trainer)  # the Trainer is built inside the run: a bad _target_ must fail before it
    callbacks = [build_callback(name, node) for name, node in cfg.callbacks.items()]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # parallel sweep jobs share the cores instead of oversubscribing them
    L.seed_everything(cfg.seed, workers=True)
    dm, net = build_data_and_net(cfg)
    resume = Resume.load(cfg.resume, client) if cfg.resume else None
    if not objective.needs_logits and (adopted := adopted_teacher(cfg, store, dm)) is not None:
        return reuse(cfg, client, adopted, "given as the teacher, not trained")
    teachers = pick_teachers(cfg, objective, store, resume, dm)  # none for label training

    key = reuse_key(cfg, dm, [t.info.run_id for t in teachers])
    if (done := finished_run(cfg, store, key)) is not None:
        return reuse(cfg, client, done)  # trained before with this config, code, data and teachers
    shape = variant(cfg, len(teachers))
    name, tags = f"{cfg.role} {shape} seed={cfg.seed}", {ROLE: cfg.role, VARIANT: shape, REUSE_KEY: key}
    # lineage, then what the UI shows: Source, User, the description
    tags |= lineage(cfg, teachers) | run_tags(cfg, shape, n_params(net), teachers, store.experiment_id, sweep_parent())
    params = flat_params(cfg, ("data", "model", "objective", "optimizer", "scheduler", "callbacks", "trainer"))
    params |= {"seed": str(cfg.seed), "n_params": str(n_params(net))} | data_params(dm)
    run = Run.begin(cfg, store, name, tags, params, resume)
    with run.closing():
        run.text(redact(OmegaConf.to_yaml(cfg, resolve=True)), CONFIG)
        if teachers:
            net = standardised(objective, net, attach_teachers(run, client, teachers, dm, cfg))
        run.params({"data.n_train_rows": dm.n_train_rows})
        log_datasets(run, dm, cfg.data)
        system = System(net, objective.loss, optimizer, dm.num_classes, schedule, cfg.loop.compile,
                        cfg.trainer.get("gradient_clip_val"), cfg.trainer.get("gradient_clip_algorithm") or "norm")
        checkpoint, last = checkpoints(run.dir / "checkpoints", objective)
        trainer = run_trainer(run, cfg, system, [checkpoint, last, RunState(run.run_id), *callbacks,
                                                 *system_metrics(cfg.logger, run)])
        relaunch_here(run, [t.info.run_id for t in teachers])
        fit_s = fit(run, trainer, system, dm, resume)
        # the one look at test, with the best checkpoint (named: "best" would warn about our two checkpoint callbacks)
        metrics = trainer.test(system, datamodule=dm, ckpt_path=checkpoint.best_model_path, verbose=False)[0]
        metrics |= record_best(run, checkpoint, system, trainer, fit_s, started)
        record_model(run, net, dm, tags, metrics)  # net: the best checkpoint's weights, loaded by trainer.test
    if run.writer:
        maybe_register(cfg, client, run.run_id)
        print(f"[{name}] run {run.run_id}: {summary(metrics)} ({time.perf_counter() - started:.0f} s)")
    return metrics


def build_data_and_net(cfg: DictConfig) -> tuple[ArrayDataModule, torch.nn.Module]:
    """The data module, set up (split and standardised), and the net built for its input shape and classes."""
    dm = build("data", cfg.data)
    dm.steps_per_batch = cfg.loop.steps_per_batch
    dm.setup()
    return dm, build("model", cfg.model, in_shape=dm.in_shape, num_classes=dm.num_classes)


def summary(metrics: dict[str, float]) -> str:
    """The job's last line: its test metrics and best validation accuracy."""
    return " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))


def pick_teachers(cfg: DictConfig, objective: Objective, store: Store,
                  resume: Resume | None, dm: ArrayDataModule) -> list[MlflowRun]:
    """The teacher runs a student learns from: those named (teacher.run_id, and the nets teacher.model and
    teacher.checkpoint give: all of them one ensemble), or the newest; a resumed student keeps its own. A student
    without a teacher, or with one that does not fit its data, fails here, before any MLflow run exists."""
    if not objective.needs_logits:
        return []
    check_keys(cfg.teacher.run_id, cfg.teacher.ensemble)
    ids = ids_of(cfg.teacher.run_id) + given_teachers(store, cfg.teacher, dm)
    if ids and cfg.teacher.ensemble != 1:
        raise BadValue("teacher.ensemble", cfg.teacher.ensemble, "1 when the teachers are named (list them all)")
    if resume is not None:
        ids = resume.teachers(ids)
    return find_teachers(store, ids, cfg.teacher.ensemble, dm)


def given_teachers(store: Store, teacher_cfg: DictConfig, dm: ArrayDataModule) -> list[str]:
    """The teacher runs of the nets teacher.model and teacher.checkpoint name: the run of ours a model URI names (it
    teaches from its checkpoint), or an external net's own teacher run (made once, external.teacher_run)."""
    inputs = teacher_cfg.get("inputs") or "raw"  # an external net was trained on the data as its files hold it
    ids = []
    for source, net in external.given(teacher_cfg):
        ours = external.our_teacher(store.client, source) if net is None else None
        ids.append(ours or external.teacher_run(store, source, net, inputs, data_params(dm), dm).info.run_id)
    return ids


def adopted_teacher(cfg: DictConfig, store: Store, dm: ArrayDataModule) -> MlflowRun | None:
    """A teacher job given its net (teacher.model or teacher.checkpoint; `make paper TEACHER=`): that net's teacher
    run stands for the teacher this job would train; None when no net is given."""
    ids = given_teachers(store, cfg.teacher, dm) if cfg.role == "teacher" else []
    if len(ids) > 1:
        raise BadValue("teacher.model", cfg.teacher.model, "one net when a teacher job adopts it (an ensemble is "
                       "made by the students: give the list to them)")
    return store.client.get_run(ids[0]) if ids else None


def attach_teachers(run: Run, client: MlflowClient, teachers: list[MlflowRun], dm: ArrayDataModule,
                    cfg: DictConfig) -> dict[str, np.ndarray]:
    """Give the data the teachers' logits (their mean for an ensemble; rank 0 builds the cache, on the trainer's
    device, before Lightning starts the other ranks, which find it there); record where they came from and how good
    the targets are."""
    cache_dir, device = Path(cfg.paths.cache) / "logits", device_for(cfg.trainer.accelerator)
    logits, cache_tags = ensemble_logits(client, teachers, dm, cache_dir, device)  # on the trainer's device
    dm.attach_logits(logits)
    run.tags(cache_tags)
    run.params({"data.n_transfer": len(dm.transfer_inputs()), "data.n_duplicates_dropped": dm.n_duplicates_dropped})
    # the accuracy of the targets themselves: what a perfect mimic would score (Figure 3's x axis)
    run.metrics({f"teacher/{s}_acc": (dm.splits[s]["z"].argmax(1) == dm.splits[s]["y"]).float().mean().item()
                 for s in ("val", "test")})
    return logits


def standardised(objective: Objective, net: torch.nn.Module, logits: dict[str, np.ndarray]) -> torch.nn.Module:
    """objective=mimic_standardised: the net behind Destandardised with the per-class mean and std of the teacher's
    logits over the mimic's training rows (training split and transfer set), its loss given that std. Otherwise the
    net as it is."""
    if not isinstance(objective.loss, StandardisedMimicLoss):
        return net
    return Destandardised(net, *objective.loss.fit([logits["train"], logits["transfer"]]))


def lineage(cfg: DictConfig, teachers: list[MlflowRun]) -> dict[str, str]:
    """Where a run comes from: a student's teacher runs (two or more: an ensemble), a study's stage."""
    tags = {TEACHER_RUN_ID: ",".join(t.info.run_id for t in teachers)} if teachers else {}
    return tags | ({STAGE: cfg.study.stage} if cfg.study.stage else {})


def build_objective(node: DictConfig) -> Objective:
    """The objective of conf/objective/: its loss, built from its config, and how it picks checkpoints."""
    loss = build("objective", node.loss)
    try:
        return Objective(node.name, loss, node.needs_logits, node.monitor, node.mode)
    except BadValue as err:
        raise err.under("objective") from None


def fit(run: Run, trainer: L.Trainer, system: System, dm: L.LightningDataModule, resume: Resume | None) -> float:
    """Fit (from the interrupted run's last checkpoint on resume=), tag why it stopped; return the seconds it took.

    Why: early stopping (validation flat) or the last epoch (a schedule, if any, completed). Asked now: testing the
    best checkpoint loads the callbacks' state of its epoch."""
    started = time.perf_counter()
    trainer.fit(system, datamodule=dm, ckpt_path=resume.checkpoint if resume else None)
    early = trainer.early_stopping_callback
    run.tags({"stop_reason": "early_stopping" if early is not None and early.stopped_epoch > 0 else "max_epochs"})
    return time.perf_counter() - started


def build_optimizer(node: DictConfig) -> Callable[..., torch.optim.Optimizer]:
    """The optimizer factory of conf/optimizer/ (`_partial_`), tried once on a throwaway parameter so that a bad key
    fails now, before any run exists."""
    make = build("optimizer", node)
    try:
        make([torch.zeros(1, requires_grad=True)])
    except (TypeError, ValueError) as err:  # a key the optimizer does not take, or a value it refuses
        raise UserError(f"optimizer={node._target_.rsplit('.', 1)[-1]}: {err}") from None
    return make


def build_schedule(node: DictConfig | None) -> Callable[..., dict] | None:
    """The learning-rate schedule of conf/scheduler/ (None: constant), tried once on a throwaway optimizer so that
    a bad key fails now, before any run exists."""
    if node is None:
        return None
    schedule = build("scheduler", node)
    try:
        schedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), total_steps=100)
    except BadValue as err:
        raise err.under("scheduler") from None
    return schedule


def record_best(run: Run, checkpoint: ModelCheckpoint, system: System, trainer: L.Trainer, fit_s: float,
                started: float) -> dict[str, float]:
    """Log the checkpoint chosen on validation, its epoch and accuracy, and the times; return its accuracy."""
    run.artifact(checkpoint.best_model_path, "checkpoints")
    best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    # validation accuracy of the chosen checkpoint: what sweepers may optimise (never the test split)
    best_acc = system.val_acc_by_epoch[best["epoch"]]
    run.metrics({SELECT_ON: best_acc, "val/best_epoch": best["epoch"], "train/epochs": trainer.current_epoch,
                 "time/fit_s": fit_s, "time/total_s": time.perf_counter() - started})
    return {SELECT_ON: best_acc}
