"""`make paper`: the paper's study on one data set, as Hydra multiruns of shallowmimic.train (conf/study/), one stage
after another under one MLflow parent run, then its report (shallowmimic.analysis.paper).

    python -m shallowmimic.analysis.study                                  # conf/study/full.yaml on MNIST-1D
    python -m shallowmimic.analysis.study --size smoke --data digits --jobs 2
    python -m shallowmimic.analysis.study --size smoke paths.outputs=/tmp/study   # overrides for every job
    python -m shallowmimic.analysis.study --teacher their.pt2              # your own net as the study's teacher

Stages fill `{name}` fields of later ones with what they chose, on validation only: the best teacher, and per net
each family's tuned setting (shallowmimic.analysis.tuning); a stage that uses a per-net setting runs once per net
(see conf/study/full.yaml).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from mlflow.entities import Run as MlflowRun
from omegaconf import DictConfig, OmegaConf

from shallowmimic import conf_dir
from shallowmimic.analysis import study_runs as read
from shallowmimic.analysis import tuning
from shallowmimic.errors import UserError
from shallowmimic.tracking.descriptions import git_commit
from shallowmimic.tracking.keys import FAILED_STAGES, GIT_COMMIT, PARENT, ROLE, STAGE, STUDY_SIZE
from shallowmimic.tracking.run import Run
from shallowmimic.tracking.search import best_by_val
from shallowmimic.tracking.store import Store, open_store

STUDIES = conf_dir() / "study"


def load_study(size: str, data: str = "mnist1d") -> DictConfig:
    """conf/study/full.yaml, then conf/study/data/<data>.yaml (what the study needs of this data set: its teacher
    net, its weaker teachers, the bottleneck's inputs), then conf/study/<size>.yaml over both."""
    if not (STUDIES / f"{size}.yaml").is_file():
        sizes = ", ".join(sorted(p.stem for p in STUDIES.glob("*.yaml")))
        raise UserError(f"SIZE={size}: no conf/study/{size}.yaml; one of {sizes}")
    if not (STUDIES / "data" / f"{data}.yaml").is_file():
        known = ", ".join(sorted(p.stem for p in (STUDIES / "data").glob("*.yaml")))
        raise UserError(f"DATA={data}: no conf/study/data/{data}.yaml to say which teacher net, weaker teachers and "
                        f"bottleneck inputs its study uses; write one like those of {known}")
    layers = ["full.yaml", f"data/{data}.yaml"] + ([f"{size}.yaml"] if size != "full" else [])
    return OmegaConf.merge(*(OmegaConf.load(STUDIES / path) for path in layers))


def stage_runs(client: MlflowClient, study_id: str, stage: str) -> list[MlflowRun]:
    """The FINISHED runs of one stage of this study, read as the report reads them."""
    return read.load_study(client, study_id).stage(stage)


def best(runs: list[MlflowRun]) -> MlflowRun:
    """The run with the best validation accuracy (of its chosen checkpoint), as the report chooses it: selection
    never sees the test split."""
    chosen = best_by_val(runs)
    if chosen is None:
        raise UserError("a stage the study selects from finished no run; see its jobs' logs under outputs/studies/")
    return chosen


def matched_hidden(n_params: int, depth: int, in_dim: int, classes: int) -> int:
    """The width h of `depth` hidden layers whose MLP has the parameter count closest to `n_params`."""
    size = lambda h: (in_dim + 1) * h + (depth - 1) * (h + 1) * h + (h + 1) * classes  # noqa: E731
    return min(range(1, 100_000), key=lambda h: abs(size(h) - n_params))


def after_teachers(runs: list[MlflowRun], study: DictConfig) -> dict[str, str]:
    """The best teacher, the ensemble of all, and deep MLPs of 2 and 4 layers as large as the shallow widths."""
    teacher = best(runs)
    in_dim = math.prod(int(d) for d in teacher.data.params["data.in_shape"].split("x"))  # '1x8x8' -> 64
    classes = int(teacher.data.params["data.num_classes"])
    shallow = [(in_dim + 1) * w + (w + 1) * classes for w in map(int, str(study.widths).split(","))]
    deep = {f"deep{d}": ",".join("[" + ",".join([str(matched_hidden(p, d, in_dim, classes))] * d) + "]"
                                  for p in shallow) for d in (2, 4)}
    ensemble = "[" + ",".join(quoted(r) for r in sorted(runs, key=lambda r: r.info.run_id)) + "]"
    return {"teacher": quoted(teacher), "ensemble": ensemble} | deep


def quoted(run: MlflowRun) -> str:
    """A run id as a Hydra override value: quoted, as an id of digits alone would be read as a number."""
    return f"'{run.info.run_id}'"


AT_WIDTH = {"labels": "reg", "l2": "l2"}  # the tuned setting at `width`: Figure 2's regularised net, the controls'


def tuned(family: str) -> Callable[[list[MlflowRun], DictConfig], dict[str, str | dict[str, str]]]:
    """The selector of a tune stage: per net, the overrides of its chosen trial (`{tuned_<family>}`); for labels
    and L2 also the one at `width` (`{reg}`: Figure 2's regularised baseline; `{l2}`: the controls' mimic)."""
    def select(runs: list[MlflowRun], study: DictConfig) -> dict[str, str | dict[str, str]]:
        per_net = {net: tuning.as_overrides(run) for net, run in tuning.chosen(runs, int(study.budget)).items()}
        if family not in AT_WIDTH:
            return {f"tuned_{family}": per_net}
        if str(study.width) not in per_net:
            raise UserError(f"conf/study: width={study.width} is not one of widths={study.widths}, so no tuned "
                            f"{family} setting exists for the stages that use {{{AT_WIDTH[family]}}}")
        return {f"tuned_{family}": per_net, AT_WIDTH[family]: per_net[str(study.width)]}
    return select


SELECT: dict[str, Callable[[list[MlflowRun], DictConfig], dict]] = {
    "teachers": after_teachers,
    "teacher_quality": lambda runs, _: {"quality": ",".join(sorted(quoted(r) for r in runs))},
    "tune_sgd": lambda runs, _: {"sgd_lr": best(runs).data.params["optimizer.lr"]},
} | {f"tune_{family}": tuned(family) for family in ("labels", "deep", "l2", "kd")}


def parts(overrides: list[str], values: dict) -> list[tuple[str, dict]]:
    """A stage whose overrides use a per-net setting runs once per net: (part name, values with that net's
    setting in the field); other stages are one part named ''."""
    used = {name for override in overrides for name in re.findall(r"{(\w+)}", override)}
    per_net = [name for name in sorted(used) if isinstance(values.get(name), dict)]
    if not per_net:
        return [("", values)]
    field = per_net[0]  # a stage tunes one family
    return [(tuning.part_name(net), values | {field: setting}) for net, setting in values[field].items()]


def fill(overrides: list[str], values: dict[str, str]) -> list[str]:
    """The stage's overrides with `{name}` fields filled (one field may hold several overrides)."""
    if "quality" in values and "teacher" in values:  # the ensemble of one teacher (a given one) is that teacher
        ensemble = [values["ensemble"]] if values["ensemble"] != f"[{values['teacher']}]" else []
        values = values | {"teachers_fig3": ",".join([values["quality"], values["teacher"], *ensemble])}
    out = []
    for override in overrides:
        missing = set(re.findall(r"{(\w+)}", override)) - set(values)
        if missing:
            raise UserError(f"conf/study: `{override}` needs {', '.join(sorted(missing))}, which no earlier stage "
                            "chose")
        out += [part for part in override.format(**values).split(" ") if part]  # a field may also be empty
    return out


def launch(stage: str, overrides: list[str], args: argparse.Namespace, study_id: str, jobs: int | None = None) -> bool:
    """One stage: a Hydra multirun of the training entry point, its jobs tagged with the stage and nested under the
    study; `jobs` (JOBS by default) > 1 runs them in parallel. Returns whether every job finished."""
    jobs = args.jobs if jobs is None else jobs
    # job dirs numbered, not named by their overrides: a stage's overrides outgrow a file name's 255 characters
    where = f"studies/{study_id}/{stage}"
    cmd = [sys.executable, "-m", "shallowmimic.train", "-m", *overrides, f"data={args.data}",
           f"study.run_id={study_id}", f"study.stage={stage}", *args.overrides,
           f"hydra.sweep.dir=${{paths.outputs}}/{where}", "hydra.sweep.subdir=${hydra.job.num}"]
    cmd += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
    cmd += [f"threads={args.threads}"] if args.jobs > 1 else []  # the cores shared out among JOBS jobs
    print(f"== study stage {stage}: {' '.join(cmd[3:])}", flush=True)
    start = time.monotonic()
    done = subprocess.run(cmd).returncode == 0
    print(f"== study stage {stage}: {time.monotonic() - start:.0f} s", flush=True)
    if done:
        return True
    print(f"study stage {stage}: a job failed; its logs are under outputs/{where}/", file=sys.stderr)
    return False


def launch_all(todo: list[tuple[str, list[str]]], args: argparse.Namespace, study_id: str) -> list[str]:
    """Launch (stage, overrides) pairs, the parts of one stage side by side, JOBS at a time (a process each: as
    many jobs at once as one stage's sweep would run); returns the names of those in which a job failed."""
    if len(todo) > 1 and args.jobs > 1:
        with ThreadPoolExecutor(args.jobs) as pool:
            done = list(pool.map(lambda job: launch(*job, args, study_id, jobs=1), todo))
    else:
        done = [launch(name, overrides, args, study_id) for name, overrides in todo]
    return [name for (name, _), ok in zip(todo, done, strict=True) if not ok]


def run_study(args: argparse.Namespace, study: DictConfig, store: Store, study_id: str) -> None:
    """Every stage in order, each filled with what the stages before it chose; a continued study (--study) skips
    the stages it finished."""
    client, values, failed = store.client, {}, []
    for stage, overrides in study.stages.items():
        extra = study.extra.get(stage, [])
        if stage == "teachers" and args.teacher:  # the given net stands for the teachers this stage would train
            overrides, extra = ["experiment=teacher", f"teacher.model={args.teacher}"], []
        every = [*study.common, *overrides, *extra, *study.shrink]
        # a part's runs are read as the stage's (Study.stage)
        todo = [(f"{stage}/{part}" if part else stage, fill(every, filled)) for part, filled in parts(every, values)]
        failed += launch_all([(n, o) for n, o in todo if not (args.study and finished(store, study_id, n))],
                             args, study_id)  # the report uses the jobs that finished and counts them per row
        if not stage_runs(client, study_id, stage):
            raise UserError(f"study stage {stage}: no job finished; see outputs/studies/{study_id}/{stage}/")
        if stage in SELECT:
            values |= SELECT[stage](stage_runs(client, study_id, stage), study)
    if failed:  # tagged on the study: its report stands on fewer seeds there
        client.set_tag(study_id, FAILED_STAGES, ",".join(failed))


def finished(store: Store, study_id: str, stage: str) -> bool:
    """Whether the study has a FINISHED sweep of this stage."""
    return bool(store.search(f"tags.{PARENT} = '{study_id}' and tags.`{STAGE}` = '{stage}' and "
                             "attributes.status = 'FINISHED'"))


def begin(args: argparse.Namespace, study: DictConfig, store: Store) -> str:
    """The study's MLflow parent run: a new one, or the unfinished one named by --study, reopened."""
    if args.study:
        client = store.client
        run = client.get_run(args.study)
        if run.data.tags.get(ROLE) != "study" or run.info.status == "FINISHED":
            raise UserError(f"--study {args.study}: not an unfinished study run")
        client.update_run(args.study, status="RUNNING")
        return args.study
    tags = {ROLE: "study", STUDY_SIZE: args.size, GIT_COMMIT: git_commit()}
    return store.start_run(f"study size={args.size} data={args.data}", tags,
                           {"study.size": args.size, "study.data": args.data, "study.jobs": str(args.jobs),
                            "study.budget": str(study.budget)})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m shallowmimic.analysis.study", description=__doc__.splitlines()[0])
    p.add_argument("--size", default="full", help="conf/study/<size>.yaml over full.yaml: full or smoke")
    p.add_argument("--data", default="mnist1d", help="the data config (conf/data/) the whole study runs on")
    p.add_argument("--jobs", type=int, default=1, help="jobs of a stage run in parallel")
    p.add_argument("--teacher", help="your own net as the teacher (a teacher.model: file or model URI); no stage "
                   "trains one to replace it, Figure 3 puts it among the weaker teachers it trains")
    p.add_argument("--study", help="continue this unfinished study run: its finished stages are not run again")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every job (e.g. paths.outputs=...)")
    args = p.parse_args(argv)
    args.threads = max(1, (os.cpu_count() or 1) // args.jobs)  # parallel jobs share the cores out
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the study and write its report; a user's mistake is one line and exit status 2."""
    from shallowmimic.analysis.paper import write_report  # matplotlib: only once the study is done

    args = parse_args(argv)
    try:
        study = load_study(args.size, args.data)
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose("train", overrides=[f"data={args.data}", *args.overrides])
        store = open_store(cfg.logger)
        client = store.client
        study_id = begin(args, study, store)
        with Run(client, study_id, Path(cfg.paths.outputs), resumed=False).closing():
            run_study(args, study, store, study_id)
            files = write_report(client, study_id, Path(cfg.paths.outputs) / "reports" / "paper",
                                 study.latency_seconds)
        print("wrote " + ", ".join(str(f) for f in files))
        return 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
