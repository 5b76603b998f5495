"""The steps results depend on: the targets a student learns, the split each loader serves, the checkpoint the
test split sees, the epoch a mimic keeps, the teacher a resumed student keeps. Each test fails on a wrong target."""

import math
import signal
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from shallowmimic.checks import build
from shallowmimic.data import FeaturesDataModule
from shallowmimic.training.pipeline import train
from shallowmimic.training.teachers import ensemble_logits, load_teacher

from .conftest import TINY_SHALLOW, TINY_TEACHER, runs_of
from .test_faults import start_and_signal


class SpoilLastEpoch(L.Callback):
    """Zeroes the net's weights before the last validation: the last checkpoint then predicts one class for every
    input, worse than any epoch that learnt something, so it is never the best."""

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == trainer.max_epochs - 1 and not trainer.sanity_checking:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.zero_()


def test_cached_targets_are_the_teachers_logits_on_every_row(make_cfg, client: MlflowClient, outputs: Path) -> None:
    train(make_cfg(*TINY_TEACHER))
    cfg = make_cfg("experiment=mimic", *TINY_SHALLOW)
    train(cfg)  # writes the logits cache
    (teacher,) = [r for r in runs_of(client) if r.data.tags["role"] == "teacher"]
    dm = build("data", cfg.data)
    dm.setup()
    logits, tags = ensemble_logits(client, [teacher], dm, outputs / "cache" / "logits")
    assert tags["logits_cache"] == "hit"
    net, _ = load_teacher(client, teacher, dm)
    for split, x in dm.teacher_inputs().items():
        assert isinstance(logits[split], np.memmap)  # read from the cache's files, not held in memory
        torch.testing.assert_close(torch.from_numpy(logits[split]), net(x), msg=split)
    dm.attach_logits(logits)
    mimic = dm.splits["mimic"]  # the rows the student fits: train + transfer, each with its own teacher logits
    torch.testing.assert_close(mimic["z"], net(mimic["x"]))
    batch = next(iter(dm.train_dataloader()))
    torch.testing.assert_close(batch["z"], net(batch["x"]))


def test_loaders_serve_their_own_splits(make_cfg) -> None:
    dm = build("data", make_cfg().data)
    dm.setup()
    raw = dm.raw_splits()
    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        served = torch.cat([b["x"] for b in loader])
        torch.testing.assert_close(served, dm.standardise(raw[split][0]), msg=split)
    train_rows = {tuple(r) for r in raw["train"][0].tolist()}
    assert not any(tuple(r) in train_rows for r in raw["val"][0].tolist())  # validation unseen in training


def test_the_test_split_sees_the_best_checkpoint_not_the_last(make_cfg, client: MlflowClient, outputs) -> None:
    cfg = make_cfg("experiment=baseline", *TINY_SHALLOW, "trainer.max_epochs=6", "optimizer.lr=0.01",
                   "+callbacks.spoil._target_=tests.test_targets.SpoilLastEpoch")
    metrics = train(cfg)
    (run,) = runs_of(client)
    assert run.data.metrics["val/best_epoch"] < 5  # the spoilt last epoch is never chosen
    ckpts = outputs / "runs" / run.info.run_id / "checkpoints"
    dm = build("data", cfg.data)
    dm.setup()
    x, y = dm.splits["test"]["x"], dm.splits["test"]["y"]
    loss = {}
    for name in ("best", "last"):
        state = torch.load(ckpts / f"{name}.ckpt", weights_only=True)["state_dict"]
        net = build("model", cfg.model, in_shape=dm.in_shape, num_classes=dm.num_classes)
        net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
        loss[name] = torch.nn.functional.cross_entropy(net(x), y).item()
    assert loss["last"] == pytest.approx(math.log(10))  # the zeroed net: uniform over the 10 classes
    assert metrics["test/loss"] == pytest.approx(loss["best"], rel=1e-5) and loss["best"] != pytest.approx(loss["last"])


def test_the_mimic_keeps_the_epoch_of_lowest_validation_logit_mse(make_cfg, client: MlflowClient) -> None:
    train(make_cfg(*TINY_TEACHER))
    train(make_cfg("experiment=mimic", *TINY_SHALLOW, "trainer.max_epochs=5", "~scheduler",
                   "optimizer.lr=0.03"))  # a rate high enough that the curve is not monotone
    (mimic,) = [r for r in runs_of(client) if r.data.tags["role"] == "mimic"]
    curve = [m.value for m in sorted(client.get_metric_history(mimic.info.run_id, "val/logit_mse"),
                                     key=lambda m: m.step)]
    assert len(curve) == 5 and mimic.data.metrics["val/best_epoch"] == int(np.argmin(curve))


def test_transfer_inputs_near_validation_or_test_inputs_are_dropped(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    pool = rng.normal(size=(30, 8)).astype(np.float32)
    np.savez(tmp_path / "f.npz", x_train=x, y_train=np.arange(60) % 3, x_test=x[:10] + 5, y_test=np.arange(10) % 3,
             x_unlabelled=pool)
    probe = FeaturesDataModule(str(tmp_path / "f.npz"), name="f", val_size=10)
    probe.setup()
    val_raw, test_raw = probe.raw_splits()["val"][0], probe.raw_splits()["test"][0]
    np.savez(tmp_path / "f.npz", x_train=x, y_train=np.arange(60) % 3, x_test=x[:10] + 5, y_test=np.arange(10) % 3,
             x_unlabelled=np.concatenate([pool, val_raw[:4] + 1e-6, test_raw[:2]]))
    dm = FeaturesDataModule(str(tmp_path / "f.npz"), name="f", val_size=10, transfer="pool", dup_tol=1e-3,
                            cache_dir=str(tmp_path / "cache"))
    kept = dm.transfer_inputs()
    assert dm.n_duplicates_dropped == 6 and len(kept) == 30
    held_out = torch.cat([dm.splits["val"]["x"], dm.splits["test"]["x"]])
    assert torch.cdist(kept, held_out).min() > 1e-2


def test_a_student_resumed_mid_fit_keeps_its_teachers_weights(make_cfg, cli, client, outputs, store_uri) -> None:
    train(make_cfg(*TINY_TEACHER))
    job = ["experiment=mimic", *TINY_SHALLOW, "trainer.max_epochs=30"]
    killed = start_and_signal(outputs, store_uri, job, signal.SIGTERM)
    assert killed.returncode == 143, killed.stderr[-2000:]
    (mimic,) = [r for r in runs_of(client) if r.data.tags["role"] == "mimic"]
    train(make_cfg(*TINY_TEACHER, "seed=1"))  # a newer teacher, which a fresh student would pick
    resume = killed.stderr.strip().splitlines()[-1].split()[-1]
    resumed = cli(*job, resume)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = client.get_run(mimic.info.run_id)
    assert again.info.status == "FINISHED"
    for tag in ("teacher_run_id", "teacher_weights_sha256", "teacher_logits_sha256"):
        assert again.data.tags[tag] == mimic.data.tags[tag], tag
