"""The LightningModule for label training, logit mimicry and distillation: `training_step` takes one optimizer step per
batch of a loader item, `validation_step` and `test_step` share one evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, MeanSquaredError
from torchmetrics.classification import MulticlassAccuracy

from shallowmimic.data.loader import Batch, InMemoryLoader

STAGES = ("train", "val", "test")


class System(L.LightningModule):
    """Trains `net` with a loss (objectives.py), an optimizer factory and optionally a learning-rate schedule
    (schedules.py; both configured with `_partial_`); logs
    `stage/loss`, `stage/acc` (on rows with a label, y >= 0) and, where the batch carries the teacher's logits `z`,
    `stage/agreement` (argmax equal to the teacher's) and `stage/logit_mse`.

    Optimizes manually (Lightning's manual optimization): a training item may be a list of batches (InMemoryLoader
    with steps > 1), one optimizer step each, so Lightning's per-item loop costs are paid once for several steps.
    `compile`: the net's forward through torch.compile (in place: checkpoints keep their keys). `clip`: the
    gradients' norm (or value, by `clip_algorithm`) is clipped to it before each step, as Lightning's
    `trainer.gradient_clip_val` does under automatic optimization."""

    def __init__(self, net: nn.Module, loss: Callable[[Tensor, Batch], Tensor],
                 optimizer: Callable[..., torch.optim.Optimizer], num_classes: int,
                 scheduler: Callable[..., dict[str, Any]] | None = None, compile: bool = False,
                 clip: float | None = None, clip_algorithm: str = "norm") -> None:
        super().__init__()
        self.net, self.loss_fn, self.make_optimizer, self.make_scheduler = net, loss, optimizer, scheduler
        self.clip, self.clip_algorithm = clip, clip_algorithm
        self.automatic_optimization = False
        if compile:
            self.net.compile()
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

    def _evaluate(self, batch: Batch, stage: str) -> None:
        """Update the stage's metrics (val or test) on one batch; with the teacher's logits `z`, also agreement and
        logit MSE."""
        logits = self.net(batch["x"]).float()  # loss and metrics in fp32 whatever the trainer's precision
        loss = self.loss_fn(logits, batch)
        m = self.metrics[f"{stage}_metrics"]
        m["loss"].update(loss.detach(), len(logits))
        if "y" in batch:
            m["acc"].update(logits, batch["y"])
        if "z" in batch:
            z = batch["z"].float()
            m["agreement"].update(logits.argmax(1), z.argmax(1))
            m["logit_mse"].update(logits, z)

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
        self._step_schedules("epoch")  # after validation, whose metrics a plateau schedule watches

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

    def on_train_start(self) -> None:
        """Move the in-memory training and validation sets to the training device once, not a batch per step."""
        loaders = [self.trainer.train_dataloader, *as_list(self.trainer.val_dataloaders)]
        for loader in loaders:
            if isinstance(loader, InMemoryLoader):
                loader.to(self.device)

    def training_step(self, batch: Batch | list[Batch], batch_idx: int) -> None:
        """One optimizer step per batch of the item; the train metrics and the non-finite check once per item, so
        there is no host sync per step."""
        batches = batch if isinstance(batch, list) else [batch]
        if self.trainer.max_steps != -1:  # Lightning checks max_steps between items: stop at it, not an item past
            batches = batches[: self.trainer.max_steps - self.global_step]
        optimizer = self.optimizers()
        losses, logits = [], []
        for b in batches:
            out = self.net(b["x"]).float()  # loss and metrics in fp32 whatever the trainer's precision
            loss = self.loss_fn(out, b)
            optimizer.zero_grad()
            self.manual_backward(loss)
            if self.clip:
                self.clip_gradients(optimizer, gradient_clip_val=self.clip, gradient_clip_algorithm=self.clip_algorithm)
            optimizer.step()
            self._step_schedules("step")
            losses.append(loss.detach())
            if "y" in b:  # kept for the item's train accuracy
                logits.append(out.detach())
        losses_ = torch.stack(losses)
        if not torch.isfinite(losses_.sum()):  # stop at once: every later step would be NaN too, and the run a lie
            raise FloatingPointError(f"train/loss is {losses_.sum().item()} at step {self.global_step}; "
                                     "lower optimizer.lr or check the inputs")
        m = self.metrics["train_metrics"]
        m["loss"].update(losses_, torch.tensor([len(b["x"]) for b in batches], device=losses_.device))
        if "y" in batches[0]:
            m["acc"].update(torch.cat(logits), torch.cat([b["y"] for b in batches]))

    def _step_schedules(self, interval: str) -> None:
        """Manual optimization steps no schedule by itself: step this interval's (a plateau's on its metric)."""
        for config in self.trainer.lr_scheduler_configs:
            if config.interval != interval:
                continue
            if config.monitor is None:
                config.scheduler.step()
            elif (value := self.trainer.callback_metrics.get(config.monitor)) is not None:
                config.scheduler.step(value)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        optimizer = self.make_optimizer(self.net.parameters())
        if self.make_scheduler is None:
            return optimizer
        # the schedule spans the whole fit: Lightning knows its number of optimizer steps once the data is attached
        schedule = self.make_scheduler(optimizer, total_steps=self._total_steps())
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def _total_steps(self) -> int:
        """Optimizer steps in the fit: Lightning's estimate counts loader items, each of which may be several."""
        items = self.trainer.estimated_stepping_batches  # attaches the training loader
        loader = self.trainer.train_dataloader
        steps = items * loader.steps_per_epoch / max(1, len(loader)) if isinstance(loader, InMemoryLoader) else items
        return int(min(steps, self.trainer.max_steps) if self.trainer.max_steps != -1 else steps)


def as_list(loaders: object) -> list:
    """Lightning's val_dataloaders: one loader, a list of them, or None."""
    return [] if loaders is None else list(loaders) if isinstance(loaders, list | tuple) else [loaders]
