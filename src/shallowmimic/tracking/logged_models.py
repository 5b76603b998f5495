"""Fitted nets as MLflow models: each run's best-on-validation net logged as an MLflow 3 LoggedModel (signature,
input example, its final metrics linked by `model_id`), so the run's "Logged models" and the experiment's Models tab
show it and `mlflow.pytorch.load_model` brings it back without our code."""

from __future__ import annotations

import copy
import re

import mlflow
import mlflow.pytorch
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.models import infer_signature
from torch import Tensor, nn

from shallowmimic.data import ArrayDataModule
from shallowmimic.nets import RawInputs
from shallowmimic.tracking.keys import MODEL_ID, ROLE, VARIANT
from shallowmimic.tracking.run import Run
from shallowmimic.tracking.store import using_store

EXAMPLE_ROWS = 2


def deployable(net: nn.Module, dm: ArrayDataModule) -> RawInputs:
    """A CPU copy of `net` in eval mode behind the data's standardisation, for logging: it takes raw inputs.
    `trainer.test` has loaded the best checkpoint's weights into `net`, so the file is not read again."""
    model = RawInputs(copy.deepcopy(net), dm.mean, dm.std)
    return model.cpu().eval().requires_grad_(False)


def raw_rows(dm: ArrayDataModule, split: str, rows: int | None = None) -> Tensor:
    """A split's inputs in the units the data files hold (standardisation undone; whole numbers again where the
    files hold integers, e.g. pixels), float32: what a user of the logged model sends it."""
    x = dm.splits[split]["x"][:rows].detach().cpu().float() * dm.std.cpu() + dm.mean.cpu()
    return x.round() if dm.raw_dtype.kind in "iub" else x


def record_model(run: Run, net: nn.Module, dm: ArrayDataModule, tags: dict[str, str],
                 metrics: dict[str, float]) -> None:
    """Rank 0 logs the net, holding the best-on-validation weights, behind the data's standardisation as the run's
    model; its input example is raw validation rows."""
    if run.writer:
        log_net(run.client, run.run_id, deployable(net, dm), raw_rows(dm, "val", EXAMPLE_ROWS), tags, metrics)


def log_net(client: MlflowClient, run_id: str, net: nn.Module, example: Tensor, tags: dict[str, str],
            metrics: dict[str, float]) -> None:
    """Log `net` (CPU, eval mode) as the run's LoggedModel with a signature inferred on `example` rows (two or more:
    torch.export keeps a batch dimension of one example row fixed); link the run's final `metrics` to it and tag the
    run with its id."""
    x = example[:EXAMPLE_ROWS].detach().cpu().float()
    with torch.no_grad():
        logits = net(x)
    signature = infer_signature(x.numpy(), logits.numpy())
    experiment_id = client.get_run(run_id).info.experiment_id
    # named by role and variant (e.g. mimic-w1024-k32, kd-w32-T4_0), so the Models tab tells them apart; MLflow
    # refuses '.', '/', ':', '%' and quotes in a logged model's name
    words = [tags.get(ROLE, "net"), *tags.get(VARIANT, "").split()]
    name = re.sub(r"[^A-Za-z0-9_-]+", "", "-".join(words).replace(".", "_"))
    model = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, tags=tags,
                                       model_type=tags.get(ROLE))
    with using_store(client):
        # pt2 (torch.export): loads without our classes and without unpickling code. Requirements given: MLflow would
        # infer them in a subprocess (seconds), and warn about torch's local label (+cpu), which pip cannot install
        mlflow.pytorch.log_model(net, name=name, model_id=model.model_id, run_id=run_id, signature=signature,
                                 input_example=x.numpy(), serialization_format="pt2",
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    client.log_batch(run_id, metrics=[linked(client, run_id, key, model.model_id) for key in metrics])
    client.set_tag(run_id, MODEL_ID, model.model_id)


def linked(client: MlflowClient, run_id: str, key: str, model_id: str) -> Metric:
    """The run's latest point of metric `key`, at its own step and time, now naming the model it measures (as
    MLflow does for metrics logged before the model): the run's history keeps one point."""
    last = max(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return Metric(key, last.value, last.timestamp, last.step, run_id=run_id, model_id=model_id)
