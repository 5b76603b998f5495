"""Your own deep net as the teacher: nets made by other code (a .pt2, a TorchScript file, a plain nn.Module logged
with mlflow.pytorch.log_model), fed the data as its files hold it, checked, and given a teacher run of its own."""

from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from shallowmimic.checks import build
from shallowmimic.errors import UserError
from shallowmimic.training.pipeline import build_data_and_net, train
from shallowmimic.training.teachers import ensemble_logits, load_teacher

from .conftest import TINY_SHALLOW, TINY_TEACHER, runs_of


class RawNet(nn.Module):
    """Another project's net: trained on raw MNIST-1D rows (its own scaling inside), 40 inputs, 10 logits."""

    def __init__(self, classes: int = 10, inputs: int = 40, noise: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(nn.Linear(inputs, 32), nn.ReLU(), nn.Linear(32, classes))
        self.noise = noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.layers(x / 3.0)
        return z + self.noise * torch.randn_like(z)


def pt2(path: Path, net: nn.Module) -> str:
    """`net` saved with torch.export, batch dimension dynamic."""
    program = torch.export.export(net.eval(), (torch.randn(4, 40),), dynamic_shapes=[{0: torch.export.Dim("b")}])
    torch.export.save(program, path)
    return str(path)


def raw_accuracy(make_cfg, net: nn.Module, split: str) -> float:
    """The net's accuracy on the raw rows of one split, as the data holds them."""
    dm = build("data", make_cfg().data)
    x, y = dm.raw_splits()[split]
    with torch.no_grad():
        return float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def test_a_pt2_file_teaches_from_a_teacher_run_of_its_own(make_cfg, client: MlflowClient, tmp_path: Path) -> None:
    source = pt2(tmp_path / "their.pt2", RawNet())
    train(make_cfg("experiment=mimic", *TINY_SHALLOW, f"teacher.model={source}"))
    train(make_cfg("experiment=mimic", *TINY_SHALLOW, f"teacher.model={source}", "seed=1"))
    runs = {r.data.tags["role"]: r for r in runs_of(client)}
    teachers = [r for r in runs_of(client) if r.data.tags["role"] == "teacher"]
    assert len(teachers) == 1  # the second student reused it
    (teacher,) = teachers
    assert teacher.info.status == "FINISHED" and teacher.data.tags["teacher.source"] == source
    assert teacher.data.tags["teacher.inputs"] == "raw" and len(teacher.data.tags["teacher.sha256"]) == 64
    # measured once on this data's splits, on the raw rows it was made for
    assert teacher.data.metrics["test/acc"] == pytest.approx(raw_accuracy(make_cfg, RawNet(), "test"))
    students = [r for r in runs_of(client) if r.data.tags["role"] == "mimic"]
    assert {s.data.tags["teacher_run_id"] for s in students} == {teacher.info.run_id}
    assert sorted(s.data.tags["logits_cache"] for s in students) == ["hit", "miss"]
    # the targets are the net's logits on raw rows: a student's teacher/test_acc is the net's own test accuracy
    assert runs["mimic"].data.metrics["teacher/test_acc"] == pytest.approx(teacher.data.metrics["test/acc"])


def test_torchscript_and_a_plain_logged_module_teach_too(make_cfg, client: MlflowClient, store_uri: str,
                                                         tmp_path: Path) -> None:
    script = tmp_path / "their.pt"
    torch.jit.script(RawNet().eval()).save(str(script))
    mlflow.set_tracking_uri(store_uri)
    mlflow.set_experiment("another-project")
    with mlflow.start_run():
        logged = mlflow.pytorch.log_model(RawNet().eval(), name="net", input_example=np.zeros((2, 40), np.float32))
    for source in (str(script), f"models:/{logged.model_id}"):
        train(make_cfg("experiment=mimic", *TINY_SHALLOW, f"teacher.model={source}", "teacher.inputs=raw"))
    teachers = [r for r in runs_of(client) if r.data.tags["role"] == "teacher"]
    sources = sorted([str(script), f"models:/{logged.model_id}"])
    assert sorted(t.data.tags["teacher.source"] for t in teachers) == sources
    expected = raw_accuracy(make_cfg, RawNet(), "test")
    assert all(t.data.metrics["test/acc"] == pytest.approx(expected) for t in teachers)


def test_a_registered_name_teaches_by_its_latest_version_and_alias(make_cfg, client: MlflowClient, store_uri: str,
                                                                  tmp_path: Path) -> None:
    mlflow.set_tracking_uri(store_uri)
    mlflow.set_experiment("another-project")
    with mlflow.start_run():  # as the README's example does it
        mlflow.pytorch.log_model(RawNet().eval(), name="net", registered_model_name="their-mlp",
                                 input_example=np.zeros((2, 40), np.float32))
    client.set_registered_model_alias("their-mlp", "champion", "1")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/elsewhere.db")  # the job resolves the URI in its own store
    for source in ("models:/their-mlp/latest", "models:/their-mlp@champion"):
        train(make_cfg("experiment=mimic", *TINY_SHALLOW, f"teacher.model={source}"))
    (teacher,) = [r for r in runs_of(client) if r.data.tags["role"] == "teacher"]  # one net, so one teacher run
    assert teacher.data.tags["teacher.source"] == "models:/their-mlp/latest"
    assert teacher.data.tags["variant"] == "external their-mlp/latest"  # what `make run`'s table shows
    assert teacher.data.params["n_params"] == str(sum(p.numel() for p in RawNet().parameters()))
    assert teacher.data.metrics["test/acc"] == pytest.approx(raw_accuracy(make_cfg, RawNet(), "test"))
    with pytest.raises(UserError, match=r"^teacher.model=models:/their-mlp/7: not in the registry"):
        train(make_cfg("experiment=mimic", *TINY_SHALLOW, "teacher.model=models:/their-mlp/7"))


@pytest.mark.parametrize(("net", "message"), [
    (RawNet(classes=3), r"its output is \(64, 3\) for inputs \(N, 40\); it must be \(N, 10\)"),
    (nn.Sequential(RawNet(), nn.Softmax(1)), r"its outputs look like probabilities .* logits or log-probabilities"),
    (RawNet(noise=1.0), r"two forward passes over the same inputs differ after eval\(\)"),
])
def test_a_net_that_cannot_teach_is_one_line_and_no_run(net: nn.Module, message: str, make_cfg, client: MlflowClient,
                                                        tmp_path: Path) -> None:
    script = tmp_path / "their.ts"
    torch.jit.script(net.eval()).save(str(script))
    with pytest.raises(UserError, match=rf"^teacher.model={script}: {message}"):
        train(make_cfg("experiment=mimic", *TINY_SHALLOW, f"teacher.model={script}"))
    assert runs_of(client) == []


def test_a_net_that_refuses_the_data_says_the_shape_it_was_given(make_cfg, client: MlflowClient,
                                                                 tmp_path: Path) -> None:
    source = tmp_path / "wide.pt"
    torch.jit.script(RawNet(inputs=41).eval()).save(str(source))
    with pytest.raises(UserError, match=rf"^teacher.model={source}: the net refuses inputs of shape \(N, 40\)"):
        train(make_cfg("experiment=mimic", *TINY_SHALLOW, f"teacher.model={source}"))
    with pytest.raises(UserError, match=r"^teacher.model=nowhere.pt2: no such file"):
        train(make_cfg("experiment=mimic", *TINY_SHALLOW, "teacher.model=nowhere.pt2"))
    assert runs_of(client) == []


def test_a_pickled_net_whose_class_is_not_installed_names_the_module(cli, store_uri: str, client: MlflowClient,
                                                                     tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "their_pkg.py").write_text("import torch\n\nclass Net(torch.nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # importable here, where it is logged; not in the job's process
    from their_pkg import Net

    mlflow.set_tracking_uri(store_uri)
    mlflow.set_experiment("another-project")
    with mlflow.start_run():
        logged = mlflow.pytorch.log_model(Net(40, 10).eval(), name="net", serialization_format="pickle",
                                          input_example=np.zeros((2, 40), np.float32))
    proc = cli("experiment=mimic", *TINY_SHALLOW, f"teacher.model=models:/{logged.model_id}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith(
        f"error: teacher.model=models:/{logged.model_id}: the model needs module 'their_pkg', which is not installed")
    assert runs_of(client) == []


def test_a_state_dict_and_its_class_teach(make_cfg, client: MlflowClient, tmp_path: Path) -> None:
    plain, lightning = tmp_path / "their.pt", tmp_path / "their.ckpt"
    torch.save(RawNet().state_dict(), plain)
    # a LightningModule's checkpoint: the net's weights under its attribute's name, beside the loop's state
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in RawNet().state_dict().items()}}, lightning)
    net = "teacher.net={_target_:tests.test_external.RawNet,classes:10}"
    for checkpoint in (plain, lightning):
        train(make_cfg("experiment=mimic", *TINY_SHALLOW, f"teacher.checkpoint={checkpoint}", net))
    teachers = sorted((r for r in runs_of(client) if r.data.tags["role"] == "teacher"),
                      key=lambda r: r.data.tags["teacher.source"])
    assert [t.data.tags["teacher.source"] for t in teachers] == [str(lightning), str(plain)]
    assert all(t.data.tags["teacher.net"] == '{"_target_": "tests.test_external.RawNet", "classes": 10}'
               for t in teachers)
    expected = raw_accuracy(make_cfg, RawNet(), "test")
    assert all(t.data.metrics["test/acc"] == pytest.approx(expected) for t in teachers)
    # the same weights in two files, each with the same config: one digest of file and config each
    assert len({t.data.tags["teacher.sha256"] for t in teachers}) == 2


