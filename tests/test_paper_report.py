"""The paper study's report on a small fake study in a real SQLite store: its numbers, choices and files."""

from __future__ import annotations

import csv
import shutil
import sqlite3
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from sqlalchemy import event
from sqlalchemy.engine import Engine

from shallowmimic.analysis import study_runs
from shallowmimic.analysis.bottleneck import bottleneck_verdicts
from shallowmimic.analysis.cost import flops_per_sample
from shallowmimic.analysis.paper import main, write_report
from shallowmimic.analysis.study_runs import Stat, compare
from shallowmimic.analysis.tables import Table
from shallowmimic.nets import CNN1D, DeepMLP, ShallowNet, n_params

COSTED = ("teachers", "baselines", "baselines_plain", "deep", "mimic", "kd", "bottleneck")
SHAPE = "40"  # MNIST-1D's input, as runs log data.in_shape
BASE_PARAMS = {"data.in_shape": SHAPE, "data.num_classes": "10", "data.global_batch_size": "32", "data.name": "mnist1d",
              "optimizer.name": "Adam", "optimizer.lr": "0.001", "optimizer.weight_decay": "0.0",
              "model.dropout": "0.0", "model.rank": "None",
              "data.transfer": "generated", "data.transfer_size": "400", "data.n_train_rows": "3900"}


def pct(values: list[float]) -> tuple[float, float | None]:
    """Mean and std in % as the report computes them, by hand."""
    return 100 * statistics.fmean(values), 100 * statistics.stdev(values) if len(values) > 1 else None


class FakeStudy:
    """Writes a study as the driver would: a study run, one sweep parent per stage, job runs under them."""

    def __init__(self, uri: str, artifacts: Path) -> None:
        """The study run, in the store's mnist1d experiment (created with its artifacts under `artifacts`)."""
        self.uri, self.client = uri, MlflowClient(uri)
        exp = self.client.get_experiment_by_name("mnist1d")  # a second study shares the first one's experiment
        self.exp = exp.experiment_id if exp else self.client.create_experiment("mnist1d", artifacts.as_uri())
        self.id = self.client.create_run(self.exp, tags={"role": "study", "study.size": "smoke"}).info.run_id
        self.sweeps: dict[str, str] = {}
        self.clock = int(time.time() * 1000)

    def sweep(self, stage: str) -> str:
        """The stage's sweep parent run, made on first use."""
        if stage not in self.sweeps:
            tags = {"role": "sweep", "mlflow.parentRunId": self.id, "study.stage": stage}
            self.sweeps[stage] = self.client.create_run(self.exp, tags=tags).info.run_id
        return self.sweeps[stage]

    def job(self, stage: str, role: str, model: dict, metrics: dict[str, float], seed: int = 0,
            params: dict | None = None, tags: dict | None = None, histories: dict | None = None,
            status: str = "FINISHED", parent: str | None = None) -> str:
        """One job run: params from the model config (whose net gives n_params), final metrics, histories."""
        kinds = {"ShallowNet": ShallowNet, "DeepMLP": DeepMLP, "CNN1D": CNN1D}
        name = model["_target_"].rsplit(".", 1)[-1]
        net = kinds[name](int(SHAPE), 10, **{k: v for k, v in model.items() if k != "_target_"})
        all_params = BASE_PARAMS | {"seed": str(seed), "n_params": str(n_params(net)), "model.name": name}
        all_params |= {f"model.{k}": str(v) for k, v in model.items() if k != "_target_"} | (params or {})
        all_tags = {"role": role, "study.stage": stage, "mlflow.parentRunId": parent or self.sweep(stage),
                    "stop_reason": "early_stopping"} | (tags or {})
        run_id = self.client.create_run(self.exp, tags=all_tags).info.run_id
        self.clock += 1
        points = [Metric(k, v, self.clock, 0) for k, v in ({"train/epochs": 5.0, "val/best_epoch": 2.0}
                                                          | metrics).items()]
        points += [Metric(k, v, self.clock, step) for k, vs in (histories or {}).items() for step, v in vs]
        self.client.log_batch(run_id, metrics=points, params=[Param(k, v) for k, v in all_params.items()])
        if seed == 0 and stage in COSTED:  # only the runs the cost table builds need a config (writes take time)
            lines = [f"  {k}: {v if v is not None else 'null'}" for k, v in model.items()]
            self.client.log_text(run_id, "model:\n" + "\n".join(lines) + "\n", "config.yaml")
        self.client.set_terminated(run_id, status)
        return run_id


