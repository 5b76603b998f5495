"""An installed (not editable) package works: its wheel ships the configs, a console script runs Hydra's app, and
outside a checkout outputs/ go to the working directory."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT

COMPOSE = """
import shallowmimic
from hydra import compose, initialize_config_dir
with initialize_config_dir(config_dir=str(shallowmimic.conf_dir()), version_base="1.3"):
    cfg = compose("train", overrides=["experiment=mimic"])
print(shallowmimic.__file__)
print(cfg.paths.outputs)
print(cfg.objective.name, cfg.model.width)
"""


def run(args: list[str], cwd: Path, env: dict | None = None) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_the_wheel_ships_configs_and_runs_from_a_temporary_folder(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: the build leaves build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    for name in ("src", "conf"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)], tmp_path)
    (wheel,) = (tmp_path / "dist").glob("shallowmimic-*.whl")
    site = tmp_path / "site"
    run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], tmp_path)

    work = tmp_path / "work"  # a folder with no checkout above it
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    file, outputs, composed = run([sys.executable, "-c", COMPOSE], work, env).splitlines()
    assert Path(file).parent == site / "shallowmimic"  # the installed copy, not the checkout's
    assert outputs == str(work / "outputs")
    assert composed == "mimic 4096"
    assert "train is powered by Hydra" in run([str(site / "bin" / "shallowmimic-train"), "--help"], work, env)
