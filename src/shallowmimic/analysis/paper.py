"""Write the paper study's report (`make paper`) from its finished runs in MLflow.

report.md, PNG figures and results.csv (every table, each row with its run ids) go to outputs/reports/paper/ and
are logged to the study's parent run under `report/`.

    python -m shallowmimic.analysis.paper                              # the newest study in the project's store
    python -m shallowmimic.analysis.paper --study RUN_ID --out DIR
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from shallowmimic import project_root
from shallowmimic.analysis import figures, tables, tuning
from shallowmimic.analysis import study_runs as read
from shallowmimic.analysis.bottleneck import bottleneck_table, bottleneck_verdicts
from shallowmimic.analysis.study_runs import PLAIN, REGULARISED, Group, Stat, Study
from shallowmimic.analysis.tables import Table
from shallowmimic.tracking.keys import TEST_ACC
from shallowmimic.tracking.store import default_uri

# points of test accuracy the best mimic may fall short of its teacher and still reproduce the paper's central
# claim: a shallow net trained on a deep net's logits is about as accurate as the deep net
GAP = 2.0


@dataclass
class Context:
    """What the sections share: the study, its main groups, and what they have written so far."""

    client: MlflowClient
    study: Study
    out: Path
    min_seconds: float
    groups: list[Group]
    tables: list[Table] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)

    def table(self, table: Table) -> str:
        """Keep the table for the CSV; its markdown under a heading."""
        self.tables.append(table)
        return f"### {table.title}\n\n{tables.markdown(table)}\n"

    def missing(self, *stages: str) -> str:
        """An empty section's line; '' when every stage it needs is present."""
        gone = [s for s in stages if not self.study.stage(s)]
        return f"_Not in this study: stage {', '.join(f'`{s}`' for s in gone)} missing._\n" if gone else ""


def header(ctx: Context) -> str:
    """Which study, on which data, and the command that reproduces it."""
    study, size = ctx.study, ctx.study.size
    data = study.run.data.params.get("study.data") or next(
        (r.data.params["data.name"] for r in study.jobs if "data.name" in r.data.params), None)
    if data is None:  # one experiment per data set: its name is the data set's
        data = ctx.client.get_experiment(study.run.info.experiment_id).name
    command = "make paper" + (f" SIZE={size}" if size and size != "full" else "")  # the Makefile's defaults
    command += f" DATA={data}" if data != "mnist1d" else ""
    missing = study.missing()
    return (f"# Do deep nets really need to be deep? The study's report\n\n"
            f"Study run `{study.run.info.run_id}` (size `{size or '?'}`) on data set `{data}`, "
            f"{len(study.jobs)} finished runs. Reproduce with `{command}`.\n\n"
            f"Numbers are mean ± std over seeds (std from 2 seeds on); settings were chosen on validation only. "
            f"`results.csv` holds every table, accuracies in %, each row with the run ids it came from.\n\n"
            f"Stages present: {', '.join(study.present()) or 'none'}."
            + (f" Missing: {', '.join(missing)} (their sections say so)." if missing else "") + "\n")


def tuning_section(ctx: Context) -> str:
    """The equal tuning budget: what each family reached as its trials grew, and the variants on logits."""
    parts = ["## Tuning: the same budget for every objective\n", ctx.missing("tune_labels", "tune_l2", "tune_kd")]
    if any(ctx.study.stage(s) for s in tuning.FAMILIES):
        parts.append(ctx.table(tuning.budget_table(ctx.study, int(ctx.study.run.data.params.get("study.budget", 9)))))
    if ctx.study.stage("tune_l2") or ctx.study.stage("tune_kd"):
        variants = tuning.variants_table(ctx.study)
        parts.append(ctx.table(variants))
        ctx.verdicts += tuning.high_t_sentences(variants)
    return "\n".join(p for p in parts if p)


