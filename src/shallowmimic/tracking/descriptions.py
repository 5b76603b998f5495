"""What the MLflow UI shows of a run beside its numbers: its name (`variant`), MLflow's standard source tags (user,
entry point, git commit, ours with its '-dirty' mark) and `mlflow.note.content`, a short Markdown description with
links to the run's teachers and sweep."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Sequence

from mlflow import MlflowClient
from mlflow.entities import Run as MlflowRun
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_RUN_NOTE
from omegaconf import DictConfig, OmegaConf

from shallowmimic import project_root

# MLflow 3.17's UI picks GenAI or model training from this URL parameter (else the user's last choice, GenAI first)
UI_VIEW = "workflowType=machine_learning"
REPORT_TABLE = "report/table.json"
REPORT_HEADING = "### Report"  # the part of a sweep's description the report writes (and rewrites)
OBJECTIVES = {  # what each objective of conf/objective/ fits, in words
    "labels": "cross-entropy on the labels",
    "mimic": "L2 regression on the teacher's logits (Ba & Caruana's mimic)",
    "mimic_centred": "L2 regression on the teacher's per-sample centred logits",
    "mimic_standardised": "L2 regression on the teacher's per-class standardised logits",
    "kd": "knowledge distillation (Hinton et al.) at T={temperature}",
}


@functools.cache
def git_commit() -> str:
    """The checkout's commit (with '-dirty' when it has changes), or 'unknown' outside git. Asked of git once per
    process: the code a process runs was loaded when it started."""
    root = project_root()
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def variant(cfg: DictConfig, n_teachers: int = 1) -> str:
    """What sets a run apart within its role: `w=2048 k=32`, `w=512 conv=16 T=4.0 ensemble=4`, `w=512 drop=0.5
    wd=0.0001`, `CNN1D d=4 c=64`, `DeepMLP h=58x58`. The one place that names it: run names, the `variant` tag, the
    report and the bench all read it from here."""
    model, objective = cfg.model, cfg.objective
    if "width" in model:
        parts = [f"w={model.width}"] + ([f"k={model.rank}"] if model.rank is not None else [])
        parts += [f"conv={model.conv_channels}"] if model.get("conv_channels") else []
        parts += [f"drop={model.dropout}"] if model.get("dropout") else []
    else:  # a deep net: its class and the sizes of its layers
        parts = [model._target_.rsplit(".", 1)[-1]]
        parts += [f"d={model.depth}"] if "depth" in model else []
        parts += [f"{key[0]}={'x'.join(map(str, model[key])) if OmegaConf.is_list(model[key]) else model[key]}"
                  for key in ("hidden", "channels") if key in model]
    parts += [f"wd={cfg.optimizer.weight_decay}"] if cfg.optimizer.get("weight_decay") else []
    parts += [f"T={objective.temperature}"] if "temperature" in objective else []
    parts += [f"labels={objective.label_weight}"] if objective.get("label_weight") else []
    return " ".join(parts + ([f"ensemble={n_teachers}"] if n_teachers > 1 else []))


def source_tags() -> dict[str, str]:
    """MLflow's own context tags for this process: mlflow.user, mlflow.source.name/type (the UI's Source and User
    columns), and mlflow.source.git.commit: the checkout's, which MLflow looks for beside the entry point only (not
    found under pytest or an installed package). `git_commit` stays beside them, with its '-dirty' mark."""
    tags = {k: v for k, v in resolve_tags().items() if k.startswith(("mlflow.user", "mlflow.source."))}
    commit = git_commit().removesuffix("-dirty")
    return tags | ({MLFLOW_GIT_COMMIT: commit} if commit != "unknown" else {})


def run_link(run_id: str, experiment_id: str, text: str | None = None) -> str:
    """A Markdown link that the MLflow UI (a hash router) opens in the same window, in its model-training view."""
    return f"[{text or run_id[:8]}](#/experiments/{experiment_id}/runs/{run_id}?{UI_VIEW})"


def describe(cfg: DictConfig, shape: str, n_params: int, teachers: Sequence[MlflowRun], experiment_id: str,
             parent: str | None) -> str:
    """The run's description: role, model and size, objective, data, and links to its teachers and sweep."""
    objective = OBJECTIVES.get(cfg.objective.name, cfg.objective.name).format(**cfg.objective)
    lines = [f"**{cfg.role}** `{shape}`: {cfg.model._target_.rsplit('.', 1)[-1]} with {n_params:,} parameters, "
             f"fit by {objective} on **{cfg.data.name}** (seed {cfg.seed})."]
    if teachers:
        links = ", ".join(run_link(t.info.run_id, experiment_id, t.info.run_name) for t in teachers)
        what = "Teachers (an ensemble, logits averaged)" if len(teachers) > 1 else "Teacher"
        lines.append(f"{what}: {links}" + (f" (`{cfg.teacher.model}`)" if cfg.teacher.get("model") else "") + ".")
    if parent:
        lines.append(f"Part of sweep {run_link(parent, experiment_id)}.")
    return "\n\n".join(lines)


def run_tags(cfg: DictConfig, shape: str, n_params: int, teachers: Sequence[MlflowRun], experiment_id: str,
             parent: str | None) -> dict[str, str]:
    """The standard tags a new run gets beside ours: source, user, and its description."""
    tags = source_tags() | {MLFLOW_RUN_NOTE: describe(cfg, shape, n_params, teachers, experiment_id, parent)}
    return tags | ({"teacher_model_uri": str(cfg.teacher.model)} if cfg.teacher.get("model") else {})


def sweep_description(overrides: str, stage: str | None) -> str:
    """A sweep parent's description until its report replaces it."""
    what = f"Stage **{stage}** of the paper's study" if stage else "A Hydra sweep"
    return f"{what}: `{overrides or '(no overrides)'}`. Its jobs are the child runs below."


def publish_report(client: MlflowClient, parent: str, rows: list[dict[str, str]], table_md: str) -> None:
    """The sweep parent's report in the UI: the table as an MLflow table artifact (its Artifacts and Evaluation
    views read it) and, under what the sweep was, in its description."""
    client.log_table(parent, {key: [row[key] for row in rows] for key in rows[0]} if rows else {}, REPORT_TABLE)
    note = client.get_run(parent).data.tags.get(MLFLOW_RUN_NOTE, "").split(REPORT_HEADING)[0].rstrip()
    client.set_tag(parent, MLFLOW_RUN_NOTE, f"{note}\n\n{REPORT_HEADING}\n\n{table_md}\n\nFigures: `report/`.")
