"""Reading runs back: the one paginated search, a reused run's original, metric histories, a student's teacher ids,
a sweep's runs, and the one best-on-validation choice the report, the study and the registry share."""

from __future__ import annotations

from collections.abc import Sequence

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from shallowmimic.errors import UserError
from shallowmimic.tracking.keys import REUSED_FROM, SELECT_ON, TEACHER_RUN_ID


def search(client: MlflowClient, experiment_ids: Sequence[str], query: str) -> list[Run]:
    """Every run of the experiments matching `query`, all pages."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(list(experiment_ids), query, max_results=1000, page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


def original(client: MlflowClient, run: Run) -> Run:
    """The run itself, or the run it was reused from (reuse.py): that one holds the checkpoint and the histories."""
    return client.get_run(run.data.tags[REUSED_FROM]) if REUSED_FROM in run.data.tags else run


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of a metric's history in step order; a step logged twice keeps its last value. A run reused in
    a sweep holds final metrics only: its original's history is read."""
    run_id = original(client, client.get_run(run_id)).info.run_id
    points = {m.step: m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)}
    return sorted(points.items())


def teacher_ids(run_ids: str | Sequence[str] | None) -> list[str]:
    """Teacher run ids from one id, a list, or ids joined by commas (as the `teacher_run_id` tag holds them)."""
    return [i.strip() for i in run_ids.split(",") if i.strip()] if isinstance(run_ids, str) else list(run_ids or [])


def best_by_val(runs: Sequence[Run]) -> Run | None:
    """The run with the best val/best_acc: selection on validation only, never on test; of equals, the one that
    started first (the grid's first setting)."""
    scored = [r for r in runs if SELECT_ON in r.data.metrics]
    return max(scored, key=lambda r: (r.data.metrics[SELECT_ON], -r.info.start_time)) if scored else None


def newest(client: MlflowClient, experiment_ids: Sequence[str], query: str) -> Run | None:
    """The most recently started run matching `query`."""
    runs = client.search_runs(list(experiment_ids), query, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def sweep_runs(client: MlflowClient, experiment: str, parent: str | None,
               everything: bool = False) -> tuple[list[Run], str | None]:
    """FINISHED runs of one sweep (the newest by default) with the teachers its students learnt from, or of the whole
    experiment; and the sweep's parent run id."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"--experiment {experiment}: not in the store; run `make run` first")
    query = "attributes.status = 'FINISHED' and tags.role != 'sweep'"
    if not everything:
        if parent is None:
            sweep = newest(client, [exp.experiment_id], "tags.role = 'sweep'")
            if sweep is None:
                raise UserError("no sweep in the store; pass --all or run `make run`")
            parent = sweep.info.run_id
        query += f" and tags.mlflow.parentRunId = '{parent}'"
    runs = search(client, [exp.experiment_id], query)
    have = {r.info.run_id for r in runs}
    teachers = {t for r in runs for t in teacher_ids(r.data.tags.get(TEACHER_RUN_ID)) if t not in have}
    return runs + [run for run_id in sorted(teachers) if (run := get_run(client, run_id)) is not None], parent


def get_run(client: MlflowClient, run_id: str) -> Run | None:
    """The run, or None when it is not in the store (deleted since)."""
    try:
        return client.get_run(run_id)
    except MlflowException:
        return None
