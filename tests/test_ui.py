"""The MLflow server that `make ui` starts answers on loopback with our runs (its REST API lists them)."""

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from shallowmimic.training.pipeline import train

from .conftest import TINY_SHALLOW


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_ui_server_lists_our_runs(make_cfg, store_uri: str, outputs: Path) -> None:
    train(make_cfg("experiment=baseline", *TINY_SHALLOW))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store_uri,
                               "--default-artifact-root", str(outputs / "mlartifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        deadline = time.monotonic() + 90
        while True:
            try:
                experiments = post(f"{base}/experiments/search", {"max_results": 10})["experiments"]
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "mlflow ui did not start"
                time.sleep(0.5)
        (exp,) = [e for e in experiments if e["name"] == "mnist1d"]
        runs = post(f"{base}/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
        assert [r["info"]["run_name"] for r in runs] == ["baseline w=32 seed=0"]
        assert {"key": "role", "value": "baseline"} in runs[0]["data"]["tags"]
        # what the run's page shows: Source, Description, Datasets, Logged models; the experiment's view
        tags = {t["key"]: t["value"] for t in runs[0]["data"]["tags"]}
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.note.content"].startswith("**baseline**")
        contexts = {i["dataset"]["name"]: next(t["value"] for t in i["tags"] if t["key"] == "mlflow.data.context")
                    for i in runs[0]["inputs"]["dataset_inputs"]}
        assert contexts == {"mnist1d-train": "training", "mnist1d-val": "validation", "mnist1d-test": "testing"}
        models = post(f"{base}/logged-models/search", {"experiment_ids": [exp["experiment_id"]]})["models"]
        assert [m["info"]["source_run_id"] for m in models] == [runs[0]["info"]["run_id"]]
        assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in exp["tags"]
    finally:
        server.terminate()
        server.wait(timeout=30)