def shallow(width: int, **extra: object) -> dict:
    """A ShallowNet's model config."""
    return {"_target_": "shallowmimic.nets.ShallowNet", "width": width, "rank": None} | extra


def deep(hidden: list[int]) -> dict:
    """A DeepMLP's model config."""
    return {"_target_": "shallowmimic.nets.DeepMLP", "hidden": hidden}


def cnn(depth: int) -> dict:
    """A (tiny) CNN1D teacher's model config."""
    return {"_target_": "shallowmimic.nets.CNN1D", "channels": 4, "depth": depth}


def curve(values: list[float], steps: int = 100) -> list[tuple[int, float]]:
    """A per-epoch history at global steps 100, 200, ..."""
    return [(steps * (i + 1), v) for i, v in enumerate(values)]


# each width's test accuracies over seeds 0, 1 (the means and stds the tables must show)
PLAIN = {16: [0.60, 0.62], 32: [0.63, 0.65]}
REG = {16: [0.66, 0.70], 32: [0.68, 0.70]}
MIMIC = {16: [0.85, 0.87], 32: [0.91, 0.93]}
KD = {32: [0.90, 0.94]}  # kd at one width: the one L2 vs KD compares
TEACHERS = [0.91, 0.93, 0.95]
# bottleneck: (optimizer, rank) -> val/logit_mse per epoch; the unfactorised net's 95% level (1.45) after 6, 4, 2
# and 4 epochs; rank 2 plateaus above it (95% of its own reduction would come after 3 epochs)
MSE = {("SGD", None): [10, 8, 6, 4, 2, 1], ("SGD", 4): [10, 3, 1.5, 1.2, 1.1, 1.0],
       ("SGD", 2): [10, 2, 1.6, 1.5, 1.5, 1.5],
       ("Adam", None): [10, 1.2, 1.1, 1.0, 1.0, 1.0], ("Adam", 4): [10, 6, 3, 1.4, 1.1, 1.0]}
FIT_S = [12.0, 18.0]  # per seed; 6 epochs each


def build(s: FakeStudy) -> dict[str, list[str]]:
    """The whole study; returns run ids by what the tests check."""
    ids: dict[str, list[str]] = {}
    ids["teachers"] = [s.job("teachers", "teacher", cnn(2), {"test/acc": a, "val/best_acc": a + 0.01}, seed)
                       for seed, a in enumerate(TEACHERS)]
    weak = s.job("teacher_quality", "teacher", cnn(1), {"test/acc": 0.70, "val/best_acc": 0.71})
    searches(s)
    widths(s, ids["teachers"][0], ids)
    figure2(s, ids["teachers"][0], ids)
    s.job("deep", "baseline", deep([14, 14]), {"test/acc": 0.73})
    s.job("deep", "baseline", deep([10, 10, 10, 10]), {"test/acc": 0.75})
    figure3(s, ids["teachers"], weak, ids)
    for transfer, size, rows, acc in (("train", "400", "3500", 0.70), ("generated", "200", "3700", 0.80),
                                      ("generated", "400", "3900", 0.84)):
        s.job("controls", "mimic", shallow(16), {"test/acc": acc, "test/agreement": acc + 0.05},
              params={"data.transfer": transfer, "data.transfer_size": size, "data.n_train_rows": rows})
    for (optimizer, rank), mse in MSE.items():
        for seed, fit in enumerate(FIT_S):
            s.job("bottleneck", "mimic", shallow(16, rank=rank, conv_channels=4),
                  {"time/fit_s": fit, "train/epochs": 6.0}, seed, params={"optimizer.name": optimizer},
                  histories={"val/logit_mse": curve(mse, 10)})
    # neither may reach the report: a failed run of the study, and a run of another study
    ids["ignored"] = [s.job("mimic", "mimic", shallow(32), {"test/acc": 0.99}, 2, status="FAILED"),
                      s.job("mimic", "mimic", shallow(32), {"test/acc": 0.10}, 3, parent="otherstudy")]
    return ids


