"""Distillation (kd), ensemble teachers and teacher/student compatibility: the loss by hand, then end to end."""

import math
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from mlflow import MlflowClient

from shallowmimic.analysis.report import main as report_main
from shallowmimic.cache import folder_digest
from shallowmimic.checks import build
from shallowmimic.data import MNIST1DDataModule
from shallowmimic.errors import UserError
from shallowmimic.nets import Destandardised
from shallowmimic.objectives import KDLoss, StandardisedMimicLoss, centred_mimic_loss, class_stats, kd_loss, mimic_loss
from shallowmimic.training.pipeline import build_objective, train
from shallowmimic.training.system import System
from shallowmimic.training.teachers import check_teacher, ensemble_logits, load_teacher, teacher_logits

from .conftest import TINY_SHALLOW, TINY_TEACHER, runs_of


def test_kd_loss_by_hand() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    z = torch.zeros(2, 2)
    y = torch.tensor([0, -1])  # the second row is a transfer input without a label
    # T = 2: row 1 compares softmax([0.5, 0]) with the teacher's [0.5, 0.5]; row 2 matches exactly (KL 0)
    kl_row1 = math.log(1 + math.exp(0.5)) - 0.25 - math.log(2)
    ce_row1 = math.log(1 + math.exp(-1))  # -log softmax([1, 0])[0]; row 2 has no label and no CE
    expected = 2**2 * kl_row1 / 2 + 0.5 * ce_row1  # batchmean over both rows; CE over the labelled row only
    loss = kd_loss(s, {"z": z, "y": y}, temperature=2.0, label_weight=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_at_temperature_one_without_labels_is_plain_kl() -> None:
    s, z = torch.randn(8, 10), torch.randn(8, 10)
    expected = F.kl_div(F.log_softmax(s, 1), F.softmax(z, 1), reduction="batchmean")
    assert torch.isclose(kd_loss(s, {"z": z}, temperature=1.0, label_weight=0.0), expected)


def test_kd_loss_without_any_label_in_the_batch_is_finite() -> None:
    s, z = torch.randn(8, 10), torch.randn(8, 10)
    batch = {"z": z, "y": torch.full((8,), -1)}
    assert kd_loss(s, batch, label_weight=1.0) == kd_loss(s, batch, label_weight=0.0)


def test_kd_loss_is_fp32_under_half_precision() -> None:
    s, z = torch.randn(8, 10).half(), torch.randn(8, 10).half()
    assert kd_loss(s, {"z": z}).dtype == torch.float32


def test_kd_at_high_temperature_matches_logits() -> None:
    # Hinton et al.: for zero-mean logits, T^2 KL -> 1/(2C) sum ||s - z||^2 as T grows (the paper's mimic loss / C)
    s, z = torch.randn(16, 10, generator=torch.Generator().manual_seed(0)).split(8)
    s, z = s - s.mean(1, keepdim=True), z - z.mean(1, keepdim=True)
    limit = mimic_loss(s, {"z": z}) / 10
    # not higher: in fp32 the KL of nearly equal distributions is lost to rounding beyond T ~ 100
    assert kd_loss(s, {"z": z}, temperature=50.0).item() == pytest.approx(limit.item(), rel=1e-2)


def test_kd_at_t20_and_centred_l2_give_nearly_equal_gradients() -> None:
    # the logits need not be zero-mean: centring is what makes the two agree (T^2 KD's gradient -> centred's / C)
    g = torch.Generator().manual_seed(0)
    s, z = torch.randn(8, 10, generator=g) + 3.0, torch.randn(8, 10, generator=g) - 1.0
    grads = []
    for loss in (lambda v: kd_loss(v, {"z": z}, temperature=20.0), lambda v: centred_mimic_loss(v, {"z": z}) / 10):
        v = s.clone().requires_grad_(True)
        loss(v).backward()
        grads.append(v.grad)
    def off(a: torch.Tensor) -> float:
        return ((a - grads[1]).norm() / grads[1].norm()).item()

    assert off(grads[0]) < 0.05  # what is left shrinks as 1/T
    assert off(torch.func.grad(lambda v: mimic_loss(v, {"z": z}) / 10)(s)) > 1  # raw L2 chases the rows' offsets
    # a constant added to a row of the student's logits changes neither KD nor centred L2
    assert centred_mimic_loss(s + torch.arange(8.0)[:, None], {"z": z}) == pytest.approx(
        centred_mimic_loss(s, {"z": z}).item())


def test_objective_configs_build_their_losses(make_cfg) -> None:
    kd = build_objective(make_cfg("objective=kd", "objective.temperature=2.0", "objective.label_weight=0.5").objective)
    s, z, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, -1, 2])
    assert kd.loss(s, {"z": z, "y": y}) == kd_loss(s, {"z": z, "y": y}, temperature=2.0, label_weight=0.5)
    assert (kd.needs_logits, kd.monitor, kd.mode) == (True, "val/loss", "min")
    mimic = build_objective(make_cfg("objective=mimic").objective)
    assert mimic.loss(s, {"z": z}) == mimic_loss(s, {"z": z}) and mimic.needs_logits
    centred = build_objective(make_cfg("objective=mimic_centred").objective)
    assert centred.loss(s, {"z": z}) == centred_mimic_loss(s, {"z": z}) and centred.monitor == "val/loss"
    labels = build_objective(make_cfg("objective=labels").objective)
    assert labels.loss(s, {"y": torch.tensor([0, 1, 2, 2])}) == F.cross_entropy(s, torch.tensor([0, 1, 2, 2]))
    assert (labels.needs_logits, labels.monitor, labels.mode) == (False, "val/acc", "max")


