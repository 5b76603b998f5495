"""The objectives and the LightningModule's metrics."""

from functools import partial
from unittest.mock import patch

import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from shallowmimic.data import InMemoryLoader
from shallowmimic.data.loader import Chunk
from shallowmimic.nets import CNN2D, ShallowNet
from shallowmimic.objectives import labels_loss, mimic_loss
from shallowmimic.training.system import System
from shallowmimic.training.teachers import BATCH_BYTES_CPU, MAX_ROWS, _logits, rows_per_batch, teacher_device


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


ADAM = partial(torch.optim.Adam, lr=1e-2)


def fit_tiny(steps: int, x: torch.Tensor | None = None, compile: bool = False, max_steps: int = -1,
             optimizer: partial = ADAM, clip: float | None = None) -> tuple[System, L.Trainer]:
    """One epoch of a tiny mimic on CPU, the loader serving `steps` batches per item."""
    g = torch.Generator().manual_seed(0)
    data = {"x": torch.randn(200, 8, generator=g) if x is None else x, "z": torch.randn(200, 3, generator=g),
            "y": torch.randint(0, 3, (200,), generator=g)}
    torch.manual_seed(0)
    system = System(ShallowNet(8, 3, width=16), mimic_loss, optimizer, 3, compile=compile, clip=clip)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, max_steps=max_steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(system, train_dataloaders=InMemoryLoader(data, 32, shuffle=True, steps=steps))
    return system, trainer


def test_several_steps_per_loader_item_train_exactly_as_one_per_item() -> None:
    (one, t1), (four, t4) = fit_tiny(1), fit_tiny(4)
    assert t1.global_step == t4.global_step == 7  # ceil(200 / 32) optimizer steps either way
    for key, value in one.state_dict().items():
        assert torch.equal(value, four.state_dict()[key]), key
    # the epoch mean weights each step by its rows, however they were grouped
    assert float(t1.callback_metrics["train/loss"]) == pytest.approx(float(t4.callback_metrics["train/loss"]))


def test_max_steps_counts_optimizer_steps_inside_an_item() -> None:
    (one, t1), (four, t4) = fit_tiny(1, max_steps=5), fit_tiny(4, max_steps=5)
    assert t1.global_step == t4.global_step == 5  # not 7: the second item stops after its first step
    for key, value in one.state_dict().items():
        assert torch.equal(value, four.state_dict()[key]), key


def test_a_non_finite_loss_stops_the_fit() -> None:
    x = torch.randn(200, 8)
    x[100] = float("inf")
    with pytest.raises(FloatingPointError, match="train/loss is"):
        fit_tiny(4, x=x)


def test_gradients_are_clipped_to_the_norm_asked() -> None:
    """trainer.gradient_clip_val under manual optimization: one plain SGD step moves the weights by lr x the
    clipped gradient, so by at most lr x clip in norm."""
    torch.manual_seed(0)
    start = [p.detach().clone() for p in ShallowNet(8, 3, width=16).parameters()]
    sgd = partial(torch.optim.SGD, lr=1.0)
    for clip in (None, 1e-3):
        system, _ = fit_tiny(1, max_steps=1, optimizer=sgd, clip=clip)
        moved = torch.linalg.vector_norm(torch.cat([(p - s).flatten() for p, s in zip(system.net.parameters(), start,
                                                                                      strict=True)]))
        assert (moved <= 1e-3 * 1.0001) if clip else (moved > 0.01), (clip, moved)


def test_compile_switch_trains() -> None:
    system, trainer = fit_tiny(4, compile=True)
    assert trainer.global_step == 7 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert not any("_orig_mod" in k for k in system.state_dict())  # checkpoints keep the plain net's keys


def test_loader_items_are_chunks_of_the_same_batches() -> None:
    data = {"x": torch.arange(10)}
    flat = [b["x"].tolist() for b in InMemoryLoader(data, 3, shuffle=False)]
    chunked = InMemoryLoader(data, 3, shuffle=False, steps=3)
    assert len(chunked) == 2 and chunked.steps_per_epoch == 4
    assert [[b["x"].tolist() for b in item] for item in chunked] == [flat[:3], flat[3:]]
    moved = InMemoryLoader(data, 3, shuffle=False).to("meta")
    assert moved.tensors["x"].device.type == "meta" and data["x"].device.type == "cpu"  # the caller's stay


def test_lightning_moves_a_chunk_with_one_call_and_keeps_what_is_there() -> None:
    item = next(iter(InMemoryLoader({"x": torch.randn(6, 2), "y": torch.arange(6)}, 2, shuffle=False, steps=3)))
    calls: list[str] = []
    to = Chunk.to
    with patch.object(Chunk, "to", lambda self, device: calls.append(str(device)) or to(self, device)):
        meta = move_data_to_device(item, torch.device("meta"))  # what Lightning's batch transfer calls
        here = move_data_to_device(item, torch.device("cpu"))
    assert calls == ["meta", "cpu"]  # one call per item, not one per tensor
    assert isinstance(meta, Chunk) and all(t.device.type == "meta" for b in meta for t in b.values())
    assert all(h[k] is b[k] for h, b in zip(here, item, strict=True) for k in b)  # already there: not copied


def test_the_teacher_runs_on_the_trainers_device_in_batches() -> None:
    assert teacher_device("cpu").type == "cpu"
    assert teacher_device("gpu").type == ("cuda" if torch.cuda.is_available() else "cpu")
    net, x = torch.nn.Linear(4, 3), torch.randn(10, 4)
    out = _logits(net, x, batch_size=3, device=teacher_device("gpu"))
    assert out.dtype == np.float32 and np.allclose(out, net(x).detach().numpy(), atol=1e-6)  # the cached format


def test_teacher_batches_are_sized_by_the_nets_largest_activation() -> None:
    cpu = torch.device("cpu")
    cnn = CNN2D((1, 28, 28), 10).eval()  # its first convs hold 32 x 28 x 28 floats per row: 100 KB
    mlp = ShallowNet(40, 10, width=64).eval()
    cnn_rows = rows_per_batch(cnn, torch.randn(8, 1, 28, 28), cpu)
    assert cnn_rows == BATCH_BYTES_CPU // (2 * 32 * 28 * 28 * 4)  # the largest layer's input and output fit
    assert rows_per_batch(mlp, torch.randn(8, 40), cpu) == MAX_ROWS  # 256 B a row: capped
    x = torch.randn(300, 1, 28, 28)
    with torch.no_grad():
        assert np.allclose(_logits(cnn, x), cnn(x).numpy(), atol=1e-5)  # batches of cnn_rows give the same logits
    assert rows_per_batch(torch.jit.script(mlp), torch.randn(8, 40), cpu) == 4096  # no hooks in TorchScript


def test_train_and_val_sets_go_to_the_training_device_once() -> None:
    moved: list[str] = []

    class Recording(InMemoryLoader):
        def to(self, device: torch.device | str) -> InMemoryLoader:
            moved.append(f"{'train' if self.shuffle else 'val'}:{torch.device(device).type}")
            return super().to(device)

    data = {"x": torch.randn(64, 8), "z": torch.randn(64, 3)}
    system = System(ShallowNet(8, 3, width=8), mimic_loss, partial(torch.optim.Adam, lr=1e-2), 3)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(system, Recording(data, 16, shuffle=True, steps=2), Recording(data, 32, shuffle=False))
    assert sorted(moved) == ["train:cpu", "val:cpu"]  # at the start of the fit, not per epoch or step
