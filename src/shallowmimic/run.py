"""One MLflow run's life in one process: created by rank 0 (or reopened on `resume=`), written by rank 0 alone,
closed FINISHED, FAILED or KILLED; other DDP ranks only know its id, which reaches them on their command line."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from mlflow import MlflowClient
from mlflow.entities import Param, RunTag
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from shallowmimic import signals
from shallowmimic.errors import redact
from shallowmimic.resume import LAST, Resume, StepOnceMLFlowLogger, logged_steps
from shallowmimic.sweep import sweep_parent
from shallowmimic.tracking import git_commit, start_run


def variant(cfg: DictConfig, n_teachers: int = 1) -> str:
    """What sets a run apart within its role: `w=2048 k=32`, `w=512 conv=16 T=4.0 ensemble=4`, `w=512 drop=0.5
    wd=0.0001`, `CNN1D d=4 c=64`, `DeepMLP h=58x58`. The one
    place that names it: run names, the `variant` tag, the report and the bench all read it from here."""
    model, objective = cfg.model, cfg.objective
    if "width" in model:
        parts = [f"w={model.width}"] + ([f"k={model.rank}"] if model.rank is not None else [])
        parts += [f"conv={model.conv_channels}"] if model.get("conv_channels") else []
        parts += [f"drop={model.dropout}"] if model.get("dropout") else []
    else:  # a deep net: its class and the sizes of its layers
        parts = [model._target_.rsplit(".", 1)[-1]]
        parts += [f"d={model.depth}"] if "depth" in model else []
        parts += [f"{key[0]}={'x'.join(map(str, model[key])) if OmegaConf.is_list(model[key]) else model[key]}"
                  for key in ("hidden", "channels") if key in model]
    parts += [f"wd={cfg.optimizer.weight_decay}"] if cfg.optimizer.get("weight_decay") else []
    parts += [f"T={objective.temperature}"] if "temperature" in objective else []
    parts += [f"labels={objective.label_weight}"] if objective.get("label_weight") else []
    return " ".join(parts + ([f"ensemble={n_teachers}"] if n_teachers > 1 else []))


class Run:
    """The MLflow run of one job. Rank 0 writes; a resumed run does not log its params or config again."""

    def __init__(self, client: MlflowClient, run_id: str | None, run_dir: Path, resumed: bool) -> None:
        self.client, self.run_id, self.dir, self.resumed = client, run_id, run_dir, resumed
        self.writer = rank_zero_only.rank == 0

    @classmethod
    def begin(cls, cfg: DictConfig, client: MlflowClient, experiment_id: str, name: str, tags: dict[str, str],
              params: dict[str, str], resume: Resume | None) -> Run:
        """Create the run (rank 0), reopen the interrupted one (resume=), or join rank 0's (DDP ranks > 0)."""
        hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
        if rank_zero_only.rank > 0:
            run_id = cfg.logger.run_id  # rank 0's, from the command line it relaunched this process with
        elif resume is not None:
            resume.reopen(client, params)  # its params and tags are already in the store
            run_id = resume.run_id
        else:
            tags = tags | {"git_commit": git_commit(), "tracking_uri": redact(str(cfg.logger.tracking_uri)),
                           "hydra.overrides": redact(" ".join(hydra_cfg.overrides.task)) if hydra_cfg else ""}
            parent = sweep_parent()
            run_id = start_run(client, experiment_id, name, tags | ({"mlflow.parentRunId": parent} if parent else {}),
                               params)
        if resume is not None:
            run_dir = resume.checkpoint.parent.parent  # the interrupted run's dir: its checkpoints continue there
        else:
            run_dir = Path(hydra_cfg.runtime.output_dir) if hydra_cfg else Path(cfg.paths.outputs) / "runs" / run_id
        return cls(client, run_id, run_dir, resumed=resume is not None)

    def tags(self, tags: dict[str, object]) -> None:
        if self.writer:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def params(self, params: dict[str, object]) -> None:
        if self.writer and not self.resumed:
            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def text(self, text: str, name: str) -> None:
        if self.writer and not self.resumed:
            self.client.log_text(self.run_id, text, name)

    def metrics(self, metrics: dict[str, float]) -> None:
        if self.writer:
            for key, value in metrics.items():
                self.client.log_metric(self.run_id, key, value)

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        if self.writer:
            self.client.log_artifact(self.run_id, str(path), folder)

    def trainer(self, cfg: DictConfig, callbacks: list[Callback]) -> L.Trainer:
        """The configured Trainer, logging into this run (a resumed one skips the steps it logged already)."""
        logged = logged_steps(self.client, self.run_id) if self.resumed else {}
        trainer = make_trainer(cfg, self.run_id, callbacks, self.dir, logged)
        self.params({"trainer.world_size": trainer.world_size,
                     "data.global_batch_size": cfg.data.batch_size * trainer.world_size})
        return trainer

    def relaunch_here(self, teacher_ids: list[str]) -> None:
        """Lightning's DDP re-executes `sys.argv` for ranks > 0, adding `hydra.run.dir=<run.dir>`: inside a
        multirun that would relaunch the whole sweep into a fresh dir. Make it this one job, in this job's dir, in
        this run, with this run's teachers."""
        if not HydraConfig.initialized():
            return
        hydra_cfg = HydraConfig.get()
        # quoted: an id of digits alone would otherwise be read as a number
        ours = {"logger.run_id": f"'{self.run_id}'"}
        if teacher_ids:
            ours |= {"teacher.run_id": "[" + ",".join(f"'{i}'" for i in teacher_ids) + "]", "teacher.ensemble": "1",
                     "teacher.model": "null"}  # the run a teacher.model= URI resolved to, named by its id above
        kept = [o for o in hydra_cfg.overrides.task if o.split("=", 1)[0].lstrip("+~") not in ours]
        sys.argv = [sys.argv[0], *kept, *(f"{k}={v}" for k, v in ours.items())]
        with read_write(hydra_cfg.run), open_dict(hydra_cfg.run):
            hydra_cfg.run.dir = hydra_cfg.runtime.output_dir

    def how_to_resume(self) -> str:
        """One line: the run was killed, and the command that continues it from its last checkpoint."""
        name = signal.Signals(signals.received).name if signals.received else "an interrupt"
        if not (self.dir / LAST).exists():
            return f"{name}: run {self.run_id} KILLED before its first checkpoint; run the same command again"
        overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
        kept = " ".join(o for o in overrides if not o.startswith(("logger.run_id=", "resume=")))
        return f"{name}: run {self.run_id} KILLED; continue it with: python -m shallowmimic.train {kept} " \
               f"resume={self.dir}".replace("  ", " ")

    @contextmanager
    def closing(self) -> Iterator[None]:
        """Rank 0 ends the run FINISHED with the block, KILLED when interrupted (Ctrl-C, or Lightning's exit after
        one), FAILED on any other error; and the block leaves no DDP state behind for the next job of a sweep."""
        env = dict(os.environ)
        status = "FAILED"
        try:
            yield
            status = "FINISHED"
        except (KeyboardInterrupt, SystemExit):
            status = "KILLED"
            if self.writer and signals.received is not None:
                print(self.how_to_resume(), file=sys.stderr)
            raise
        finally:
            # Lightning's DDP leaves its environment (LOCAL_RANK, MASTER_PORT, ...) and process group in rank 0: the
            # next job of a multirun would take them for an external launcher's and hang
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            for key in set(os.environ) - set(env):
                del os.environ[key]
            os.environ.update(env)
            if self.writer:
                self.client.set_terminated(self.run_id, status)


def make_trainer(cfg: DictConfig, run_id: str | None, callbacks: list[Callback], run_dir: Path,
                 logged: dict[str, set[int]] | None = None) -> L.Trainer:
    """The configured Lightning Trainer, logging into MLflow run `run_id` (skipping the `logged` points)."""
    logger = StepOnceMLFlowLogger(tracking_uri=str(cfg.logger.tracking_uri), run_id=run_id, logged=logged or {})
    # Lightning's default bar redraws many times a second from a thread: a tenth of a small net's step time
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks = [*callbacks, RichProgressBar(refresh_rate=2)]
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir))
    logger.steps = lambda: trainer.global_step
    return trainer
