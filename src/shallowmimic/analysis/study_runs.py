"""The study's finished job runs read back from MLflow, and grouped into the rows and points of its report."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.entities import Run

from shallowmimic.tracking.keys import (
    BEST_EPOCH,
    EPOCHS,
    PARENT,
    ROLE,
    SELECT_ON,
    STAGE,
    STOP_REASON,
    STUDY_SIZE,
    TEACHER_RUN_ID,
    TEACHER_TEST_ACC,
    TEACHER_VAL_ACC,
    TEST_ACC,
    TEST_AGREEMENT,
)
from shallowmimic.tracking.search import get_run, newest, search, teacher_ids

# every stage the driver may run, in the order the report discusses them
STAGES = ("teachers", "teacher_quality", "tune_labels", "tune_deep", "tune_l2", "tune_kd", "baselines", "deep",
          "mimic", "kd", "figure2", "figure3", "controls", "bottleneck")
# stages a driver may split off one of STAGES: read as part of it (the plain baselines by their stage tag); an
# older study's searches are read as the tuning of their family
ALIASES = {"baselines_plain": "baselines", "figure2_regularised": "figure2", "controls_large": "controls",
           "bottleneck_sgd": "bottleneck", "baseline_search": "tune_labels", "kd_search": "tune_kd"}
PLAIN, REGULARISED = "shallow labels (plain)", "shallow labels (tuned)"
SERIES = ("teacher", "ensemble", PLAIN, REGULARISED, "DeepNet 2 layers", "DeepNet 3 layers", "DeepNet 4 layers",
          "mimic", "kd")


@dataclass(frozen=True)
class Stat:
    """Values of one metric over seeds, shown as mean ± std (std only from 2 values on)."""

    values: tuple[float, ...]
    scale: float = 100.0  # accuracies are stored as fractions and shown in %
    unit: str = "%"
    digits: int = 1

    @property
    def mean(self) -> float | None:
        """The scaled mean; None without values."""
        return self.scale * statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """The scaled sample standard deviation; None below 2 values."""
        return self.scale * statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self) -> str:
        """'92.0 ± 1.4%', '92.0%' from one value, '-' from none."""
        if self.mean is None:
            return "-"
        spread = f" ± {self.std:.{self.digits}f}" if self.std is not None else ""
        return f"{self.mean:.{self.digits}f}{spread}{self.unit}"


def compare(a: Stat, b: Stat) -> int:
    """The one rule every verdict of the report uses to claim a difference: +1 when `a` is above `b` by more than
    the seeds' spread (their mean ± std intervals do not overlap), -1 when below, 0 when no difference was
    measured (the intervals overlap, or a side has no mean or fewer than 2 seeds: there is no spread to weigh)."""
    if a.mean is None or b.mean is None or a.std is None or b.std is None:
        return 0
    if a.mean - a.std > b.mean + b.std:
        return 1
    return -1 if a.mean + a.std < b.mean - b.std else 0


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    """Cells as a Markdown table under its header: the one writer of the study's and the sweep's tables."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


@dataclass
class Study:
    """The study's parent run and its FINISHED job runs; `by_id` also holds the sweep parents."""

    run: Run
    jobs: list[Run]
    by_id: dict[str, Run]

    @property
    def size(self) -> str:
        """The study's size tag ('smoke', ...), '' when untagged."""
        return self.run.data.tags.get(STUDY_SIZE, "")

    def stage(self, name: str) -> list[Run]:
        """The stage's job runs (and its aliases'), ordered by seed (so 'the first seed' is the first run)."""
        names = {name} | {alias for alias, stage in ALIASES.items() if stage == name}
        return sorted((r for r in self.jobs if stage_of(r) in names), key=seed)

    def present(self) -> list[str]:
        """The stages with finished runs."""
        return [s for s in STAGES if self.stage(s)]

    def missing(self) -> list[str]:
        """The stages without finished runs."""
        return [s for s in STAGES if not self.stage(s)]


def newest_study(client: MlflowClient) -> Run | None:
    """The most recently started run tagged role=study, in any experiment."""
    return newest(client, [e.experiment_id for e in client.search_experiments()], f"tags.{ROLE} = 'study'")