def searches(s: FakeStudy) -> None:
    """The tuning at width 16, each family with its best validation score on one setting and its best test score
    on another; L2's variants and KD's temperatures beside each other."""
    for (lr, drop), (val, test) in {("0.001", "0.0"): (0.60, 0.61), ("0.001", "0.5"): (0.70, 0.62),
                                    ("0.01", "0.0"): (0.65, 0.63), ("0.01", "0.5"): (0.66, 0.75)}.items():
        s.job("tune_labels", "baseline", shallow(16, dropout=float(drop)), {"test/acc": test, "val/best_acc": val},
              params={"optimizer.lr": lr})
    for temperature, (val, test) in {"2.0": (0.86, 0.84), "4.0": (0.82, 0.95), "20.0": (0.80, 0.90)}.items():
        s.job("tune_kd", "kd", shallow(16), {"test/acc": test, "val/best_acc": val},
              params={"objective.temperature": temperature})
    for name, val in {"mimic": 0.84, "mimic_centred": 0.81}.items():
        s.job("tune_l2", "mimic", shallow(16), {"test/acc": 0.8, "val/best_acc": val}, params={"objective.name": name})
    s.job("tune_deep", "baseline", deep([14, 14]), {"test/acc": 0.7, "val/best_acc": 0.7})


def widths(s: FakeStudy, teacher: str, ids: dict[str, list[str]]) -> None:
    """Plain and regularised baselines, mimics and kd students at widths 16 and 32, seeds 0 and 1."""
    lineage = {"teacher_run_id": teacher}
    for width in (16, 32):
        for seed in (0, 1):
            first = width == 32 and seed == 0  # early-stopped curves: Figure 2 draws the figure2 stage's instead
            ids.setdefault(f"plain{width}", []).append(s.job(  # a stage of their own: an alias of baselines
                "baselines_plain", "baseline", shallow(width), {"test/acc": PLAIN[width][seed], "val/best_acc": 0.6,
                                                          "val/best_epoch": 4.0}, seed,
                tags={"stop_reason": "max_epochs"}, histories=LEARNING if first else None))
            ids.setdefault(f"reg{width}", []).append(s.job(
                "baselines", "baseline", shallow(width, dropout=0.5), {"test/acc": REG[width][seed],
                                                                       "val/best_acc": 0.65}, seed,
                histories=LEARNING if first else None))
            ids.setdefault(f"mimic{width}", []).append(s.job(
                "mimic", "mimic", shallow(width), {"test/acc": MIMIC[width][seed], "val/best_acc": 0.9,
                                                   "test/agreement": 0.95 + 0.02 * seed, "teacher/test_acc": 0.91},
                seed, tags=lineage, histories=LEARNING if first else None))
            if width in KD:
                ids.setdefault(f"kd{width}", []).append(s.job(
                    "kd", "kd", shallow(width), {"test/acc": KD[width][seed], "val/best_acc": 0.9}, seed,
                    params={"objective.temperature": "2.0"}, tags=lineage))


LEARNING = {"train/acc": curve([0.6, 0.8, 0.9, 0.92, 0.93]), "val/acc": curve([0.6, 0.8, 0.88, 0.9, 0.91])}


def figure2(s: FakeStudy, teacher: str, ids: dict[str, list[str]]) -> None:
    """Figure 2's runs at width 32, without early stopping: the plain baseline overfits, the others do not."""
    overfit = {"train/acc": curve([0.6, 0.8, 0.9, 0.97, 1.0]), "val/acc": curve([0.50, 0.60, 0.64, 0.62, 0.60])}
    regular = {"train/acc": curve([0.5, 0.6, 0.7, 0.75, 0.8]), "val/acc": curve([0.5, 0.6, 0.66, 0.67, 0.68])}
    tags = {"stop_reason": "max_epochs"}
    ids["figure2"] = [
        s.job("figure2", "baseline", shallow(32), {"test/acc": 0.6}, tags=tags, histories=overfit),
        s.job("figure2_regularised", "baseline", shallow(32, dropout=0.5), {"test/acc": 0.68}, tags=tags,
              histories=regular),
        s.job("figure2", "mimic", shallow(32), {"test/acc": 0.91}, tags=tags | {"teacher_run_id": teacher},
              histories=LEARNING)]