def figure1(ctx: Context) -> str:
    """The main table and Figure 1."""
    parts = ["## Figure 1: accuracy vs parameters\n", ctx.missing("teachers", "baselines", "deep", "mimic", "kd")]
    if ctx.groups:
        figures.figure1(ctx.groups, ctx.out / "figure1.png")
        ctx.files.append(ctx.out / "figure1.png")
        parts += ["![Figure 1](figure1.png)\n", ctx.table(tables.main_table(ctx.groups))]
        unconverged = sorted({g.series for g in ctx.groups if g.converged and not all(g.converged)})
        if unconverged:
            parts.append(f"Not every run converged in: {', '.join(unconverged)}; their accuracy is a lower bound.\n")
    return "\n".join(p for p in parts if p)


def figure2(ctx: Context) -> str:
    """Figure 2 and its numbers: do mimics overfit?"""
    parts = ["## Figure 2: learning curves over examples seen\n", ctx.missing("figure2")]
    drawn = figures.figure2(ctx.client, ctx.study, ctx.out / "figure2.png")
    if drawn is None:
        parts.append("_No width common to the plain and regularised baselines and the mimic: no Figure 2._\n")
        return "\n".join(p for p in parts if p)
    ctx.files.append(ctx.out / "figure2.png")
    table = tables.figure2_table(*drawn)
    parts += ["![Figure 2](figure2.png)\n", ctx.table(table)]
    drops = {str(r["series"]): r["val drop from peak"] for r in table.rows}
    mimic, plain = [d.mean if isinstance(d, Stat) else None for d in (drops.get("mimic"), drops.get(PLAIN))]
    if not ctx.study.stage("figure2"):  # early stopping ends a run near its peak: no run can be seen to overfit
        parts.append("These runs stopped early, so none can end far below its peak: no evidence either way.\n")
        ctx.verdicts.append("Mimics do not overfit (Figure 2): not measured (early-stopped runs only).")
    elif isinstance(mimic, float):
        beside = f", the plain baseline's {plain:.1f}" if isinstance(plain, float) else ""
        verdict = "reproduced" if mimic < 1 and (not beside or mimic <= plain) else "not reproduced"
        ctx.verdicts.append(f"Mimics do not overfit (Figure 2): the mimic's validation accuracy ends {mimic:.1f} "
                            f"points below its peak{beside}: {verdict}.")
    return "\n".join(p for p in parts if p)


def figure3(ctx: Context) -> str:
    """Figure 3 and its table."""
    parts = ["## Figure 3: student vs teacher accuracy\n", ctx.missing("figure3")]
    points = figures.figure3_points(ctx.study)
    if points:
        figures.figure3(points, ctx.out / "figure3.png")
        ctx.files.append(ctx.out / "figure3.png")
        parts += ["![Figure 3](figure3.png)\n", ctx.table(tables.figure3_table(points))]
        found = figures.tracks(points)
        known = [rises for _, rises in found if rises is not None]
        verdict = "undetermined" if not known else "reproduced" if all(known) else "not reproduced"
        ctx.verdicts.append(f"Student accuracy tracks teacher accuracy (Figure 3): "
                            f"{'; '.join(s for s, _ in found)}: {verdict}.")
    return "\n".join(p for p in parts if p)


def bottleneck(ctx: Context) -> str:
    """The bottleneck's convergence speed-up, measured."""
    parts = ["## The bottleneck: does factorising speed up convergence?\n", ctx.missing("bottleneck")]
    if ctx.study.stage("bottleneck"):
        table = bottleneck_table(ctx.client, ctx.study)
        parts.append(ctx.table(table))
        ctx.verdicts += bottleneck_verdicts(table)
    return "\n".join(p for p in parts if p)