@pytest.mark.parametrize(("overrides", "message"), [
    (["teacher.checkpoint={plain}"], r"^teacher.net=null: teacher.checkpoint and teacher.net come together"),
    (["teacher.net={_target_:tests.test_external.RawNet}"], r"^teacher.checkpoint=null: teacher.checkpoint and"),
    (["teacher.checkpoint={plain}", "teacher.net={_target_:tests.test_external.RawNet,classes:3}"],
     r"^teacher.checkpoint=.*their.pt: its weights do not fit teacher.net=tests.test_external.RawNet \(size "
     r"mismatch for layers.2.weight: .*torch.Size\(\[3, 32\]\)"),
    (["teacher.checkpoint={plain}", "teacher.net={_target_:torch.nn.Linear,in_features:40,out_features:10}"],
     r"^teacher.checkpoint=.*their.pt: its weights do not fit teacher.net=torch.nn.Linear \(missing: weight, "
     r"bias; unexpected: layers.0.weight, "),
    (["teacher.checkpoint={plain}", "teacher.net={_target_:tests.nowhere.Net}"],
     r"^teacher.net._target_=tests.nowhere.Net: tests has no nowhere"),
    (["teacher.checkpoint={tmp}/absent.pt", "teacher.net={_target_:tests.test_external.RawNet}"],
     r"^teacher.checkpoint=.*absent.pt: no such file"),
])
def test_a_state_dict_that_cannot_teach_is_one_line_and_no_run(overrides: list[str], message: str, make_cfg,
                                                               client: MlflowClient, tmp_path: Path) -> None:
    plain = tmp_path / "their.pt"
    torch.save(RawNet().state_dict(), plain)
    with pytest.raises(UserError, match=message):
        given = (o.replace("{plain}", str(plain)).replace("{tmp}", str(tmp_path)) for o in overrides)
        train(make_cfg("experiment=mimic", *TINY_SHALLOW, *given))
    assert runs_of(client) == []


