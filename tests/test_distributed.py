"""DDP on two CPU processes (gloo) under a real Hydra launch, and mixed precision on CPU."""

import pytest
from mlflow import MlflowClient

from shallowmimic.training.pipeline import train

from .conftest import TINY_SHALLOW, TINY_TEACHER, runs_of

DDP = ["trainer=ddp_cpu", "threads=1"]


def test_ddp_cpu_gives_one_run_close_to_a_single_process(cli, make_cfg, client: MlflowClient, outputs) -> None:
    train(make_cfg(*TINY_TEACHER))  # the teacher in process: the command line under test is the student's
    single = cli("experiment=mimic", *TINY_SHALLOW, "threads=2")
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = cli("experiment=mimic", *TINY_SHALLOW, *DDP, "data.batch_size=32")  # 2 x 32 = the same global batch
    assert ddp.returncode == 0, ddp.stderr[-2000:]

    runs = {r.info.run_id: r for r in runs_of(client)}
    mimics = sorted((r for r in runs.values() if r.data.tags["role"] == "mimic"), key=lambda r: r.info.start_time)
    assert len(mimics) == 2  # rank 1 created no run of its own
    one, two = mimics
    assert two.info.status == "FINISHED"
    assert two.data.params["trainer.world_size"] == "2" and two.data.params["data.global_batch_size"] == "64"
    assert one.data.params["data.global_batch_size"] == "64"
    assert two.data.tags["logits_cache"] == "hit"  # built by the single run; rank 1 read the same file
    # same seed, same global batch, same data: the two fits follow close paths
    assert abs(one.data.metrics["test/acc"] - two.data.metrics["test/acc"]) < 0.1
    assert abs(one.data.metrics["val/logit_mse"] - two.data.metrics["val/logit_mse"]) < 0.1 * one.data.metrics[
        "val/logit_mse"] + 0.05
    run_dirs = list((outputs / "runs").iterdir())
    assert len(run_dirs) == 3  # teacher, single, ddp: no extra dir for rank 1


def test_ddp_job_inside_a_multirun_finishes_every_job(cli, client: MlflowClient, outputs) -> None:
    proc = cli("-m", "experiment=baseline", "model.width=8,16", *DDP)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = [r for r in runs_of(client) if r.data.tags.get("role") == "baseline"]
    assert sorted(r.data.params["model.width"] for r in runs) == ["16", "8"]  # not 4: the sweep ran once
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert not (outputs / "runs").exists()  # rank 1 wrote into its job's dir, not a run dir of its own


@pytest.mark.parametrize("precision", ["bf16-mixed"])
def test_mixed_precision_trains_on_cpu_with_fp32_metrics(make_cfg, client: MlflowClient, precision: str) -> None:
    metrics = train(make_cfg("experiment=baseline", *TINY_SHALLOW, f"trainer.precision={precision}"))
    (run,) = runs_of(client)
    assert run.info.status == "FINISHED" and run.data.params["trainer.precision"] == precision
    assert 0 < metrics["test/acc"] <= 1 and metrics["test/loss"] == metrics["test/loss"]  # finite, not NaN