def controls(ctx: Context) -> str:
    """Objective vs data (transfer sets) and L2 vs KD."""
    parts = ["## Controls\n", ctx.missing("controls", "mimic", "kd")]
    if ctx.study.stage("controls"):
        table = tables.controls_table(ctx.study)
        parts.append(ctx.table(table))
        accs = {str(r["transfer set"]): r["test acc"].mean for r in table.rows if isinstance(r["test acc"], Stat)}
        alone = accs.pop("training inputs only", None)
        if alone is not None and accs:
            name, best = max(accs.items(), key=lambda kv: kv[1] or 0.0)
            ctx.verdicts.append(f"Objective vs data: on the training inputs alone the mimic reaches {alone:.1f}%, "
                                f"on {name} inputs {best:.1f}% ({best - alone:+.1f} points from the extra data).")
    if ctx.study.stage("mimic") and ctx.study.stage("kd"):
        table = tables.l2_vs_kd_table(ctx.study)
        parts.append(ctx.table(table))
        ctx.verdicts += l2_vs_kd(table)
    return "\n".join(p for p in parts if p)


def l2_vs_kd(table: Table) -> list[str]:
    """At each net both objectives trained: which is more accurate, and is the gap larger than the spread?"""
    by_net: dict[str, dict[str, Stat]] = {}
    for row in table.rows:
        if isinstance(row["test acc"], Stat):
            by_net.setdefault(str(row["net"]), {})[str(row["objective"])] = row["test acc"]
    sentences = []
    for net, stats in by_net.items():
        l2, kd = (next((v for k, v in stats.items() if k.startswith(name)), None) for name in ("L2", "KD"))
        if l2 is None or kd is None or l2.mean is None or kd.mean is None:
            continue
        sign = read.compare(kd, l2)
        if sign == 0:
            sentences.append(f"L2 vs KD at {net}: L2 {l2.text()}, KD {kd.text()}: no difference beyond the seeds' "
                             "spread.")
            continue
        ahead = "KD" if sign > 0 else "L2"
        sentences.append(f"L2 vs KD at {net}: L2 {l2.text()}, KD {kd.text()}; {ahead} is ahead by "
                         f"{abs(kd.mean - l2.mean):.1f} points, more than the seeds' spread.")
    return sentences


def cost(ctx: Context) -> str:
    """The paper's section 5.3: what each net costs at inference."""
    parts = ["## Inference cost\n"]
    table = tables.cost_table(ctx.client, ctx.study, ctx.groups, ctx.min_seconds)
    parts.append(ctx.table(table) if table.rows else "_No runs to measure._\n")
    return "\n".join(parts)


def _acc(group: Group) -> float:
    """The group's mean test accuracy in %."""
    return group.stat(TEST_ACC).mean or 0.0


def headline(groups: list[Group]) -> list[str]:
    """Figure 1's claims, computed: the best mimic near its teacher, above the regularised baseline at equal
    parameters, and as accurate as the label-trained DeepNet of about its size."""
    def series(name: str) -> list[Group]:
        """The series' groups that have a test accuracy."""
        return [g for g in groups if g.series == name and g.stat(TEST_ACC).mean is not None]

    found, mimics = [], series("mimic")
    teachers = sorted(series("teacher"), key=lambda g: len(g.runs), reverse=True)  # the teacher with most seeds
    if teachers and mimics:
        best, teacher = max(mimics, key=_acc), _acc(teachers[0])
        gap = teacher - _acc(best)
        found.append(f"The best mimic ({best.net}, {best.params:,} params) reaches {_acc(best):.1f}% against the "
                     f"teacher's {teacher:.1f}%, {abs(gap):.1f} points {'below' if gap >= 0 else 'above'} it: " +
                     ("reproduced" if gap <= GAP else f"not reproduced (more than {GAP:g} points)") + ".")
    regularised = {g.params: g for g in series(REGULARISED)}
    pairs = [(m, regularised[m.params]) for m in mimics if m.params in regularised]
    if pairs:  # a win is a lead beyond the seeds' spread (read.compare)
        wins = sum(read.compare(m.stat(TEST_ACC), b.stat(TEST_ACC)) > 0 for m, b in pairs)
        found.append(f"At equal parameters the mimic beats the tuned baseline by more than the seeds' spread "
                     f"at {wins} of {len(pairs)} sizes (" + ", ".join(
                         f"{m.net}: {m.stat(TEST_ACC).text()} vs {b.stat(TEST_ACC).text()}" for m, b in pairs) + "): "
                     + ("reproduced" if wins == len(pairs) else "partly" if wins else "not reproduced") + ".")
    deep = [g for g in groups if g.series.startswith("DeepNet") and g.stat(TEST_ACC).mean is not None]
    matched = [(d, min(mimics, key=lambda m, d=d: abs(m.params - d.params))) for d in deep if mimics]
    matched = [(d, m) for d, m in matched if max(d.params, m.params) <= 1.5 * min(d.params, m.params)]
    if matched:  # "about its size": the nearest mimic within a factor 1.5 of the deep net's parameters
        close = sum(read.compare(m.stat(TEST_ACC), d.stat(TEST_ACC)) >= 0 for d, m in matched)
        found.append(f"The mimic is not below the label-trained DeepNet of about its size by more than the seeds' "
                     f"spread at "
                     f"{close} of {len(matched)} sizes (" + ", ".join(
                         f"{d.series} {d.params:,}: {_acc(d):.1f}% vs mimic {m.params:,}: {_acc(m):.1f}%"
                         for d, m in matched) + "): "
                     + ("reproduced" if close == len(matched) else "partly" if close else "not reproduced") + ".")
    return found


