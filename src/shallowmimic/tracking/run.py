"""One MLflow run's life in one process: created by rank 0 (or reopened on `resume=`), written by rank 0 alone,
closed FINISHED, FAILED or KILLED; other DDP ranks only know its id, which reaches them on their command line."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from mlflow import MlflowClient
from mlflow.entities import Param, RunTag
from omegaconf import DictConfig, OmegaConf

from shallowmimic import signals
from shallowmimic.errors import redact
from shallowmimic.tracking.descriptions import git_commit
from shallowmimic.tracking.keys import PARENT
from shallowmimic.tracking.resume import LAST, Resume
from shallowmimic.tracking.store import Store
from shallowmimic.tracking.sweep import sweep_parent


def flat_params(cfg: DictConfig, groups: tuple[str, ...]) -> dict[str, str]:
    """A short, flat view of the config for MLflow params: `model.width`, `optimizer.lr`, ... (targets named
    by class only); the full resolved config goes in as an artifact."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("_partial_", "_convert_", "cache_dir", "loss") or (k == "_target_" and "name" in node):
                    # a group's own `name` (the data set's) wins over its class name, whatever the order; an
                    # objective's `loss` is built from the keys beside it
                    continue
                if k == "_target_":  # a class by its own name: shallowmimic.nets.ShallowNet -> ShallowNet
                    out[f"{prefix}.name"] = str(v).rsplit(".", 1)[-1]
                else:
                    walk(f"{prefix}.{k}", v)
        else:
            out[prefix] = str(node)[:250]

    for group in groups:
        if group in cfg:
            walk(group, OmegaConf.to_container(cfg[group], resolve=True))
    return out



class Run:
    """The MLflow run of one job. Rank 0 writes; a resumed run does not log its params or config again."""

    def __init__(self, client: MlflowClient, run_id: str | None, run_dir: Path, resumed: bool) -> None:
        self.client, self.run_id, self.dir, self.resumed = client, run_id, run_dir, resumed
        self.writer = rank_zero_only.rank == 0

    @classmethod
    def begin(cls, cfg: DictConfig, store: Store, name: str, tags: dict[str, str],
              params: dict[str, str], resume: Resume | None) -> Run:
        """Create the run (rank 0), reopen the interrupted one (resume=), or join rank 0's (DDP ranks > 0)."""
        hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
        if rank_zero_only.rank > 0:
            run_id = cfg.logger.run_id  # rank 0's, from the command line it relaunched this process with
        elif resume is not None:
            resume.reopen(store.client, params)  # its params and tags are already in the store
            run_id = resume.run_id
        else:
            tags = tags | {"git_commit": git_commit(), "tracking_uri": redact(str(cfg.logger.tracking_uri)),
                           "hydra.overrides": redact(" ".join(hydra_cfg.overrides.task)) if hydra_cfg else ""}
            parent = sweep_parent()
            run_id = store.start_run(name, tags | ({PARENT: parent} if parent else {}),
                               params)
        if resume is not None:
            run_dir = resume.checkpoint.parent.parent  # the interrupted run's dir: its checkpoints continue there
        else:
            run_dir = Path(hydra_cfg.runtime.output_dir) if hydra_cfg else Path(cfg.paths.outputs) / "runs" / run_id
        return cls(store.client, run_id, run_dir, resumed=resume is not None)

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
            signals.stop()
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


