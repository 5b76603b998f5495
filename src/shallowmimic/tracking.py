"""MLflow plumbing: one store, one experiment per dataset, flat params, and the parent run of a sweep."""

from __future__ import annotations

import atexit
import logging
import re
import subprocess
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from mlflow import MlflowClient
from mlflow.entities import Param
from omegaconf import DictConfig, OmegaConf

from shallowmimic import project_root, signals
from shallowmimic.describe import MLFLOW_RUN_NOTE, source_tags, sweep_description
from shallowmimic.store import connect

log = logging.getLogger(__name__)

PARENT_FILE = "mlflow_parent_run_id"  # written into a Hydra sweep dir; each job reads its parent from there
# MLflow 3 classifies an experiment without this tag as GenAI (where its UI reads it); ours train models
KIND = "mlflow.experimentKind"
EXPERIMENT_TAGS = {KIND: "custom_model_development"}


def redact(uri: str) -> str:
    """Text with the password of any URI in it (scheme://user:password@host) replaced, fit for logs and params."""
    # greedy to the token's last '@': a password may hold '/', ':' or an unescaped '@'
    return re.sub(r"//([^:/@\s]+):[^\s]*@", r"//\1:***@", uri)


def open_store(logger_cfg: DictConfig) -> tuple[MlflowClient, str]:
    """Client for the configured store and the id of the experiment (created once, with artifacts in outputs/)."""
    uri = str(logger_cfg.tracking_uri)
    client = connect(uri, redact(uri))
    name = str(logger_cfg.experiment_name)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if KIND not in exp.tags:  # made before we tagged experiments: open it in the model-training view too
            client.set_experiment_tag(exp.experiment_id, KIND, EXPERIMENT_TAGS[KIND])
        return client, exp.experiment_id
    # A local store keeps artifacts beside it; a tracking server chooses (and serves) its own location.
    location = None if uri.startswith(("http://", "https://")) else Path(logger_cfg.artifact_root).resolve().as_uri()
    try:
        return client, client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
    except Exception:  # another job created it between our look-up and our create
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return client, exp.experiment_id


def git_commit() -> str:
    """The checkout's commit (with '-dirty' when it has changes), or 'unknown' outside git."""
    root = project_root()
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


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


def start_run(client: MlflowClient, experiment_id: str, name: str, tags: dict[str, str],
              params: dict[str, str]) -> str:
    """Create a run with its tags and params; return its id."""
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    return run.info.run_id


def sweep_parent(sweep_dir: str | None) -> str | None:
    """The MLflow parent run id of the Hydra sweep this job belongs to, if any."""
    if sweep_dir is None:
        return None
    path = Path(sweep_dir) / PARENT_FILE
    return path.read_text().strip() if path.exists() else None


class SweepParentRun(Callback):
    """Hydra callback: before a multirun's jobs start, create the store, the experiment and one parent run that
    every job nests under (tag `mlflow.parentRunId`); end it FINISHED, or FAILED if any job failed.

    Creating the store here, once, also keeps parallel jobs from racing on a new SQLite store's schema."""

    def __init__(self) -> None:
        self.client: MlflowClient | None = None
        self.run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.client, experiment_id = open_store(config.logger)
        overrides = redact(" ".join(config.hydra.overrides.task))
        tags = {"role": "sweep", "hydra.overrides": overrides, "git_commit": git_commit()}
        study = config.get("study") or {}  # a stage of `make paper`: nest under the study's run
        tags |= source_tags() | {MLFLOW_RUN_NOTE: sweep_description(overrides, study.get("stage"))}
        if study.get("run_id"):
            tags |= {"mlflow.parentRunId": study.run_id, "study.stage": str(study.stage)}
        name = f"{study.stage} {overrides}" if study.get("stage") else f"sweep {overrides}"
        self.run_id = start_run(self.client, experiment_id, name[:250], tags, {})
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
            from shallowmimic.registry import register_sweep  # here: the registry imports the runs, which import us

            register_sweep(self.client, str(config.logger.experiment_name), parent)

    def _close_at_exit(self) -> None:
        """The sweep stopped early: KILLED by a signal (signals.py), else FAILED (a job raised)."""
        self._close("FAILED" if signals.received is None else "KILLED")

    def _close(self, status: str) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, status)
            self.run_id = None