def closing(ctx: Context) -> str:
    """'What reproduces', from the comparisons the sections computed."""
    lower = sorted({g.series for g in ctx.groups if g.converged and not all(g.converged)})
    caveat = f" Not every run of {', '.join(lower)} converged: their numbers are lower bounds." if lower else ""
    body = " ".join(ctx.verdicts) or "Nothing to compare: the study has too few stages."
    return f"## What reproduces\n\n{body}{caveat}\n"


SECTIONS = (tuning_section, figure1, figure2, figure3, bottleneck, controls, cost)


def write_report(client: MlflowClient, study_run_id: str, out_dir: str | Path,
                 min_seconds: float = 0.5) -> list[Path]:
    """Write report.md, the figures and results.csv for the study; log them to its run under `report/`."""
    study = read.load_study(client, study_run_id)  # first: a wrong run id leaves the folder as it was
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("figure1.png", "figure2.png", "figure3.png"):  # a figure this study cannot draw must not linger
        (out / stale).unlink(missing_ok=True)
    ctx = Context(client, study, out, min_seconds, read.main_groups(study))
    ctx.verdicts += headline(ctx.groups)
    text = "\n".join([header(ctx), *(section(ctx) for section in SECTIONS), closing(ctx)])
    (out / "report.md").write_text(text)
    tables.write_csv(ctx.tables, out / "results.csv")
    files = [out / "report.md", out / "results.csv", *ctx.files]
    for path in files:  # beside the runs it summarises, in the UI
        client.log_artifact(study_run_id, str(path), "report")
    return files


def main(argv: list[str] | None = None) -> int:
    """Write the report of one study (the newest by default)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", help="run id of the study's parent run (default: the newest role=study run)")
    parser.add_argument("--tracking-uri", default=default_uri())
    parser.add_argument("--out", type=Path, default=project_root() / "outputs" / "reports" / "paper")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="least time per latency measurement")
    args = parser.parse_args(argv)
    client = MlflowClient(args.tracking_uri)
    newest = None if args.study else read.newest_study(client)
    if not (args.study or newest):
        print("error: no study run (tag role=study) in the store; run `make paper` first", file=sys.stderr)
        return 1
    study_id = args.study or newest.info.run_id
    try:
        files = write_report(client, study_id, args.out, args.min_seconds)
    except MlflowException as error:  # e.g. --study names no run: say so, not a traceback
        print(f"error: --study={study_id}: {error.message}", file=sys.stderr)
        return 1
    print((args.out / "report.md").read_text())
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
