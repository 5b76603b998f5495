"""The LightningModule: one step shared by train/val/test, for label training, logit mimicry and distillation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, MeanSquaredError
from torchmetrics.classification import MulticlassAccuracy

from shallowmimic.data.loader import Batch

STAGES = ("train", "val", "test")


class System(L.LightningModule):
    """Trains `net` with a loss (objectives.py), an optimizer factory and optionally a learning-rate schedule
    (schedules.py; both configured with `_partial_`); logs
    `stage/loss`, `stage/acc` (on rows with a label, y >= 0) and, where the batch carries the teacher's logits `z`,
    `stage/agreement` (argmax equal to the teacher's) and `stage/logit_mse`."""

    def __init__(self, net: nn.Module, loss: Callable[[Tensor, Batch], Tensor],
                 optimizer: Callable[..., torch.optim.Optimizer], num_classes: int,
                 scheduler: Callable[..., dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.net, self.loss_fn, self.make_optimizer, self.make_scheduler = net, loss, optimizer, scheduler
        # one set of torchmetrics objects per stage, so train/val/test never share state
        # (keys get a suffix: a ModuleDict key "train" would clash with nn.Module.train)
        self.metrics = nn.ModuleDict({f"{s}_metrics": nn.ModuleDict({
            "loss": MeanMetric(),
            "acc": MulticlassAccuracy(num_classes, average="micro", ignore_index=-1),  # -1: transfer rows
            "agreement": MulticlassAccuracy(num_classes, average="micro"),
            "logit_mse": MeanSquaredError(),
        }) for s in STAGES})
        self.val_acc_by_epoch: dict[int, float] = {}

    def forward(self, x: Tensor) -> Tensor:
        """(B, D) inputs -> (B, C) logits."""
        return self.net(x)

    def _step(self, batch: Batch, stage: str) -> Tensor:
        logits = self.net(batch["x"]).float()  # loss and metrics in fp32 whatever the trainer's precision
        loss = self.loss_fn(logits, batch)
        m = self.metrics[f"{stage}_metrics"]
        m["loss"].update(loss.detach(), len(logits))
        if "y" in batch:
            m["acc"].update(logits, batch["y"])
        if "z" in batch and stage != "train":
            z = batch["z"].float()
            m["agreement"].update(logits.argmax(1), z.argmax(1))
            m["logit_mse"].update(logits, z)
        return loss

    def _log_epoch(self, stage: str) -> None:
        """Log the stage's metrics once per epoch; Lightning computes, records and resets them.

        Not per step: self.log on a Metric object moves it to the device on every call (~1 ms on CPU), which cost
        the training loop over a tenth of its speed (`python -m shallowmimic.bench`).
        """
        for name, metric in self.metrics[f"{stage}_metrics"].items():
            if metric.update_called:
                self.log(f"{stage}/{name}", metric, prog_bar=name in ("loss", "acc"))

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")  # only in epochs without validation: it has logged them already

    def on_validation_epoch_end(self) -> None:
        acc = self.metrics["val_metrics"]["acc"]
        if acc.update_called and not self.trainer.sanity_checking:
            self.val_acc_by_epoch[self.current_epoch] = float(acc.compute())  # cached: logging reuses it
        if self.trainer.state.fn == "fit":
            # the epoch's train metrics go out with its val metrics, before the epoch's checkpoint is written
            # (Lightning logs on_train_epoch_end's after it): a fit killed between the two and resumed loses none
            self._log_epoch("train")
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")
        if not torch.isfinite(loss):  # stop at once: every later step would be NaN too, and the run a lie
            raise FloatingPointError(f"train/loss is {loss.item()} at step {self.global_step}; "
                                     "lower optimizer.lr or check the inputs")
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        optimizer = self.make_optimizer(self.net.parameters())
        if self.make_scheduler is None:
            return optimizer
        # the schedule spans the whole fit: Lightning knows its number of optimizer steps once the data is attached
        schedule = self.make_scheduler(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": schedule}
