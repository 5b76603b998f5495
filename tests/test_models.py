"""What a user sees of a run in the MLflow UI: its logged model, its datasets, its tags and description."""

import tempfile
import time

import lightning as L
import mlflow.pytorch
import pytest
import torch
from mlflow import MlflowClient

from shallowmimic.checks import build
from shallowmimic.nets import ShallowNet
from shallowmimic.tracking.datasets import data_digest
from shallowmimic.training.pipeline import train

from .conftest import TINY_SHALLOW, TINY_TEACHER, runs_of


@pytest.fixture
def mimic_run(make_cfg, client: MlflowClient):
    """A tiny teacher and a mimic of it, both finished, in the test's store: (teacher run, mimic run)."""
    train(make_cfg(*TINY_TEACHER))
    train(make_cfg("experiment=mimic", *TINY_SHALLOW, "model.rank=4"))
    by_role = {r.data.tags["role"]: r for r in runs_of(client)}
    return by_role["teacher"], by_role["mimic"]


def test_the_logged_model_loads_and_gives_the_checkpoints_logits(mimic_run, client: MlflowClient, make_cfg) -> None:
    teacher, run = mimic_run
    for r in (teacher, run):
        (output,) = client.get_run(r.info.run_id).outputs.model_outputs
        assert r.data.tags["model_id"] == output.model_id
    model = client.get_logged_model(run.data.tags["model_id"])
    assert model.source_run_id == run.info.run_id and str(model.status) == "READY"
    assert {m.key for m in model.metrics} >= {"test/acc", "val/best_acc"}  # the final metrics name the model
    loaded = mlflow.pytorch.load_model(model.model_uri)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = client.download_artifacts(run.info.run_id, "checkpoints/best.ckpt", tmp)
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    dm = build("data", make_cfg().data)
    dm.setup()
    x = 3 * torch.randn(7, 40)  # raw rows, a batch size other than the input example's
    with torch.no_grad():  # the logged model standardises as training did, then runs the checkpoint's net
        assert torch.allclose(loaded(x), _net_from(state)((x - dm.mean) / dm.std), atol=1e-5)


def _net_from(state: dict) -> torch.nn.Module:
    """The mimic's net built from the checkpoint's weights (width 32, rank 4, as the fixture trains it)."""
    net = ShallowNet(in_shape=(40,), num_classes=10, width=32, rank=4)
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    return net.eval()



def test_runs_log_their_datasets_with_the_caches_digest(mimic_run, make_cfg) -> None:
    teacher, mimic = mimic_run
    dm = build("data", make_cfg().data)
    digest = data_digest(dm)
    for run, splits in ((teacher, {"train", "val", "test"}), (mimic, {"train", "val", "test", "transfer"})):
        inputs = run.inputs.dataset_inputs
        seen = {tag(i, "split"): (i.dataset.name, i.dataset.digest, tag(i, "mlflow.data.context")) for i in inputs}
        assert set(seen) == splits
        assert {d for _, d, _ in seen.values()} == {digest}  # same data, same digest, in both runs
        assert seen["val"][2] == "validation" and seen["test"][2] == "testing" and seen["train"][0] == "mnist1d-train"
        assert '"num_samples": "600"' in inputs[0].dataset.source  # where it came from: the generator's arguments
    assert {tag(i, "mlflow.data.context") for i in mimic.inputs.dataset_inputs if tag(i, "split") == "transfer"} == {
        "training"}


def tag(dataset_input, key: str) -> str | None:
    return next((t.value for t in dataset_input.tags if t.key == key), None)


def test_runs_carry_the_standard_tags_and_a_description(mimic_run, client: MlflowClient) -> None:
    teacher, mimic = mimic_run
    tags = mimic.data.tags
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"] and tags["mlflow.source.name"]
    assert tags["git_commit"].startswith(tags["mlflow.source.git.commit"])
    note = tags["mlflow.note.content"]
    assert note.startswith("**mimic** `w=32 k=4`") and "mnist1d" in note and f"{4 * 72 + 32 + 330:,} param" in note
    # a link the UI opens: the teacher's run page
    page = f"#/experiments/{teacher.info.experiment_id}/runs/{teacher.info.run_id}?workflowType=machine_learning"
    assert f"[{teacher.info.run_name}]({page})" in note
    experiment = client.get_experiment(mimic.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI view


class WaitForSystemMetrics(L.Callback):
    """Holds a fit open until MLflow's monitor has published its first sample (60 s at most): a tiny fit can end
    before the monitor's thread has collected, waited its interval and asked the store for the run."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                k.startswith("system/") for k in trainer.logger.experiment.get_run(trainer.logger.run_id).data.metrics):
            time.sleep(0.05)


def test_system_metrics_are_sampled_during_fit_and_switch_off(make_cfg, client: MlflowClient) -> None:
    train(make_cfg("experiment=baseline", *TINY_SHALLOW, "logger.system_metrics_interval=0.05",
                   "trainer.max_epochs=4", f"+callbacks.wait._target_={__name__}.WaitForSystemMetrics"))
    train(make_cfg("experiment=baseline", *TINY_SHALLOW, "logger.system_metrics=false", "seed=1"))
    on, off = sorted(runs_of(client), key=lambda r: r.data.params["seed"])
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(on.data.metrics)
    assert not [k for k in off.data.metrics if k.startswith("system/")]
