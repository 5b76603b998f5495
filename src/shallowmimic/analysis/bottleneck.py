"""The bottleneck stage's table and verdicts: epochs and wall time for each rank to reach the unfactorised net's
95% level of its logit-MSE reduction, per optimizer, and whether the paper's claim (it speeds up SGD) holds."""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.entities import Run

from shallowmimic.analysis import study_runs as read
from shallowmimic.analysis.convergence import first_at_or_below, level
from shallowmimic.analysis.study_runs import Stat, Study, group_by, metric, net_label, number
from shallowmimic.analysis.tables import Table
from shallowmimic.tracking.keys import EPOCHS, FIT_SECONDS, VAL_LOGIT_MSE
from shallowmimic.tracking.search import history


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
    rates = {opt: runs[0].data.params.get("optimizer.lr", "?") for (opt, _), runs in grouped.items()}
    table.note = (" ".join(f"{o}'s 95% level: validation logit-MSE {b:.4g}." for o, b in bars.items() if b) + " "
                  + "Learning rates: " + ", ".join(f"{o} {lr}" for o, lr in sorted(rates.items())) + ". "
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
        worse_fit = read.compare(fit, plain_fit) > 0
        ends = (f", but it ends at a worse fit (validation logit-MSE {fit.text()} vs {plain_fit.text()})."
                if worse_fit else ".")
        if len(row["epochs to 95%"].values) < min(2, row["seeds"]):  # one seed that got there is no spread to weigh
            sentences.append(f"With {optimizer}, only {row['reached']} runs of the factorised net (k={rank}) reached "
                             f"the unfactorised net's 95% level: too few to compare its speed" + ends)
            sgd += [(False, False, not worse_fit)] if str(optimizer).lower() == "sgd" else []
            continue
        epochs, fewer = _compare(row["epochs to 95%"], plain["epochs to 95%"], ("fewer", "more", "as many"), "epochs")
        seconds, sooner = _compare(row["time to 95%"], plain["time to 95%"], ("less", "more", "as much"), "wall time")
        sentences.append(f"With {optimizer}, the factorised net (k={rank}) reached the unfactorised net's 95% level; "
                         f"against the unfactorised one it took {epochs} and {seconds} ({row['reached']} runs "
                         "reached it)" + ends)
        if str(optimizer).lower() == "sgd":
            sgd.append((fewer < 0, sooner < 0, not worse_fit))
    early = _far_from_converged(rows)
    sentences += early
    if sgd:  # a speed-up is the claim; the fit only qualifies one that was measured, as does SGD far from converged
        faster = [f or s for f, s, _ in sgd]
        verdict = "reproduced" if all(all(c) for c in sgd) and not early else "partly" if any(faster) else \
            "not reproduced"
        sentences.append(f"The paper's claim that the bottleneck speeds up SGD: {verdict}.")
    return sentences


def _far_from_converged(rows: dict[tuple[str, str], dict]) -> list[str]:
    """A warning where SGD's unfactorised net ends at more than twice Adam's logit-MSE: its speed-up, if any, is
    one of early training."""
    sgd = next((r for (o, k), r in rows.items() if str(o).lower() == "sgd" and k == "none"), None)
    adam = next((r for (o, k), r in rows.items() if str(o).lower() == "adam" and k == "none"), None)
    if sgd is None or adam is None or None in (sgd["final val mse"].mean, adam["final val mse"].mean):
        return []
    if sgd["final val mse"].mean <= 2 * adam["final val mse"].mean:
        return []
    return [f"Without a bottleneck SGD ends at validation logit-MSE {sgd['final val mse'].text()} against Adam's "
            f"{adam['final val mse'].text()}: at its rate SGD is far from converged, so its comparison is one of "
            "early training."]