def figure3(s: FakeStudy, teachers: list[str], weak: str, ids: dict[str, list[str]]) -> None:
    """Students of widths 8 and 80 of the weak teacher, the teacher and the ensemble of all three."""
    ensemble = ",".join(teachers)
    accs = {(8, weak): [0.60], (8, teachers[0]): [0.80], (8, ensemble): [0.83, 0.85],
            (80, weak): [0.68], (80, teachers[0]): [0.88], (80, ensemble): [0.90]}
    of = {weak: 0.70, teachers[0]: TEACHERS[0], ensemble: 0.95}
    for (width, teacher), students in accs.items():
        for seed, acc in enumerate(students):
            run = s.job("figure3", "mimic", shallow(width), {"test/acc": acc, "teacher/test_acc": of[teacher],
                                                             "teacher/val_acc": of[teacher] + 0.01}, seed,
                        tags={"teacher_run_id": teacher})
            ids.setdefault(f"f3 {width} {teacher}", []).append(run)


def _no_fsync(connection: object, _record: object) -> None:
    """Turn off a new SQLite connection's fsync on commit."""
    if isinstance(connection, sqlite3.Connection):
        connection.execute("PRAGMA synchronous = OFF")


@pytest.fixture(scope="module")
def fast_sqlite() -> Iterator[None]:
    """SQLite stores opened meanwhile skip fsync: a commit per MLflow call would otherwise take most of the test."""
    event.listen(Engine, "connect", _no_fsync)
    yield
    event.remove(Engine, "connect", _no_fsync)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, empty_store: Path,
           fast_sqlite: None) -> tuple[FakeStudy, dict, list[Path]]:
    """The fake study and its report, written once for the module's tests (the store takes seconds to fill)."""
    tmp = tmp_path_factory.mktemp("paper")
    shutil.copy(empty_store, tmp / "mlflow.db")  # conftest's empty store: its schema is made once per session
    study = FakeStudy(f"sqlite:///{tmp}/mlflow.db", tmp / "artifacts")
    ids = build(study)
    return study, ids, write_report(study.client, study.id, tmp / "paper", min_seconds=0.01)


def rows(path: Path, table: str) -> list[dict[str, str]]:
    """One table's rows of results.csv."""
    with open(path) as f:
        return [r for r in csv.DictReader(f) if r["table"] == table]


def test_files_and_artifacts(report: tuple) -> None:
    """Every file is written, linked from report.md and logged on the study run; the header names the study."""
    study, _, files = report
    out = files[0].parent
    assert {f.name for f in files} == {"report.md", "results.csv", "figure1.png", "figure2.png", "figure3.png"}
    assert all(f.stat().st_size > 0 for f in files)
    logged = {Path(a.path).name for a in study.client.list_artifacts(study.id, "report")}
    assert logged == {f.name for f in files}
    text = (out / "report.md").read_text()
    assert study.id in text and "make paper SIZE=smoke" in text and "`mnist1d`" in text
    for figure in ("figure1.png", "figure2.png", "figure3.png"):
        assert f"]({figure})" in text
    assert "Missing:" not in text  # every stage is there


def test_main_table_numbers(report: tuple) -> None:
    """Figure 1's table: mean and std over seeds as computed by hand, the runs of each row, convergence."""
    _, ids, files = report
    main = {(r["series"], int(r["params"])): r for r in rows(files[1], "main")}
    width = {w: 51 * w + 10 for w in (16, 32)}  # 40 inputs, 10 classes
    for series, accs, key in (("mimic lr=0.001", MIMIC, "mimic"), ("shallow labels (plain)", PLAIN, "plain"),
                              ("shallow labels (tuned) lr=0.001 dropout=0.5", REG, "reg"),
                              ("kd lr=0.001 T=2.0", KD, "kd")):
        for w, values in accs.items():
            row = main[(series, width[w])]
            mean, std = pct(values)
            assert float(row["test acc"]) == pytest.approx(mean, abs=1e-3)
            assert float(row["test acc std"]) == pytest.approx(std, abs=1e-3)
            assert row["seeds"] == "2" and row["run_ids"].split() == ids[f"{key}{w}"]
    assert main[("mimic lr=0.001", width[32])]["agreement"] == "96.0"
    assert main[("shallow labels (plain)", width[16])]["converged"] == "0/2 (lower bound)"
    assert main[("mimic lr=0.001", width[16])]["converged"] == "2/2"
    teacher = next(r for r in main.values() if r["series"] == "teacher")
    assert (float(teacher["test acc"]), float(teacher["test acc std"])) == pytest.approx(pct(TEACHERS))
    ensemble = next(r for r in main.values() if r["series"].startswith("ensemble"))
    assert float(ensemble["test acc"]) == pytest.approx(95.0) and ensemble["test acc std"] == ""
    assert ensemble["run_ids"].split() == ids["teachers"]
    assert {r["series"] for r in main.values()} >= {"DeepNet 2 layers lr=0.001", "DeepNet 4 layers lr=0.001"}
    assert all(i not in open(files[1]).read() for i in ids["ignored"])