def load_study(client: MlflowClient, study_run_id: str) -> Study:
    """The study run and every FINISHED job under it (its parent is the study or one of the study's sweeps)."""
    study = client.get_run(study_run_id)
    # one query for sweeps and jobs alike (both carry the stage tag), then the parent chain picks this study's
    tagged = search(client, [e.experiment_id for e in client.search_experiments()], f"tags.`{STAGE}` != ''")
    by_id = {r.info.run_id: r for r in tagged}

    def parent(run: Run | None) -> str | None:
        """The run's parent run id."""
        return run.data.tags.get(PARENT) if run is not None else None

    jobs = [r for r in tagged if r.info.status == "FINISHED" and r.data.tags.get(ROLE) != "sweep"
            and study_run_id in (parent(r), parent(by_id.get(parent(r) or "")))]
    # a stage stopped midway and run again (--study) has a finished sweep: the stopped one's jobs are in it again
    # (reused or retrained), so they would count twice
    rerun = {r.data.tags[STAGE] for r in tagged if r.data.tags.get(ROLE) == "sweep" and r.info.status == "FINISHED"
             and parent(r) == study_run_id}
    jobs = [r for r in jobs if r.data.tags.get(STAGE) not in rerun or by_id.get(parent(r) or "") is None
            or by_id[parent(r)].info.status == "FINISHED"]
    # a teacher from outside the study (given by run id) still gets a name and a cost row
    for run_id in sorted({t for r in jobs for t in teachers_of(r)} - by_id.keys()):
        if (run := get_run(client, run_id)) is not None:  # deleted since: its students still report its accuracy
            by_id[run_id] = run
    return Study(study, jobs, by_id)


def stage_of(run: Run) -> str:
    """The stage a run was tagged with, without its part: 'mimic' for 'mimic/128' (a stage run once per net)."""
    return run.data.tags.get(STAGE, "").split("/")[0]


def seed(run: Run) -> int:
    """The run's seed (-1 when it logged none, so such runs sort first)."""
    value = run.data.params.get("seed", "")
    return int(value) if value.lstrip("-").isdigit() else -1


def metric(run: Run, key: str) -> float | None:
    """The metric's final value; None when the run did not log it."""
    return run.data.metrics.get(key)


def values(runs: Iterable[Run], key: str) -> tuple[float, ...]:
    """The metric of every run that logged it."""
    return tuple(run.data.metrics[key] for run in runs if key in run.data.metrics)


def number(run: Run, key: str) -> float:
    """A numeric param (0 when absent or 'None': an unset regulariser is no regulariser)."""
    value = run.data.params.get(key, "None")
    return 0.0 if value in ("None", "null", "") else float(value)


def teachers_of(run: Run) -> list[str]:
    """The teacher run ids of a student: one, or the members of an ensemble."""
    return teacher_ids(run.data.tags.get(TEACHER_RUN_ID))


SCHEDULES_TO_ZERO = ("warmup_cosine",)  # schedules whose learning rate has run down when the last epoch ends


def converged(run: Run) -> bool:
    """Stopped early, ran a decaying schedule to its end, or its best validation epoch came before its last one
    (else its numbers are a lower bound)."""
    best, epochs = metric(run, BEST_EPOCH), metric(run, EPOCHS)
    return (run.data.tags.get(STOP_REASON) == "early_stopping"
            or run.data.params.get("scheduler.name") in SCHEDULES_TO_ZERO
            or (best is not None and epochs is not None and best < epochs - 1))


def setting(run: Run) -> str:
    """What a trial chose beside its net: 'lr=0.003 dropout=0.25', 'lr=0.01 L2 standardised', 'lr=0.001 T=4.0'."""
    params = run.data.params
    parts = [f"lr={params.get('optimizer.lr')}"]
    parts += [f"dropout={params['model.dropout']}"] if number(run, "model.dropout") else []
    parts += [f"wd={params['optimizer.weight_decay']}"] if number(run, "optimizer.weight_decay") else []
    name = params.get("objective.name", "")
    parts += [f"L2 {name.removeprefix('mimic').removeprefix('_') or 'raw'}"] if name.startswith("mimic") else []
    parts += [f"T={params['objective.temperature']}"] if "objective.temperature" in params else []
    return " ".join(parts)


def net_label(run: Run) -> str:
    """The net's shape from its params: 'w=512 k=16 conv=32', 'hidden [58, 58]', 'CNN1D depth=4'."""
    p = run.data.params
    name = p.get("model.name", "?")
    if name == "DeepMLP":
        return f"hidden {p.get('model.hidden', '?')}"
    if "model.width" not in p:
        return f"{name} depth={p['model.depth']}" if "model.depth" in p else name
    parts = [f"w={p['model.width']}"] + ([f"k={p['model.rank']}"] if p.get("model.rank", "None") != "None" else [])
    conv = p.get("model.conv_channels", "None")
    return " ".join(parts + ([f"conv={conv}"] if conv not in ("None", "null") else []))


