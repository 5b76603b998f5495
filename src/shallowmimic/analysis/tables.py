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
from shallowmimic.analysis.convergence import first_at_or_below, level
from shallowmimic.analysis.cost import flops_per_sample, latency_per_sample
from shallowmimic.analysis.figures import Curve, Point
from shallowmimic.analysis.study_runs import Group, Stat, Study, converged, group_by, metric, net_label, number, values
from shallowmimic.tracking.keys import EPOCHS, FIT_SECONDS, ROLE, SELECT_ON, TEST_ACC, TEST_AGREEMENT, VAL_LOGIT_MSE
from shallowmimic.tracking.search import history

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


def _to_level(run: Run, mse: list[float], bar: float | None) -> tuple[int, float] | None:
    """(epochs, seconds) until the run's validation logit-MSE is at or below `bar`; None if it never is."""
    i = first_at_or_below(mse, bar)
    fit_s, epochs = metric(run, FIT_SECONDS), metric(run, EPOCHS)
    if i is None or not fit_s or not epochs:
        return None
    return i + 1, fit_s * (i + 1) / epochs  # history index i: reached after i + 1 epochs


def bottleneck_table(client: MlflowClient, study: Study) -> Table:
    """Per (optimizer, rank): epochs and wall time to the unfactorised net's 95% level, and the final fit."""
    table = Table("bottleneck", "The bottleneck: convergence speed at equal nonlinear width",
                  ["optimizer", "rank", "net", "params", "seeds", "epochs to 95%", "time to 95%", "final val mse",
                   "reached"])
    grouped = group_by(study.stage("bottleneck"),
                       lambda r: (r.data.params.get("optimizer.name", "?"), r.data.params.get("model.rank", "None")))
    curves = {r.info.run_id: [v for _, v in history(client, r.info.run_id, VAL_LOGIT_MSE)] for r in
              study.stage("bottleneck")}
    bars = {opt: level([curves[r.info.run_id] for r in runs]) for (opt, rank), runs in grouped.items()
            if rank in ("None", "null")}
    for (optimizer, rank), runs in sorted(grouped.items(), key=lambda kv: (kv[0][0], _rank(kv[0][1]))):
        measured = [m for m in (_to_level(r, curves[r.info.run_id], bars.get(optimizer)) for r in runs) if m]
        table.add({"optimizer": optimizer, "rank": "none" if rank in ("None", "null") else rank,
                   "net": net_label(runs[0]), "params": int(number(runs[0], "n_params")), "seeds": len(runs),
                   "epochs to 95%": Stat(tuple(m[0] for m in measured), 1.0, "", 1),
                   "time to 95%": Stat(tuple(m[1] for m in measured), 1.0, " s", 2),
                   "final val mse": Stat(tuple(curves[r.info.run_id][-1] for r in runs if curves[r.info.run_id]),
                                         1.0, "", 4),
                   "reached": f"{len(measured)}/{len(runs)}"}, [r.info.run_id for r in runs])
    table.note = (" ".join(f"{o}'s 95% level: validation logit-MSE {b:.4g}." for o, b in bars.items() if b) + " "
                  + " ".join(bottleneck_verdicts(table))).strip()
    return table


def _rank(rank: str) -> float:
    """A rank's sort key: numerically, none (unfactorised) last."""
    return float(rank) if rank.isdigit() else float("inf")


def _compare(ours: Stat, theirs: Stat, words: tuple[str, str, str], what: str) -> tuple[str, int]:
    """'fewer epochs (4.0 ± 0.1 vs 6.0 ± 0.2)' or 'as many epochs within the seeds' spread (...)', and the sign."""
    if ours.mean is None or theirs.mean is None:
        return f"(unmeasured) {what}", 0
    sign = read.compare(ours, theirs)
    word = {-1: words[0], 1: words[1], 0: words[2]}[sign]
    spread = " within the seeds' spread" if sign == 0 else ""
    return f"{word} {what}{spread} ({ours.text()} vs {theirs.text()})", sign


def bottleneck_verdicts(table: Table) -> list[str]:
    """One sentence per optimizer and rank (did the factorised net get there sooner than the unfactorised one, by
    more than the seeds' spread?), then whether the paper's claim holds: the bottleneck speeds up SGD."""
    rows = {(r["optimizer"], r["rank"]): r for r in table.rows}
    sentences, sgd = [], []
    for (optimizer, rank), row in rows.items():
        plain = rows.get((optimizer, "none"))
        if rank == "none" or plain is None:
            continue
        fit, plain_fit = row["final val mse"], plain["final val mse"]
        if row["epochs to 95%"].mean is None:  # a rank that removes capacity may never get down to the bar
            sentences.append(f"With {optimizer}, the factorised net (k={rank}) never reached the unfactorised net's "
                             f"95% level; it ends at validation logit-MSE {fit.text()} vs {plain_fit.text()}.")
            sgd += [(False, False, False)] if str(optimizer).lower() == "sgd" else []
            continue
        epochs, fewer = _compare(row["epochs to 95%"], plain["epochs to 95%"], ("fewer", "more", "as many"), "epochs")
        seconds, sooner = _compare(row["time to 95%"], plain["time to 95%"], ("less", "more", "as much"), "wall time")
        worse_fit = read.compare(fit, plain_fit) > 0
        sentences.append(f"With {optimizer}, the factorised net (k={rank}) reached the unfactorised net's 95% level "
                         f"in {epochs} and {seconds} than the unfactorised one ({row['reached']} runs reached it)"
                         + (f", but it ends at a worse fit (validation logit-MSE {fit.text()} vs {plain_fit.text()})."
                            if worse_fit else "."))
        if str(optimizer).lower() == "sgd":
            sgd.append((fewer < 0, sooner < 0, not worse_fit))
    if sgd:  # a speed-up is the claim; the fit only qualifies one that was measured
        faster = [f or s for f, s, _ in sgd]
        verdict = "reproduced" if all(all(c) for c in sgd) else "partly" if any(faster) else "not reproduced"
        sentences.append(f"The paper's claim that the bottleneck speeds up SGD: {verdict}.")
    return sentences


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
    """The run's net, built from its logged config.yaml (untrained: cost does not depend on the weights)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = OmegaConf.load(client.download_artifacts(run.info.run_id, "config.yaml", tmp))
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
