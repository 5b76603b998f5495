"""Crash safety: a fit killed with SIGKILL and resumed continues its MLflow run and ends as if never killed."""

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from shallowmimic.errors import UserError
from shallowmimic.training.pipeline import train

from .conftest import TINY_SHALLOW, TINY_TEACHER, cli_args, runs_of

JOB = ["experiment=baseline", *TINY_SHALLOW, "trainer.max_epochs=20"]


def kill_after_first_checkpoint(outputs: Path, store_uri: str) -> Path:
    """Start the job, SIGKILL it as soon as its first last.ckpt exists; return its run dir."""
    proc = subprocess.Popen(**cli_args(outputs, store_uri, tuple(JOB)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (found := list(outputs.glob("runs/*/checkpoints/last.ckpt"))):
        assert proc.poll() is None and time.monotonic() < deadline, "the job ended before its first checkpoint"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return found[0].parent.parent


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_killed_fit_resumes_into_the_same_run_with_the_same_metrics(cli, client, outputs, store_uri) -> None:
    run_dir = kill_after_first_checkpoint(outputs, store_uri)
    (killed,) = runs_of(client)
    assert killed.info.status == "RUNNING"  # SIGKILL: nothing could mark it; resume picks it up
    logged_before = len(client.get_metric_history(killed.info.run_id, "val/acc"))
    assert 1 <= logged_before < 20  # killed mid-fit

    resumed = cli(*JOB, f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    reference = cli(*JOB, "reuse=false")  # the same job, never interrupted (not reused: retrained)
    assert reference.returncode == 0, reference.stderr[-2000:]

    runs = {r.info.run_id: r for r in runs_of(client)}
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs.values())
    again, ref = runs[killed.info.run_id], next(r for i, r in runs.items() if i != killed.info.run_id)
    assert again.data.params == ref.data.params  # every param once, none changed
    for key in ("test/acc", "test/loss", "val/best_acc", "val/best_epoch", "train/epochs"):
        assert again.data.metrics[key] == pytest.approx(ref.data.metrics[key], rel=1e-6), key
    for key in ("val/acc", "val/loss", "train/loss", "train/acc"):
        points, expected = history(client, again.info.run_id, key), history(client, ref.info.run_id, key)
        assert [s for s, _ in points] == [s for s, _ in expected], f"{key}: a step logged twice or missing"
        assert [v for _, v in points] == pytest.approx([v for _, v in expected], rel=1e-6), key


def test_resume_refuses_what_would_not_continue_the_run(make_cfg, client, outputs, tmp_path) -> None:
    train(make_cfg("experiment=baseline", *TINY_SHALLOW))
    (run,) = runs_of(client)
    last = outputs / "runs" / run.info.run_id / "checkpoints" / "last.ckpt"
    with pytest.raises(UserError, match=r"^resume=.*: run \w+ is FINISHED; there is nothing to resume$"):
        train(make_cfg("experiment=baseline", *TINY_SHALLOW, f"resume={last}"))
    client.set_terminated(run.info.run_id, "FAILED")  # as after a crash
    with pytest.raises(UserError, match=r"^resume=.*: model.width=64 but run \w+ has model.width=32; resume with"):
        train(make_cfg("experiment=baseline", "model.width=64", f"resume={last}"))
    shutil.copy(last, tmp_path / "last.ckpt")
    with pytest.raises(UserError, match=r"^resume=.*: give the run dir, or a .ckpt inside its checkpoints/ folder$"):
        train(make_cfg("experiment=baseline", *TINY_SHALLOW, f"resume={tmp_path / 'last.ckpt'}"))
    with pytest.raises(UserError, match=r"^resume=.*: its run \w+ is not in this tracking store"):
        train(make_cfg("experiment=baseline", *TINY_SHALLOW, f"resume={last}",
                       f"logger.tracking_uri=sqlite:///{tmp_path}/other.db"))
    assert len(runs_of(client)) == 1


def test_a_resumed_student_keeps_its_teacher(make_cfg, client, outputs) -> None:
    train(make_cfg(*TINY_TEACHER))
    train(make_cfg("experiment=mimic", *TINY_SHALLOW))
    mimic = next(r for r in runs_of(client) if r.data.tags["role"] == "mimic")
    client.set_terminated(mimic.info.run_id, "FAILED")  # as if it had died after its last epoch
    train(make_cfg(*TINY_TEACHER, "seed=1"))  # a newer teacher, which a fresh mimic would pick
    newer = runs_of(client)[0].info.run_id
    last = outputs / "runs" / mimic.info.run_id / "checkpoints" / "last.ckpt"
    with pytest.raises(UserError, match=rf"^teacher.run_id={newer}: run {mimic.info.run_id} learnt from"):
        train(make_cfg("experiment=mimic", *TINY_SHALLOW, f"teacher.run_id={newer}", f"resume={last}"))
    train(make_cfg("experiment=mimic", *TINY_SHALLOW, f"resume={last}"))
    again = client.get_run(mimic.info.run_id)
    assert again.info.status == "FINISHED" and again.data.tags["teacher_run_id"] == mimic.data.tags["teacher_run_id"]
    assert len(runs_of(client)) == 3
