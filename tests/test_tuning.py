"""The equal tuning budget: the trials' seeded order, the choice within the budget, and how the study carries a
choice into its later stages (overrides that compose, one part per net)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from shallowmimic import conf_dir
from shallowmimic.analysis import tuning
from shallowmimic.analysis.study import fill, parts, tuned
from shallowmimic.analysis.study_runs import load_study
from shallowmimic.errors import UserError

from .test_paper_report import FakeStudy, deep, shallow

SETTINGS = [(lr, t) for lr in ("0.001", "0.01") for t in ("1.0", "4.0", "20.0")]


@pytest.fixture
def kd_trials(store_uri: str, tmp_path: Path) -> tuple[FakeStudy, list]:
    """Six KD trials at width 16; the one last in the seeded order has the best validation (and the worst test)."""
    s = FakeStudy(store_uri, tmp_path)
    for lr, t in SETTINGS:
        s.job("tune_kd", "kd", shallow(16), {}, params={"optimizer.lr": lr, "objective.temperature": t})
    order = tuning.in_order(load_study(s.client, s.id).stage("tune_kd"))
    for rank, run in enumerate(order):  # scores by position: the later in the order, the better on validation
        s.client.log_metric(run.info.run_id, "val/best_acc", 0.5 + 0.05 * rank)
        s.client.log_metric(run.info.run_id, "test/acc", 0.9 - 0.05 * rank)
    return s, load_study(s.client, s.id).stage("tune_kd")


def test_the_order_is_seeded_and_does_not_depend_on_the_store(kd_trials: tuple) -> None:
    _, runs = kd_trials
    ids = [r.info.run_id for r in tuning.in_order(runs)]
    assert ids == [r.info.run_id for r in tuning.in_order(runs[::-1])]
    assert sorted(ids) == sorted(r.info.run_id for r in runs)
    assert [tuning.setting(r) for r in tuning.in_order(runs)] != sorted(tuning.setting(r) for r in runs)  # shuffled


def test_the_choice_sees_only_the_budget(kd_trials: tuple) -> None:
    _, runs = kd_trials
    order = tuning.in_order(runs)
    for budget in range(1, len(runs) + 1):  # validation rises along the order: the last trial the budget sees
        assert tuning.chosen(runs, budget)["16"].info.run_id == order[budget - 1].info.run_id
    assert tuning.chosen(runs, 99)["16"].info.run_id == order[-1].info.run_id  # the best val, the worst test


def test_a_reused_copy_is_the_same_trial(kd_trials: tuple) -> None:
    s, runs = kd_trials
    first = tuning.in_order(runs)[0]
    same = {k: first.data.params[k] for k in ("optimizer.lr", "objective.temperature")}
    s.job("tune_kd", "kd", shallow(16), {"val/best_acc": 0.99}, params=same)
    again = load_study(s.client, s.id).stage("tune_kd")
    assert len(again) == len(runs) + 1 and len(tuning.in_order(again)) == len(runs)
    assert tuning.in_order(again)[0].info.run_id == first.info.run_id  # the original, not the copy


@pytest.mark.parametrize(("experiment", "model", "params"), [
    ("baseline", shallow(64, dropout=0.25), {"optimizer.lr": "0.01", "objective.name": "labels"}),
    ("baseline", deep([58, 58]), {"optimizer.lr": "0.003", "model.dropout": "0.5", "objective.name": "labels"}),
    ("mimic", shallow(64), {"optimizer.lr": "0.01", "objective.name": "mimic_standardised"}),
    ("kd", shallow(64), {"objective.name": "kd", "objective.temperature": "20.0"}),
])
def test_a_choice_composes_into_the_same_config(store_uri: str, tmp_path: Path, experiment: str, model: dict,
                                               params: dict) -> None:
    s = FakeStudy(store_uri, tmp_path)
    s.job("tune_x", "baseline", model, {"val/best_acc": 0.5}, params=params)
    (run,) = load_study(s.client, s.id).stage("tune_x")
    overrides = tuning.as_overrides(run).split(" ")
    extra = ["model=mlp_deep"] if "hidden" in model else []
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", *extra, *overrides])
    flat = {"optimizer.lr": cfg.optimizer.lr, "objective.name": cfg.objective.name, "model.dropout": cfg.model.dropout}
    flat |= {"objective.temperature": cfg.objective.temperature} if "temperature" in cfg.objective else {}
    for key, value in run.data.params.items():
        if key in flat:
            assert str(flat[key]) == value, key
    net = OmegaConf.to_container(cfg.model)
    assert net.get("hidden", net.get("width")) == model.get("hidden", model.get("width"))


def test_a_stage_with_a_per_net_setting_runs_once_per_net() -> None:
    values = {"teacher": "'t'", "tuned_l2": {"16": "model.width=16 optimizer.lr=0.01", "64": "model.width=64"}}
    split = parts(["experiment=mimic", "{tuned_l2}", "teacher.run_id={teacher}"], values)
    assert [name for name, _ in split] == ["16", "64"]
    assert fill(["{tuned_l2}", "seed=0,1"], split[0][1]) == ["model.width=16", "optimizer.lr=0.01", "seed=0,1"]
    assert parts(["experiment=mimic", "teacher.run_id={teacher}"], values) == [("", values)]
    assert tuning.part_name("[58,58]") == "58-58"


def test_figure2s_width_must_have_been_tuned(store_uri: str, tmp_path: Path) -> None:
    s = FakeStudy(store_uri, tmp_path)
    s.job("tune_labels", "baseline", shallow(16), {"val/best_acc": 0.5})
    runs = load_study(s.client, s.id).stage("tune_labels")
    study = OmegaConf.create({"budget": 9, "width": 16, "widths": "16"})
    assert tuned("labels")(runs, study)["reg"].startswith("model.width=16 optimizer.lr=0.001")
    with pytest.raises(UserError, match=r"^conf/study: width=64 is not one of widths=16,"):
        tuned("labels")(runs, OmegaConf.create({"budget": 9, "width": 64, "widths": "16"}))
