"""Training to convergence by config: learning-rate schedules, early stopping, and the record of why a fit stopped."""

import pytest
import torch
from mlflow import MlflowClient

from shallowmimic.checks import build
from shallowmimic.errors import UserError
from shallowmimic.training.pipeline import train

from .conftest import TINY_SHALLOW, runs_of


def lrs(make_cfg, scheduler: str, steps: int, *overrides: str) -> list[float]:
    """The learning rate at each of `steps` optimizer steps under conf/scheduler/<scheduler>.yaml, lr = 1."""
    schedule = build("scheduler", make_cfg(f"scheduler={scheduler}", *overrides).scheduler)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler_ = schedule(optimizer, total_steps=steps)["scheduler"]
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler_.step()
    return out


def test_cosine_warms_up_then_decays_to_zero(make_cfg) -> None:
    lr = lrs(make_cfg, "cosine", 100, "scheduler.warmup_fraction=0.05")
    assert lr[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # 5 warm-up steps
    assert lr[5 + 95 // 2] == pytest.approx(0.5, abs=0.02)  # half way through the decay
    assert lr[-1] < 0.001 and all(a >= b for a, b in zip(lr[4:], lr[5:], strict=False))


def test_step_schedule_drops_at_its_milestones(make_cfg) -> None:
    lr = lrs(make_cfg, "step", 100, "scheduler.warmup_fraction=0.0", "scheduler.milestones=[0.5,0.8]",
             "scheduler.gamma=0.1")
    assert lr[49] == 1.0 and lr[50] == pytest.approx(0.1) and lr[80] == pytest.approx(0.01)


def test_a_bad_schedule_key_is_one_line_before_any_run(make_cfg, client: MlflowClient) -> None:
    with pytest.raises(UserError, match=r"^scheduler.warmup_fraction=2: must be a number >= 0 and <= 0.5$"):
        train(make_cfg("experiment=baseline", *TINY_SHALLOW, "scheduler=cosine", "scheduler.warmup_fraction=2"))
    assert runs_of(client) == []


def test_a_fit_follows_its_schedule_and_records_why_it_stopped(make_cfg, client: MlflowClient) -> None:
    train(make_cfg("experiment=baseline", *TINY_SHALLOW, "scheduler=cosine", "callbacks=early_stopping",
                   "trainer.max_epochs=4", "optimizer=sgd", "optimizer.lr=0.1"))
    # an improvement of 1.0 in accuracy is impossible: stop after `patience` epochs without one
    train(make_cfg("experiment=baseline", *TINY_SHALLOW, "callbacks=early_stopping", "trainer.max_epochs=20",
                   "callbacks.early_stopping.patience=2", "callbacks.early_stopping.min_delta=1.0"))
    scheduled, stopped = sorted(runs_of(client), key=lambda r: r.info.start_time)
    lr = [m.value for m in sorted(client.get_metric_history(scheduled.info.run_id, "lr-SGD"), key=lambda m: m.step)]
    assert len(lr) == 4 and lr[0] > lr[1] > lr[2] > lr[3]  # per epoch, decaying (after the warm-up steps)
    assert scheduled.data.tags["stop_reason"] == "max_epochs" and scheduled.data.params["scheduler.name"] == (
        "warmup_cosine")
    assert stopped.data.tags["stop_reason"] == "early_stopping"
    assert stopped.data.metrics["train/epochs"] == 3  # the first epoch sets the best, two more without improving
