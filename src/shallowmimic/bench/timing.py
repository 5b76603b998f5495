"""Trustworthy timings on a shared machine: contenders run in turn (A B C A B C ...), so a change of load hits all of
them alike; each repeat lasts seconds; figures are medians with their spread, ratios taken within a repeat."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass


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
    """Each contender's measurements, taken `repeats` times in turn: A B C, A B C, ..."""
    results: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, measure in contenders.items():
            results[name].append(measure())
    return results


def paired_ratios(results: dict[str, list[float]], over: str) -> dict[str, Spread]:
    """Each contender / `over`, repeat by repeat (measured minutes apart at most, under the same load)."""
    return {name: Spread.of([a / b for a, b in zip(values, results[over], strict=True)])
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
