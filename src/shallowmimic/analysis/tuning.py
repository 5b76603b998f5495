"""The equal tuning budget: every family of objective (labels, deep nets on labels, L2 on logits, KD) is tuned at
each net by a grid of the learning rate x the family's own knob, run on one seed (the tune_<family> stages of
conf/study/full.yaml). The trials of one net are put in a seeded random order, and the best on validation of the
first `budget` of them is the family's setting there: each family sees as many trials, however large its grid.
Used by the study (to fill the later stages) and by its report (the tables below), so both choose alike."""

from __future__ import annotations

import random
import re

from mlflow.entities import Run

from shallowmimic.analysis.study_runs import Stat, Study, group_by, net_label, number, setting, values
from shallowmimic.analysis.tables import Table
from shallowmimic.tracking.keys import SELECT_ON
from shallowmimic.tracking.search import best_by_val

FAMILIES = {"tune_labels": "labels", "tune_deep": "DeepNet on labels", "tune_l2": "L2 on logits", "tune_kd": "KD"}
ORDER_SEED = 0  # the trials' order: the same for every family and net, and for every rerun of the study


def net_key(run: Run) -> str:
    """The net a trial tunes, as its override's value: '128' (model.width) or '[58,58]' (model.hidden)."""
    params = run.data.params
    return params["model.hidden"].replace(" ", "") if "model.hidden" in params else params.get("model.width", "?")


def in_order(trials: list[Run]) -> list[Run]:
    """One net's trials in the seeded random order, one run per setting (a reused copy is the same trial)."""
    unique = {setting(r): r for r in sorted(trials, key=lambda r: r.info.start_time, reverse=True)}
    ordered = [unique[key] for key in sorted(unique)]
    random.Random(ORDER_SEED).shuffle(ordered)
    return ordered


def chosen(trials: list[Run], budget: int) -> dict[str, Run]:
    """Per net, the best on validation of its first `budget` trials in the seeded order."""
    picks = {net: best_by_val(in_order(runs)[:budget]) for net, runs in group_by(trials, net_key).items()}
    return {net: run for net, run in picks.items() if run is not None}


def as_overrides(run: Run) -> str:
    """The chosen trial as the overrides a later stage trains it with (its net, its rate and its knob)."""
    params = run.data.params
    net = "model.hidden" if "model.hidden" in params else "model.width"
    parts = [f"{net}={net_key(run)}", f"optimizer.lr={params['optimizer.lr']}"]
    parts += [f"{key}={params[key]}" for key in ("model.dropout", "optimizer.weight_decay") if key in params]
    parts += [f"objective={params['objective.name']}"] if "objective.name" in params else []
    parts += [f"objective.temperature={params['objective.temperature']}"] if "objective.temperature" in params else []
    return " ".join(parts)


def part_name(key: str) -> str:
    """A net key as a stage's part ('128', '58-58'): a folder name and a tag value without brackets."""
    return re.sub(r"\W+", "-", key).strip("-")


def budget_table(study: Study, budget: int) -> Table:
    """Per family and net: the best validation accuracy after 1, 3, `budget` and all trials, and the choice."""
    steps = sorted({1, 3, budget})
    table = Table("tuning", f"Equal tuning budget: best validation accuracy after n trials (choice: first {budget})",
                  ["family", "net", "trials", *(f"after {n}" for n in steps), "after all", "chosen"])
    for stage, family in FAMILIES.items():
        for runs in group_by(study.stage(stage), net_key).values():
            ordered = in_order(runs)
            best = {n: best_by_val(ordered[:n]) for n in [*steps, len(ordered)]}
            row = {f"after {n}": Stat(values([best[n]], SELECT_ON)) if best[n] else None for n in steps}
            pick = best[min(budget, len(ordered))]
            table.add({"family": family, "net": net_label(runs[0]), "trials": len(ordered), **row,
                       "after all": Stat(values([best[len(ordered)]], SELECT_ON)),
                       "chosen": setting(pick) if pick else "-"}, [r.info.run_id for r in ordered])
    table.note = ("One seed per trial; the order is seeded and the same for every family. Validation accuracy of "
                  "the chosen checkpoint; test is read only for the runs of Figure 1.")
    return table


def variant(run: Run) -> str:
    """An objective's variant, its own knob less the rate: 'L2 raw', 'L2 centred', 'KD T=20.0', 'dropout=0.5'."""
    knob = " ".join(setting(run).split(" ")[1:]) or "none"
    return f"KD {knob}" if "objective.temperature" in run.data.params else knob


def variants_table(study: Study) -> Table:
    """Per net, each variant of L2 and KD at its best learning rate: the T ladder beside the L2 normalisations."""
    table = Table("variants", "Objectives on logits: each variant at its best learning rate (validation, one seed)",
                  ["net", "objective", "best lr", "val acc", "trials"])
    runs = study.stage("tune_l2") + study.stage("tune_kd")
    for (_, name), trials in sorted(group_by(runs, lambda r: (net_key(r), variant(r))).items(),
                                      key=lambda kv: (number(kv[1][0], "model.width"), kv[0][1])):
        best = best_by_val(trials)
        if best is not None:
            table.add({"net": net_label(best), "objective": name, "best lr": best.data.params.get("optimizer.lr"),
                       "val acc": Stat(values([best], SELECT_ON)), "trials": len(trials)},
                      [r.info.run_id for r in trials])
    return table


def high_t_sentences(table: Table) -> list[str]:
    """Hinton's limit, checked: KD at its highest temperature beside L2 on centred logits, at each net."""
    by_net: dict[str, dict[str, Stat]] = {}
    for row in table.rows:
        by_net.setdefault(str(row["net"]), {})[str(row["objective"])] = row["val acc"]
    sentences = []
    for net, stats in by_net.items():
        kd = sorted((float(k.split("=")[1]), v) for k, v in stats.items() if k.startswith("KD T="))
        centred = stats.get("L2 centred")
        if kd and centred is not None and centred.mean is not None and kd[-1][1].mean is not None:
            t, stat = kd[-1]
            sentences.append(f"At {net}, KD at T={t:g} reaches {stat.text()} on validation and L2 on centred logits "
                             f"{centred.text()} ({stat.mean - centred.mean:+.1f} points; one seed each).")
    return sentences

