"""What the MLflow UI shows of a run beside its numbers: MLflow's standard source tags (user, entry point, git
commit) and `mlflow.note.content`, a short Markdown description with links to the run's teachers and sweep."""

from __future__ import annotations

from collections.abc import Sequence

from mlflow import MlflowClient
from mlflow.entities import Run as MlflowRun
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_RUN_NOTE
from omegaconf import DictConfig

from shallowmimic.sweep import sweep_parent
from shallowmimic.tracking import git_commit

# MLflow 3.17's UI picks GenAI or model training from this URL parameter (else the user's last choice, GenAI first)
UI_VIEW = "workflowType=machine_learning"
REPORT_TABLE = "report/table.json"
REPORT_HEADING = "### Report"  # the part of a sweep's description the report writes (and rewrites)
OBJECTIVES = {  # what each objective of conf/objective/ fits, in words
    "labels": "cross-entropy on the labels",
    "mimic": "L2 regression on the teacher's logits (Ba & Caruana's mimic)",
    "kd": "knowledge distillation (Hinton et al.) at T={temperature}",
}


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


def describe(cfg: DictConfig, shape: str, n_params: int, teachers: Sequence[MlflowRun], experiment_id: str) -> str:
    """The run's description: role, model and size, objective, data, and links to its teachers and sweep."""
    objective = OBJECTIVES.get(cfg.objective.name, cfg.objective.name).format(**cfg.objective)
    lines = [f"**{cfg.role}** `{shape}`: {cfg.model._target_.rsplit('.', 1)[-1]} with {n_params:,} parameters, "
             f"fit by {objective} on **{cfg.data.name}** (seed {cfg.seed})."]
    if teachers:
        links = ", ".join(run_link(t.info.run_id, experiment_id, t.info.run_name) for t in teachers)
        what = "Teachers (an ensemble, logits averaged)" if len(teachers) > 1 else "Teacher"
        lines.append(f"{what}: {links}" + (f" (`{cfg.teacher.model}`)" if cfg.teacher.get("model") else "") + ".")
    parent = sweep_parent()
    if parent:
        lines.append(f"Part of sweep {run_link(parent, experiment_id)}.")
    return "\n\n".join(lines)


def run_tags(cfg: DictConfig, shape: str, n_params: int, teachers: Sequence[MlflowRun],
             experiment_id: str) -> dict[str, str]:
    """The standard tags a new run gets beside ours: source, user, and its description."""
    tags = source_tags() | {MLFLOW_RUN_NOTE: describe(cfg, shape, n_params, teachers, experiment_id)}
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
