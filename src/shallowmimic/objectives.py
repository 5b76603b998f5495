"""What a student learns from: the labels, the paper's L2 on the teacher's logits (raw or per-sample centred), or
Hinton's distillation.

Each `conf/objective/*.yaml` instantiates one of these as its `loss` and says whether it needs the teacher's
logits, and which validation metric picks the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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

