"""Crash safety: a checkpoint every epoch that knows its MLflow run, and resuming into that same run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from shallowmimic.errors import UserError
from shallowmimic.tracking.keys import TEACHER_RUN_ID
from shallowmimic.tracking.search import teacher_ids

KEY = "shallowmimic"  # our entry in every Lightning checkpoint
LAST = "checkpoints/last.ckpt"  # relative to a run dir


class RunState(Callback):
    """Keeps with each checkpoint what Lightning does not: the MLflow run id, the torch RNG state (dropout) and the
    validation accuracy of every epoch so far (the best checkpoint's accuracy is read from it at the end)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[KEY] = {"mlflow_run_id": self.run_id, "torch_rng": torch.get_rng_state(),
                           "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                           "val_acc_by_epoch": dict(pl_module.val_acc_by_epoch)}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = checkpoint[KEY]
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        pl_module.val_acc_by_epoch.update(state["val_acc_by_epoch"])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the loaders shuffle by (seed, epoch): a resumed fit must draw the order of the epoch it is in
        loader = trainer.train_dataloader
        if hasattr(loader, "epoch"):
            loader.epoch = trainer.current_epoch


@dataclass(frozen=True)
class Resume:
    """`resume=<run dir or .ckpt>`: the last checkpoint of an interrupted fit and the MLflow run it continues."""

    arg: str
    checkpoint: Path
    run: Run

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @classmethod
    def load(cls, resume: str, client: MlflowClient) -> Resume:
        """The checkpoint named by `resume=` and its run, if that run is in this store and not FINISHED."""
        path = Path(resume)
        ckpt = path / LAST if path.is_dir() else path
        if not ckpt.is_file():
            raise UserError(f"resume={resume}: no checkpoint there; give a run dir (outputs/runs/...) or a .ckpt file")
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated or not a checkpoint at all
            raise UserError(f"resume={resume}: {ckpt} is not a readable checkpoint ({type(err).__name__})") from None
        if KEY not in state:
            raise UserError(f"resume={resume}: {ckpt} was not written by shallowmimic.train (no MLflow run id in it)")
        if ckpt.parent.name != "checkpoints":  # the run dir holds it: the resumed fit writes its checkpoints there
            raise UserError(f"resume={resume}: give the run dir, or a .ckpt inside its checkpoints/ folder")
        run_id = state[KEY]["mlflow_run_id"]
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise UserError(f"resume={resume}: its run {run_id} is not in this tracking store; set "
                            "logger.tracking_uri (or MLFLOW_TRACKING_URI) to the store it was logged to") from None
        if run.info.status == "FINISHED":
            raise UserError(f"resume={resume}: run {run_id} is FINISHED; there is nothing to resume")
        return cls(resume, ckpt, run)

    def teachers(self, requested: list[str]) -> list[str]:
        """A resumed student keeps the teachers it learnt from, even if newer ones exist now."""
        recorded = teacher_ids(self.run.data.tags.get(TEACHER_RUN_ID))
        if recorded and requested and set(requested) != set(recorded):
            raise UserError(f"teacher.run_id={','.join(requested)}: run {self.run_id} learnt from "
                            f"{','.join(recorded)}; resume it with its own teachers")
        return recorded or requested

    def reopen(self, client: MlflowClient, params: dict[str, str]) -> None:
        """Check that the run can be continued with this config, and mark it RUNNING again."""
        logged = self.run.data.params
        changed = [k for k, v in params.items() if k in logged and logged[k] != v]
        if changed:
            key = changed[0]
            raise UserError(f"resume={self.arg}: {key}={params[key]} but run {self.run_id} has {key}={logged[key]}; "
                            "resume with the run's own overrides")
        client.update_run(self.run_id, status="RUNNING")
