"""MNIST-1D (Greydanus 2020), generated offline: its generator, cached on disk, and its DataModule."""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from shallowmimic import checks
from shallowmimic.cache import cached, spec_key
from shallowmimic.data.module import ArrayDataModule
from shallowmimic.errors import BadValue

log = logging.getLogger(__name__)

TRANSFER_CHUNK = 10_000


def generate_mnist1d(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw MNIST-1D inputs (N, 40) and labels (N,), drawn exactly as mnist1d.make_dataset draws them.

    make_dataset standardises each call with that call's own scalar mean/std, so separately made sets end up on
    different scales; we keep the raw values and standardise everything with the training split's statistics.
    """
    from mnist1d.data import get_dataset_args, get_templates
    from mnist1d.transform import transform
    from mnist1d.utils import set_seed

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    templates = get_templates()
    set_seed(seed)
    xs, ys = [], []
    for label in templates["y"]:
        for _ in range(num_samples // len(templates["y"])):
            x, _ = transform(templates["x"][label], templates["t"], args)
            xs.append(x)
            ys.append(label)
    order = np.random.permutation(len(ys))  # same draw as make_dataset's batch shuffle
    return np.stack(xs)[order].astype(np.float32), np.asarray(ys, dtype=np.int64)[order]


def _generate_arrays(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    x, y = generate_mnist1d(num_samples, seed)
    return {"x": x, "y": y}


def _fill_cache(path: Path, seed: int, size: int) -> None:
    """Worker: generate one transfer chunk into its cache file."""
    cached(path, lambda: _generate_arrays(size, seed))


class MNIST1DDataModule(ArrayDataModule):
    """MNIST-1D: canonical train/test split, a validation split carved from train, and an unlabelled transfer set
    drawn with another seed for the mimic (or none: transfer=train)."""

    transfers = ("generated", "train")
    split_keys = ("generator", "num_samples", "train_split", "seed", "val_size")

    def __init__(self, name: str = "mnist1d", num_samples: int = 5000, train_split: float = 0.8, seed: int = 42,
                 val_size: int = 500, transfer: str = "generated", transfer_size: int = 200_000,
                 dup_tol: float = 1e-3, **kwargs: Any) -> None:
        """The generator's arguments, and this data set's defaults of ArrayDataModule's settings (`kwargs`: the
        others)."""
        # std_floor 0: MNIST-1D has no near-constant dimensions, and its standardisation stays as published here
        super().__init__(name, num_classes=10, val_size=val_size, transfer=transfer, transfer_size=transfer_size,
                         dup_tol=dup_tol, std_floor=0.0, **kwargs)
        checks.integer("num_samples", num_samples, minimum=10)
        checks.number("train_split", train_split, 0, 1, low_open=True)
        n_train = int(num_samples * train_split)
        if not val_size < n_train:
            raise BadValue("val_size", val_size, f"between 1 and {n_train - 1} (the training split has {n_train})")
        self.num_samples, self.train_split, self.seed = num_samples, train_split, seed
        self.in_shape = (40,)

    def spec(self) -> dict:
        """Everything that determines the inputs, in train/val/test/transfer order (the logits cache key)."""
        spec = {"name": self.name, "generator": f"mnist1d=={version('mnist1d')}", "num_samples": self.num_samples,
                "train_split": self.train_split, "seed": self.seed, "val_size": self.val_size,
                "transfer_size": self.transfer_size, "transfer_seed": self.transfer_seed, "dup_tol": self.dup_tol}
        # the default transfer set is left out of the key, so the caches keyed before `transfer` existed still match
        return (spec if self.transfer == "generated" else spec | {"transfer": self.transfer}) | self.cap()

    def _cache_path(self, num_samples: int, seed: int) -> Path:
        key = spec_key({"generator": f"mnist1d=={version('mnist1d')}", "num_samples": num_samples, "seed": seed})
        return self.cache_dir / f"mnist1d-n{num_samples}-s{seed}-{key}.npz"

    def _generated(self, num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw generated set, cached on disk by the generator's arguments (generation is a slow Python loop)."""
        arrays, hit = cached(self._cache_path(num_samples, seed), lambda: _generate_arrays(num_samples, seed))
        if not hit:
            log.info("generated %d MNIST-1D samples (seed %d)", num_samples, seed)
        return arrays["x"], arrays["y"]

    def generate_transfer(self) -> np.ndarray:
        """Raw transfer inputs, made in cached chunks of TRANSFER_CHUNK with one seed each (derived from
        transfer_seed and the chunk's index), so missing chunks are generated in parallel on all cores and
        larger transfer sets reuse the chunks of smaller ones."""
        size = min(TRANSFER_CHUNK, self.transfer_size)
        n_chunks = -(-self.transfer_size // size)
        seeds = [int(spec_key({"transfer_seed": self.transfer_seed, "chunk": i})[:8], 16) for i in range(n_chunks)]
        missing = [s for s in seeds if not self._cache_path(size, s).exists()]
        # not from a launcher's worker process (Hydra's joblib): its children cannot be spawned there, and the
        # other jobs have the other cores
        if len(missing) > 1 and multiprocessing.parent_process() is None:
            log.info("generating %d MNIST-1D transfer inputs in %d chunks", len(missing) * size, len(missing))
            workers = min(os.cpu_count() or 1, len(missing))
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                paths = [self._cache_path(size, s) for s in missing]
                list(pool.map(_fill_cache, paths, missing, [size] * len(missing)))
        x = np.concatenate([self._generated(size, s)[0] for s in seeds])
        return x[: self.transfer_size]

    def raw_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The canonical split (make_dataset's: 4000 train / 1000 test by default), validation the last `val_size`
        of train."""
        x, y = self._generated(self.num_samples, self.seed)
        n_train = int(len(y) * self.train_split)
        n_fit = n_train - self.val_size
        return {"train": (x[:n_fit], y[:n_fit]), "val": (x[n_fit:n_train], y[n_fit:n_train]),
                "test": (x[n_train:], y[n_train:])}
