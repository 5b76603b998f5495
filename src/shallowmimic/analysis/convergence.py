"""Convergence of training curves: how many epochs a validation metric takes to settle, and whether it has."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from shallowmimic import checks


def level(curves: Sequence[Sequence[float]], fraction: float = 0.95) -> float | None:
    """The value `fraction` of the way from a decreasing curve's first point to its last (e.g. val/logit_mse per
    epoch), averaged over the curves that decrease; None if none does (or a point is not a number)."""
    checks.number("fraction", fraction, 0.0, 1.0)
    ends = [(c[0], c[-1]) for c in curves if len(c) > 1 and c[0] > c[-1]]  # False for a NaN end, too
    return statistics.fmean(first - fraction * (first - last) for first, last in ends) if ends else None


def first_at_or_below(values: Sequence[float], bar: float | None) -> int | None:
    """The first index whose value is at or below `bar`; None if none is (or there is no bar)."""
    return next((i for i, value in enumerate(values) if bar is not None and value <= bar), None)


def converged(values: Sequence[float], mode: str, patience: int, min_delta: float = 0.0) -> bool:
    """True when the best value came at least `patience` points before the end (False for an empty curve)."""
    checks.choice("mode", mode, ["min", "max"])
    checks.integer("patience", patience, minimum=0)
    checks.number("min_delta", min_delta, 0.0)
    sign = 1.0 if mode == "min" else -1.0  # compare sign * value, which is to be minimised in either mode
    best_index: int | None = None
    best = 0.0
    # as in early stopping, a new best must beat the old one by more than min_delta: a tie keeps the earlier point
    for i, value in enumerate(values):
        if math.isnan(value):  # a diverged epoch is never the best, nor does it block a later best
            continue
        if best_index is None or sign * value < best - min_delta:
            best_index, best = i, sign * value
    return best_index is not None and best_index < len(values) - patience
