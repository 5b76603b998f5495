"""Faults users meet: signals, unusable stores, bad data, no GPU, missing teacher artifacts, huge nets, reruns."""

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from shallowmimic.cache import sha256_file
from shallowmimic.errors import UserError, redact
from shallowmimic.tracking.run import flat_params
from shallowmimic.training.pipeline import train

from .conftest import TINY_SHALLOW, TINY_TEACHER, cli_args, runs_of

JOB = ["experiment=baseline", *TINY_SHALLOW, "trainer.max_epochs=30"]


def start_and_signal(outputs: Path, store_uri: str, overrides: list[str], signum: int,
                     ready: str = "runs/*/checkpoints/last.ckpt") -> subprocess.CompletedProcess:
    """Start the job, send `signum` once a file matching `ready` exists under outputs/; return how it ended."""
    before = set(outputs.glob(ready))
    proc = subprocess.Popen(**cli_args(outputs, store_uri, tuple(overrides)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not set(outputs.glob(ready)) - before:  # a new one: this job's
        assert proc.poll() is None and time.monotonic() < deadline, "the job ended before it was signalled"
        time.sleep(0.01)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_kills_the_run_and_says_how_to_resume(signum, outputs, store_uri, client, cli) -> None:
    killed = start_and_signal(outputs, store_uri, JOB, signum)
    assert killed.returncode == 128 + signum, killed.stderr[-2000:]
    (run,) = runs_of(client)
    assert run.info.status == "KILLED"
    line = killed.stderr.strip().splitlines()[-1]
    assert line.startswith(f"{signal.Signals(signum).name}: run {run.info.run_id} KILLED; continue it with: ")
    resume = line.split()[-1]
    assert resume.startswith("resume=") and (Path(resume.removeprefix("resume=")) / "checkpoints/last.ckpt").exists()
    again = cli(*JOB, resume)
    assert again.returncode == 0, again.stderr[-2000:]
    assert client.get_run(run.info.run_id).info.status == "FINISHED" and len(runs_of(client)) == 1


def test_a_killed_sweep_reruns_only_what_did_not_finish(outputs, store_uri, client, cli) -> None:
    sweep = ["-m", "experiment=baseline", "model.width=8,16,24", "trainer.max_epochs=30"]
    # killed while its second job fits: the first finished, the third never started
    killed = start_and_signal(outputs, store_uri, sweep, signal.SIGTERM, "multiruns/*/1_*/checkpoints/last.ckpt")
    assert killed.returncode == 143, killed.stderr[-2000:]
    assert [r.info.status for r in runs_of(client) if r.data.tags.get("role") == "sweep"] == ["KILLED"]
    first = {r.data.params["model.width"]: r for r in runs_of(client) if r.data.tags.get("role") == "baseline"}
    assert {w: r.info.status for w, r in first.items()} == {"8": "FINISHED", "16": "KILLED"}

    rerun = cli(*sweep)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rerun.stdout.count("reused run") == 1
    parent = next(r for r in runs_of(client) if r.data.tags.get("role") == "sweep" and r.info.status == "FINISHED")
    kids = [r for r in runs_of(client) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["model.width"] for r in kids) == ["16", "24", "8"]
    assert {r.info.status for r in kids} == {"FINISHED"}
    (reused,) = [r for r in kids if "reused_from" in r.data.tags]
    assert reused.data.tags["reused_from"] == first["8"].info.run_id
    assert reused.data.metrics["test/acc"] == first["8"].data.metrics["test/acc"]


def test_finished_work_is_reused_unless_told_otherwise(make_cfg, client, capsys) -> None:
    first = train(make_cfg(*TINY_TEACHER))
    assert train(make_cfg(*TINY_TEACHER)) == first and len(runs_of(client)) == 1
    assert "reused run" in capsys.readouterr().out
    train(make_cfg(*TINY_TEACHER, "reuse=false"))
    train(make_cfg(*TINY_TEACHER, "optimizer.lr=0.002"))  # another config: trained
    assert len(runs_of(client)) == 3
    (teacher, *_) = runs_of(client)
    train(make_cfg("experiment=mimic", *TINY_SHALLOW))
    train(make_cfg("experiment=mimic", *TINY_SHALLOW))  # the same teacher, the same student: reused
    train(make_cfg("experiment=mimic", *TINY_SHALLOW, f"teacher.run_id={runs_of(client)[-1].info.run_id}"))
    assert len([r for r in runs_of(client) if r.data.tags["role"] == "mimic"]) == 2
    assert teacher.data.tags["reuse_key"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unusable_store_is_refused_in_one_line_before_any_work(cli, outputs: Path) -> None:
    proc = cli(f"logger.tracking_uri=http://127.0.0.1:{free_port()}")
    assert proc.returncode == 2
    # no data made, no fit begun (Hydra's own run folder holds its config alone)
    assert not (outputs / "cache").exists() and not list(outputs.rglob("checkpoints"))
    assert proc.stderr.strip().splitlines()[-1].endswith("cannot use the tracking store (no server answers there: "
                                                          "start one (`make server`) or fix the URI)")
    proc = cli("logger.tracking_uri=sqlite:////proc/nope/mlflow.db")
    assert proc.stderr.strip().splitlines()[-1] == ("error: logger.tracking_uri=sqlite:////proc/nope/mlflow.db: "
                                                    "cannot create the folder /proc/nope (No such file or directory)")


def test_a_damaged_store_is_refused_and_left_untouched(cli, make_cfg, store_uri: str, tmp_path: Path) -> None:
    train(make_cfg(*JOB, "trainer.max_epochs=1"))  # a store with a run in it
    whole = Path(store_uri.removeprefix("sqlite:///"))
    for size, why in ((whole.stat().st_size // 2, "is a damaged SQLite database"), (0, "is an empty file")):
        damaged = tmp_path / f"cut{size}.db"
        damaged.write_bytes(whole.read_bytes()[:size])
        before = sha256_file(damaged)
        proc = cli(*JOB, f"logger.tracking_uri=sqlite:///{damaged}")
        assert proc.returncode == 2 and why in proc.stderr.strip().splitlines()[-1], proc.stderr[-1000:]
        assert sha256_file(damaged) == before and list(tmp_path.glob(f"cut{size}.db*")) == [damaged]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_trainer_without_a_gpu_is_refused(make_cfg, client) -> None:
    with pytest.raises(UserError, match=r"^trainer.accelerator=gpu: no CUDA GPU on this machine .*use trainer=cpu"):
        train(make_cfg("trainer=gpu"))
    assert runs_of(client) == []


def test_a_net_too_big_for_memory_is_refused_with_what_it_needs(make_cfg, client) -> None:
    with pytest.raises(UserError, match=r"^model.rank=5000000000: must be small enough to train here: .* GiB for "):
        train(make_cfg("model.rank=5000000000"))
    assert runs_of(client) == []


def test_non_finite_features_are_named_by_file_array_and_row(data_cfg, client, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 6)).astype(np.float32)
    x[41, 2] = np.nan
    path = tmp_path / "frames.npz"
    np.savez(path, x_train=x, y_train=np.arange(100) % 3, x_test=x[:20] + 1, y_test=np.arange(20) % 3)
    with pytest.raises(UserError) as err:
        train(data_cfg("data=features", f"data.path={path}", "data.val_size=10"))
    assert str(err.value) == f"{path}: x_train row 41 holds a NaN or infinity; inputs must be finite numbers"
    assert runs_of(client, "features") == []


def test_a_teacher_without_its_checkpoint_is_refused_before_the_student_runs(make_cfg, client, outputs) -> None:
    train(make_cfg(*TINY_TEACHER))
    (teacher,) = runs_of(client)
    shutil.rmtree(Path(urlparse(teacher.info.artifact_uri).path) / "checkpoints")
    why = ("the teacher run has no artifact checkpoints/best.ckpt (deleted?); train the teacher again or name "
           "another run")
    with pytest.raises(UserError) as err:
        train(make_cfg("experiment=mimic", *TINY_SHALLOW))
    assert str(err.value) == ("teacher.run_id=null: none of the 1 finished teacher runs for this dataset fits this "
                              f"run; the newest, {teacher.info.run_id}: {why}")
    with pytest.raises(UserError) as err:
        train(make_cfg("experiment=mimic", *TINY_SHALLOW, f"teacher.run_id='{teacher.info.run_id}'"))
    assert str(err.value) == f"teacher.run_id={teacher.info.run_id}: {why}"
    assert len(runs_of(client)) == 1


def test_a_teacher_with_other_splits_is_refused(make_cfg, client) -> None:
    train(make_cfg(*TINY_TEACHER, "data.val_size=60"))
    (teacher,) = runs_of(client)
    with pytest.raises(UserError, match=r"^teacher.run_id=null: none of the 1 finished teacher runs for this dataset "
                                        rf"fits this run; the newest, {teacher.info.run_id}: teacher was trained with "
                                        r"data.split_sha256=\w+, this run has data.split_sha256=\w+ \(other train"):
        train(make_cfg("experiment=mimic", *TINY_SHALLOW))
    with pytest.raises(UserError, match=rf"^teacher.run_id={teacher.info.run_id}: teacher was trained with "):
        train(make_cfg("experiment=mimic", *TINY_SHALLOW, f"teacher.run_id='{teacher.info.run_id}'"))  # named: refused
    assert len(runs_of(client)) == 1
    train(make_cfg("experiment=mimic", *TINY_SHALLOW, "data.val_size=60", "data.transfer_size=200"))  # same splits
    assert [r.data.tags["role"] for r in runs_of(client)] == ["mimic", "teacher"]


def test_the_default_teacher_is_the_newest_that_fits_this_data(make_cfg, client) -> None:
    # what `make run` meets after `make paper SIZE=smoke`: a newer teacher on another study's splits
    train(make_cfg(*TINY_TEACHER))
    train(make_cfg(*TINY_TEACHER, "data.val_size=60", "seed=1"))
    fits, newer = sorted(runs_of(client), key=lambda r: r.info.start_time)
    train(make_cfg("experiment=mimic", *TINY_SHALLOW))
    (mimic,) = [r for r in runs_of(client) if r.data.tags["role"] == "mimic"]
    assert mimic.info.status == "FINISHED" and mimic.data.tags["teacher_run_id"] == fits.info.run_id


def test_passwords_are_masked_whatever_they_hold() -> None:
    assert redact("postgresql://ann:p/a:s@s@db:5432/x and http://h:5000/y") == \
        "postgresql://ann:***@db:5432/x and http://h:5000/y"


def test_parallel_jobs_on_a_fresh_store_lose_nothing(cli, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/new/mlflow.db"  # no file, no schema yet: the sweep's first step creates them
    proc = cli("-m", "experiment=baseline", "model.width=8,16,24,32", "hydra/launcher=joblib",
               "hydra.launcher.n_jobs=2", "threads=1", f"logger.tracking_uri={uri}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = runs_of(MlflowClient(uri))
    assert sorted(r.data.tags["role"] for r in runs) == ["baseline"] * 4 + ["sweep"]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_a_dotted_data_name_is_kept_whole(data_cfg, tmp_path: Path) -> None:
    cfg = data_cfg("data=features", f"data.path={tmp_path}/f.npz", "data.name=timit.v2")
    params = flat_params(cfg, ("data", "model", "optimizer"))
    assert params["data.name"] == "timit.v2"  # the experiment's name, which teachers are checked against
    assert params["model.name"] == "ShallowNet" and params["optimizer.name"] == "Adam"  # classes by their own name
