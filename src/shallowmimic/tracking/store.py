"""The tracking store: checked once before any work (reachable, writable, an intact MLflow database), one experiment
per data set, new runs."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Param, Run
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from omegaconf import DictConfig

from shallowmimic import project_root
from shallowmimic.errors import UserError, redact

KEY = "logger.tracking_uri"
# MLflow 3 classifies an experiment without this tag as GenAI (where its UI reads it); ours train models
KIND = "mlflow.experimentKind"
EXPERIMENT_TAGS = {KIND: "custom_model_development"}
PROBE_TIMEOUT_S = 5  # one request to a tracking server; MLflow's own default is 120 s, retried 7 times


def check_sqlite(uri: str, shown: str) -> None:
    """A sqlite:/// store: its folder creatable and writable (SQLite writes a journal beside the file), and the file,
    if there, a readable, writable, intact SQLite database. Opened read-only here, so a corrupt store is never
    written to (MLflow would otherwise start creating its tables in it)."""
    path = Path(uri.removeprefix("sqlite:///"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{KEY}={shown}: cannot create the folder {path.parent} ({err.strerror})") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.R_OK | os.W_OK)):
        raise UserError(f"{KEY}={shown}: {path} is not writable by this user; choose a store you can write to")
    if not path.exists():
        return  # a new store: MLflow creates it
    if path.stat().st_size == 0:
        raise UserError(f"{KEY}={shown}: {path} is an empty file, not an MLflow store (truncated?); move it away to "
                        "start a new store there")
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as err:
        verdict = str(err)
    if verdict != "ok":
        raise UserError(f"{KEY}={shown}: {path} is a damaged SQLite database ({verdict}); it was left untouched: "
                        "restore it from a backup or move it away to start a new store")
    if "experiments" not in tables:
        raise UserError(f"{KEY}={shown}: {path} is an SQLite database but not an MLflow store (no experiments table)")


@contextmanager
def short_requests() -> Iterator[None]:
    """MLflow's HTTP client, for the block: one try with a short timeout instead of minutes of retries."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(PROBE_TIMEOUT_S))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def connect(uri: str, shown: str) -> MlflowClient:
    """A client of the store at `uri`, refused in one line if the store cannot be used: missing folder, unwritable
    or damaged SQLite file, unreachable server or database. `shown` is the URI with its password masked."""
    if uri.startswith("sqlite:///"):
        check_sqlite(uri, shown)
    try:
        with short_requests():
            client = MlflowClient(tracking_uri=uri)  # a database store connects (and migrates) here
            client.search_experiments(max_results=1)
            return client
    except Exception as err:  # connection refused, DNS, auth, a database driver's error: all end here
        raise UserError(f"{KEY}={shown}: cannot use the tracking store ({reason(err)})") from None


def reason(err: Exception) -> str:
    """What went wrong, in a few words: MLflow's HTTP errors bury the cause under the request."""
    text = str(err)
    for cause, words in (("Connection refused", "no server answers there: start one (`make server`) or fix the URI"),
                         ("Read timed out", f"no answer within {PROBE_TIMEOUT_S} s"),
                         ("Name or service not known", "unknown host")):
        if cause in text:
            return words
    lines = text.strip().splitlines() or [type(err).__name__]
    return lines[-1][:160]


def default_uri() -> str:
    """The store the command-line tools read when not told: MLFLOW_TRACKING_URI, else the project's outputs/mlflow.db
    (conf/logger/mlflow.yaml names the same one for jobs)."""
    return os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{project_root() / 'outputs' / 'mlflow.db'}")


def using_store(client: MlflowClient) -> AbstractContextManager[None]:
    """The global tracking URI pointed at the client's store for a block: MLflow's fluent log_model, and its
    registry's check of a models:/ source, read the global one whatever client calls them."""
    return _use_tracking_uri(client._tracking_client.tracking_uri)


@dataclass(frozen=True)
class Store:
    """A tracking store's client and the experiment a job logs to (one per data set): what travels together."""

    client: MlflowClient
    experiment_id: str

    def start_run(self, name: str, tags: dict[str, str], params: dict[str, str]) -> str:
        """Create a run of the experiment with its tags and params; return its id."""
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        return run.info.run_id

    def search(self, query: str, **kwargs: Any) -> list[Run]:
        """One page of the experiment's runs matching `query` (MlflowClient.search_runs' keywords)."""
        return self.client.search_runs([self.experiment_id], query, **kwargs)


def open_store(logger_cfg: DictConfig) -> Store:
    """The configured store and its experiment (created once, with artifacts in outputs/)."""
    uri = str(logger_cfg.tracking_uri)
    client = connect(uri, redact(uri))
    return Store(client, experiment(client, str(logger_cfg.experiment_name), uri, logger_cfg.artifact_root))


def experiment(client: MlflowClient, name: str, uri: str, artifact_root: str) -> str:
    """The id of experiment `name`, created if missing, tagged to open in the UI's model-training view."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if KIND not in exp.tags:  # an experiment without it opens in the GenAI view
            client.set_experiment_tag(exp.experiment_id, KIND, EXPERIMENT_TAGS[KIND])
        return exp.experiment_id
    # A local store keeps artifacts beside it; a tracking server chooses (and serves) its own location.
    location = None if uri.startswith(("http://", "https://")) else Path(artifact_root).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
    except Exception:  # another job created it between our look-up and our create
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
