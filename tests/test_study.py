"""`make paper SIZE=smoke`: the whole study end to end on a sliver of MNIST-1D, and the choices it makes."""

from pathlib import Path

import pytest
from mlflow import MlflowClient

from shallowmimic import conf_dir
from shallowmimic.analysis import study as study_module
from shallowmimic.analysis import tuning
from shallowmimic.analysis.figures import teacher_label
from shallowmimic.analysis.study import fill, load_study, main, matched_hidden, stage_runs
from shallowmimic.analysis.study_runs import load_study as read_study
from shallowmimic.errors import UserError
from shallowmimic.nets import DeepMLP, ShallowNet, n_params
from shallowmimic.tracking.search import best_by_val

from .conftest import runs_of


def test_deep_nets_are_sized_to_match_the_shallow_ones() -> None:
    shallow = n_params(ShallowNet(40, 10, width=2048))  # on MNIST-1D: 40 inputs, 10 classes
    assert shallow == 104_458
    widths = {depth: matched_hidden(shallow, depth, 40, 10) for depth in (2, 4)}
    assert widths == {2: 298, 4: 178}
    for depth, h in widths.items():
        gap = {w: abs(n_params(DeepMLP(40, 10, hidden=[w] * depth)) - shallow) for w in (h - 1, h, h + 1)}
        assert gap[h] < min(gap[h - 1], gap[h + 1]), (depth, gap)  # no neighbouring width is closer
        assert gap[h] / shallow < 0.01


def test_a_stage_cannot_use_what_no_earlier_stage_chose() -> None:
    assert fill(["a=1", "{reg}"], {"reg": "model.dropout=0.5 optimizer.weight_decay=0.0"}) == [
        "a=1", "model.dropout=0.5", "optimizer.weight_decay=0.0"]
    with pytest.raises(UserError, match=r"^conf/study: `teacher.run_id={teacher}` needs teacher, which no earlier"):
        fill(["teacher.run_id={teacher}"], {})
    # Figure 3's teachers: the weaker ones, the best and the ensemble of all; one given teacher is its own ensemble
    chosen = {"quality": "'q1','q2'", "teacher": "'t'"}
    assert fill(["teacher.run_id={teachers_fig3}"], chosen | {"ensemble": "['t','u']"}) == [
        "teacher.run_id='q1','q2','t',['t','u']"]
    assert fill(["teacher.run_id={teachers_fig3}"], chosen | {"ensemble": "['t']"}) == ["teacher.run_id='q1','q2','t'"]


