"""The published setups as presets: each composes and runs a batch end to end, offline, on tiny files written in
the real format (TIMIT-style features, CIFAR-10 python batches, MNIST idx files)."""

from pathlib import Path

import pytest
from mlflow import MlflowClient

from shallowmimic.training.pipeline import train

from .conftest import runs_of
from .test_datasets import tiny_files

# a loader item is loop.steps_per_batch batches: one step here
ONE_BATCH = ["+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1", "trainer.max_epochs=1",
             "loop.steps_per_batch=1"]

# preset folder -> (data config, [(preset, extra overrides, role, params the preset must have set)])
PRESETS = {
    "timit": ("features", [
        ("teacher", [], "teacher", {"model.hidden": "[2000, 2000, 2000]"}),
        ("baseline", [], "baseline", {"model.width": "8000", "model.rank": "250"}),
        ("mimic", [], "mimic", {"model.width": "8000", "model.rank": "250", "data.transfer": "train"}),
    ]),
    "cifar10": ("cifar10", [
        ("teacher", ["seed=0"], "teacher", {"model.channels": "[64, 128, 256]"}),
        ("teacher", ["seed=1"], "teacher", {}),
        ("baseline", [], "baseline", {"model.conv_channels": "64", "model.rank": "512"}),
        # the preset's ensemble is 4 teachers; two keep the test short
        ("mimic", ["teacher.ensemble=2"], "mimic", {"model.conv_channels": "64", "data.transfer": "augment"}),
    ]),
    "hinton_mnist": ("mnist", [
        ("teacher", [], "teacher", {"model.hidden": "[1200, 1200]", "model.dropout": "0.5"}),
        ("student", [], "kd", {"model.hidden": "[800, 800]", "objective.temperature": "20.0"}),
    ]),
}


@pytest.mark.parametrize("setup", list(PRESETS))
def test_preset_runs_end_to_end(setup: str, data_cfg, client: MlflowClient, tmp_path: Path) -> None:  # noqa: F811
    data, stages = PRESETS[setup]
    files = tiny_files(data, tmp_path)
    experiment = "timit" if data == "features" else data
    for preset, extra, role, params in stages:
        train(data_cfg(f"experiment={setup}/{preset}", *files, *ONE_BATCH, *extra))
        run = runs_of(client, experiment)[0]  # newest first
        assert run.info.status == "FINISHED" and run.data.tags["role"] == role, preset
        assert {k: run.data.params[k] for k in params} == params, preset
    runs = runs_of(client, experiment)
    teachers = {r.info.run_id for r in runs if r.data.tags["role"] == "teacher"}
    for run in runs:
        if run.data.tags["role"] in ("mimic", "kd"):  # a student names every teacher it learnt from
            assert set(run.data.tags["teacher_run_id"].split(",")) == teachers