def test_accuracy_ignores_rows_without_a_label() -> None:
    system = System(torch.nn.Identity(), KDLoss(), torch.optim.SGD, num_classes=3)
    logits = torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    y = torch.tensor([0, 1, -1, -1])  # one right, one wrong, two transfer rows
    system._evaluate({"x": logits, "z": logits, "y": y}, "val")
    assert system.metrics["val_metrics"]["acc"].compute() == 0.5


def test_kd_student_end_to_end_and_in_the_report(make_cfg, client: MlflowClient, outputs: Path,
                                                  store_uri: str) -> None:
    train(make_cfg(*TINY_TEACHER))
    metrics = train(make_cfg("experiment=mimic", "objective=kd", *TINY_SHALLOW))
    assert 0 <= metrics["test/acc"] <= 1
    train(make_cfg("experiment=mimic", "objective=kd", "objective.label_weight=0.5", *TINY_SHALLOW))
    train(make_cfg("experiment=baseline", *TINY_SHALLOW))
    (teacher,) = [r for r in runs_of(client) if r.data.tags["role"] == "teacher"]
    kds = sorted((r for r in runs_of(client) if r.data.tags["role"] == "kd"),
                 key=lambda r: r.data.params["objective.label_weight"])
    assert [kd.info.run_name for kd in kds] == ["kd w=32 T=4.0 seed=0", "kd w=32 T=4.0 labels=0.5 seed=0"]
    for kd in kds:
        assert kd.info.status == "FINISHED"
        assert kd.data.tags["teacher_run_id"] == teacher.info.run_id
        assert kd.data.params["objective.temperature"] == "4.0" and kd.data.params["data.in_shape"] == "40"
        assert {"train/acc", "test/acc", "test/agreement", "val/loss", "val/logit_mse"} <= set(kd.data.metrics)
    assert [kd.data.params["objective.label_weight"] for kd in kds] == ["0.0", "0.5"]

    assert report_main(["--all", "--tracking-uri", store_uri, "--out", str(outputs / "reports")]) == 0
    table = (outputs / "reports" / "mnist1d.md").read_text()
    assert table.count("| kd |") == 2 and "| w=32 T=4.0 |" in table and "| w=32 T=4.0 labels=0.5 |" in table
    assert (outputs / "reports" / "mnist1d_curves.png").exists()  # baseline vs kd at the same width