def test_a_given_teacher_stands_for_the_teachers_stage(outputs: Path, store_uri: str, client: MlflowClient,
                                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from .test_external import RawNet, pt2

    source = pt2(tmp_path / "their.pt2", RawNet())
    study = load_study("smoke")
    mimic = ["experiment=mimic", "model.width=${widths}", "seed=${seeds}", "teacher.run_id={teacher}"]  # untuned
    study.seeds, study.stages = "0", {"teachers": study.stages.teachers, "mimic": mimic}  # two stages: seconds
    monkeypatch.setattr(study_module, "load_study", lambda size, data: study)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    assert main(["--size", "smoke", "--teacher", source, f"paths.outputs={outputs}"]) == 0
    (run,) = client.search_runs([client.get_experiment_by_name("mnist1d").experiment_id], "tags.role = 'study'")
    (teacher,) = stage_runs(client, run.info.run_id, "teachers")
    assert teacher.data.tags["teacher.source"] == source and teacher.data.tags.get("reused_from")
    trained = [r for r in runs_of(client) if r.data.tags["role"] == "teacher" and "teacher.source" not in r.data.tags]
    assert trained == []  # no stage trained a teacher to replace it
    mimics = stage_runs(client, run.info.run_id, "mimic")
    assert len(mimics) == 2 and {m.data.tags["teacher_run_id"] for m in mimics} == {teacher.data.tags["reused_from"]}
    assert (outputs / "reports" / "paper" / "report.md").stat().st_size > 0
    # Figure 3's row for it names the given net, not a stage that never trained it
    label = teacher_label(read_study(client, run.info.run_id), [teacher.data.tags["reused_from"]])
    assert label == "given: external their.pt2"


def test_smoke_study_runs_every_stage_and_writes_the_report(outputs: Path, store_uri: str, client: MlflowClient,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    assert main(["--size", "smoke", f"paths.outputs={outputs}"]) == 0
    report = outputs / "reports" / "paper"
    for name in ("report.md", "results.csv", "figure1.png", "figure2.png", "figure3.png"):
        assert (report / name).stat().st_size > 0, name
    (study,) = client.search_runs([client.get_experiment_by_name("mnist1d").experiment_id], "tags.role = 'study'")
    assert study.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(study.info.run_id, "report")} >= {"report/report.md"}
    runs = {stage: stage_runs(client, study.info.run_id, stage) for stage in (
        "teachers", "tune_labels", "tune_l2", "tune_kd", "mimic", "kd", "baselines", "deep", "figure2", "figure3",
        "controls")}
    assert all(runs.values()), [stage for stage, found in runs.items() if not found]

    # the students learn from the teacher chosen on validation; every family at each net trains on its seeds at the
    # setting its tuning chose within the budget, in a part of its stage of its own
    teacher = best_by_val(runs["teachers"]).info.run_id
    assert {r.data.tags["teacher_run_id"] for r in runs["mimic"] + runs["kd"]} == {teacher}
    budget = int(load_study("smoke").budget)
    for tune, final in (("tune_labels", "baselines"), ("tune_l2", "mimic"), ("tune_kd", "kd")):
        chosen = tuning.chosen(runs[tune], budget)
        trained = [r for r in runs[final] if r.data.tags["study.stage"] != "baselines_plain"]
        assert {(tuning.net_key(r), tuning.setting(r), r.data.params["seed"]) for r in trained} == {
            (net, tuning.setting(run), seed) for net, run in chosen.items() for seed in ("0", "1")}, final
        assert {r.data.tags["study.stage"] for r in trained} == {f"{final}/{net}" for net in chosen}
    assert len(runs["tune_kd"]) == 8 and budget < 4  # 4 trials a net: the budget saw 3 of them
    # Figure 2: the plain baseline and the mimic, and the baseline tuned at `width`
    reg = tuning.chosen(runs["tune_labels"], budget)["64"]
    assert sorted((r.data.tags["role"], tuning.setting(r)) for r in runs["figure2"]) == sorted([
        ("baseline", "lr=0.001"), ("baseline", tuning.setting(reg)), ("mimic", "lr=0.003 L2 raw")])
    # the controls: the mimic at the setting its tuning chose at `width`, on other transfer sets
    l2 = tuning.chosen(runs["tune_l2"], budget)["64"]
    assert {tuning.setting(r) for r in runs["controls"]} == {tuning.setting(l2)}
    # Figure 3: every teacher of both teacher stages, and their ensemble
    n_teachers = {len(r.data.tags["teacher_run_id"].split(",")) for r in runs["figure3"]}
    assert n_teachers == {1, len(runs["teachers"])}
    # DeepNets as large as the shallow nets of the same stage
    shallow = sorted({int(r.data.params["n_params"]) for r in runs["baselines"]})
    for run in runs["deep"]:
        assert min(abs(int(run.data.params["n_params"]) - p) / p for p in shallow) < 0.1
    text = (report / "report.md").read_text()
    assert "## What reproduces" in text
    assert "No config.yaml" not in text  # the cost of a reused run's net is built from its original's config
    # Figure 2's plain baseline (first seed) was reused from the baseline search: its curves are its original's
    curves = text.split("### Learning curves")[1]  # Figure 2's table (Figure 1's has a plain row too)
    plain = next(line for line in curves.splitlines() if line.startswith("| shallow labels (plain) |"))
    assert any(r.data.tags.get("reused_from") for r in runs["baselines"]) and plain.split("|")[2].strip() != "-"


def test_every_data_config_says_what_its_study_needs_and_an_unknown_one_is_refused() -> None:
    data_sets = sorted(p.stem for p in (conf_dir() / "data").glob("*.yaml"))
    teachers = {data: fill(load_study("smoke", data).stages.teachers, {}) for data in data_sets}
    assert {"mnist1d", "digits", "fashion_mnist"} <= set(teachers)
    assert "model=cnn1d" in teachers["mnist1d"] and "model=mlp_deep" in teachers["features"]
    assert all("model=cnn2d" in teachers[data] for data in ("digits", "mnist", "fashion_mnist", "cifar10"))
    assert "data.max_rows=400" in fill(load_study("smoke", "fashion_mnist").shrink, {})  # smoke shrinks any data
    assert "data.max_rows=400" not in fill(load_study("full", "fashion_mnist").shrink, {})
    with pytest.raises(UserError, match=r"^DATA=cifar9: no conf/study/data/cifar9.yaml .* like those of cifar10, "):
        load_study("smoke", "cifar9")
