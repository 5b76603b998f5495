"""MNIST-1D: the canonical split, a generated transfer set, on-disk caches, and batch-at-a-time loaders."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor

from shallowmimic.cache import cached, spec_key

log = logging.getLogger(__name__)

Batch = dict[str, Tensor]


class InMemoryLoader:
    """Serves batches sliced from in-memory tensors, a batch at a time (no per-sample collation).

    Shuffles with a generator seeded by (seed, epoch) so every DDP rank draws the same permutation, then each
    rank takes its own stride of it.
    """

    def __init__(self, tensors: Batch, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        self.tensors, self.batch_size, self.shuffle, self.seed = tensors, batch_size, shuffle, seed
        self.epoch = 0

    def _rank_world(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _n_local(self) -> int:
        n = len(next(iter(self.tensors.values())))
        rank, world = self._rank_world()
        if self.shuffle:
            n -= n % world  # training: every rank takes the same number of steps, or DDP's all-reduce hangs
        return len(range(rank, n, world))

    def __len__(self) -> int:
        return -(-self._n_local() // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = len(next(iter(self.tensors.values())))
        rank, world = self._rank_world()
        tensors = self.tensors
        if self.shuffle or world > 1:
            order = torch.arange(n)
            if self.shuffle:
                order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
                order = order[: n - n % world]
            order = order[rank::world]  # evaluation: strided, so every sample is scored exactly once
            tensors = {k: v[order] for k, v in tensors.items()}  # one gather per epoch, then cheap views
        self.epoch += 1
        for i in range(0, len(next(iter(tensors.values()))), self.batch_size):
            yield {k: v[i : i + self.batch_size] for k, v in tensors.items()}


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


TRANSFER_CHUNK = 10_000


def _generate_arrays(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    x, y = generate_mnist1d(num_samples, seed)
    return {"x": x, "y": y}


def _fill_cache(path: Path, seed: int, size: int) -> None:
    """Worker: generate one transfer chunk into its cache file."""
    cached(path, lambda: _generate_arrays(size, seed))


class MNIST1DDataModule(L.LightningDataModule):
    """MNIST-1D (Greydanus 2020), generated offline: canonical train/test split, a validation split carved from
    train, and an unlabelled transfer set drawn with another seed for the mimic."""

    def __init__(self, name: str = "mnist1d", num_samples: int = 5000, train_split: float = 0.8, seed: int = 42,
                 val_size: int = 500, transfer_size: int = 200_000, transfer_seed: int = 1,
                 dup_tol: float = 1e-3, batch_size: int = 256, eval_batch_size: int = 2048,
                 shuffle_seed: int = 0, cache_dir: str = "outputs/cache/data") -> None:
        super().__init__()
        self.name, self.num_samples, self.train_split, self.seed = name, num_samples, train_split, seed
        self.val_size, self.transfer_size, self.transfer_seed = val_size, transfer_size, transfer_seed
        self.dup_tol, self.batch_size, self.eval_batch_size = dup_tol, batch_size, eval_batch_size
        self.shuffle_seed, self.cache_dir = shuffle_seed, Path(cache_dir)
        self.in_shape, self.num_classes = (40,), 10
        self.in_dim = 40
        self.splits: dict[str, Batch] = {}
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self._transfer: Tensor | None = None
        self.n_duplicates_dropped = 0

    def spec(self) -> dict:
        """Everything that determines the inputs, in train/val/test/transfer order (the logits cache key)."""
        return {"name": self.name, "generator": f"mnist1d=={version('mnist1d')}", "num_samples": self.num_samples,
                "train_split": self.train_split, "seed": self.seed, "val_size": self.val_size,
                "transfer_size": self.transfer_size, "transfer_seed": self.transfer_seed, "dup_tol": self.dup_tol}

    def _cache_path(self, num_samples: int, seed: int) -> Path:
        key = spec_key({"generator": f"mnist1d=={version('mnist1d')}", "num_samples": num_samples, "seed": seed})
        return self.cache_dir / f"mnist1d-n{num_samples}-s{seed}-{key}.npz"

    def _generated(self, num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw generated set, cached on disk by the generator's arguments (generation is a slow Python loop)."""
        arrays, hit = cached(self._cache_path(num_samples, seed), lambda: _generate_arrays(num_samples, seed))
        if not hit:
            log.info("generated %d MNIST-1D samples (seed %d)", num_samples, seed)
        return arrays["x"], arrays["y"]

    def _transfer_raw(self) -> np.ndarray:
        """Raw transfer inputs, made in cached chunks of TRANSFER_CHUNK with one seed each (derived from
        transfer_seed and the chunk's index), so missing chunks are generated in parallel on all cores and
        larger transfer sets reuse the chunks of smaller ones."""
        size = min(TRANSFER_CHUNK, self.transfer_size)
        n_chunks = -(-self.transfer_size // size)
        seeds = [int(spec_key({"transfer_seed": self.transfer_seed, "chunk": i})[:8], 16) for i in range(n_chunks)]
        missing = [s for s in seeds if not self._cache_path(size, s).exists()]
        if len(missing) > 1:
            log.info("generating %d MNIST-1D transfer inputs in %d chunks", len(missing) * size, len(missing))
            workers = min(os.cpu_count() or 1, len(missing))
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                paths = [self._cache_path(size, s) for s in missing]
                list(pool.map(_fill_cache, paths, missing, [size] * len(missing)))
        x = np.concatenate([self._generated(size, s)[0] for s in seeds])
        return x[: self.transfer_size]

    def setup(self, stage: str | None = None) -> None:
        """Load the canonical split (idempotent) and standardise each input dimension with train statistics."""
        if self.splits:
            return
        x, y = (torch.from_numpy(a) for a in self._generated(self.num_samples, self.seed))
        n_train = int(len(y) * self.train_split)  # make_dataset's split: 4000 train / 1000 test by default
        n_fit = n_train - self.val_size
        x_fit = x[:n_fit]
        self.mean, self.std = x_fit.mean(0), x_fit.std(0).clamp_min(1e-6)
        z = (x - self.mean) / self.std
        self.splits = {"train": {"x": z[:n_fit], "y": y[:n_fit]},
                       "val": {"x": z[n_fit:n_train], "y": y[n_fit:n_train]},
                       "test": {"x": z[n_train:], "y": y[n_train:]}}

    def transfer_inputs(self) -> Tensor:
        """The unlabelled transfer set (standardised), with near-duplicates of test points removed."""
        if self._transfer is None:
            self.setup()
            if self.transfer_size == 0:
                self._transfer = torch.empty(0, self.in_dim)
                return self._transfer
            x = (torch.from_numpy(self._transfer_raw()) - self.mean) / self.std  # labels are never kept
            keep = self._far_from(x, self.splits["test"]["x"])
            self.n_duplicates_dropped = int((~keep).sum())
            if self.n_duplicates_dropped:
                log.warning("dropped %d transfer inputs within %.0e of a test input", self.n_duplicates_dropped,
                            self.dup_tol)
            self._transfer = x[keep]
        return self._transfer

    def _far_from(self, x: Tensor, ref: Tensor, chunk: int = 50_000) -> Tensor:
        """Mask of rows of x whose nearest row of ref is farther than dup_tol (RMS distance per dimension)."""
        near = [torch.cdist(part, ref).min(1).values / self.in_dim**0.5 for part in x.split(chunk)]
        return torch.cat(near) > self.dup_tol

    def teacher_inputs(self) -> dict[str, Tensor]:
        """Every input the mimic needs the teacher's logits for, by split."""
        self.setup()
        return {**{k: v["x"] for k, v in self.splits.items()}, "transfer": self.transfer_inputs()}

    def attach_logits(self, logits: dict[str, Tensor]) -> None:
        """Give each split the teacher's logits `z`; the mimic then trains on train + transfer inputs."""
        for split in ("train", "val", "test"):
            self.splits[split]["z"] = logits[split]
        self.splits["mimic"] = {"x": torch.cat([self.splits["train"]["x"], self.transfer_inputs()]),
                                "z": torch.cat([logits["train"], logits["transfer"]])}

    def train_dataloader(self) -> InMemoryLoader:
        """Shuffled batches: labelled train split, or train + transfer with teacher logits once attached."""
        data = self.splits.get("mimic", self.splits["train"])
        return InMemoryLoader(data, self.batch_size, shuffle=True, seed=self.shuffle_seed)

    def val_dataloader(self) -> InMemoryLoader:
        return InMemoryLoader(self.splits["val"], self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> InMemoryLoader:
        return InMemoryLoader(self.splits["test"], self.eval_batch_size, shuffle=False)
