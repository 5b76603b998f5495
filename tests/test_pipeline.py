"""End to end on tiny data: teacher -> cached logits -> mimic, and a baseline, as MLflow records them."""

from pathlib import Path

import pytest
from mlflow import MlflowClient

from shallowmimic.training.pipeline import train

from .conftest import TINY_SHALLOW, TINY_TEACHER, runs_of


@pytest.fixture
def teacher_run(make_cfg, client: MlflowClient):
    """A finished tiny teacher run in the test's store."""
    metrics = train(make_cfg(*TINY_TEACHER))
    assert 0 <= metrics["test/acc"] <= 1
    (run,) = runs_of(client)
    return run


def test_teacher_run_is_recorded(teacher_run, client: MlflowClient) -> None:
    assert teacher_run.info.status == "FINISHED"
    assert teacher_run.info.run_name == "teacher CNN1D d=2 c=8 seed=0"
    assert teacher_run.data.tags["role"] == "teacher"
    assert teacher_run.data.params["model.name"] == "CNN1D"
    assert int(teacher_run.data.params["n_params"]) > 0
    assert {"train/loss", "val/acc", "test/acc", "val/best_epoch"} <= set(teacher_run.data.metrics)
    history = [m.value for m in client.get_metric_history(teacher_run.info.run_id, "val/acc")]
    assert len(history) == 2 and teacher_run.data.metrics["val/best_acc"] == max(history)  # chosen on validation


def test_metrics_are_logged_at_the_optimizer_step(teacher_run, client: MlflowClient) -> None:
    params = teacher_run.data.params
    steps = -(-int(params["data.n_train_rows"]) // int(params["data.batch_size"]))  # an epoch's optimizer steps
    assert steps > 1  # one loader item an epoch (32 batches to an item): Lightning's item count gives 0 and 1
    for key in ("train/loss", "val/acc"):
        assert sorted(m.step for m in client.get_metric_history(teacher_run.info.run_id, key)) == [steps, 2 * steps]


def test_mimic_learns_from_the_teacher_and_reuses_its_logits(teacher_run, make_cfg, client: MlflowClient,
                                                              outputs: Path) -> None:
    cfg = make_cfg("experiment=mimic", *TINY_SHALLOW, "model.rank=4")
    first = train(cfg)
    cache_files = list((outputs / "cache" / "logits").glob("logits-*/*.npy"))
    assert {p.stem for p in cache_files} == {"train", "val", "test", "transfer"}  # one cache: the teacher's
    mtime = cache_files[0].stat().st_mtime_ns
    assert train(cfg) == first  # reused: the same config, code, data and teacher
    second = train(make_cfg("experiment=mimic", *TINY_SHALLOW, "model.rank=4", "reuse=false"))
    assert cache_files[0].stat().st_mtime_ns == mtime
    assert first == second  # same seed, same cached targets: the same student

    mimics = [r for r in runs_of(client) if r.data.tags["role"] == "mimic"]
    assert sorted(r.data.tags["logits_cache"] for r in mimics) == ["hit", "miss"]
    for run in mimics:
        assert run.info.status == "FINISHED"
        assert run.info.run_name == "mimic w=32 k=4 seed=0"
        assert run.data.tags["teacher_run_id"] == teacher_run.info.run_id
        assert len(run.data.tags["teacher_logits_sha256"]) == 64
        assert run.data.params["model.width"] == "32" and run.data.params["model.rank"] == "4"
        assert run.data.params["n_params"] == str(4 * (40 + 32) + 32 + 32 * 10 + 10)
        assert run.data.params["data.n_transfer"] == "400"
        assert {"test/acc", "test/agreement", "val/logit_mse", "val/agreement"} <= set(run.data.metrics)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "checkpoints"} <= artifacts


def test_mimic_can_name_its_teacher(teacher_run, make_cfg, client: MlflowClient) -> None:
    train(make_cfg(*TINY_TEACHER, "seed=1"))  # a newer teacher: the explicit id must win over "newest"
    train(make_cfg("experiment=mimic", *TINY_SHALLOW, f"teacher.run_id={teacher_run.info.run_id}"))
    (mimic,) = [r for r in runs_of(client) if r.data.tags["role"] == "mimic"]
    assert mimic.data.tags["teacher_run_id"] == teacher_run.info.run_id


def test_baseline_trains_on_labels(make_cfg, client: MlflowClient, outputs: Path) -> None:
    train(make_cfg("experiment=baseline", *TINY_SHALLOW))
    (run,) = runs_of(client)
    assert run.data.tags["role"] == "baseline" and run.info.status == "FINISHED"
    assert "teacher_run_id" not in run.data.tags and "test/agreement" not in run.data.metrics
    assert run.info.artifact_uri.startswith((outputs / "mlartifacts").as_uri())  # artifacts beside the store


def test_credentials_never_reach_the_store(cli, client: MlflowClient, tmp_path: Path) -> None:
    secret = "postgresql://alice:s3cret@127.0.0.1:5432/mlflow"  # e.g. a database URI handed to a job
    proc = cli("experiment=baseline", *TINY_SHALLOW, f"+note={secret}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "s3cret" not in proc.stdout + proc.stderr
    (run,) = runs_of(client)
    assert "alice:***@" in run.data.tags["hydra.overrides"]
    recorded = [*run.data.tags.values(), *run.data.params.values(),
                Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text()]
    assert not [text for text in recorded if "s3cret" in text]
