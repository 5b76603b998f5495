"""The study's figures as PNG files: accuracy vs parameters (Figure 1), learning curves over examples seen
(Figure 2) and student vs teacher accuracy (Figure 3, with its points and whether students track teachers); and the
plotting helpers the sweep's report (report.py) draws with too."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: the study runs headless
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from shallowmimic.analysis.study_runs import (  # noqa: E402
    PLAIN,
    REGULARISED,
    Group,
    Stat,
    Study,
    group_by,
    metric,
    net_label,
    number,
    seed,
    stage_of,
    values,
)
from shallowmimic.tracking.keys import (  # noqa: E402
    EPOCHS,
    ROLE,
    STAGE,
    TEACHER_RUN_ID,
    TEACHER_TEST_ACC,
    TEST_ACC,
    TEST_AGREEMENT,
    TRAIN_ACC,
    VAL_ACC,
    VARIANT,
)
from shallowmimic.tracking.search import history  # noqa: E402

LINES = {"teacher": ("black", ":"), "ensemble": ("dimgray", "-.")}  # the horizontal lines of accuracy vs parameters
ACCURACY_AXES = {"xscale": "log", "xlabel": "parameters", "ylabel": "test accuracy (%)"}


def new_figure(size: tuple[float, float]) -> tuple[Figure, Axes]:
    """A new figure of `size` inches with one axes."""
    return plt.subplots(figsize=size)


def finish(fig: Figure, ax: Axes, path: Path, legend_size: int, **labels: str) -> None:
    """Label the axes (Axes.set's keywords), add grid and legend, write the figure and close it (open ones pile up)."""
    ax.set(**labels)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def accuracy_series(ax: Axes, label: str, members: list[Group], dashed: bool) -> None:
    """One series of test accuracy against parameters: the mean over seeds, error bars one std."""
    members = sorted(members, key=lambda g: g.params)
    stats = [g.stat(TEST_ACC) for g in members]
    ax.errorbar([g.params for g in members], [s.mean for s in stats], yerr=[s.std or 0.0 for s in stats],
                marker="o", capsize=3, linestyle="--" if dashed else "-", label=label)


def figure1(groups: list[Group], path: Path) -> None:
    """Test accuracy against parameters (log x), error bars one std over seeds; teacher and ensemble as lines."""
    fig, ax = new_figure((7.5, 4.8))
    series: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        acc = g.stat(TEST_ACC)
        if acc.mean is None:
            continue
        if g.series in LINES:
            color, style = LINES[g.series]
            ax.axhline(acc.mean, color=color, linestyle=style, label=f"{g.series} {g.net} ({g.params:,} params)")
        else:
            series[g.series].append(g)  # one line per family: a tuned setting differs by width (see the table)
    for label, members in series.items():
        lower = any(not all(g.converged) for g in members)  # a run still learning: its point is a lower bound
        accuracy_series(ax, label + (" (lower bound)" if lower else ""), members, dashed="labels" in label)
    finish(fig, ax, path, 7, **ACCURACY_AXES, title="Figure 1: accuracy vs parameters (mean ± std over seeds)")


@dataclass
class Curve:
    """A run's train and validation accuracy (%) against training examples seen."""

    series: str
    run_id: str
    train: list[tuple[int, float]]
    val: list[tuple[int, float]]


def _curve(client: MlflowClient, series: str, run_id: str, batch: int) -> Curve:
    """The run's curves; a step is one optimizer step of `batch` examples."""
    def seen(key: str) -> list[tuple[int, float]]:
        """(examples seen, accuracy in %) of one history."""
        return [(step * batch, 100 * v) for step, v in history(client, run_id, key) if step > 0]  # log x: no 0
    return Curve(series, run_id, seen(TRAIN_ACC), seen(VAL_ACC))


def figure2_runs(study: Study) -> tuple[int, dict[str, str]] | None:
    """The widest width that the plain and regularised baselines and the mimic share (those of them the study has),
    and each one's first-seed run id there; None without a mimic and a baseline at one width. The figure2 stage's
    runs (no early stopping) when the study has them; an older study's early-stopped baselines and mimics if not."""
    long = study.stage("figure2")
    runs, plain = (long, "figure2") if long else (study.stage("baselines") + study.stage("mimic"), "baselines_plain")
    labels = [r for r in runs if r.data.tags.get(ROLE) == "baseline"]
    candidates = {PLAIN: [r for r in labels if stage_of(r) == plain],
                  REGULARISED: [r for r in labels if stage_of(r) != plain],
                  "mimic": [r for r in runs if r.data.tags.get(ROLE) == "mimic"]}
    candidates = {series: runs for series, runs in candidates.items() if runs}
    if "mimic" not in candidates or len(candidates) < 2:
        return None
    widths = [{int(number(r, "model.width")) for r in runs} for runs in candidates.values()]
    common = set.intersection(*widths) - {0}
    if not common:
        return None
    width = max(common)  # widest: nearest the paper's nets, and where a label-trained net overfits most
    return width, {series: next(r for r in runs if int(number(r, "model.width")) == width).info.run_id
                   for series, runs in candidates.items()}  # study.stage sorts by seed: the first is seed 0


def figure2(client: MlflowClient, study: Study, path: Path) -> tuple[int, list[Curve]] | None:
    """Train (dashed) and validation (solid) accuracy over examples seen (log x) of the plain and regularised
    baselines and the mimic at one width; a mimic epoch holds many more examples, so epochs would not compare."""
    chosen = figure2_runs(study)
    if chosen is None:
        return None
    width, run_ids = chosen
    curves = [_curve(client, series, run_id, int(number(study.by_id[run_id], "data.global_batch_size")) or 1)
              for series, run_id in run_ids.items()]
    fig, ax = new_figure((7.5, 4.8))
    for i, curve in enumerate(curves):
        color = f"C{i}"
        for points, style, split in ((curve.train, "--", "train"), (curve.val, "-", "val")):
            if points:
                ax.plot(*zip(*points, strict=True), color=color, linestyle=style, label=f"{curve.series} {split}")
    how = "no early stopping" if study.stage("figure2") else "early-stopped"
    finish(fig, ax, path, 7, xscale="log", xlabel="training examples seen", ylabel="accuracy (%)",
           title=f"Figure 2: learning curves at width {width} (first seed, {how})")
    return width, curves


@dataclass
class Point:
    """Figure 3: the students of one width that learned from one teacher (or ensemble), over seeds."""

    width: int
    teacher: str
    teacher_acc: float
    student: Stat
    agreement: Stat
    run_ids: list[str]


def teacher_label(study: Study, ids: list[str]) -> str:
    """'teacher_quality CNN1D depth=2 30 epochs seed=0' for one teacher run, 'ensemble of 3' for several."""
    if len(ids) > 1:
        return f"ensemble of {len(ids)}"
    run = study.by_id.get(ids[0]) if ids else None
    if run is None:
        return ids[0] if ids else "?"
    if STAGE not in run.data.tags:  # a net given to the study (TEACHER=): no stage trained it
        return f"given: {run.data.tags.get(VARIANT, run.info.run_name)}"
    epochs = metric(run, EPOCHS)
    trained = f" {epochs:.0f} epochs" if epochs is not None else ""
    return f"{run.data.tags.get(STAGE)} {net_label(run)}{trained} seed={seed(run)}"


def figure3_points(study: Study) -> list[Point]:
    """Figure 3's points, by student width then teacher accuracy (as each student measured its teacher)."""
    points = []
    keyed = group_by(study.stage("figure3"),
                     lambda r: (int(number(r, "model.width")), r.data.tags.get(TEACHER_RUN_ID, "")))
    for (width, ids), runs in keyed.items():
        teacher = values(runs, TEACHER_TEST_ACC)
        if not teacher:
            continue
        points.append(Point(width, teacher_label(study, str(ids).split(",")), statistics.fmean(teacher),
                            Stat(values(runs, TEST_ACC)), Stat(values(runs, TEST_AGREEMENT)),
                            [r.info.run_id for r in runs]))
    return sorted(points, key=lambda p: (p.width, p.teacher_acc))


def tracks(points: list[Point]) -> list[tuple[str, bool | None]]:
    """Per student width: does student accuracy rise with teacher accuracy (the sign of their correlation)?"""
    found: list[tuple[str, bool | None]] = []
    for width in sorted({p.width for p in points}):
        pairs = [(p.teacher_acc, p.student.mean) for p in points if p.width == width and p.student.mean is not None]
        xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
        if len(set(xs)) < 2 or len(set(ys)) < 2:  # a correlation needs two distinct values on each axis
            found.append((f"at w={width} too few distinct teachers to tell", None))
            continue
        r = statistics.correlation(xs, ys)
        found.append((f"at w={width} student accuracy {'rises' if r > 0 else 'does not rise'} with teacher "
                      f"accuracy (r = {r:.2f} over {len(xs)} teachers)", r > 0))
    return found


def figure3(points: list[Point], path: Path) -> None:
    """Student test accuracy against its teacher's, one series per student width, with the y = x line."""
    fig, ax = new_figure((6, 5.5))
    by_width: dict[int, list[Point]] = defaultdict(list)
    for p in points:
        by_width[p.width].append(p)
    for width, members in sorted(by_width.items()):
        ax.errorbar([100 * p.teacher_acc for p in members], [p.student.mean for p in members],
                    yerr=[p.student.std or 0.0 for p in members], marker="o", capsize=3, label=f"mimic w={width}")
    everything = [100 * p.teacher_acc for p in points] + [p.student.mean for p in points if p.student.mean is not None]
    if everything:
        low, high = min(everything) - 2, max(everything) + 2
        ax.plot([low, high], [low, high], color="gray", linestyle=":", label="y = x")
    finish(fig, ax, path, 8, xlabel="teacher test accuracy (%)", ylabel="student test accuracy (%)",
           title="Figure 3: student vs teacher accuracy")
