"""`make server`'s setup: a sweep logs through an MLflow tracking server over PostgreSQL, with served artifacts."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from .conftest import ROOT, TINY, runs_of


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin() -> Path:
    """The folder of PostgreSQL's server binaries (initdb, pg_ctl), or skip: Debian keeps them off PATH."""
    versioned = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    found = shutil.which("initdb") or (versioned[-1] if versioned else None)
    if found is None:
        pytest.skip("no PostgreSQL server binaries (initdb): install PostgreSQL (e.g. the distribution's "
                    "`postgresql` package; .ci/run does so as root) to run this test")
    return Path(found).resolve().parent  # a PATH entry may be a symlink into the versioned folder with pg_ctl


def tail(path: Path, n: int = 2000) -> str:
    """The end of a log file, for a failing assertion's message."""
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


@contextmanager
def postgres(base: Path) -> Iterator[int]:
    """A throwaway PostgreSQL cluster in `base`, on 127.0.0.1 only, with an empty database `mlflow`; yields its
    port. initdb and postgres refuse to run as root, so as root they run as the `postgres` system user."""
    bindir = pg_bin()
    psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL driver (psycopg, in the dev and postgres extras)")
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run initdb and postgres as")
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        os.chown(base, pw.pw_uid, pw.pw_gid)
    data, sockets, log = base / "data", base / "sockets", base / "postgres.log"
    sockets.mkdir()
    if as_user:
        os.chown(sockets, as_user["user"], as_user["group"])
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}

    def pg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=base, env=env, capture_output=True, text=True, timeout=60, **as_user)

    init = pg(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
    assert init.returncode == 0, init.stderr[-2000:]
    port = free_port()
    # -h: TCP on loopback only; -k: the Unix socket in our folder, not /var/run/postgresql; -F: no fsync (throwaway)
    start = pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "30",
               "-o", f"-h 127.0.0.1 -p {port} -k {sockets} -F", "start")
    assert start.returncode == 0, start.stderr[-1000:] + tail(log)
    try:
        # autocommit: CREATE DATABASE cannot run inside a transaction
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as db:
            db.execute("CREATE DATABASE mlflow")
        yield port
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")


@contextmanager
def mlflow_server(store_uri: str, artifacts: Path, log: Path) -> Iterator[str]:
    """`mlflow server` over the store with served artifacts, on loopback; yields its URL once its API answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # no job runner beside the server (it runs GenAI evaluation jobs): one process less on a small CI machine
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("w") as out:
        # its own process group: the workers it forks stop with it
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri,
                                   "--serve-artifacts", "--artifacts-destination", str(artifacts),
                                   "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                  stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60  # the first start migrates the database's schema
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=5):
                    break
            except OSError:
                alive = time.monotonic() < deadline and server.poll() is None
                assert alive, "mlflow server did not start\n" + tail(log)
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def train_through(url: str, outputs: Path, *overrides: str) -> subprocess.CompletedProcess:
    """Run `python -m shallowmimic.train` for real, logging to the server (conftest's `cli` forces SQLite)."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = url
    flags = [o for o in overrides if o.startswith("-")]
    overrides = tuple(o for o in overrides if not o.startswith("-"))
    return subprocess.run([sys.executable, "-m", "shallowmimic.train", *flags, f"paths.outputs={outputs}", *TINY,
                           *overrides], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_sweep_logs_through_a_tracking_server_over_postgres(tmp_path: Path, outputs: Path) -> None:
    # as root the cluster's folder must be reachable by `postgres`: pytest's tmp folders are root-only (0700)
    base = Path(tempfile.mkdtemp(prefix="shallowmimic-pg-")) if os.geteuid() == 0 else tmp_path / "pg"
    base.mkdir(exist_ok=True)
    artifacts = tmp_path / "served"
    try:
        with postgres(base) as pg_port, mlflow_server(f"postgresql+psycopg://postgres@127.0.0.1:{pg_port}/mlflow",
                                                      artifacts, tmp_path / "mlflow.log") as url:
            proc = train_through(url, outputs, "-m", "experiment=baseline", "model.width=8,16", "threads=1")
            assert proc.returncode == 0, proc.stderr[-2000:] + tail(tmp_path / "mlflow.log")

            client = MlflowClient(url)
            # the server chose the experiment's artifact location: its proxy, not a client-side path
            assert client.get_experiment_by_name("mnist1d").artifact_location.startswith("mlflow-artifacts:")
            runs = runs_of(client)
            (parent,) = [r for r in runs if r.data.tags.get("role") == "sweep"]
            kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
            assert parent.info.status == "FINISHED"
            assert sorted(int(r.data.params["model.width"]) for r in kids) == [8, 16]
            assert {(r.data.tags["role"], r.info.status) for r in kids} == {("baseline", "FINISHED")}

            kid = kids[0]
            assert "config.yaml" in [a.path for a in client.list_artifacts(kid.info.run_id)]
            got = client.download_artifacts(kid.info.run_id, "config.yaml", str(tmp_path / "download"))
            assert f"width: {kid.data.params['model.width']}" in Path(got).read_text()
            # ... and the server wrote it under its own artifacts destination
            assert len(list(artifacts.rglob("config.yaml"))) == 2
    finally:
        if base != tmp_path / "pg":
            shutil.rmtree(base, ignore_errors=True)
