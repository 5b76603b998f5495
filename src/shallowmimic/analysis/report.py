"""Read finished runs from MLflow: the paper-style table (mean +- std over seeds), accuracy against parameters,
and training curves of baseline vs mimic vs kd; written under outputs/reports/ and logged to the sweep's parent run.

    python -m shallowmimic.analysis.report                    # the newest sweep (e.g. the one `make run` launched)
    python -m shallowmimic.analysis.report --parent RUN_ID    # one sweep
    python -m shallowmimic.analysis.report --all              # every finished run of the experiment
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run

from shallowmimic import project_root
from shallowmimic.analysis import figures
from shallowmimic.analysis.study_runs import Group, group_by, markdown_table, seed
from shallowmimic.errors import UserError
from shallowmimic.settings import ROLES
from shallowmimic.tracking.descriptions import publish_report
from shallowmimic.tracking.keys import BEST_EPOCH, ROLE, TEST_ACC, TEST_AGREEMENT, VAL_ACC, VARIANT
from shallowmimic.tracking.search import history, sweep_runs
from shallowmimic.tracking.store import default_uri

ROLE_ORDER = {role: i for i, role in enumerate(ROLES)}  # the paper's order: teacher, baseline, mimic, kd
STUDENTS = ("mimic", "kd")  # the roles that learn from a teacher's logits
COLUMNS = ["role", "variant", "params", "seeds", "test acc", "agreement", "epochs"]  # variant names the model


def configuration(run: Run) -> tuple[str, str, str, int]:
    """(role, model, variant, n_params): what the seeds of one configuration share (variant: width, rank, T...)."""
    return (run.data.tags.get(ROLE, "?"), run.data.params.get("model.name", "?"), run.data.tags.get(VARIANT, "-"),
            int(run.data.params.get("n_params", 0)))


def group_runs(runs: list[Run]) -> list[Group]:
    """Groups of one configuration's runs (series: the role; detail: the variant) in the paper's order, then by size."""
    keyed = sorted(group_by(runs, configuration).items(),
                   key=lambda kv: (ROLE_ORDER.get(kv[0][0], 9), kv[0][3], kv[0][2]))
    return [Group.of(role, members, variant) for (role, _, variant, _), members in keyed]


def param(group: Group, key: str, default: str = "-") -> str:
    """A param of the group's runs (they share it)."""
    return group.runs[0].data.params.get(key, default)


def epochs(group: Group) -> str:
    """The mean number of epochs to the chosen checkpoint, '-' when no run logged it."""
    best = group.metrics.get(BEST_EPOCH, ())  # counted from 0
    return f"{statistics.fmean(best) + 1:.0f}" if best else "-"


def table(groups: list[Group]) -> list[dict[str, str]]:
    """One row per group: test accuracy and agreement as mean ± std over seeds."""
    return [{"role": g.series, "variant": g.detail, "params": f"{g.params:,}", "seeds": str(len(g.runs)),
             "test acc": g.stat(TEST_ACC).text(), "agreement": g.stat(TEST_AGREEMENT).text(), "epochs": epochs(g)}
            for g in groups]


def plot_label(group: Group) -> str:
    """The group's line in a plot over sizes: its role and variant without the width."""
    return " ".join([group.series, *(p for p in group.detail.split() if not p.startswith("w="))])


def plot_accuracy(groups: list[Group], path: Path) -> None:
    """Test accuracy against parameters (log x), as the paper's Figure 1: the teacher as a line, one series for
    each (role, rank) of the shallow nets, error bars one standard deviation over seeds."""
    fig, ax = figures.new_figure((7, 4.5))
    lines: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        acc = g.stat(TEST_ACC).mean
        if acc is None:
            continue
        if g.series == "teacher":
            color, style = figures.LINES["teacher"]
            label = f"teacher {param(g, 'model.name', '?')} ({g.params:,} params)"
            ax.axhline(acc, color=color, linestyle=style, label=label)
        else:
            lines[plot_label(g)].append(g)
    for label, members in sorted(lines.items()):
        figures.accuracy_series(ax, label, members, dashed=label.startswith("baseline"))
    figures.finish(fig, ax, path, 8, **figures.ACCURACY_AXES,
                   title="Shallow nets: labels vs the teacher's logits (mimic, kd)")


def plot_curves(client: MlflowClient, groups: list[Group], path: Path) -> bool:
    """Validation accuracy per epoch of baseline vs mimic vs kd at the largest shape (width, rank) the baseline
    shares with a student (first seed and plainest variant of each role); False when there is no such pair."""
    shallow: dict[tuple[str, str, str], Group] = {}
    for g in sorted(groups, key=lambda g: len(g.detail)):  # the plainest variant of a role first
        if g.series in ("baseline", *STUDENTS) and param(g, "model.width") != "-":  # shallow nets only
            shallow.setdefault((g.series, param(g, "model.width"), param(g, "model.rank")), g)
    pairs = {(w, k) for (role, w, k) in shallow if role in STUDENTS and ("baseline", w, k) in shallow}
    if not pairs:
        return False
    width, rank = max(pairs, key=lambda wk: (int(wk[0]), wk[1] == "None"))
    fig, ax = figures.new_figure((7, 4.5))
    for role in ("baseline", *STUDENTS):
        if (role, width, rank) in shallow:
            run = min(shallow[(role, width, rank)].runs, key=seed)
            values = [100 * v for _, v in history(client, run.info.run_id, VAL_ACC)]
            ax.plot(range(1, len(values) + 1), values, label=f"{role} ({run.info.run_name})")
    figures.finish(fig, ax, path, 8, xlabel="epoch", ylabel="validation accuracy (%)",
                   title=f"width {width}, rank {rank}")
    return True


def markdown(rows: list[dict[str, str]]) -> str:
    """The rows as a Markdown table."""
    return markdown_table(COLUMNS, [[row[c] for c in COLUMNS] for row in rows])


def main(argv: list[str] | None = None) -> int:
    """Print the table and write it as Markdown and CSV under outputs/reports/."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="mnist1d", help="MLflow experiment (one per dataset)")
    parser.add_argument("--parent", help="run id of a sweep's parent run (default: the newest sweep)")
    parser.add_argument("--all", action="store_true", help="every finished run of the experiment")
    parser.add_argument("--tracking-uri", default=default_uri())
    parser.add_argument("--out", type=Path, default=project_root() / "outputs" / "reports")
    args = parser.parse_args(argv)

    client = MlflowClient(args.tracking_uri)
    try:
        runs, parent = sweep_runs(client, args.experiment, args.parent, args.all)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not runs:
        print("error: no finished runs to report", file=sys.stderr)
        return 1
    groups = group_runs(runs)
    rows = table(groups)
    text = markdown(rows)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / args.experiment
    files = [stem.with_suffix(".md"), stem.with_suffix(".csv"), Path(f"{stem}_accuracy.png")]
    files[0].write_text(text + "\n")
    with open(files[1], "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    plot_accuracy(groups, files[2])
    if plot_curves(client, groups, Path(f"{stem}_curves.png")):
        files.append(Path(f"{stem}_curves.png"))
    if parent:  # the report belongs to its sweep: browse it in the UI beside the runs it summarises
        for file in files:
            client.log_artifact(parent, str(file), "report")
        publish_report(client, parent, rows, text)
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
