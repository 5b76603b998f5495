"""The MLflow model registry: a sweep's best net of each role, chosen on validation, registered as
`<dataset>-<role>` with the alias `champion`, and the teacher it learned from as `<dataset>-teacher`; and the other
way, a registered model's URI (`teacher.model=models:/mnist1d-teacher@champion`) resolved to the run behind it.

    python -m shallowmimic.tracking.registry                   # the newest sweep (`make register`)
    python -m shallowmimic.tracking.registry --parent RUN_ID   # one sweep
"""

from __future__ import annotations

import argparse
import sys

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow import MlflowClient
from mlflow.entities import Run as MlflowRun
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.utils.models import get_model_name_and_version
from omegaconf import DictConfig

from shallowmimic.errors import BadValue, UserError
from shallowmimic.tracking.keys import MODEL_ID, PARENT, ROLE, SELECT_ON, TEACHER_RUN_ID, VARIANT
from shallowmimic.tracking.search import best_by_val, original, search, sweep_runs, teacher_ids
from shallowmimic.tracking.store import default_uri, using_store

ALIAS = "champion"


def register_run(client: MlflowClient, run: MlflowRun, name: str) -> ModelVersion:
    """A new version of registered model `name` from the run's logged model, aliased `champion` (a run reused in a
    sweep registers the run it was reused from, which logged the model)."""
    run = original(client, run)
    model_id = run.data.tags.get(MODEL_ID)
    if model_id is None:
        raise UserError(f"run {run.info.run_id} has no logged model (tag {MODEL_ID}); retrain it to register it")
    try:
        client.create_registered_model(name, tags={ROLE: run.data.tags.get(ROLE, "")})
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        current = client.get_registered_model(name).aliases.get(ALIAS)
        champion = client.get_model_version(name, current) if current is not None else None
        if champion is not None and champion.run_id == run.info.run_id:
            return champion  # already the champion: no second version of it
    tags = {VARIANT: run.data.tags.get(VARIANT, ""), SELECT_ON: str(run.data.metrics.get(SELECT_ON))}
    with using_store(client):
        version = client.create_model_version(name, f"models:/{model_id}", run_id=run.info.run_id, model_id=model_id,
                                              tags=tags)
    client.set_registered_model_alias(name, ALIAS, version.version)
    return version


def best_by_role(runs: list[MlflowRun]) -> dict[str, MlflowRun]:
    """Each role's run with the best validation accuracy, of the ones with a logged model (search.best_by_val)."""
    with_model = [r for r in runs if MODEL_ID in r.data.tags]
    roles = sorted({r.data.tags[ROLE] for r in with_model if r.data.tags.get(ROLE)})
    best = {role: best_by_val([r for r in with_model if r.data.tags.get(ROLE) == role]) for role in roles}
    return {role: run for role, run in best.items() if run is not None}


def register_sweep(client: MlflowClient, experiment: str, parent: str | None = None) -> dict[str, ModelVersion]:
    """Register the sweep's best net of each role, and the teacher of its best student (not an ensemble's)."""
    runs, parent = sweep_runs(client, experiment, parent)
    teachers = {r.info.run_id: r for r in runs if r.data.tags.get(ROLE) == "teacher"}
    best = best_by_role([r for r in runs if r.data.tags.get(PARENT) == parent])
    students = [best[role] for role in ("mimic", "kd") if role in best]
    if "teacher" not in best and students:
        ids = teacher_ids(best_by_val(students).data.tags.get(TEACHER_RUN_ID))
        if len(ids) == 1 and ids[0] in teachers:
            best["teacher"] = teachers[ids[0]]
    versions = {role: register_run(client, run, f"{experiment}-{role}") for role, run in best.items()}
    for version in versions.values():  # `make register` and a sweep with register=true both say what they did
        print(f"registered {version.name} version {version.version} as @{ALIAS} (run {version.run_id})")
    if not versions:
        print(f"registered nothing: {why_nothing(client, parent)}", file=sys.stderr)
    return versions


def why_nothing(client: MlflowClient, parent: str) -> str:
    """Which sweep was looked at, and why none of its jobs could be registered."""
    sweep = client.get_run(parent)
    jobs = search(client, [sweep.info.experiment_id], f"tags.{PARENT} = '{parent}'")
    done = [r for r in jobs if r.info.status == "FINISHED"]
    what = f"sweep {parent} ({sweep.info.run_name}, {sweep.info.status})"
    if not jobs:
        return f"{what} has no job runs (its jobs failed before training: see their logs in the sweep's dir); " \
               "fix them and run the sweep again, or name another with --parent RUN_ID"
    if not done:
        return f"none of the {len(jobs)} jobs of {what} FINISHED; fix them and run the sweep again, or name " \
               "another with --parent RUN_ID"
    return f"no FINISHED job of {what} has a logged model and {SELECT_ON}; name another with --parent RUN_ID"


def maybe_register(cfg: DictConfig, client: MlflowClient, run_id: str) -> None:
    """register=true on a single job: register its net as `<dataset>-<role>` (a sweep registers its best at the
    end instead, sweep.SweepParentRun)."""
    if not cfg.get("register") or (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return
    run = client.get_run(run_id)
    version = register_run(client, run, f"{cfg.data.name}-{cfg.role}")
    print(f"registered {version.name} version {version.version} as @{ALIAS}")


def teacher_run_id(client: MlflowClient, uri: str) -> str:
    """The run behind a model URI: models:/<name>@<alias>, models:/<name>/<version>, models:/<name>/latest (or a
    stage), or models:/<model id>. MLflow's own parser reads the URI, so every form it takes works here."""
    if not isinstance(uri, str) or not uri.startswith("models:/") or uri == "models:/":
        raise BadValue("teacher.model", uri, "null or a model URI: models:/<name>@<alias>, models:/<name>/<version>"
                       ", models:/<name>/latest or models:/<model id>")
    try:
        found = get_model_name_and_version(client, uri)
        if len(found) == 1:
            return client.get_logged_model(found[0]).source_run_id
        return client.get_model_version(*found).run_id
    except MlflowException as err:
        raise UserError(f"teacher.model={uri}: not in the registry ({err.message.splitlines()[0]}); register one "
                        "with `make register` or `register=true`") from None


def main(argv: list[str] | None = None) -> int:
    """Register the newest (or a given) sweep's best nets; print what was registered."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="mnist1d", help="MLflow experiment (one per dataset)")
    parser.add_argument("--parent", help="run id of a sweep's parent run (default: the newest sweep)")
    parser.add_argument("--tracking-uri", default=default_uri())
    args = parser.parse_args(argv)
    client = MlflowClient(args.tracking_uri)
    try:
        versions = register_sweep(client, args.experiment, args.parent)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0 if versions else 1


if __name__ == "__main__":
    sys.exit(main())
