"""A run's logged model as a user deploys it: raw rows in (the data files' units), any batch size, through the PyTorch
flavour, pyfunc and `mlflow models serve`."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow.artifacts
import mlflow.pyfunc
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.models import Model

from shallowmimic.checks import build
from shallowmimic.errors import UserError
from shallowmimic.tracking.registry import main as register_main
from shallowmimic.training.pipeline import train

from .conftest import TINY_SHALLOW, TINY_TEACHER, runs_of

# every net type a run can log, each on data it takes: (overrides, data config's own keys or None for MNIST-1D)
NETS = {
    "shallow": ["experiment=baseline", *TINY_SHALLOW],
    "shallow-conv-rank": ["experiment=baseline", *TINY_SHALLOW, "model.conv_channels=4", "model.rank=4"],
    "cnn1d": TINY_TEACHER,
    "deep-mlp": ["experiment=baseline", "model=mlp_deep", "model.hidden=[16,16]"],
    "cnn2d": ["experiment=teacher", "data=digits", "model=cnn2d", "model.channels=[4,8]", "data.val_size=100"],
}


def trained(net: str, make_cfg, data_cfg) -> tuple:
    """Train one tiny run of this net type; return its config and its run."""
    cfg = data_cfg(*NETS[net]) if "data=digits" in NETS[net] else make_cfg(*NETS[net])
    train(cfg)
    (run,) = runs_of(MlflowClient(cfg.logger.tracking_uri), cfg.logger.experiment_name)
    return cfg, run


@pytest.mark.parametrize("net", NETS)
def test_the_logged_model_takes_raw_rows_at_any_batch_size(net: str, make_cfg, data_cfg) -> None:
    cfg, run = trained(net, make_cfg, data_cfg)
    uri = f"models:/{run.data.tags['model_id']}"
    dm = build("data", cfg.data)
    dm.setup()
    raw = dm.raw_splits()  # the arrays as the files (or the generator) hold them: not standardised
    x_test, y_test = raw["test"]
    by_torch, by_pyfunc = mlflow.pytorch.load_model(uri), mlflow.pyfunc.load_model(uri)
    for n in (1, 7, 1000):
        rows = np.resize(x_test, (n, *x_test.shape[1:])).astype(np.float32)
        with torch.no_grad():
            logits = by_torch(torch.from_numpy(rows)).numpy()
        assert logits.shape == (n, dm.num_classes)
        np.testing.assert_allclose(by_pyfunc.predict(rows), logits, atol=1e-5)
    with torch.no_grad():
        predicted = by_torch(torch.from_numpy(x_test.astype(np.float32))).argmax(1).numpy()
    # the model on the raw test split scores what the run measured on the standardised one
    assert float((predicted == y_test).mean()) == pytest.approx(run.data.metrics["test/acc"], abs=1e-6)
    info = Model.load(uri)
    assert info.signature.inputs.inputs[0].shape == (-1, *dm.in_shape)  # any batch size
    example = np.asarray(info.load_input_example(mlflow.artifacts.download_artifacts(uri)))
    np.testing.assert_allclose(example, raw["val"][0][: len(example)], atol=1e-3)  # raw validation rows


def free_port() -> int:
    """A port nothing listens on, on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_serves_the_champion_on_raw_rows(make_cfg, store_uri: str, client: MlflowClient) -> None:
    train(make_cfg("experiment=baseline", *TINY_SHALLOW, "register=true"))
    dm = build("data", make_cfg().data)
    rows = dm.raw_splits()["test"][0][:5]
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # `mlflow models serve` execs uvicorn from the venv's bin
    env = dict(os.environ, MLFLOW_TRACKING_URI=store_uri, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    server = subprocess.Popen([f"{bin_dir}/mlflow", "models", "serve", "-m", "models:/mnist1d-baseline@champion",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the model server did not answer within 120 s"
                time.sleep(0.5)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", method="POST",
                                         data=json.dumps({"inputs": rows.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    local = mlflow.pytorch.load_model("models:/mnist1d-baseline@champion")
    with torch.no_grad():
        expected = local(torch.from_numpy(rows.astype(np.float32))).numpy()
    np.testing.assert_allclose(np.asarray(answer["predictions"]), expected, atol=1e-5)


def test_a_target_that_cannot_be_found_is_one_line_and_no_run(cli, client: MlflowClient) -> None:
    proc = cli("experiment=baseline", *TINY_SHALLOW, "model._target_=shallowmimic.nets.Nope")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: model._target_=shallowmimic.nets.Nope: ")
    assert runs_of(client) == []


@pytest.mark.parametrize("key", ["optimizer._target_=torch.optim.Nope", "data._target_=nope.Data",
                                 "trainer._target_=lightning.Nope"])
def test_every_target_is_checked_before_any_run(key: str, make_cfg, client: MlflowClient) -> None:
    # the command line's one line and exit status are the same for every key (the test above): in process here
    with pytest.raises(UserError, match=f"^{re.escape(key)}: "):
        train(make_cfg("experiment=baseline", *TINY_SHALLOW, key))
    assert runs_of(client) == []


def test_a_key_the_optimizer_does_not_take_is_refused_before_any_run(make_cfg, client: MlflowClient) -> None:
    with pytest.raises(UserError, match=r"^optimizer=Adam: .*unexpected keyword argument 'betas_'"):
        train(make_cfg("experiment=baseline", *TINY_SHALLOW, "+optimizer.betas_=1"))
    assert runs_of(client) == []


def test_register_says_why_it_registered_nothing(cli, store_uri: str, capsys) -> None:
    proc = cli("-m", "experiment=mimic", *TINY_SHALLOW, "model.width=8,16")  # no teacher: every job fails
    assert proc.returncode != 0
    assert register_main(["--tracking-uri", store_uri]) == 1
    err = capsys.readouterr().err
    # the sweep it looked at, and why: its jobs failed before any run existed
    assert err.startswith("registered nothing: sweep ") and "FAILED) has no job runs" in err
