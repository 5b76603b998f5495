"""Convergence of training curves: how many epochs a validation metric takes to settle, and whether it has."""

from __future__ import annotations

import math
from collections.abc import Sequence

from shallowmimic import checks


def steps_to_fraction(values: Sequence[float], fraction: float = 0.95, start: float | None = None) -> int | None:
    """First index i into `values` whose reduction from the baseline reaches `fraction` of the total reduction.

    `values[i]` is the metric after epoch i + 1 (a decreasing one, e.g. val/logit_mse). The baseline is `start`
    (the value before training) if given, else `values[0]`; the total reduction is baseline - values[-1]. Either way
    the returned i indexes `values`, so the fraction was reached after i + 1 epochs of training; without `start`,
    i = 0 only when fraction is 0, as values[0] is the baseline itself. None when the curve does not decrease overall
    (total reduction <= 0 or not a number) or has fewer than 2 points, counting `start` as a point.
    """
    checks.number("fraction", fraction, 0.0, 1.0)
    points = list(values)
    if len(points) + (start is not None) < 2:
        return None
    baseline = points[0] if start is None else start
    total = baseline - points[-1]
    if not total > 0:  # also catches a NaN baseline or final value
        return None
    target = fraction * total  # fraction <= 1 so target <= total: the last point always qualifies
    return next(i for i, value in enumerate(points) if baseline - value >= target)


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