def test_an_ensemble_mixes_an_external_and_a_trained_teacher(make_cfg, outputs: Path, client: MlflowClient,
                                                             tmp_path: Path) -> None:
    source = pt2(tmp_path / "their.pt2", RawNet())
    train(make_cfg(*TINY_TEACHER))
    (ours,) = runs_of(client)
    cfg = make_cfg("experiment=mimic", *TINY_SHALLOW, f"teacher.run_id='{ours.info.run_id}'", f"teacher.model={source}")
    train(cfg)
    (student,) = [r for r in runs_of(client) if r.data.tags["role"] == "mimic"]
    (theirs,) = [r for r in runs_of(client) if "teacher.source" in r.data.tags]
    assert sorted(student.data.tags["teacher_run_id"].split(",")) == sorted([ours.info.run_id, theirs.info.run_id])
    # the student's targets, from the cache it filled: on every split the mean of our teacher's logits (standardised
    # inputs) and of their net's on the rows as the data holds them
    dm, _ = build_data_and_net(cfg)
    cached, tags = ensemble_logits(client, [theirs, ours], dm, outputs / "cache" / "logits")
    assert tags["logits_cache"] == "hit" and tags["teacher_logits_sha256"] == student.data.tags["teacher_logits_sha256"]
    ours_net, theirs_net = (load_teacher(client, run, dm)[0] for run in (ours, theirs))
    raw = dm.raw_splits()
    for split, x in dm.teacher_inputs().items():  # the transfer set has no raw rows: theirs undoes our scaling
        with torch.no_grad():
            theirs_z = RawNet()(torch.from_numpy(raw[split][0])) if split in raw else theirs_net(x)
            mean = (ours_net(x) + theirs_z) / 2
        np.testing.assert_allclose(cached[split], mean.numpy(), rtol=1e-5, atol=1e-5, err_msg=split)
