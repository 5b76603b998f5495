"""The throughput bench on tiny sizes: what it measures, and what it records in MLflow (no timing thresholds)."""

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from shallowmimic.bench import SHAPES, cli, linear_macs, main, parse_shape, plain_sps, random_data
from shallowmimic.bench.contenders import compose_train
from shallowmimic.bench.timing import interleaved, paired_ratios
from shallowmimic.nets import CNN1D, ShallowNet

from .conftest import runs_of

CONTENDERS = ["plain_sps", "lightning_sps", "full_sps", "ratio_lightning_plain", "ratio_full_plain"]
EXTRAS = ["cached_sps", "online_sps", "ratio_cached_online", "gflops", "matmul_gflops", "ratio_gflops_matmul"]


def test_bench_records_one_finished_run_per_shape(store_uri: str, outputs: Path, client: MlflowClient,
                                                  capsys: pytest.CaptureFixture) -> None:
    rows = main(["--shape", "in=40,w=64,k=none,b=256,n=2000", "in=12,w=64,k=4,b=128,n=1000", "--repeats", "2",
                 "--min-seconds", "0.01", "--extras", "--profile", "--online-steps", "3", "--matmul-seconds", "0.01",
                 "--tracking-uri", store_uri, "--outputs", str(outputs)])
    assert [name for name, _ in rows] == ["in=40,w=64,k=none,b=256,n=2000 w=64 b=256",
                                          "in=12,w=64,k=4,b=128,n=1000 w=64 k=4 b=128"]
    printed = capsys.readouterr().out
    assert "(b)/(a)" in printed and "(c)/(a)" in printed and "load average" in printed
    assert "SimpleProfiler" in printed and "run_training_epoch" in printed

    runs = {r.data.params["in_dim"]: r for r in runs_of(client, "bench")}
    assert set(runs) == {"40", "12"} and not runs_of(client)  # an experiment of its own, not the data set's
    for run in runs.values():
        assert run.info.status == "FINISHED" and run.data.tags["role"] == "bench"
        assert run.data.params["repeats"] == "2" and run.data.params["torch_threads"] == str(torch.get_num_threads())
        m = run.data.metrics
        assert all(m[f"bench/{k}"] > 0 for k in CONTENDERS + EXTRAS)
        for key in CONTENDERS:  # a median lies within its spread
            assert m[f"bench/{key}_low"] <= m[f"bench/{key}"] <= m[f"bench/{key}_high"]
        assert m["bench/ratio_gflops_matmul"] == pytest.approx(m["bench/gflops"] / m["bench/matmul_gflops"])
        # (c) logged each epoch into the bench run, as train.py does, and wrote the checkpoints train.py writes
        assert "train/loss" in m and "val/logit_mse" in m
        assert (outputs / "bench" / run.info.run_id / "checkpoints" / "last.ckpt").is_file()
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["fit-profile.txt"]
    assert runs["12"].data.params["rank"] == "4" and runs["40"].data.params["rank"] == "None"
    assert runs["12"].data.params["n_inputs"] == "1000" and runs["12"].data.params["batch_size"] == "128"


def test_against_times_our_path_with_other_overrides_in_the_same_rounds(
        store_uri: str, outputs: Path, client: MlflowClient, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[int] = []
    timed = cli.lightning_sps
    monkeypatch.setattr(cli, "lightning_sps", lambda cfg, *a, **k: steps.append(cfg.loop.steps_per_batch)
                        or timed(cfg, *a, **k))
    main(["--shape", "in=12,w=16,k=none,b=128,n=1000", "--repeats", "2", "--min-seconds", "0.01",
          "--against", "loop.steps_per_batch=1", "--tracking-uri", store_uri, "--outputs", str(outputs)])
    default = compose_train([]).loop.steps_per_batch
    assert default != 1 and steps == [default, 1, default] * 2  # per round (b), (b') with the override, (c)
    assert "(b)/(b') " in capsys.readouterr().out
    (run,) = runs_of(client, "bench")
    assert run.data.params["against"] == "loop.steps_per_batch=1"
    assert run.data.metrics["bench/against_sps"] > 0 and run.data.metrics["bench/ratio_lightning_against"] > 0


def test_shapes_are_presets_or_specs() -> None:
    assert parse_shape("paper") == SHAPES["paper"]
    assert (SHAPES["paper"].in_dim, SHAPES["paper"].rank, SHAPES["paper"].width) == (1845, 250, 8192)
    changed = parse_shape("paper:n=100,b=64")
    assert (changed.in_dim, changed.inputs, changed.batch) == (1845, 100, 64)
    assert parse_shape("w=32,k=none").rank is None and parse_shape("w=32,k=none").in_dim == 40


def test_contenders_run_interleaved_and_ratios_are_bracketed() -> None:
    order: list[str] = []
    values = {"a": [2.0, 6.0, 4.0], "b": [2.0, 4.0]}

    def contender(name: str):  # noqa: ANN202
        return lambda: order.append(name) or values[name][len([o for o in order if o == name]) - 1]

    results = interleaved({"a": contender("a"), "b": contender("b")}, repeats=2)
    assert order == ["a", "b", "a", "b", "a"] and results == values  # the baseline closes: each round bracketed
    ratio = paired_ratios(results, over="a")["b"]
    # round by round over the mean of the baseline either side (2/4, 4/5), not a ratio of medians (3/4)
    assert (ratio.median, ratio.low, ratio.high) == (0.65, 0.5, 0.8)


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