def group_by(runs: Iterable[Run], key: Callable[[Run], Hashable]) -> dict[Hashable, list[Run]]:
    """Runs grouped by `key`, groups in first-seen order, runs keeping theirs."""
    groups: dict[Hashable, list[Run]] = defaultdict(list)
    for run in runs:
        groups[key(run)].append(run)
    return dict(groups)


@dataclass
class Group:
    """The runs of one configuration over seeds: a row of a table, a point of a figure (the study's ensemble line
    comes from its students). The study's series is 'mimic', PLAIN, ...; a sweep's is the runs' role."""

    series: str
    params: int
    net: str
    run_ids: list[str]
    metrics: dict[str, tuple[float, ...]]
    converged: list[bool]
    detail: str = ""  # what the series was chosen with: 'dropout=0.5 wd=0.0001', 'T=4.0'; a sweep's variant tag
    runs: list[Run] = field(default_factory=list)  # the job runs (none for the ensemble line)

    @classmethod
    def of(cls, series: str, runs: list[Run], detail: str = "") -> Group:
        """The group of one configuration's runs (they share n_params and the net)."""
        keys = (TEST_ACC, SELECT_ON, TEST_AGREEMENT, BEST_EPOCH)
        return cls(series, int(runs[0].data.params.get("n_params", 0)), net_label(runs[0]),
                   [r.info.run_id for r in runs], {k: values(runs, k) for k in keys},
                   [converged(r) for r in runs], detail, runs)

    def stat(self, key: str) -> Stat:
        """A metric over the group's seeds."""
        return Stat(self.metrics.get(key, ()))


def _series(stage: str, run: Run) -> tuple[str, str]:
    """(series, detail) of a run of a main-table stage; the detail is the setting it was tuned to."""
    if stage == "baselines":
        return (PLAIN, "") if stage_of(run) == "baselines_plain" else (REGULARISED, setting(run))
    if stage == "deep":
        return f"DeepNet {len(run.data.params.get('model.hidden', '[]').strip('[]').split(','))} layers", setting(run)
    return {"teachers": "teacher", "mimic": "mimic", "kd": "kd"}[stage], "" if stage == "teachers" else setting(run)


def ensembles(study: Study) -> list[Group]:
    """One line per teacher ensemble that figure3's students learned from: its accuracy as they measured it."""
    students = [r for r in study.stage("figure3") if len(teachers_of(r)) > 1]
    groups = []
    for ids, runs in group_by(students, lambda r: r.data.tags[TEACHER_RUN_ID]).items():
        members = [study.by_id.get(t) for t in str(ids).split(",")]
        params = sum(int(m.data.params.get("n_params", 0)) for m in members if m is not None)
        # every student of one ensemble measured the same logits: one value, not one per student
        metrics = {TEST_ACC: values(runs[:1], TEACHER_TEST_ACC), SELECT_ON: values(runs[:1], TEACHER_VAL_ACC)}
        net = f"{len(members)} x {net_label(members[0])}" if members[0] is not None else f"{len(members)} teachers"
        groups.append(Group("ensemble", params, net, str(ids).split(","), metrics, [], f"of {len(members)} teachers"))
    return groups


def main_groups(study: Study) -> list[Group]:
    """Figure 1's rows: every (series, size) of the teachers, baselines, deep, mimic and kd stages, plus ensembles."""
    groups = ensembles(study)
    for stage in ("teachers", "baselines", "deep", "mimic", "kd"):
        keyed = group_by(study.stage(stage), lambda r, s=stage: (*_series(s, r), r.data.params.get("n_params")))
        groups += [Group.of(key[0], runs, key[1]) for key, runs in keyed.items()]
    order = {s: i for i, s in enumerate(SERIES)}
    return sorted(groups, key=lambda g: (order.get(g.series, len(SERIES)), g.series, g.params, g.detail))


def the_teacher(study: Study) -> Run | None:
    """The teacher the mimics learned from (the most common single teacher), else the first-seed teacher."""
    counts: dict[str, int] = defaultdict(int)
    for run in study.stage("mimic") + study.stage("kd"):
        if len(teachers_of(run)) == 1:
            counts[teachers_of(run)[0]] += 1
    for run_id in sorted(counts, key=counts.__getitem__, reverse=True):
        if run_id in study.by_id:
            return study.by_id[run_id]
    return next(iter(study.stage("teachers")), None)