def test_choices_on_validation(report: tuple) -> None:
    """Each family's choice is its best validation accuracy, not its best test; the T ladder sits beside L2."""
    _, _, files = report
    tuning = {r["family"]: r for r in rows(files[1], "tuning")}
    assert tuning["labels"]["chosen"] == "lr=0.001 dropout=0.5"  # best val/best_acc (0.70), not best test (0.75)
    assert tuning["KD"]["chosen"] == "lr=0.001 T=2.0" and tuning["KD"]["trials"] == "3"
    assert float(tuning["labels"]["after all"]) == pytest.approx(70.0)
    variants = {r["objective"]: float(r["val acc"]) for r in rows(files[1], "variants")}
    assert variants == pytest.approx({"L2 raw": 84.0, "L2 centred": 81.0, "KD T=2.0": 86.0, "KD T=4.0": 82.0,
                                      "KD T=20.0": 80.0})
    assert "At w=16, KD at T=20 reaches 80.0% on validation and L2 on centred logits 81.0% (-1.0 points" in \
        files[0].read_text()


def test_bottleneck(report: tuple) -> None:
    """Epochs and seconds to the unfactorised net's 95% level, one bar for every rank, and the verdicts."""
    _, _, files = report
    table = {(r["optimizer"], r["rank"]): r for r in rows(files[1], "bottleneck")}
    epochs = {("SGD", "none"): 6, ("SGD", "4"): 4, ("Adam", "none"): 2, ("Adam", "4"): 4}
    for key, n in epochs.items():
        row = table[key]
        times = [fit * n / 6 for fit in FIT_S]
        assert float(row["epochs to 95%"]) == n and float(row["epochs to 95% std"]) == 0
        assert float(row["time to 95%"]) == pytest.approx(statistics.fmean(times))
        assert float(row["time to 95% std"]) == pytest.approx(statistics.stdev(times), abs=1e-3)
        assert float(row["final val mse"]) == pytest.approx(1.0) and row["reached"] == "2/2"
    assert table[("SGD", "2")]["reached"] == "0/2" and table[("SGD", "2")]["epochs to 95%"] == ""
    # by optimizer, then rank, the unfactorised net last
    assert [r["rank"] for r in rows(files[1], "bottleneck")] == ["4", "none", "2", "4", "none"]
    text = files[0].read_text()
    assert "SGD's 95% level: validation logit-MSE 1.45." in text
    assert "With SGD, the factorised net (k=2) never reached the unfactorised net's 95% level; it ends at " \
           "validation logit-MSE 1.5000 ± 0.0000 vs 1.0000 ± 0.0000." in text
    # the seconds' spread over seeds (FIT_S) hides SGD's lead in wall time but not Adam's lag
    assert "With SGD, the factorised net (k=4) reached the unfactorised net's 95% level; against the unfactorised " \
           "one it took fewer epochs (4.0 ± 0.0 vs 6.0 ± 0.0) and as much wall time within the seeds' spread " \
           "(10.00 ± 2.83 s vs 15.00 ± 4.24 s) " in text
    assert "With Adam, the factorised net (k=4) reached the unfactorised net's 95% level; against the unfactorised " \
           "one it took more epochs (4.0 ± 0.0 vs 2.0 ± 0.0) and more wall time (10.00 ± 2.83 s vs 5.00 ± 1.41 s)" \
           in text
    assert "The paper's claim that the bottleneck speeds up SGD: partly." in text


