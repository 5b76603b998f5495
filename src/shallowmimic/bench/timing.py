"""Trustworthy timings on a shared machine: contenders run in turn (A B C A B C ... A), so a change of load hits all of
them alike; each repeat lasts seconds; figures are medians with their spread, ratios taken round by round."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise


@dataclass(frozen=True)
class Spread:
    """Median, minimum and maximum of repeated measurements."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))


def interleaved(contenders: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Each contender's measurements, taken `repeats` times in turn, then the first once more: A B C, A B C, ..., A.
    Every round is thus bracketed by two measurements of the first (the baseline: see paired_ratios)."""
    results: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, measure in contenders.items():
            results[name].append(measure())
    first, measure = next(iter(contenders.items()))
    results[first].append(measure())
    return results


def paired_ratios(results: dict[str, list[float]], over: str) -> dict[str, Spread]:
    """Each contender / `over`, round by round, `over` taken as the mean of its measurements either side of the
    round. This machine's speed drifts over seconds (identical 0.7 s loops vary by 11%, the same in CPU time as in
    wall time: other tenants' memory traffic), so a ratio to the baseline just before misreads a drift as a
    difference; the bracket cancels a steady drift."""
    base = results[over]
    brackets = [(before + after) / 2 for before, after in pairwise(base)]
    return {name: Spread.of([x / b for x, b in zip(values, brackets, strict=True)])
            for name, values in results.items() if name != over}


def fmt(spread: Spread, pattern: str) -> str:
    """'median [low-high]'."""
    return f"{pattern.format(spread.median)} [{pattern.format(spread.low)}-{pattern.format(spread.high)}]"


def table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned first column, right-aligned others, a rule under the header."""
    cells = [header, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])
