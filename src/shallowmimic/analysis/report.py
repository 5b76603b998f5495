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
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from mlflow import MlflowClient
from mlflow.entities import Run

from shallowmimic import project_root
from shallowmimic.errors import UserError
from shallowmimic.settings import ROLES
from shallowmimic.tracking.descriptions import publish_report
from shallowmimic.tracking.search import history, sweep_runs
from shallowmimic.tracking.store import default_uri

ROLE_ORDER = {role: i for i, role in enumerate(ROLES)}  # the paper's order: teacher, baseline, mimic, kd
STUDENTS = ("mimic", "kd")  # the roles that learn from a teacher's logits
COLUMNS = ["role", "variant", "params", "seeds", "test acc", "agreement", "epochs"]  # variant names the model


@dataclass
class Group:
    """The runs of one configuration (role, model, variant: width, rank, conv front, T, ensemble) across seeds."""

    role: str
    model: str
    variant: str
    params: int
    runs: list[Run]

    def values(self, metric: str) -> list[float]:
        """The metric of every run that logged it."""
        return [r.data.metrics[metric] for r in self.runs if metric in r.data.metrics]

    def param(self, key: str) -> str:
        """A param of the group's runs (they share it)."""
        return self.runs[0].data.params.get(key, "-")

    @property
    def series(self) -> str:
        """The group's line in a plot over sizes: its role and variant without the width."""
        return " ".join([self.role, *(p for p in self.variant.split() if not p.startswith("w="))])


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs grouped by configuration, in the paper's order: teacher, baseline, mimic, kd; then by size."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        key = (run.data.tags.get("role", "?"), run.data.params.get("model.name", "?"),
               run.data.tags.get("variant", "-"), int(run.data.params.get("n_params", 0)))
        groups[key].append(run)
    return [Group(*key, members) for key, members in
            sorted(groups.items(), key=lambda kv: (ROLE_ORDER.get(kv[0][0], 9), kv[0][3], kv[0][2]))]


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}%"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}%"


def table(groups: list[Group]) -> list[dict[str, str]]:
    """One row per group: test accuracy and agreement as mean +- std over seeds."""
    rows = []
    for g in groups:
        epochs = g.values("val/best_epoch")
        rows.append({"role": g.role, "variant": g.variant, "params": f"{g.params:,}",
                     "seeds": str(len(g.runs)), "test acc": _mean_std(g.values("test/acc")),
                     "agreement": _mean_std(g.values("test/agreement")),
                     "epochs": f"{statistics.fmean(epochs) + 1:.0f}" if epochs else "-"})
    return rows


def plot_accuracy(groups: list[Group], path: Path) -> None:
    """Test accuracy against parameters (log x), as the paper's Figure 1: the teacher as a line, one series for
    each (role, rank) of the shallow nets, error bars one standard deviation over seeds."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        if g.role == "teacher":
            acc = 100 * statistics.fmean(g.values("test/acc"))
            ax.axhline(acc, color="black", linestyle=":", label=f"teacher {g.model} ({g.params:,} params)")
        elif g.values("test/acc"):
            series[g.series].append(g)
    for label, members in sorted(series.items()):
        members.sort(key=lambda g: g.params)
        accs = [[100 * v for v in g.values("test/acc")] for g in members]
        ax.errorbar([g.params for g in members], [statistics.fmean(a) for a in accs],
                    yerr=[statistics.stdev(a) if len(a) > 1 else 0 for a in accs], marker="o", capsize=3,
                    linestyle="--" if label.startswith("baseline") else "-", label=label)
    ax.set(xscale="log", xlabel="parameters", ylabel="test accuracy (%)",
           title="Shallow nets: labels vs the teacher's logits (mimic, kd)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(client: MlflowClient, groups: list[Group], path: Path) -> bool:
    """Validation accuracy per epoch of baseline vs mimic vs kd at the largest shape (width, rank) the baseline
    shares with a student (first seed and plainest variant of each role); False when there is no such pair."""
    shallow: dict[tuple[str, str, str], Group] = {}
    for g in sorted(groups, key=lambda g: len(g.variant)):  # the plainest variant of a role first
        if g.role in ("baseline", *STUDENTS) and g.param("model.width") != "-":  # shallow nets only
            shallow.setdefault((g.role, g.param("model.width"), g.param("model.rank")), g)
    pairs = {(w, k) for (role, w, k) in shallow if role in STUDENTS and ("baseline", w, k) in shallow}
    if not pairs:
        return False
    width, rank = max(pairs, key=lambda wk: (int(wk[0]), wk[1] == "None"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for role in ("baseline", *STUDENTS):
        if (role, width, rank) not in shallow:
            continue
        run = min(shallow[(role, width, rank)].runs, key=lambda r: int(r.data.params.get("seed", 0)))
        values = [100 * v for _, v in history(client, run.info.run_id, "val/acc")]
        ax.plot(range(1, len(values) + 1), values, label=f"{role} ({run.info.run_name})")
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title=f"width {width}, rank {rank}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def markdown(rows: list[dict[str, str]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[c] for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


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