def test_bottleneck_verdicts_need_two_runs_at_the_level_and_sgd_near_convergence() -> None:
    """One run of three at the level is no spread to compare; SGD ending far above Adam's fit makes its speed-up
    one of early training, so the claim holds only partly though SGD's every row is faster and fits better."""
    table = Table("bottleneck", "", ["optimizer", "rank", "seeds", "epochs to 95%", "time to 95%", "final val mse",
                                     "reached"])
    for optimizer, rank, epochs, mse in (("Adam", "16", (20.0,), (10.0, 10.1, 10.2)),
                                         ("Adam", "none", (13.0, 14.0, 13.0), (7.0, 7.1, 7.2)),
                                         ("SGD", "16", (10.0, 11.0, 10.0), (55.0, 55.1, 55.2)),
                                         ("SGD", "none", (16.0, 17.0, 16.0), (65.0, 65.1, 65.2))):
        table.add({"optimizer": optimizer, "rank": rank, "seeds": 3, "epochs to 95%": Stat(epochs, 1.0, "", 1),
                   "time to 95%": Stat(tuple(2 * e for e in epochs), 1.0, " s", 2),
                   "final val mse": Stat(mse, 1.0, "", 4), "reached": f"{len(epochs)}/3"}, [])
    text = " ".join(bottleneck_verdicts(table))
    assert "With Adam, only 1/3 runs of the factorised net (k=16) reached the unfactorised net's 95% level: too few " \
           "to compare its speed, but it ends at a worse fit" in text
    assert "took fewer epochs (10.3 ± 0.6 vs 16.3 ± 0.6)" in text and "at its rate SGD is far from converged" in text
    assert text.endswith("The paper's claim that the bottleneck speeds up SGD: partly.")


def test_figures_controls_cost(report: tuple) -> None:
    """Figure 2 and 3's tables, the controls and the cost of nets built from their logged configs."""
    _, ids, files = report
    f3 = rows(files[1], "figure3")
    assert [(r["student width"], float(r["teacher test acc"])) for r in f3] == [
        ("8", 70.0), ("8", 91.0), ("8", 95.0), ("80", 70.0), ("80", 91.0), ("80", 95.0)]
    assert float(f3[2]["student test acc"]) == pytest.approx(84.0) and f3[2]["teacher"] == "ensemble of 3"
    f2 = {r["series"]: r for r in rows(files[1], "figure2")}
    assert float(f2["shallow labels (plain)"]["val drop from peak"]) == pytest.approx(4.0)
    assert [f2[k]["run_ids"] for k in ("shallow labels (plain)", "shallow labels (tuned)", "mimic")] == \
        ids["figure2"]  # the runs without early stopping, not the early-stopped ones at the same width
    controls = rows(files[1], "controls")
    # the mimic stage's runs at the controls' width join them: they are the default transfer set
    assert [(r["transfer set"], float(r["test acc"])) for r in controls] == [
        ("training inputs only", 70.0), ("generated 200", 80.0), ("generated 400", pytest.approx(85.3333))]
    assert {r["objective"] for r in rows(files[1], "l2_vs_kd")} == {"L2 on logits", "KD T=2.0"}
    cost = {r["series"]: r for r in rows(files[1], "cost")}
    assert int(cost["teacher"]["FLOPs"]) == flops_per_sample(CNN1D(40, 10, channels=4, depth=2), (40,))
    assert cost["teacher"]["run_ids"] == ids["teachers"][0]  # the one the mimics learned from
    assert float(cost["teacher"]["latency b=1 (us)"]) > 0 and float(cost["mimic lr=0.001"]["latency b=1024 (us)"]) > 0
    assert {"bottleneck rank=None", "bottleneck rank=4", "DeepNet 4 layers lr=0.001"} <= set(cost)
    assert len(rows(files[1], "cost")) == 13 and "No config.yaml" not in files[0].read_text()  # 1 + 9 + 3 nets


def test_what_reproduces(report: tuple) -> None:
    """The closing paragraph's verdicts follow from the numbers."""
    _, _, files = report
    closing = files[0].read_text().split("## What reproduces")[1]
    assert "The best mimic (w=32, 1,642 params) reaches 92.0% against the teacher's 93.0%, 1.0 points below it: " \
           "reproduced." in closing
    assert "the mimic beats the tuned baseline by more than the seeds' spread at 2 of 2 sizes" in closing
    assert "Mimics do not overfit (Figure 2): the mimic's validation accuracy ends 0.0 points below its peak, the " \
           "plain baseline's 4.0: reproduced." in closing
    assert "at w=8 student accuracy rises with teacher accuracy" in closing and ": reproduced." in closing
    assert "(+15.3 points from the extra data)" in closing


