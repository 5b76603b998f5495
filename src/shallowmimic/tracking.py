"""MLflow plumbing: one store, one experiment per dataset, flat params, the commit, new runs (sweep parents live in
sweep.py)."""

from __future__ import annotations

import functools
import logging
import subprocess
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Param, Run
from omegaconf import DictConfig, OmegaConf

from shallowmimic import project_root
from shallowmimic.errors import redact
from shallowmimic.store import connect

log = logging.getLogger(__name__)

# MLflow 3 classifies an experiment without this tag as GenAI (where its UI reads it); ours train models
KIND = "mlflow.experimentKind"
EXPERIMENT_TAGS = {KIND: "custom_model_development"}
REUSED_FROM = "reused_from"  # reuse.py's tag on a run that copies another's params and final metrics, no histories


def original(client: MlflowClient, run: Run) -> Run:
    """The run itself, or the run it was reused from (reuse.py): that one holds the checkpoint and the histories."""
    return client.get_run(run.data.tags[REUSED_FROM]) if REUSED_FROM in run.data.tags else run


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of a metric's history in step order; a step logged twice keeps its last value. A run reused in
    a sweep holds final metrics only: its original's history is read."""
    run_id = original(client, client.get_run(run_id)).info.run_id
    points = {m.step: m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)}
    return sorted(points.items())


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


@functools.cache
def git_commit() -> str:
    """The checkout's commit (with '-dirty' when it has changes), or 'unknown' outside git. Asked of git once per
    process: the code a process runs was loaded when it started (a job asked it three times)."""
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
