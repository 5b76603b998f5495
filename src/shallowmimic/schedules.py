"""Learning-rate schedules as Lightning scheduler configs. Each takes the optimizer and the fit's total number of
optimizer steps (which Lightning knows once the data is attached), plus its own keys from conf/scheduler/."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from shallowmimic import checks


def _warmup(step: int, warmup: int) -> float:
    """Linear ramp from 1/warmup to 1 over the first `warmup` steps, then 1."""
    return (step + 1) / warmup if step < warmup else 1.0


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.0,
                  final_ratio: float = 0.0) -> dict[str, Any]:
    """Linear warm-up over `warmup_fraction` of the steps, then cosine decay to `final_ratio` x lr at the last."""
    checks.number("warmup_fraction", warmup_fraction, 0, 0.5)
    checks.number("final_ratio", final_ratio, 0, 1)
    warmup = int(total_steps * warmup_fraction)

    def factor(step: int) -> float:
        if step < warmup:
            return _warmup(step, warmup)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return {"scheduler": LambdaLR(optimizer, factor), "interval": "step"}


def warmup_step(optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.0,
                milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1) -> dict[str, Any]:
    """Linear warm-up, then lr x gamma at each milestone (a fraction of all steps)."""
    checks.number("warmup_fraction", warmup_fraction, 0, 0.5)
    checks.number("gamma", gamma, 0, 1, low_open=True)
    for milestone in milestones:
        checks.number("milestones", milestone, 0, 1)
    warmup, marks = int(total_steps * warmup_fraction), [int(total_steps * m) for m in milestones]

    def factor(step: int) -> float:
        return _warmup(step, warmup) * gamma ** sum(step >= m for m in marks)

    return {"scheduler": LambdaLR(optimizer, factor), "interval": "step"}


def plateau(optimizer: Optimizer, total_steps: int, monitor: str, mode: str, factor: float = 0.3,
            patience: int = 3) -> dict[str, Any]:
    """lr x factor when `monitor` has not improved for `patience` epochs."""
    checks.number("factor", factor, 0, 1, low_open=True)
    checks.integer("patience", patience, minimum=0)
    scheduler = ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience)
    return {"scheduler": scheduler, "interval": "epoch", "monitor": monitor}
