"""A run's data as MLflow dataset inputs: train, validation, test and (for a student) transfer set, each with its
context, a digest equal to the data spec's hash that our caches are keyed by, and a source saying where it came
from (the data config: generator and its arguments, or files), so the UI's Dataset column fills and two runs on the
same data show the same digest."""

from __future__ import annotations

import time

import mlflow.data
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.entities import DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from omegaconf import DictConfig, OmegaConf

from shallowmimic.cache import spec_key
from shallowmimic.data import ArrayDataModule
from shallowmimic.tracking.run import Run

CONTEXTS = {"train": "training", "val": "validation", "test": "testing", "transfer": "training"}
ATTEMPTS = 4
PLUMBING = ("cache_dir", "batch_size", "eval_batch_size", "shuffle_seed")  # keys that do not change the data


def data_digest(dm: ArrayDataModule) -> str:
    """The data spec's hash: the key of our caches' data part (cache.spec_key of ArrayDataModule.spec())."""
    return spec_key(dm.spec())


def source(data_cfg: DictConfig) -> CodeDatasetSource:
    """Where the data came from: its config (reader or generator and their arguments, paths), plumbing left out."""
    node = OmegaConf.to_container(data_cfg, resolve=True)
    return CodeDatasetSource({k: str(v) for k, v in node.items() if k not in PLUMBING})


def datasets(dm: ArrayDataModule, data_cfg: DictConfig) -> list[DatasetInput]:
    """One dataset input per split the run uses (transfer only once a teacher's logits are attached)."""
    digest, src = data_digest(dm), source(data_cfg)
    splits = {k: (v["x"], v["y"]) for k, v in dm.splits.items() if k in CONTEXTS}
    if "mimic" in dm.splits and len(dm.transfer_inputs()):  # a student's inputs beyond the training split
        splits["transfer"] = (dm.transfer_inputs(), None)
    out = []
    for split, (x, y) in splits.items():
        dataset = mlflow.data.from_numpy(x.numpy(), source=src, targets=None if y is None else y.numpy(),
                                         name=f"{dm.name}-{split}", digest=digest)
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, CONTEXTS[split]), InputTag("split", split)]
        out.append(DatasetInput(dataset._to_mlflow_entity(), tags))
    return out


def log_datasets(run: Run, dm: ArrayDataModule, data_cfg: DictConfig) -> None:
    """Rank 0 logs the run's dataset inputs, once (a resumed run has them already)."""
    if not run.writer or run.resumed:
        return
    inputs = datasets(dm, data_cfg)
    for attempt in range(ATTEMPTS):
        try:
            run.client.log_inputs(run.run_id, datasets=inputs)
            return
        except MlflowException:
            # parallel jobs on the same data race to insert the same dataset row (a UNIQUE constraint in a SQL
            # store); the retry finds the row the other job wrote and links to it
            if attempt == ATTEMPTS - 1:
                raise
            time.sleep(0.1 * 2**attempt)
