"""Hydra multiruns: jobs nest under one MLflow parent; failures are recorded and the sweep goes on."""

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag

from shallowmimic.analysis.report import group_runs, markdown, table
from shallowmimic.analysis.report import main as report_main
from shallowmimic.training.pipeline import train

from .conftest import TINY_TEACHER, runs_of


def children(client: MlflowClient) -> tuple[object, list]:
    """The single sweep parent run in the store and its child runs."""
    runs = runs_of(client)
    (parent,) = [r for r in runs if r.data.tags.get("role") == "sweep"]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, kids


def test_width_rank_sweep_nests_under_one_parent_and_reports(cli, make_cfg, client: MlflowClient, outputs,
                                                             store_uri) -> None:
    train(make_cfg(*TINY_TEACHER))  # the teacher in process: the command line under test is the student's
    proc = cli("-m", "experiment=mimic", "sweep=smoke")
    assert proc.returncode == 0, proc.stderr[-2000:]
    parent, kids = children(client)
    assert parent.info.status == "FINISHED"
    assert sorted((r.data.params["model.width"], r.data.params["model.rank"]) for r in kids) == [
        ("256", "8"), ("256", "None"), ("64", "8"), ("64", "None")]
    assert {r.info.status for r in kids} == {"FINISHED"}
    assert sorted(r.data.tags["logits_cache"] for r in kids) == ["hit", "hit", "hit", "miss"]  # one teacher pass
    job_dirs = sorted(p.name for p in next((outputs / "multiruns").iterdir()).iterdir() if p.is_dir())
    assert len(job_dirs) == 4 and "model.rank=null,model.width=64" in job_dirs[0]  # named by the overrides
    assert not any("paths.outputs" in d for d in job_dirs)  # ... that matter: no plumbing
    assert report_main(["--tracking-uri", store_uri, "--out", str(outputs / "reports")]) == 0
    table = (outputs / "reports" / "mnist1d.md").read_text()
    assert table.count("| mimic |") == 4 and table.count("| teacher |") == 1


def job(role: str, variant: str, seed: int, n_params: int, metrics: dict[str, float], model: str = "ShallowNet") -> Run:
    """A finished job run in memory, with the tags, params and metrics the report reads."""
    info = RunInfo(f"{role} {variant} {seed}", "0", "", "FINISHED", 0, 0, "active")
    params = [Param("model.name", model), Param("n_params", str(n_params)), Param("seed", str(seed))]
    tags = [RunTag("role", role), RunTag("variant", variant)]
    return Run(info, RunData([Metric(k, v, 0, 0) for k, v in metrics.items()], params, tags))


def test_report_rows_order_and_numbers() -> None:
    mimics = [job("mimic", "w=64", seed, 3274, {"test/acc": acc, "test/agreement": acc + 0.02, "val/best_epoch": epoch})
              for seed, (acc, epoch) in enumerate([(0.91, 3.0), (0.93, 5.0)])]
    runs = [*mimics, job("baseline", "w=64", 0, 3274, {"test/acc": 0.80}), job("baseline", "w=16", 0, 826, {}),
            job("teacher", "CNN1D d=2", 0, 5000, {"test/acc": 0.95, "val/best_epoch": 9.0}, "CNN1D")]
    rows = table(group_runs(runs))
    # the paper's order of roles, then by size; one seed shows no spread, several show one std
    assert rows == [
        {"role": "teacher", "variant": "CNN1D d=2", "params": "5,000", "seeds": "1", "test acc": "95.0%",
         "agreement": "-", "epochs": "10"},
        {"role": "baseline", "variant": "w=16", "params": "826", "seeds": "1", "test acc": "-", "agreement": "-",
         "epochs": "-"},
        {"role": "baseline", "variant": "w=64", "params": "3,274", "seeds": "1", "test acc": "80.0%",
         "agreement": "-", "epochs": "-"},
        {"role": "mimic", "variant": "w=64", "params": "3,274", "seeds": "2", "test acc": "92.0 ± 1.4%",
         "agreement": "94.0 ± 1.4%", "epochs": "5"}]
    assert markdown(rows).splitlines()[:2] == ["| role | variant | params | seeds | test acc | agreement | epochs |",
                                               "|---|---|---|---|---|---|---|"]


def test_a_failing_job_is_failed_and_the_others_finish(cli, client: MlflowClient) -> None:
    # lr=1e30 makes the loss blow up at the first steps: the NaN guard must stop that job, not the sweep
    proc = cli("-m", "experiment=baseline", "model.width=16", "optimizer.lr=1e30,1e-3")
    assert proc.returncode != 0  # Hydra reports the failure after running every job
    assert "train/loss is" in proc.stderr
    parent, kids = children(client)
    assert sorted((r.data.params["optimizer.lr"], r.info.status) for r in kids) == [
        ("0.001", "FINISHED"), ("1e+30", "FAILED")]
    assert parent.info.status == "FAILED"


@pytest.mark.parametrize("n_jobs", [2])
def test_parallel_sweep_loses_no_run(cli, client: MlflowClient, n_jobs: int) -> None:
    proc = cli("-m", "experiment=baseline", "model.width=8,16,24,32", "hydra/launcher=joblib",
               f"hydra.launcher.n_jobs={n_jobs}", "threads=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    parent, kids = children(client)
    assert sorted(int(r.data.params["model.width"]) for r in kids) == [8, 16, 24, 32]
    assert {r.info.status for r in kids} == {"FINISHED"} and parent.info.status == "FINISHED"


def test_submitit_sweep_runs_each_job_in_its_own_process_and_nests_them(cli, client: MlflowClient, outputs) -> None:
    # the cluster path (hydra/launcher=slurm) with submitit's local executor: jobs pickled, run and collected by
    # submitit in processes of their own, as on SLURM nodes
    proc = cli("-m", "experiment=baseline", "model.width=8,16", "hydra/launcher=submitit_local", "threads=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    parent, kids = children(client)
    assert sorted(int(r.data.params["model.width"]) for r in kids) == [8, 16]
    assert {r.info.status for r in kids} == {"FINISHED"} and parent.info.status == "FINISHED"
    (sweep_dir,) = (outputs / "multiruns").iterdir()
    assert list(sweep_dir.glob(".submitit/*/*_log.err"))  # submitit ran them, not Hydra's basic launcher


def test_optuna_sweep_maximises_validation_accuracy(cli, client: MlflowClient, outputs) -> None:
    proc = cli("-m", "experiment=baseline", "model.width=16", "sweep=lr_optuna", "hydra.sweeper.n_trials=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    parent, kids = children(client)
    assert len(kids) == 2 and {r.info.status for r in kids} == {"FINISHED"}
    (optimum,) = (outputs / "multiruns").glob("*/optimization_results.yaml")
    best = max(r.data.metrics["val/best_acc"] for r in kids)
    assert f"best_value: {best}" in optimum.read_text()  # Optuna saw validation accuracy, not test accuracy


def test_slurm_launcher_config_composes(cli) -> None:
    proc = cli("--cfg=hydra", "hydra/launcher=slurm")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SlurmLauncher" in proc.stdout and "tasks_per_node: 1" in proc.stdout
