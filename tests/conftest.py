"""Shared fixtures: the real Hydra config, composed and shrunk to tiny data in a temporary outputs/ folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from omegaconf import DictConfig

import shallowmimic  # noqa: F401  (registers the ${sm.root:} resolver)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Small enough for seconds on a CPU, large enough to learn something.
TINY = ["data.num_samples=600", "data.val_size=80", "data.transfer_size=400", "data.batch_size=64",
        "trainer.max_epochs=2", "trainer.enable_progress_bar=false"]
TINY_TEACHER = ["experiment=teacher", "model.channels=8", "model.depth=2"]
TINY_SHALLOW = ["model.width=32"]


# The longest tests, started first: with 2 workers (`make test`) they run beside the short ones instead of alone at
# the end (the smoke study alone takes about a third of the suite's wall time).
FIRST = ("test_study.py::test_smoke_study", "test_distributed.py", "test_resume.py", "test_targets.py::test_a_student",
         "test_faults.py::test_a_killed_sweep", "test_faults.py::test_a_signal", "test_registry.py::test_make_register")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the FIRST tests at the front, in their order; the rest keep theirs."""
    items.sort(key=lambda item: next((i for i, key in enumerate(FIRST) if key in item.nodeid), len(FIRST)))


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    """A fresh outputs/ folder: store, artifacts, caches and run dirs of one test."""
    return tmp_path / "outputs"


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store, made once: creating its schema takes seconds, copying it does not."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store_uri(outputs: Path, empty_store: Path) -> str:
    """A fresh store for one test, in its outputs/ folder."""
    outputs.mkdir(parents=True, exist_ok=True)
    shutil.copy(empty_store, outputs / "mlflow.db")
    return f"sqlite:///{outputs}/mlflow.db"


@pytest.fixture
def client(store_uri: str) -> MlflowClient:
    return MlflowClient(store_uri)


@pytest.fixture
def make_cfg(outputs: Path, store_uri: str) -> Callable[..., DictConfig]:
    """Compose conf/train.yaml with the tiny overrides plus the test's own."""

    def make(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("train", overrides=[f"paths.outputs={outputs}", f"logger.tracking_uri={store_uri}",
                                               *TINY, *overrides])

    return make


@pytest.fixture
def data_cfg(outputs: Path, store_uri: str) -> Callable[..., DictConfig]:
    """Compose conf/train.yaml for a real dataset, with one quick epoch (conftest's TINY holds MNIST-1D keys)."""

    def make(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("train", overrides=[f"paths.outputs={outputs}", f"logger.tracking_uri={store_uri}",
                                               "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                                               *overrides])

    return make


@pytest.fixture
def cli(outputs: Path, store_uri: str) -> Callable[..., subprocess.CompletedProcess]:
    """Run `python -m shallowmimic.train` for real (Hydra's own launch) against the test's store."""

    def run(*overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run(**cli_args(outputs, store_uri, overrides), capture_output=True, text=True, timeout=300)

    return run


def cli_args(outputs: Path, store_uri: str, overrides: tuple[str, ...]) -> dict:
    """subprocess arguments for `python -m shallowmimic.train` with the tiny overrides, against the test's store."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = store_uri
    flags = [o for o in overrides if o.startswith("-")]  # e.g. -m: argparse wants flags before overrides
    overrides = tuple(o for o in overrides if not o.startswith("-"))
    argv = [sys.executable, "-m", "shallowmimic.train", *flags, f"paths.outputs={outputs}", *TINY, *overrides]
    return {"args": argv, "env": env, "cwd": ROOT}


def runs_of(client: MlflowClient, experiment: str = "mnist1d") -> list:
    """Every run of the experiment in the store (any status)."""
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)