def test_standardised_l2_learns_standardised_logits_and_reports_them_mapped_back() -> None:
    z = torch.tensor([[10.0, 0.0, 1.0], [30.0, 2.0, 1.0], [20.0, 1.0, 1.0]])  # class 2 is constant: std 1, not 0
    loss = StandardisedMimicLoss()
    mean, std = loss.fit([z[:1].numpy(), z[1:].numpy()])  # the training rows, then the transfer rows
    assert torch.allclose(mean, torch.tensor([20.0, 1.0, 1.0])) and torch.allclose(std, torch.tensor([
        (200 / 3) ** 0.5, (2 / 3) ** 0.5, 1.0]))
    torch.manual_seed(0)
    inner = torch.nn.Linear(3, 3)
    net, x = Destandardised(inner, mean, std), torch.randn(5, 3)
    standardised = inner(x)  # what the net learns, in the teacher's per-class standard units
    assert torch.allclose(net(x), standardised * std + mean)
    # the loss is plain L2 between the inner outputs and the standardised targets
    target = torch.randn(5, 3) * std + mean
    assert loss(net(x), {"z": target}).item() == pytest.approx(
        mimic_loss(standardised, {"z": (target - mean) / std}).item(), rel=1e-5)
    # what argmax, agreement and the logged model see are the mapped-back outputs, which the per-class shift and
    # scale can reorder: here class 0's large mean wins every row
    assert (net(x).argmax(1) == 0).all() and not (standardised.argmax(1) == 0).all()


def test_a_standardised_mimic_trains_behind_the_teachers_class_statistics(make_cfg, client: MlflowClient,
                                                                          tmp_path: Path) -> None:
    train(make_cfg(*TINY_TEACHER))
    train(make_cfg("experiment=mimic", "objective=mimic_standardised", *TINY_SHALLOW))
    teacher, student = sorted(runs_of(client), key=lambda r: r.data.tags["role"] != "teacher")
    assert student.info.status == "FINISHED" and student.data.params["objective.name"] == "mimic_standardised"
    state = torch.load(client.download_artifacts(student.info.run_id, "checkpoints/best.ckpt", str(tmp_path)),
                       weights_only=True)["state_dict"]
    cfg = make_cfg()
    dm = build("data", cfg.data)
    dm.setup()
    logits, _ = ensemble_logits(client, [teacher], dm, Path(cfg.paths.cache) / "logits")  # the cached ones
    mean, std = class_stats([logits["train"], logits["transfer"]])
    assert torch.allclose(state["net.mean"], mean) and torch.allclose(state["net.std"], std)


@pytest.fixture
def two_teachers(make_cfg, client: MlflowClient) -> list:
    """Two finished tiny teachers (seeds 0 and 1) in the test's store."""
    train(make_cfg(*TINY_TEACHER))
    train(make_cfg(*TINY_TEACHER, "seed=1"))
    return sorted(runs_of(client), key=lambda r: r.data.params["seed"])


