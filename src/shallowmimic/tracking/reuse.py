"""No work twice: a job whose resolved config, code and data match a FINISHED run reuses that run, not retrains.

The match is a key tagged on every run (`reuse_key`): a hash of the resolved config without its plumbing (paths,
store, progress bar, threads), the code's commit (and its uncommitted diff), the data spec (the caches' key: file
digests, generator arguments, splits, transfer set) and, for a student, the teacher runs it learns from.
`reuse=false` retrains. Inside a sweep the reused job still appears among the sweep's runs, as a FINISHED run
tagged `reused_from` with the original's params and final metrics, so the sweep's table stays whole."""

from __future__ import annotations

import subprocess

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.entities import Run as MlflowRun
from omegaconf import DictConfig, OmegaConf

from shallowmimic import __version__, project_root
from shallowmimic.cache import sha256, spec_key
from shallowmimic.data import ArrayDataModule
from shallowmimic.tracking.descriptions import git_commit
from shallowmimic.tracking.keys import PARENT, REUSE_KEY, REUSED_FROM, SELECT_ON, STAGE
from shallowmimic.tracking.store import Store
from shallowmimic.tracking.sweep import sweep_parent

# what never changes a result (a student's teachers enter the key as the runs they resolved to)
PLUMBING = ("paths", "logger", "study", "resume", "reuse", "register", "threads", "teacher")


def code_version() -> str:
    """The commit, plus a hash of the uncommitted diff if the checkout has one (a dirty tree's code differs from
    its commit's); the package version outside a checkout."""
    commit = git_commit()
    if commit == "unknown":
        return f"shallowmimic=={__version__}"
    if not commit.endswith("-dirty"):
        return commit
    diff = subprocess.run(["git", "diff", "HEAD"], cwd=project_root(), capture_output=True, check=False).stdout
    return f"{commit}-{sha256([diff])[:16]}"


def reuse_key(cfg: DictConfig, dm: ArrayDataModule, teacher_ids: list[str]) -> str:
    """The identity of a job's result: config without plumbing, code, data spec and teachers."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for key in PLUMBING:
        config.pop(key, None)
    config["trainer"].pop("enable_progress_bar", None)
    config["data"].pop("cache_dir", None)
    return spec_key({"config": config, "code": code_version(), "data": dm.spec(), "teachers": sorted(teacher_ids)})


def finished_run(cfg: DictConfig, store: Store, key: str) -> MlflowRun | None:
    """The FINISHED run with this key (the oldest, the one others were reused from), unless reuse is off or this
    process continues (resume=) or joins (a DDP rank) a run."""
    if not cfg.get("reuse", True) or cfg.resume or cfg.logger.get("run_id"):
        return None
    runs = store.search(f"tags.{REUSE_KEY} = '{key}' and attributes.status = 'FINISHED'",
                        order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0] if runs else None


def reuse(cfg: DictConfig, client: MlflowClient, done: MlflowRun,
          why: str = "finished before with the same config, code and data (reuse=false retrains)") -> dict[str, float]:
    """Report the reused run (inside a sweep, add it to the sweep's runs); return what train() returns: its test
    metrics and best validation accuracy."""
    original = done.data.tags.get(REUSED_FROM, done.info.run_id)
    parent = sweep_parent()
    if parent is not None:
        tags = {k: v for k, v in done.data.tags.items() if not k.startswith(("mlflow.", "study."))}
        tags |= {REUSED_FROM: original, PARENT: parent, "mlflow.runName": done.info.run_name}
        tags |= {STAGE: cfg.study.stage} if cfg.study.stage else {}
        run_id = client.create_run(done.info.experiment_id, run_name=done.info.run_name).info.run_id
        client.log_batch(run_id, params=[Param(k, v) for k, v in done.data.params.items()],
                         tags=[RunTag(k, v) for k, v in tags.items()],
                         metrics=[Metric(k, v, 0, 0) for k, v in done.data.metrics.items()])
        client.set_terminated(run_id, "FINISHED")
    print(f"[{done.info.run_name}] reused run {original}: {why}")
    return {k: v for k, v in done.data.metrics.items() if k.startswith("test/") or k == SELECT_ON}
