"""The model registry: register=true and `make register` alias the best nets `champion`; a mimic names its teacher
by a model URI."""

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from shallowmimic.analysis.report import main as report_main
from shallowmimic.errors import UserError
from shallowmimic.tracking.registry import main as register_main
from shallowmimic.training.pipeline import train

from .conftest import TINY_SHALLOW, TINY_TEACHER, runs_of


def test_a_mimic_trains_from_the_registered_champion_teacher(make_cfg, client: MlflowClient) -> None:
    train(make_cfg(*TINY_TEACHER, "register=true"))
    train(make_cfg(*TINY_TEACHER, "seed=1"))  # newer, unregistered: the URI must win over "newest"
    champion = client.get_model_version_by_alias("mnist1d-teacher", "champion")
    train(make_cfg("experiment=mimic", *TINY_SHALLOW, "teacher.model=models:/mnist1d-teacher@champion"))
    (mimic,) = [r for r in runs_of(client) if r.data.tags["role"] == "mimic"]
    assert mimic.info.status == "FINISHED"
    assert mimic.data.tags["teacher_run_id"] == champion.run_id  # lineage records both
    assert mimic.data.tags["teacher_model_uri"] == "models:/mnist1d-teacher@champion"
    assert champion.source == f"models:/{client.get_run(champion.run_id).data.tags['model_id']}"


def test_an_unknown_teacher_model_is_one_line_naming_the_key(make_cfg, client: MlflowClient) -> None:
    with pytest.raises(UserError, match=r"^teacher.model=models:/mnist1d-teacher@champion: not in the registry"):
        train(make_cfg("experiment=mimic", *TINY_SHALLOW, "teacher.model=models:/mnist1d-teacher@champion"))
    assert runs_of(client) == []  # no run left behind


def test_make_register_aliases_the_sweeps_best_on_validation_and_the_report_lands_on_its_parent(
        cli, make_cfg, client: MlflowClient, store_uri: str, outputs: Path) -> None:
    train(make_cfg(*TINY_TEACHER))  # the teacher in process: the command line under test is the student's
    proc = cli("-m", "experiment=mimic", "model.width=8,32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert register_main(["--tracking-uri", store_uri]) == 0
    mimics = [r for r in runs_of(client) if r.data.tags["role"] == "mimic"]
    # best on validation; of equals the one that started first (the rule the report and the study use too)
    best = max(mimics, key=lambda r: (r.data.metrics["val/best_acc"], -r.info.start_time))
    assert client.get_model_version_by_alias("mnist1d-mimic", "champion").run_id == best.info.run_id
    teacher = client.get_model_version_by_alias("mnist1d-teacher", "champion")
    assert teacher.run_id == best.data.tags["teacher_run_id"]

    assert report_main(["--tracking-uri", store_uri, "--out", str(outputs / "reports")]) == 0
    (parent,) = [r for r in runs_of(client) if r.data.tags["role"] == "sweep"]
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "report/table.json", str(outputs)))
                       .read_text())
    assert table["columns"][:2] == ["role", "variant"] and [row[0] for row in table["data"]] == ["teacher", "mimic",
                                                                                                "mimic"]
    note = client.get_run(parent.info.run_id).data.tags["mlflow.note.content"]
    assert note.startswith("A Hydra sweep: `") and "experiment=mimic model.width=8,32`" in note
    assert "### Report" in note and "| mimic | w=32 |" in note
