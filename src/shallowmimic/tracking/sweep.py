"""The parent run of a Hydra sweep: one MLflow run every job of a multirun nests under. Light to import (MLflow is
imported only when a multirun starts): Hydra builds its callbacks for every job."""

from __future__ import annotations

import atexit
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from shallowmimic import signals
from shallowmimic.errors import redact

if TYPE_CHECKING:
    from mlflow import MlflowClient

PARENT_FILE = "mlflow_parent_run_id"  # written into a Hydra sweep dir; each job reads its parent from there


def sweep_parent() -> str | None:
    """The MLflow parent run of the Hydra sweep this job runs in, if it runs in one."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    path = Path(HydraConfig.get().sweep.dir) / PARENT_FILE
    return path.read_text().strip() if path.exists() else None


class SweepParentRun(Callback):
    """Hydra callback: before a multirun's jobs start, create the store, the experiment and one parent run that
    every job nests under (tag `mlflow.parentRunId`); end it FINISHED, FAILED if any job failed, or KILLED by a signal.

    Creating the store here, once, also keeps parallel jobs from racing on a new SQLite store's schema."""

    def __init__(self) -> None:
        self.client: MlflowClient | None = None
        self.run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # imported here: Hydra builds this callback for every job, single runs and `--help` included, and MLflow
        # takes seconds to import
        from shallowmimic.tracking.descriptions import MLFLOW_RUN_NOTE, git_commit, source_tags, sweep_description
        from shallowmimic.tracking.keys import PARENT, ROLE, STAGE
        from shallowmimic.tracking.store import open_store

        store = open_store(config.logger)
        self.client = store.client
        overrides = redact(" ".join(config.hydra.overrides.task))
        tags = {ROLE: "sweep", "hydra.overrides": overrides, "git_commit": git_commit()}
        study = config.get("study") or {}  # a stage of `make paper`: nest under the study's run
        tags |= source_tags() | {MLFLOW_RUN_NOTE: sweep_description(overrides, study.get("stage"))}
        if study.get("run_id"):
            tags |= {PARENT: study.run_id, STAGE: str(study.stage)}
        name = f"{study.stage} {overrides}" if study.get("stage") else f"sweep {overrides}"
        self.run_id = store.start_run(name[:250], tags, {})
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_FILE).write_text(self.run_id)
        # Hydra raises after the jobs when one failed, skipping on_multirun_end: close the parent at exit then.
        atexit.register(self._close_at_exit)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.client is None or self.run_id is None:
            return
        # ask the store, not this process: with a parallel launcher the jobs ran elsewhere
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        failed = self.client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{self.run_id}' and "
                                         "attributes.status != 'FINISHED'", max_results=1)
        parent = self.run_id
        self._close("FAILED" if failed else "FINISHED")
        if config.get("register") and not failed:
            from shallowmimic.tracking.registry import register_sweep

            register_sweep(self.client, str(config.logger.experiment_name), parent)

    def _close_at_exit(self) -> None:
        """The sweep stopped early: KILLED by a signal (signals.py), else FAILED (a job raised)."""
        self._close("FAILED" if signals.received is None else "KILLED")

    def _close(self, status: str) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, status)
            self.run_id = None
