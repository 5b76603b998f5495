"""The study's tables, built from its runs: each row says which runs it came from (its run ids, and how many)."""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.utils import instantiate
from mlflow import MlflowClient
from mlflow.entities import Run
from omegaconf import OmegaConf
from torch import nn

from shallowmimic.analysis import study_runs as read
from shallowmimic.analysis.cost import flops_per_sample, latency_per_sample
from shallowmimic.analysis.figures import Curve, Point
from shallowmimic.analysis.study_runs import Group, Stat, Study, converged, group_by, net_label, number, values
from shallowmimic.tracking.keys import REUSED_FROM, ROLE, SELECT_ON, TEST_ACC, TEST_AGREEMENT

Cell = Stat | str | int | float | None


@dataclass
class Table:
    """A titled table: markdown shows `columns`; the CSV adds the table's name and each row's run ids."""

    name: str
    title: str
    columns: list[str]
    rows: list[dict[str, Cell]] = field(default_factory=list)
    run_ids: list[list[str]] = field(default_factory=list)  # one list per row
    note: str = ""

    def add(self, row: dict[str, Cell], run_ids: list[str]) -> None:
        """A row and the runs it came from."""
        self.rows.append(row)
        self.run_ids.append(run_ids)


def text(cell: Cell) -> str:
    """A cell as markdown shows it."""
    if isinstance(cell, Stat):
        return cell.text()
    if cell is None:
        return "-"
    if isinstance(cell, int):
        return f"{cell:,}"
    if isinstance(cell, float):
        return f"{cell:,.0f}" if abs(cell) >= 1000 else f"{cell:.3g}"
    return cell


def markdown(table: Table) -> str:
    """The table as a Markdown table, its note below."""
    cells = [[text(row.get(c)) for c in table.columns] for row in table.rows]
    return read.markdown_table(table.columns, cells) + (f"\n\n{table.note}" if table.note else "")


def convergence(flags: list[bool]) -> str:
    """'2/3' of runs converged; '0/3 (lower bound)' when none did: their accuracy could still rise."""
    if not flags:
        return "-"
    done = sum(flags)
    return f"{done}/{len(flags)}" + (" (lower bound)" if done == 0 else "")


def main_table(groups: list[Group]) -> Table:
    """Figure 1's numbers: one row per (series, size)."""
    table = Table("main", "Accuracy by series and size (Figure 1)",
                  ["series", "net", "params", "seeds", "test acc", "val acc", "agreement", "converged"])
    for g in groups:
        table.add({"series": f"{g.series} {g.detail}".strip(), "net": g.net, "params": g.params,
                   "seeds": len(g.runs) or 1, "test acc": g.stat(TEST_ACC), "val acc": g.stat(SELECT_ON),
                   "agreement": g.stat(TEST_AGREEMENT), "converged": convergence(g.converged)}, g.run_ids)
    return table


def figure2_table(width: int, curves: list[Curve]) -> Table:
    """Figure 2 in numbers: where each curve ends and how far validation fell from its peak (overfitting)."""
    table = Table("figure2", f"Learning curves at width {width} (Figure 2, first seed)",
                  ["series", "final train acc", "peak val acc", "final val acc", "val drop from peak"])
    for c in curves:
        peak, final = (max(v for _, v in c.val), c.val[-1][1]) if c.val else (None, None)
        acc = {"final train acc": c.train[-1][1] if c.train else None, "peak val acc": peak, "final val acc": final,
               "val drop from peak": None if peak is None or final is None else peak - final}
        # the curves are in % already: one-value Stats, so that markdown and CSV format them like the other tables
        table.add({"series": c.series} | {k: Stat((v,) if v is not None else (), 1.0, " pts" if "drop" in k else "%")
                                          for k, v in acc.items()}, [c.run_id])
    return table


def figure3_table(points: list[Point]) -> Table:
    """Figure 3 in numbers: each student width against each teacher."""
    table = Table("figure3", "Student vs teacher accuracy (Figure 3)",
                  ["student width", "teacher", "teacher test acc", "seeds", "student test acc", "agreement"])
    for p in points:
        table.add({"student width": p.width, "teacher": p.teacher, "teacher test acc": Stat((p.teacher_acc,)),
                   "seeds": len(p.run_ids), "student test acc": p.student, "agreement": p.agreement}, p.run_ids)
    return table


def _rows(table: Table, grouped: dict[Hashable, list[Run]], label: Callable[[Run], str], title: str) -> None:
    """One row of accuracy and agreement over seeds per group, labelled by `label` of its first run."""
    for members in grouped.values():
        table.add({title: label(members[0]), "net": net_label(members[0]),
                   "params": int(number(members[0], "n_params")),
                   "rows per epoch": int(number(members[0], "data.n_train_rows")), "seeds": len(members),
                   "test acc": Stat(values(members, TEST_ACC)), "agreement": Stat(values(members, TEST_AGREEMENT)),
                   "converged": convergence([converged(r) for r in members])}, [r.info.run_id for r in members])


def transfer_set(run: Run) -> str:
    """'training inputs only', or the transfer set's kind and size: 'generated 200,000', 'augment 100,000'."""
    if run.data.params.get("data.transfer") == "train":
        return "training inputs only"
    return f"{run.data.params.get('data.transfer')} {int(number(run, 'data.transfer_size')):,}"


