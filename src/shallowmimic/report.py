"""Read finished runs from MLflow and print the paper-style table (mean +- std over seeds).

    python -m shallowmimic.report                    # the newest sweep (e.g. the one `make run` launched)
    python -m shallowmimic.report --parent RUN_ID    # one sweep
    python -m shallowmimic.report --all              # every finished run of the experiment
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run

ROLE_ORDER = {"teacher": 0, "baseline": 1, "mimic": 2}
COLUMNS = ["role", "model", "width", "rank", "params", "seeds", "test acc", "agreement", "epochs"]


def default_outputs() -> Path:
    """The project's outputs/ folder (beside pyproject.toml in an editable install), else ./outputs."""
    root = Path(__file__).resolve().parents[2]
    return (root if (root / "pyproject.toml").exists() else Path.cwd()) / "outputs"


def fetch_runs(client: MlflowClient, experiment: str, parent: str | None, everything: bool) -> list[Run]:
    """FINISHED runs of one sweep (the newest by default) or of the whole experiment."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"error: experiment={experiment}: not in the store; run `make run` first")
    query = "attributes.status = 'FINISHED' and tags.role != 'sweep'"
    if not everything:
        if parent is None:
            sweeps = client.search_runs([exp.experiment_id], "tags.role = 'sweep'",
                                        order_by=["attributes.start_time DESC"], max_results=1)
            if not sweeps:
                raise SystemExit("error: no sweep in the store; pass --all or run `make run`")
            parent = sweeps[0].info.run_id
        query += f" and tags.mlflow.parentRunId = '{parent}'"
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], query, max_results=1000, page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}%"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}%"


def table(runs: list[Run]) -> list[dict[str, str]]:
    """One row per (role, model, width, rank): test accuracy and agreement as mean +- std over seeds."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        p = run.data.params
        groups[(run.data.tags.get("role", "?"), p.get("model.name", "?"), p.get("model.width", "-"),
                p.get("model.rank", "None"), p.get("n_params", "?"))].append(run)
    rows = []
    for (role, model, width, rank, params), members in sorted(
            groups.items(), key=lambda kv: (ROLE_ORDER.get(kv[0][0], 9), int(kv[0][4]), kv[0][2])):
        def metric(name: str, members: list[Run] = members) -> list[float]:
            return [r.data.metrics[name] for r in members if name in r.data.metrics]

        epochs = metric("val/best_epoch")
        rows.append({"role": role, "model": model, "width": width, "rank": "-" if rank == "None" else rank,
                     "params": f"{int(params):,}", "seeds": str(len(members)),
                     "test acc": _mean_std(metric("test/acc")), "agreement": _mean_std(metric("test/agreement")),
                     "epochs": f"{statistics.fmean(epochs) + 1:.0f}" if epochs else "-"})
    return rows


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
    parser.add_argument("--tracking-uri", default=os.environ.get(
        "MLFLOW_TRACKING_URI", f"sqlite:///{default_outputs() / 'mlflow.db'}"))
    parser.add_argument("--out", type=Path, default=default_outputs() / "reports")
    args = parser.parse_args(argv)

    runs = fetch_runs(MlflowClient(args.tracking_uri), args.experiment, args.parent, args.all)
    if not runs:
        print("error: no finished runs to report", file=sys.stderr)
        return 1
    rows = table(runs)
    text = markdown(rows)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.experiment}.md").write_text(text + "\n")
    with open(args.out / f"{args.experiment}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