def test_smaller_study_newest_by_default(report: tuple, tmp_path: Path) -> None:
    """`main` reports the newest study; one with two stages says what is missing and draws what it can."""
    first, _, _ = report
    small = FakeStudy(first.uri, tmp_path)  # a newer study of two stages, in the same store
    teacher = small.job("teachers", "teacher", cnn(2), {"test/acc": 0.9, "val/best_acc": 0.9})
    small.job("mimic", "mimic", shallow(16), {"test/acc": 0.8}, tags={"teacher_run_id": teacher})
    assert main(["--tracking-uri", first.uri, "--out", str(tmp_path / "out"), "--min-seconds", "0.01"]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert small.id in text and first.id not in text
    assert "Missing: teacher_quality, tune_labels, tune_deep, tune_l2, tune_kd, baselines, deep, kd, figure2, " \
           "figure3, controls, bottleneck" in text
    assert "_Not in this study: stage `figure3` missing._" in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["figure1.png", "report.md", "results.csv"]
    assert [r["series"] for r in rows(tmp_path / "out" / "results.csv", "main")] == ["teacher", "mimic lr=0.001"]
    assert main(["--tracking-uri", first.uri, "--study", "nosuchrun", "--out", str(tmp_path / "none")]) == 1


def test_a_stage_run_again_counts_each_job_once(report: tuple, tmp_path: Path) -> None:
    """A study continued with --study after a stop midway: the stopped sweep's finished job is not counted beside
    the finished sweep's copy of it."""
    first, _, _ = report
    again = FakeStudy(first.uri, tmp_path)
    teacher = again.job("teachers", "teacher", cnn(2), {"test/acc": 0.9, "val/best_acc": 0.9})
    stopped = again.sweep("mimic")
    again.client.set_terminated(stopped, "KILLED")
    again.job("mimic", "mimic", shallow(16), {"test/acc": 0.8}, tags={"teacher_run_id": teacher}, parent=stopped)
    del again.sweeps["mimic"]
    for n in (0, 1):  # the second launch: seed 0 again (its copy), then seed 1
        again.job("mimic", "mimic", shallow(16), {"test/acc": 0.8}, n, tags={"teacher_run_id": teacher})
    again.client.set_terminated(again.sweeps["mimic"], "FINISHED")
    mimics = study_runs.load_study(again.client, again.id).stage("mimic")
    assert sorted(study_runs.seed(r) for r in mimics) == [0, 1]


def test_a_study_without_the_figure2_stage_draws_early_stopped_curves_and_claims_nothing(
        report: tuple, tmp_path: Path) -> None:
    first, _, _ = report
    old = FakeStudy(first.uri, tmp_path)  # made before the figure2 stage existed
    teacher = old.job("teachers", "teacher", cnn(2), {"test/acc": 0.9, "val/best_acc": 0.9})
    old.job("baselines", "baseline", shallow(16), {"test/acc": 0.6}, histories=LEARNING)
    old.job("mimic", "mimic", shallow(16), {"test/acc": 0.8}, tags={"teacher_run_id": teacher}, histories=LEARNING)
    files = write_report(old.client, old.id, tmp_path / "out", min_seconds=0.01)
    text = files[0].read_text()
    assert (tmp_path / "out" / "figure2.png").stat().st_size > 0  # drawn from the early-stopped runs
    assert "Mimics do not overfit (Figure 2): not measured (early-stopped runs only)." in text
    assert "These runs stopped early" in text and "points below its peak" not in text


@pytest.mark.parametrize(("a", "b", "expected"), [
    ((0.90, 0.92), (0.80, 0.82), 1),  # 91.0 ± 1.4 against 81.0 ± 1.4: apart
    ((0.80, 0.82), (0.90, 0.92), -1),
    ((0.90, 0.94), (0.89, 0.91), 0),  # 92.0 ± 2.8 against 90.0 ± 1.4: the intervals overlap
    ((0.90, 0.90), (0.90, 0.90), 0),  # equal
    ((0.95,), (0.80,), 0),  # one seed each: no spread to weigh, so no claim
    ((), (0.80, 0.82), 0),
])
def test_a_difference_is_claimed_only_beyond_the_seeds_spread(a: tuple, b: tuple, expected: int) -> None:
    assert compare(Stat(a), Stat(b)) == expected
