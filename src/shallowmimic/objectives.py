"""What a student learns from: the labels, the paper's L2 on the teacher's logits (raw, per-class standardised or
per-sample centred), or Hinton's distillation.

Each `conf/objective/*.yaml` instantiates one of these as its `loss` and says whether it needs the teacher's
logits, and which validation metric picks the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from shallowmimic import checks
from shallowmimic.data.loader import Batch


def labels_loss(logits: Tensor, batch: Batch) -> Tensor:
    """Cross-entropy on the labels (teacher and baseline)."""
    return F.cross_entropy(logits, batch["y"])


def mimic_loss(logits: Tensor, batch: Batch) -> Tensor:
    """The paper's L2 regression on the teacher's logits: 1/(2T) sum_t ||g(x_t) - z_t||^2."""
    return 0.5 * (logits - batch["z"]).pow(2).sum(1).mean()


def centred_mimic_loss(logits: Tensor, batch: Batch) -> Tensor:
    """L2 on per-sample centred logits: 1/(2T) sum_t ||c(g(x_t)) - c(z_t)||^2, with c(v) = v - mean(v) over the
    classes. Softmax ignores a constant added to a row, so this is what KD tends to as T grows (Hinton et al.'s
    zero-mean condition): T^2 KD's gradient -> this one's / C."""
    diff = logits.float() - batch["z"].float()
    return 0.5 * (diff - diff.mean(1, keepdim=True)).pow(2).sum(1).mean()


def class_stats(parts: list[np.ndarray], rows: int = 65_536) -> tuple[Tensor, Tensor]:
    """Per-class mean and std of logits over the rows of all `parts` (memory maps are read a block at a time),
    in float64; a constant class's std is 1, not 0."""
    total, sq, n = 0.0, 0.0, 0
    for part in parts:
        for start in range(0, len(part), rows):
            block = np.asarray(part[start : start + rows], np.float64)
            total, sq, n = total + block.sum(0), sq + (block**2).sum(0), n + len(block)
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean**2, 0.0))
    return torch.from_numpy(mean).float(), torch.from_numpy(np.where(std > 0, std, 1.0)).float()


class StandardisedMimicLoss:
    """The paper's L2 on per-class standardised logits (its section 2.2): 1/(2T) sum ||(g(x) - z) / sigma||^2, sigma
    the teacher's per-class std over the mimic's training rows. The student's net ends in nets.Destandardised, so
    this is its inner net fitting (z - mu) / sigma while every metric sees logits in the teacher's units."""

    def __init__(self) -> None:
        self.std: Tensor | None = None  # the pipeline sets it once the teacher's logits are known (fit)

    def fit(self, logits: list[np.ndarray]) -> tuple[Tensor, Tensor]:
        """Learn the per-class mean and std of these logits; return them for the net's Destandardised."""
        mean, self.std = class_stats(logits)
        return mean, self.std

    def __call__(self, logits: Tensor, batch: Batch) -> Tensor:
        if self.std is None:
            raise RuntimeError("StandardisedMimicLoss.fit was not called with the teacher's logits")
        diff = (logits.float() - batch["z"].float()) / self.std.to(logits.device)
        return 0.5 * diff.pow(2).sum(1).mean()


def kd_loss(logits: Tensor, batch: Batch, temperature: float = 4.0, label_weight: float = 0.0) -> Tensor:
    """Hinton et al.'s distillation: T^2 KL(softmax(z/T) || softmax(s/T)) + label_weight CE(s, y) on labelled rows.

    T^2 keeps the soft term's gradients the same size whatever T (they scale as 1/T^2); rows with y = -1 are
    transfer inputs without a label.
    """
    s, z = logits.float() / temperature, batch["z"].float() / temperature  # fp32 even under 16-bit training
    loss = temperature**2 * F.kl_div(F.log_softmax(s, 1), F.log_softmax(z, 1), reduction="batchmean",
                                     log_target=True)
    if label_weight:
        y = batch["y"]
        # a sum over the labelled rows over their count (at least 1): 0, not NaN, on a batch without labels,
        # and no host sync as `if mask.any()` would need
        ce = F.cross_entropy(logits.float(), y, ignore_index=-1, reduction="sum") / (y >= 0).sum().clamp_min(1)
        loss = loss + label_weight * ce
    return loss


class KDLoss:
    """kd_loss bound to its temperature and label weight, checked when the objective is built."""

    def __init__(self, temperature: float = 4.0, label_weight: float = 0.0) -> None:
        checks.number("temperature", temperature, 0, low_open=True)
        checks.number("label_weight", label_weight, 0)
        self.temperature, self.label_weight = float(temperature), float(label_weight)

    def __call__(self, logits: Tensor, batch: Batch) -> Tensor:
        return kd_loss(logits, batch, self.temperature, self.label_weight)


MONITORS = ("val/loss", "val/acc", "val/logit_mse", "val/agreement", "train/loss", "train/acc")


@dataclass(frozen=True)
class Objective:
    """A built objective: its loss, whether it learns from a teacher's logits, and the validation metric (and
    direction) that picks the checkpoint."""

    name: str
    loss: Callable[[Tensor, Batch], Tensor]
    needs_logits: bool
    monitor: str
    mode: str

    def __post_init__(self) -> None:
        checks.flag("needs_logits", self.needs_logits)
        checks.choice("monitor", self.monitor, MONITORS)
        checks.choice("mode", self.mode, ["min", "max"])

