"""The LightningModule: one step shared by train/val/test, for label training and logit mimicry alike."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, MeanSquaredError
from torchmetrics.classification import MulticlassAccuracy

Batch = dict[str, Tensor]


def labels_loss(logits: Tensor, batch: Batch) -> Tensor:
    """Cross-entropy on the labels (teacher and baseline)."""
    return F.cross_entropy(logits, batch["y"])


def mimic_loss(logits: Tensor, batch: Batch) -> Tensor:
    """The paper's L2 regression on the teacher's logits: 1/(2T) sum_t ||g(x_t) - z_t||^2."""
    return 0.5 * (logits - batch["z"]).pow(2).sum(1).mean()


LOSSES: dict[str, Callable[[Tensor, Batch], Tensor]] = {"labels": labels_loss, "mimic": mimic_loss}
STAGES = ("train", "val", "test")


class System(L.LightningModule):
    """Trains `net` with an objective from LOSSES; logs `stage/loss`, `stage/acc` and, where the batch carries the
    teacher's logits `z`, `stage/agreement` (argmax equal to the teacher's) and `stage/logit_mse`."""

    def __init__(self, net: nn.Module, objective: str, optimizer: Callable[..., torch.optim.Optimizer],
                 num_classes: int) -> None:
        super().__init__()
        self.net, self.loss_fn, self.make_optimizer = net, LOSSES[objective], optimizer
        # one set of torchmetrics objects per stage, so train/val/test never share state
        # (keys get a suffix: a ModuleDict key "train" would clash with nn.Module.train)
        self.metrics = nn.ModuleDict({f"{s}_metrics": nn.ModuleDict({
            "loss": MeanMetric(),
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "agreement": MulticlassAccuracy(num_classes, average="micro"),
            "logit_mse": MeanSquaredError(),
        }) for s in STAGES})

    def forward(self, x: Tensor) -> Tensor:
        """(B, D) inputs -> (B, C) logits."""
        return self.net(x)

    def _step(self, batch: Batch, stage: str) -> Tensor:
        logits = self.net(batch["x"]).float()  # loss and metrics in fp32 whatever the trainer's precision
        loss = self.loss_fn(logits, batch)
        m, n = self.metrics[f"{stage}_metrics"], len(logits)
        m["loss"].update(loss.detach(), n)
        updated = ["loss"]
        if "y" in batch:
            m["acc"].update(logits, batch["y"])
            updated.append("acc")
        if "z" in batch and stage != "train":
            z = batch["z"].float()
            m["agreement"].update(logits.argmax(1), z.argmax(1))
            m["logit_mse"].update(logits, z)
            updated += ["agreement", "logit_mse"]
        # epoch-level only: no host sync or store write per step
        for name in updated:
            self.log(f"{stage}/{name}", m[name], on_step=False, on_epoch=True, prog_bar=name in ("loss", "acc"),
                     batch_size=n)
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.net.parameters())
