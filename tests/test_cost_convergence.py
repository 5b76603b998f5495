"""Convergence of curves and inference cost: hand-counted answers on tiny nets and synthetic curves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shallowmimic.analysis.convergence import converged, first_at_or_below, level
from shallowmimic.analysis.cost import flops_per_sample, latency_per_sample, n_params
from shallowmimic.errors import BadValue
from shallowmimic.nets import ShallowNet


def test_level_hand_count() -> None:
    # 95% of the way from 10 to 1 is 1.45; of the way from 10 to 2, 2.4: the mean of the two curves, 1.925
    assert level([[10, 5, 2, 1.5, 1.0]]) == pytest.approx(1.45)
    assert level([[10, 5, 2, 1.5, 1.0], [10, 4, 2.0]]) == pytest.approx(1.925)
    assert level([[10, 5, 1.0]], fraction=0.5) == pytest.approx(5.5)


def test_level_of_curves_that_do_not_decrease() -> None:
    assert level([[1.0, 2.0, 3.0]]) is None
    assert level([[2.0, 1.0, 2.0]]) is None  # dips but ends where it began
    assert level([[1.0], []]) is None
    assert level([[3.0, 1.0, float("nan")]]) is None
    assert level([[1.0, 2.0], [10, 1.0]]) == pytest.approx(1.45)  # only the decreasing one counts
    with pytest.raises(BadValue):
        level([[2.0, 1.0]], fraction=1.5)


def test_first_at_or_below() -> None:
    assert first_at_or_below([10, 5, 2, 1.5, 1.0], 1.45) == 4  # the curve's own 95% level: its last point
    assert first_at_or_below([10, 3, 1.5, 1.2], 1.45) == 3
    assert first_at_or_below([10, 2, 1.6, 1.5], 1.45) is None  # plateaus above another net's bar
    assert first_at_or_below([10, 2], None) is None


def test_converged() -> None:
    flat = [5.0, 3.0, 2.0, 2.0, 2.0, 2.0]  # best at index 2; the ties after it are no improvement
    assert converged(flat, "min", patience=3)
    assert not converged(flat, "min", patience=4)
    assert not converged([5.0, 4.0, 3.0, 2.0], "min", patience=1)
    assert converged([0.1, 0.5, 0.9, 0.8, 0.85], "max", patience=2)
    assert not converged([0.1, 0.5, 0.9, 0.8, 0.95], "max", patience=2)
    assert not converged([1.0], "min", patience=1)
    assert not converged([], "min", patience=0)


def test_converged_min_delta() -> None:
    creeping = [5.0, 3.0, 2.99, 2.98, 2.97]  # gains of 0.01 after index 1
    assert not converged(creeping, "min", patience=3)
    assert converged(creeping, "min", patience=3, min_delta=0.05)


def test_converged_refuses_bad_mode() -> None:
    with pytest.raises(BadValue):
        converged([1.0, 2.0], "up", patience=1)


def test_flops_linear_hand_count() -> None:
    net = nn.Sequential(nn.Linear(40, 8, bias=False), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10))
    assert flops_per_sample(net, (40,)) == 2 * (40 * 8 + 8 * 16 + 16 * 10)


def test_flops_conv1d_front() -> None:
    # Conv1d 2 -> 4 channels, kernel 3, no padding: L = 10 -> 8; then max-pool 2 -> 4; flatten 16 -> Linear 5
    net = nn.Sequential(nn.Conv1d(2, 4, 3), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(16, 5))
    assert flops_per_sample(net, (2, 10)) == 2 * (4 * 8 * 2 * 3 + 16 * 5)


def test_flops_conv2d_groups() -> None:
    net = nn.Sequential(nn.Conv2d(4, 6, (3, 3), padding=1, groups=2))
    assert flops_per_sample(net, (4, 5, 5)) == 2 * (6 * 5 * 5 * 2 * 9)


def test_flops_shallow_net_and_state_kept() -> None:
    net = ShallowNet(12, 3, width=8, rank=2, conv_channels=4, conv_kernel=3, conv_pool=2).train()
    # conv on a 1-channel sequence of 12 (padding keeps 12), pool to 6: 24 features -> rank 2 -> 8 -> 3
    expected = 2 * (4 * 12 * 1 * 3 + 24 * 2 + 2 * 8 + 8 * 3)
    assert flops_per_sample(net, (12,)) == expected
    assert net.training
    assert all(not m._forward_hooks for m in net.modules())
    assert n_params(net) == 4 * 3 + 4 + 24 * 2 + 2 * 8 + 8 + 8 * 3 + 3


def test_latency_per_sample() -> None:
    net = nn.Sequential(nn.Linear(40, 8), nn.ReLU(), nn.Linear(8, 10)).train()
    state = torch.random.get_rng_state()
    median, low, high = latency_per_sample(net, (40,), batch_size=4, min_seconds=0.01, repeats=2)
    assert 0 < low <= median <= high
    assert net.training
    assert torch.equal(torch.random.get_rng_state(), state)
