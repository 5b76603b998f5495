"""Validate a composed config before any work starts: one line naming the key, the value and what is allowed."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from shallowmimic.data import TRANSFERS
from shallowmimic.nets import ACTIVATIONS
from shallowmimic.system import LOSSES
from shallowmimic.tracking import UserError, redact

PRECISIONS = ("64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed", "transformer-engine")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
URI_SCHEMES = ("sqlite:///", "http://", "https://", "file:", "postgresql", "mysql", "databricks")


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


def _fail(key: str, value: Any, allowed: str) -> None:
    raise UserError(f"{key}={value}: must be {allowed}")


def _int(cfg: DictConfig, key: str, minimum: int = 1, optional: bool = False) -> None:
    value = _get(cfg, key)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(key, value, f"an integer >= {minimum}" + (" or null" if optional else ""))


def _number(cfg: DictConfig, key: str, low: float, high: float, low_open: bool = False) -> None:
    value = _get(cfg, key)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value <= high
    ok = ok and (value > low if low_open else value >= low)
    if not ok:
        _fail(key, value, f"a number {'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}"
                                                                           if high != float("inf") else ""))


def _int_list(cfg: DictConfig, key: str) -> None:
    value = _get(cfg, key)
    if not (OmegaConf.is_list(value) and len(value) > 0 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        _fail(key, value, "a non-empty list of positive integers")


def _choice(cfg: DictConfig, key: str, allowed: tuple | list) -> None:
    value = _get(cfg, key)
    if value not in allowed:
        _fail(key, value, f"one of {', '.join(map(str, allowed))}")


def _folder(cfg: DictConfig, key: str) -> None:
    """A folder that exists, or can be made because its nearest existing ancestor is a writable folder."""
    value = _get(cfg, key)
    path = Path(str(value))
    nearest = next((p for p in (path, *path.parents) if p.exists()), None)
    if nearest is None or not nearest.is_dir() or not os.access(nearest, os.W_OK):
        _fail(key, value, "a writable folder (or one that can be created)")


def check(cfg: DictConfig) -> None:
    """Raise UserError on the first bad value."""
    model = cfg.model
    if "width" in model:
        _int(cfg, "model.width")
        _int(cfg, "model.rank", optional=True)
    for key in ("depth", "kernel_size", "convs_per_block", "conv_kernel", "conv_pool"):
        if key in model:
            _int(cfg, f"model.{key}")
    if "conv_channels" in model:
        _int(cfg, "model.conv_channels", optional=True)
    if "conv_kernel" in model and model.conv_kernel % 2 == 0:  # odd: the conv keeps the input's size
        _fail("model.conv_kernel", model.conv_kernel, "an odd integer")
    if "channels" in model:  # CNN1D: one width for every layer; CNN2D: one per block
        (_int_list if OmegaConf.is_list(model.channels) else _int)(cfg, "model.channels")
    if "hidden" in model:
        _int_list(cfg, "model.hidden")
    if "batch_norm" in model and not isinstance(model.batch_norm, bool):
        _fail("model.batch_norm", model.batch_norm, "true or false")
    if "dropout" in model:
        _number(cfg, "model.dropout", 0, 0.99)
    if "activation" in model:
        _choice(cfg, "model.activation", list(ACTIVATIONS))
    if "pool" in model:
        _choice(cfg, "model.pool", ["max", "flatten"])

    _choice(cfg, "objective.name", list(LOSSES))
    _choice(cfg, "objective.mode", ["min", "max"])
    if "temperature" in cfg.objective:
        _number(cfg, "objective.temperature", 0, float("inf"), low_open=True)
    if "label_weight" in cfg.objective:
        _number(cfg, "objective.label_weight", 0, float("inf"))
    _number(cfg, "optimizer.lr", 0, float("inf"), low_open=True)
    _number(cfg, "optimizer.weight_decay", 0, float("inf"))

    _int(cfg, "trainer.max_epochs")
    _choice(cfg, "trainer.precision", PRECISIONS)
    _choice(cfg, "trainer.accelerator", ACCELERATORS)
    devices = _get(cfg, "trainer.devices")
    if not (devices == "auto" or (isinstance(devices, int) and not isinstance(devices, bool)
                                  and (devices >= 1 or devices == -1))):
        _fail("trainer.devices", devices, "an integer >= 1, -1 (all) or auto")
    _int(cfg, "trainer.num_nodes", optional=True)

    _int(cfg, "data.batch_size")
    _int(cfg, "data.eval_batch_size")
    data = cfg.data  # data modules differ in their keys: check the ones this one has
    if "num_samples" in data:
        _int(cfg, "data.num_samples", minimum=10)
    if "train_split" in data:
        _number(cfg, "data.train_split", 0, 1, low_open=True)
    if "val_size" in data:
        _int(cfg, "data.val_size")
    for key in ("transfer_size", "transfer_seed"):
        if key in data:
            _int(cfg, f"data.{key}", minimum=0)
    if "dup_tol" in data and data.dup_tol is not None:  # null: no duplicate check
        _number(cfg, "data.dup_tol", 0, float("inf"))
    if "transfer" in data:
        _choice(cfg, "data.transfer", TRANSFERS)
    for key in ("split_seed", "augment_pad"):
        if key in data:
            _int(cfg, f"data.{key}", minimum=0)
    if "num_classes" in data:
        _int(cfg, "data.num_classes", minimum=2, optional=True)
    if "std_floor" in data:
        _number(cfg, "data.std_floor", 0, float("inf"))
    for key in ("download", "augment_flip"):
        if key in data and not isinstance(data[key], bool):
            _fail(f"data.{key}", data[key], "true or false")
    for key in ("path", "pool_dir", "data_dir"):  # whether they exist is the reader's check, at load time
        if key in data and data[key] is not None and not isinstance(data[key], str):
            _fail(f"data.{key}", data[key], "a path")
    if "num_samples" in data:
        n_train = int(data.num_samples * data.train_split)
        if not data.val_size < n_train:
            _fail("data.val_size", data.val_size, f"between 1 and {n_train - 1} (the training split has {n_train})")

    seed = _get(cfg, "seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        _fail("seed", seed, "an integer from 0 to 2**32 - 1")
    _int(cfg, "threads", optional=True)
    for key in ("paths.outputs", "paths.cache"):
        _folder(cfg, key)
    resume = _get(cfg, "resume")
    if resume is not None and not isinstance(resume, str):
        _fail("resume", resume, "null or the path of a run dir or .ckpt file")
    uri = str(_get(cfg, "logger.tracking_uri"))
    if not uri.startswith(URI_SCHEMES):
        _fail("logger.tracking_uri", redact(uri), f"a tracking URI starting with {', '.join(URI_SCHEMES)}")
    _int(cfg, "teacher.ensemble")
    teacher = _get(cfg, "teacher.run_id")
    ids = list(teacher) if OmegaConf.is_list(teacher) else [teacher]  # a list: an ensemble, its logits averaged
    if teacher is not None and not (ids and all(isinstance(i, str) and i.isalnum() for i in ids)):
        _fail("teacher.run_id", teacher, "null or an MLflow run id (letters and digits), or a list of them")
    if teacher is not None and cfg.teacher.ensemble != 1:
        _fail("teacher.ensemble", cfg.teacher.ensemble, "1 when teacher.run_id names the teachers (list them all)")