def test_ensemble_targets_are_the_mean_of_the_members_logits(two_teachers, make_cfg, client: MlflowClient,
                                                            outputs: Path, monkeypatch) -> None:
    attached: dict[str, torch.Tensor] = {}
    attach = MNIST1DDataModule.attach_logits

    def spy(self, logits: dict[str, np.ndarray]) -> None:
        attached.update({k: torch.from_numpy(np.array(v)) for k, v in logits.items()})
        attach(self, logits)

    monkeypatch.setattr(MNIST1DDataModule, "attach_logits", spy)
    a, b = (r.info.run_id for r in two_teachers)
    cfg = make_cfg("experiment=mimic", *TINY_SHALLOW, f"teacher.run_id=[{a},{b}]")
    train(cfg)

    (mimic,) = [r for r in runs_of(client) if r.data.tags["role"] == "mimic"]
    assert mimic.info.status == "FINISHED"
    assert mimic.data.tags["teacher_run_id"] == f"{a},{b}"
    digests = mimic.data.tags["teacher_weights_sha256"].split(",")
    assert len(digests) == 2 and all(len(d) == 64 for d in digests) and digests[0] != digests[1]

    dm = instantiate(cfg.data)
    dm.setup()
    members = []
    for run in two_teachers:
        net, digest = load_teacher(client, run, dm)
        logits, _, hit = teacher_logits(net, digest, dm, outputs / "cache" / "logits")
        assert hit  # each member's logits were cached by the mimic's run
        members.append({k: torch.from_numpy(v) for k, v in logits.items()})
    (ensemble_folder,) = [p for p in (outputs / "cache" / "logits").glob("logits-*")
                          if folder_digest(p) == mimic.data.tags["teacher_logits_sha256"]]
    for split, targets in attached.items():
        mean = (members[0][split].double() + members[1][split].double()) / 2
        assert torch.equal(targets, mean.float())
        assert np.array_equal(np.load(ensemble_folder / f"{split}.npy"), targets.numpy())

    # the ensemble is a set: the other order reuses the cached mean (and, unless told not to, the finished run)
    train(make_cfg("experiment=mimic", *TINY_SHALLOW, f"teacher.run_id=[{b},{a}]", "reuse=false"))
    second = [r for r in runs_of(client) if r.data.tags["role"] == "mimic" and r.info.run_id != mimic.info.run_id]
    assert second[0].data.tags["logits_cache"] == "hit"
    assert second[0].data.tags["teacher_logits_sha256"] == mimic.data.tags["teacher_logits_sha256"]


def test_a_teacher_for_other_inputs_is_refused(two_teachers, client: MlflowClient) -> None:
    teacher = two_teachers[0]
    images = SimpleNamespace(name="mnist1d", in_shape=(3, 32, 32), num_classes=10,
                             split_key=lambda: teacher.data.params["data.split_sha256"])
    with pytest.raises(UserError) as err:
        check_teacher(client, teacher, images)
    assert str(err.value) == (f"teacher.run_id={teacher.info.run_id}: teacher was trained with data.in_shape=40, "
                              "this run has data.in_shape=3x32x32")


def test_a_teacher_with_other_classes_is_refused(two_teachers, make_cfg, client: MlflowClient) -> None:
    # forge a teacher run that logged 7 classes, with the real teacher's artifacts
    real = two_teachers[0]
    forged = client.create_run(real.info.experiment_id, tags={"role": "teacher"}).info.run_id
    client.log_param(forged, "data.num_classes", "7")
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifacts(forged, client.download_artifacts(real.info.run_id, "", tmp))
    client.set_terminated(forged, "FINISHED")

    with pytest.raises(UserError) as err:
        train(make_cfg("experiment=mimic", *TINY_SHALLOW, f"teacher.run_id={forged}"))
    assert str(err.value) == (f"teacher.run_id={forged}: teacher was trained with data.num_classes=7, "
                              "this run has data.num_classes=10")
    assert not [r for r in runs_of(client) if r.data.tags.get("role") == "mimic"]  # refused before any run


def test_ensemble_of_the_newest_teachers(two_teachers, make_cfg, client: MlflowClient) -> None:
    with pytest.raises(UserError, match=r"^teacher.ensemble=3: only 2 finished teacher run\(s\)"):
        train(make_cfg("experiment=mimic", *TINY_SHALLOW, "teacher.ensemble=3"))
    train(make_cfg("experiment=mimic", *TINY_SHALLOW, "teacher.ensemble=2"))
    (mimic,) = [r for r in runs_of(client) if r.data.tags["role"] == "mimic"]
    assert set(mimic.data.tags["teacher_run_id"].split(",")) == {r.info.run_id for r in two_teachers}
