"""Find a teacher run in MLflow, load its best checkpoint, and extract + cache its logits over the transfer set."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf
from torch import Tensor, nn

from shallowmimic.cache import cached, sha256_file, spec_key
from shallowmimic.data import MNIST1DDataModule
from shallowmimic.tracking import UserError

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoints/best.ckpt"  # artifact paths every teacher run logs
CONFIG = "config.yaml"


def find_teacher(client: MlflowClient, experiment_id: str, run_id: str | None) -> Run:
    """The teacher run named by `run_id`, or else the newest FINISHED teacher run of the experiment."""
    if run_id:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise UserError(f"teacher.run_id={run_id}: no such run in the tracking store; "
                            "give the id of a finished teacher run (see `make ui`)") from None
        if run.data.tags.get("role") != "teacher" or run.info.status != "FINISHED":
            raise UserError(f"teacher.run_id={run_id}: run is a {run.data.tags.get('role')} run in state "
                            f"{run.info.status}; it must be a FINISHED teacher run")
        return run
    runs = client.search_runs([experiment_id], "tags.role = 'teacher' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise UserError("teacher.run_id=null: no finished teacher run for this dataset in the tracking store; "
                        "train one first (`make teacher`) or set teacher.run_id")
    return runs[0]


def weights_digest(state: dict[str, Tensor]) -> str:
    """sha256 of a state dict's names and tensor bytes: equal weights give equal keys, whatever else the checkpoint
    file holds (paths, loop state), so a retrained but identical teacher reuses its cached logits."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_teacher(client: MlflowClient, run: Run, dm: MNIST1DDataModule) -> tuple[nn.Module, str]:
    """The teacher's net in eval mode with its best weights, and the sha256 of those weights."""
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(client.download_artifacts(run.info.run_id, CHECKPOINT, tmp))
        cfg = OmegaConf.load(client.download_artifacts(run.info.run_id, CONFIG, tmp))
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    if cfg.data.name != dm.name:
        raise UserError(f"teacher.run_id={run.info.run_id}: teacher was trained on data={cfg.data.name}, "
                        f"this run uses data={dm.name}")
    net = instantiate(cfg.model, in_shape=dm.in_shape, num_classes=dm.num_classes)
    weights = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    net.load_state_dict(weights)
    return net.eval().requires_grad_(False), weights_digest(weights)


@torch.no_grad()
def _logits(net: nn.Module, x: Tensor, batch_size: int = 4096) -> np.ndarray:
    return torch.cat([net(part) for part in x.split(batch_size)]).numpy()


def teacher_logits(net: nn.Module, weights_sha: str, dm: MNIST1DDataModule,
                   cache_dir: str | Path) -> tuple[dict[str, Tensor], str, bool]:
    """The teacher's logits for every split the mimic uses, from a cache keyed by the weights' hash and the
    data spec (deterministic, un-augmented inputs only), computed once. Returns (logits, file sha256, hit)."""
    key = spec_key({"teacher_weights": weights_sha, "data": dm.spec()})
    path = Path(cache_dir) / f"logits-{key}.npz"
    inputs = dm.teacher_inputs()

    def build() -> dict[str, np.ndarray]:
        log.info("running the teacher over %d inputs", sum(len(v) for v in inputs.values()))
        return {split: _logits(net, x) for split, x in inputs.items()}

    arrays, hit = cached(path, build)
    if {k: len(v) for k, v in arrays.items()} != {k: len(v) for k, v in inputs.items()}:
        raise RuntimeError(f"logits cache {path} does not match the inputs it is keyed by; delete it")
    return {k: torch.from_numpy(v) for k, v in arrays.items()}, sha256_file(path), hit
