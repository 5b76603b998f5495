"""The throughput bench on tiny sizes: what it measures, and what it records in MLflow (no timing thresholds)."""

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from shallowmimic.bench import linear_macs, main, plain_sps, random_data
from shallowmimic.nets import CNN1D, ShallowNet

from .conftest import runs_of

METRICS = ["bench/plain_sps", "bench/lightning_sps", "bench/ratio_lightning_plain", "bench/cached_sps",
           "bench/online_sps", "bench/ratio_cached_online", "bench/gflops", "bench/matmul_gflops",
           "bench/ratio_gflops_matmul", "bench/peak_rss_mb"]


def test_bench_records_one_finished_run_per_shape(store_uri: str, outputs: Path, client: MlflowClient,
                                                  capsys: pytest.CaptureFixture) -> None:
    rows = main(["--width", "64", "--rank", "none", "4", "--batch-size", "256", "--inputs", "2000", "--epochs", "2",
                 "--online-steps", "3", "--matmul-seconds", "0.01",
                 "--tracking-uri", store_uri, "--outputs", str(outputs)])
    assert [name for name, _ in rows] == ["w=64 b=256", "w=64 k=4 b=256"]
    printed = capsys.readouterr().out
    assert "(b)/(a)" in printed and "w=64 k=4 b=256" in printed

    runs = {r.info.run_name: r for r in runs_of(client)}
    assert set(runs) == {"bench w=64 b=256", "bench w=64 k=4 b=256"}
    for run in runs.values():
        assert run.info.status == "FINISHED"
        assert run.data.tags["role"] == "bench"
        assert run.data.params["width"] == "64" and run.data.params["batch_size"] == "256"
        assert run.data.params["n_inputs"] == "2000"
        assert run.data.params["torch_threads"] == str(torch.get_num_threads())
        m = run.data.metrics
        assert all(m[k] > 0 for k in METRICS)
        # the ratios are made from the measured numbers
        assert m["bench/ratio_lightning_plain"] == pytest.approx(m["bench/lightning_sps"] / m["bench/plain_sps"])
        assert m["bench/ratio_cached_online"] == pytest.approx(m["bench/cached_sps"] / m["bench/online_sps"])
        assert m["bench/ratio_gflops_matmul"] == pytest.approx(m["bench/gflops"] / m["bench/matmul_gflops"])
        assert "train/loss" in m  # Lightning's MLFlowLogger wrote into the same run, as in train.py
    assert runs["bench w=64 k=4 b=256"].data.params["rank"] == "4"
    assert runs["bench w=64 b=256"].data.params["rank"] == "None"


def test_flops_count_the_linear_layers() -> None:
    assert linear_macs(ShallowNet(40, 10, width=32)) == 40 * 32 + 32 * 10
    assert linear_macs(ShallowNet(40, 10, width=32, rank=4)) == 40 * 4 + 4 * 32 + 32 * 10


def test_online_distillation_trains_the_student_only() -> None:
    data = random_data(600)
    student, teacher = ShallowNet(40, 10, width=16), CNN1D(40, 10, channels=4, depth=2).eval().requires_grad_(False)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert plain_sps(student, data, 64, epochs=2, teacher=teacher, max_steps=2) > 0
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training and all(p.grad is None for p in teacher.parameters())


def test_plain_loop_needs_a_warm_up_epoch() -> None:
    with pytest.raises(ValueError, match="warm-up"):
        plain_sps(ShallowNet(40, 10, width=8), random_data(100), 32, epochs=1)
