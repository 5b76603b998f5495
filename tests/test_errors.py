"""Bad input: one line naming the key and what is allowed, a non-zero exit, no MLflow run left RUNNING."""

import subprocess
import sys

import pytest
from mlflow import MlflowClient

from shallowmimic.errors import UserError
from shallowmimic.training.pipeline import train

from .conftest import ROOT, TINY_SHALLOW, runs_of

BAD = [
    (["model.width=0"], "model.width=0: must be an integer >= 1"),
    (["model.width=wide"], "model.width=wide: must be an integer >= 1"),
    (["model.rank=-1"], "model.rank=-1: must be an integer >= 1 or null"),
    (["model.activation=swish"], "model.activation=swish: must be one of relu, tanh, gelu, sigmoid"),
    (["experiment=teacher", "model.channels=0"], "model.channels=0: must be an integer >= 1"),
    (["experiment=teacher", "model.pool=mean"], "model.pool=mean: must be one of max, flatten"),
    (["experiment=teacher", "model=cnn2d"], "model=CNN2D: CNN2D needs images of shape (C, H, W), not (40,)"),
    (["model=mlp_deep", "model.hidden=[]"], "model.hidden=[]: must be a non-empty list of positive integers"),
    (["model=mlp_deep", "model.dropout=1.5"], "model.dropout=1.5: must be a number >= 0 and <= 0.99"),
    (["optimizer.lr=0"], "optimizer.lr=0: must be a number > 0"),
    (["optimizer.lr=fast"], "optimizer.lr=fast: must be a number > 0"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1: must be a number >= 0"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0: must be an integer >= 1"),
    (["trainer.precision=8-mixed"], "trainer.precision=8-mixed: must be one of 64-true, 32-true"),
    (["trainer.accelerator=tpu"], "trainer.accelerator=tpu: must be one of cpu, gpu"),
    (["trainer.devices=0"], "trainer.devices=0: must be an integer >= 1, -1 (all) or auto"),
    (["data.batch_size=0"], "data.batch_size=0: must be an integer >= 1"),
    (["data.val_size=480"], "data.val_size=480: must be between 1 and 479"),
    (["data.train_split=1.5"], "data.train_split=1.5: must be a number > 0 and <= 1"),
    (["data.transfer_size=-5"], "data.transfer_size=-5: must be an integer >= 0"),
    (["paths.outputs=/etc/hostname/outputs"], "paths.outputs=/etc/hostname/outputs: must be a writable folder"),
    (["resume=123"], "resume=123: must be null or the path of a run dir or .ckpt file"),
    (["resume=/nonexistent/run"], "resume=/nonexistent/run: no checkpoint there; give a run dir"),
    (["resume=/etc/hostname"], "resume=/etc/hostname: /etc/hostname is not a readable checkpoint"),
    (["data.num_samples=3"], "data.num_samples=3: must be an integer >= 10"),
    (["seed=-1"], "seed=-1: must be an integer from 0 to 2**32 - 1"),
    (["threads=0"], "threads=0: must be an integer >= 1 or null"),
    (["logger.tracking_uri=ftp://user:secret@host/x"], "logger.tracking_uri=ftp://user:***@host/x: must be"),
    (["experiment=mimic"], "teacher.run_id=null: no finished teacher run"),
    (["experiment=mimic", "teacher.ensemble=0"], "teacher.ensemble=0: must be an integer >= 1"),
    (["experiment=mimic", "teacher.ensemble=2", "teacher.run_id=abc"], "teacher.ensemble=2: must be 1 when teacher"),
    (["optimizer.lr=inf"], "optimizer.lr=inf: must be a number > 0"),
    (["model.conv_channels=4", "model.conv_kernel=4"], "model.conv_kernel=4: must be an odd integer"),
    (["experiment=mimic", "teacher.run_id=0123abcd"], "teacher.run_id=0123abcd: no such run"),
    (["experiment=mimic", "teacher.run_id=../etc"], "teacher.run_id=../etc: must be null or an MLflow run id"),
    # distillation, conv front, 2D CNN and ensembles
    (["experiment=mimic", "objective=kd", "objective.temperature=0"], "objective.temperature=0: must be a number > 0"),
    (["experiment=mimic", "objective=kd", "objective.label_weight=-1"],
     "objective.label_weight=-1: must be a number >= 0"),
    (["model.conv_channels=0"], "model.conv_channels=0: must be an integer >= 1 or null"),
    (["model.conv_channels=8", "model.conv_pool=0"], "model.conv_pool=0: must be an integer >= 1"),
    (["model=cnn2d", "model.channels=[]"], "model.channels=[]: must be a non-empty list of positive integers"),
    (["model=cnn2d", "model.convs_per_block=0"], "model.convs_per_block=0: must be an integer >= 1"),
    (["model=cnn2d", "model.batch_norm=maybe"], "model.batch_norm=maybe: must be true or false"),
    (["experiment=mimic", "teacher.run_id=[abc,../x]"], "teacher.run_id=['abc', '../x']: must be null or an"),
    (["experiment=mimic", "teacher.run_id=[]"], "teacher.run_id=[]: must be null or an MLflow run id"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_is_refused_before_any_run(make_cfg, client: MlflowClient, overrides, message) -> None:
    with pytest.raises(UserError) as err:
        train(make_cfg(*overrides))  # refused before any run exists or any training starts
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)
    assert [r.info.status for r in runs_of(client)] == []


def test_cli_prints_one_line_and_exits_non_zero(cli, client: MlflowClient) -> None:
    proc = cli("model.width=0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: model.width=0: must be an integer >= 1"
    assert "Traceback" not in proc.stderr
    assert all(r.info.status != "RUNNING" for r in runs_of(client))


def test_a_refused_job_of_a_multirun_is_one_line_and_the_others_run(cli, client: MlflowClient) -> None:
    # parallel jobs (as `make paper JOBS=2` runs them): the refusal crosses from the worker process to the sweep
    proc = cli("-m", "experiment=baseline", "model.width=16", "optimizer.lr=0.01,-1.0", "hydra/launcher=joblib",
               "hydra.launcher.n_jobs=2", "threads=1")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    (line,) = errors  # the refused job's own line, naming its overrides; the other job said nothing
    assert line.startswith("error: job 1 (") and line.endswith(",optimizer.lr=-1.0,threads=1,trainer.max_epochs=2): "
                                                               "optimizer.lr=-1.0: must be a number > 0")
    assert "job 1 was refused (its error line is above)" in proc.stderr
    runs = {r.data.tags["role"]: r.info.status for r in runs_of(client)}
    assert runs == {"baseline": "FINISHED", "sweep": "FAILED"}


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"], ["optimizer.lr=0"], ["seed=-1"]])
def test_help_and_key_errors_import_no_heavy_library(args: list[str]) -> None:
    # what makes them answer in a second: torch, Lightning and MLflow take seconds to import
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "shallowmimic.train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert imported and not imported & {"torch", "lightning", "mlflow"}, proc.stderr[-2000:]
    assert proc.returncode == (0 if args[0].startswith("--") else 2)


def test_cli_unknown_group_option_lists_the_choices(cli) -> None:
    proc = cli("data=nope")
    assert proc.returncode != 0
    assert "Could not find 'data/nope'" in proc.stderr and "mnist1d" in proc.stderr


def test_a_crash_inside_the_run_marks_it_failed(make_cfg, client: MlflowClient, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("lightning.Trainer.fit", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        train(make_cfg("experiment=baseline", *TINY_SHALLOW))
    assert [r.info.status for r in runs_of(client)] == ["FAILED"]


def test_an_interrupted_fit_marks_the_run_killed(make_cfg, client: MlflowClient, monkeypatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what Ctrl-C raises; Lightning turns it into SystemExit(1) after its shutdown

    monkeypatch.setattr("lightning.Trainer.fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg("experiment=baseline", *TINY_SHALLOW))
    assert [r.info.status for r in runs_of(client)] == ["KILLED"]
