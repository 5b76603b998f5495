"""The objectives and the LightningModule's metrics."""

import torch

from shallowmimic.objectives import labels_loss, mimic_loss


def test_mimic_loss_is_the_papers_formula() -> None:
    g = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    z = torch.tensor([[1.5, 2.0, 1.0], [1.0, 1.0, 4.0]])
    # 1/(2T) sum_t ||g - z||^2 with T = 2: ((0.25 + 0 + 4) + (1 + 4 + 0)) / 4
    assert torch.isclose(mimic_loss(g, {"z": z}), torch.tensor(9.25 / 4))


def test_mimic_loss_is_zero_on_the_teachers_logits() -> None:
    z = torch.randn(8, 10)
    assert mimic_loss(z.clone(), {"z": z}) == 0


def test_labels_loss_is_cross_entropy() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1])
    expected = (-torch.log_softmax(logits, 1)[[0, 1], [0, 1]]).mean()
    assert torch.isclose(labels_loss(logits, {"y": y}), expected)