def controls_table(study: Study) -> Table:
    """The mimic on its training inputs alone vs on generated sets: how much of the gain is the extra data."""
    table = Table("controls", "Controls: the transfer set", ["transfer set", "net", "rows per epoch", "seeds",
                                                             "test acc", "agreement", "converged"])
    widths = {number(r, "model.width") for r in study.stage("controls")}
    reference = [r for r in study.stage("mimic") if number(r, "model.width") in widths]  # the default transfer set
    runs = sorted(study.stage("controls") + reference, key=lambda r: (r.data.params.get("data.transfer") != "train",
                                                                      number(r, "data.transfer_size")))
    _rows(table, group_by(runs, transfer_set), transfer_set, "transfer set")
    return table


def objective(run: Run) -> str:
    """'L2 on logits' for a mimic ('L2 on centred logits' for objective=mimic_centred, ...), 'KD T=4.0' for kd."""
    if run.data.tags.get(ROLE) == "kd":
        return f"KD T={run.data.params.get('objective.temperature')}"
    variant = run.data.params.get("objective.name", "mimic").removeprefix("mimic").removeprefix("_")
    return f"L2 on {variant} logits" if variant else "L2 on logits"


def l2_vs_kd_table(study: Study) -> Table:
    """The mimic stage's L2 students against the kd stage's at every width both have."""
    table = Table("l2_vs_kd", "Controls: L2 on logits vs KD at equal width",
                  ["objective", "net", "params", "seeds", "test acc", "agreement", "converged"])
    widths = {number(r, "model.width") for r in study.stage("mimic")} & {number(r, "model.width")
                                                                        for r in study.stage("kd")}
    runs = [r for r in study.stage("mimic") + study.stage("kd") if number(r, "model.width") in widths]
    runs.sort(key=lambda r: (number(r, "model.width"), r.data.tags.get(ROLE, "")))
    _rows(table, group_by(runs, lambda r: (objective(r), net_label(r))), objective, "objective")
    return table


def build_net(client: MlflowClient, run: Run) -> tuple[nn.Module, tuple[int, ...]]:
    """The run's net, built from its logged config.yaml (untrained: cost does not depend on the weights); a reused
    run's config is its original's, which holds the artifacts."""
    source = run.data.tags.get(REUSED_FROM, run.info.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = OmegaConf.load(client.download_artifacts(source, "config.yaml", tmp))
    in_shape = tuple(int(d) for d in run.data.params["data.in_shape"].split("x"))
    return instantiate(cfg.model, in_shape=in_shape, num_classes=int(run.data.params["data.num_classes"])), in_shape


def cost_table(client: MlflowClient, study: Study, groups: list[Group], min_seconds: float) -> Table:
    """Parameters, FLOPs and CPU latency per sample of the teacher and one run of each series and size."""
    table = Table("cost", "Inference cost per sample (CPU)", ["series", "net", "params", "FLOPs",
                                                              "latency b=1 (us)", "latency b=1024 (us)"])
    picks: list[tuple[str, Run]] = []
    teacher = read.the_teacher(study)
    picks += [("teacher", teacher)] if teacher is not None else []
    picks += [(f"{g.series} {g.detail}".strip(), g.runs[0]) for g in groups if g.runs and g.series != "teacher"]
    for rank, runs in group_by(study.stage("bottleneck"), lambda r: r.data.params.get("model.rank")).items():
        picks.append((f"bottleneck rank={rank}", runs[0]))
    failed = []
    for series, run in picks:
        try:
            net, shape = build_net(client, run)
        except Exception as error:  # an old run without config.yaml loses its row, not the whole report
            failed.append(f"`{run.info.run_id}` ({type(error).__name__})")
            continue
        latency = {f"latency b={b} (us)": 1e6 * latency_per_sample(net, shape, b, min_seconds, repeats=3)[0]
                   for b in (1, 1024)}  # the median of 3 timings: robust to a busy machine
        table.add({"series": series, "net": net_label(run), "params": int(number(run, "n_params")),
                   "FLOPs": flops_per_sample(net, shape), **latency}, [run.info.run_id])
    table.note = f"Latency: median of 3 timings, eval mode, {torch.get_num_threads()} CPU threads." + (
        f" No config.yaml to build: {', '.join(failed)}." if failed else "")
    return table


def write_csv(tables: list[Table], path: Path) -> None:
    """Every table in one CSV: a `table` column, a mean and a std column per statistic, and the rows' run ids."""
    rows: list[dict[str, object]] = []
    for table in tables:
        for row, run_ids in zip(table.rows, table.run_ids, strict=True):
            flat: dict[str, object] = {"table": table.name}
            for column in table.columns:
                cell = row.get(column)
                if isinstance(cell, Stat):
                    flat[column] = "" if cell.mean is None else round(cell.mean, 4)
                    flat[f"{column} std"] = "" if cell.std is None else round(cell.std, 4)
                else:
                    flat[column] = "" if cell is None else cell
            rows.append(flat | {"run_ids": " ".join(run_ids)})
    fields = list(dict.fromkeys(key for row in rows for key in row if key != "run_ids")) + ["run_ids"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
