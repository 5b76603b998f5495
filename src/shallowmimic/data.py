"""DataModules over in-memory arrays: real datasets read from disk, MNIST-1D generated offline; their transfer sets,
on-disk caches, and batch-at-a-time loaders."""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from shallowmimic.cache import cached, spec_key
from shallowmimic.datasets import (
    Arrays,
    augment,
    image_files,
    load_cifar10,
    load_digits,
    load_features,
    load_mnist,
    read_image_folder,
    validate,
)
from shallowmimic.tracking import UserError

log = logging.getLogger(__name__)

Batch = dict[str, Tensor]
TRANSFERS = ("train", "generated", "pool", "augment")


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


def digest(arrays: Arrays) -> str:
    """sha256 of named arrays' names, dtypes, shapes and bytes: the identity of a dataset's content."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name} {a.dtype.str} {a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


class ArrayDataModule(L.LightningDataModule):
    """Labelled arrays held in memory: a validation split carved from train with a seed (unless the data gives one),
    each input dimension standardised with the training split's statistics, and a transfer set for the mimic:

    train:     nothing beyond the training inputs (TIMIT style)
    generated: inputs drawn from the dataset's generator (MNIST-1D only)
    pool:      an unlabelled pool: the data's `x_unlabelled`, or the PNG/JPEG images in `pool_dir`
    augment:   `transfer_size` augmented copies of the training images, made once with `transfer_seed` and cached

    Give `arrays` (x_train, y_train, x_test, y_test, optional x_val, y_val, x_unlabelled), or subclass and read
    them in `load_arrays`.
    """

    transfers: tuple[str, ...] = ("train", "pool", "augment")  # the transfer sets this data can make

    def __init__(self, name: str, arrays: Arrays | None = None, num_classes: int | None = None,
                 val_size: int = 5000, split_seed: int = 0, transfer: str = "train", transfer_size: int = 0,
                 transfer_seed: int = 1, pool_dir: str | None = None, augment_pad: int = 4, augment_flip: bool = False,
                 dup_tol: float | None = None, std_floor: float = 0.1, batch_size: int = 256,
                 eval_batch_size: int = 2048, shuffle_seed: int = 0, cache_dir: str = "outputs/cache/data") -> None:
        super().__init__()
        if transfer not in TRANSFERS:
            raise UserError(f"data.transfer={transfer}: must be one of {', '.join(TRANSFERS)}")
        self.name, self.arrays, self.num_classes = name, arrays, num_classes
        self.val_size, self.split_seed, self.std_floor = val_size, split_seed, std_floor
        self.transfer, self.transfer_size, self.transfer_seed = transfer, transfer_size, transfer_seed
        self.pool_dir, self.augment_pad, self.augment_flip = pool_dir, augment_pad, augment_flip
        self.dup_tol, self.batch_size, self.eval_batch_size = dup_tol, batch_size, eval_batch_size
        self.shuffle_seed, self.cache_dir = shuffle_seed, Path(cache_dir)
        self.in_shape: tuple[int, ...] = ()  # one sample's shape, e.g. (40,) or (3, 32, 32); known after setup()
        self.splits: dict[str, Batch] = {}
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self.digest = ""  # sha256 of the arrays read, so the caches keyed by spec() notice changed files
        self._unlabelled: np.ndarray | None = None
        self._train_raw: tuple[np.ndarray, np.ndarray] | None = None  # kept only to augment from
        self._raw_dtype = np.dtype(np.float32)
        self._transfer: Batch | None = None
        self.n_duplicates_dropped = 0

    def load_arrays(self) -> Arrays:
        """The raw arrays by name; subclasses read them from disk."""
        if self.arrays is None:
            raise NotImplementedError(f"{type(self).__name__} needs `arrays` or its own load_arrays()")
        return self.arrays

    def raw_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Raw (x, y) for train, val and test: the data's own validation split, or `val_size` samples drawn from
        train with `split_seed`."""
        arrays = validate(self.load_arrays(), self.name)
        self.digest = digest(arrays)
        self._unlabelled = arrays.get("x_unlabelled")
        x, y = arrays["x_train"], arrays["y_train"]
        splits = {"test": (arrays["x_test"], arrays["y_test"])}
        if "x_val" in arrays:
            return {"train": (x, y), "val": (arrays["x_val"], arrays["y_val"])} | splits
        if not self.val_size < len(y):
            raise UserError(f"data.val_size={self.val_size}: must be below the {len(y)} training samples of "
                            f"{self.name}")
        order = np.random.default_rng(self.split_seed).permutation(len(y))
        val, fit = np.sort(order[: self.val_size]), np.sort(order[self.val_size :])  # sorted: the files' order
        return {"train": (x[fit], y[fit]), "val": (x[val], y[val])} | splits

    def setup(self, stage: str | None = None) -> None:
        """Load the splits (idempotent) and standardise each input dimension with the training split's statistics.

        A dimension's std is floored at `std_floor` times the mean std over dimensions: near-constant ones (an
        image's border pixels) would otherwise blow a rare non-zero test or transfer value up a million times.
        """
        if self.splits:
            return
        raw = self.raw_splits()
        x_fit = torch.from_numpy(raw["train"][0]).float()
        self.in_shape, self._raw_dtype = tuple(x_fit.shape[1:]), raw["train"][0].dtype
        std = x_fit.std(0)
        self.mean, self.std = x_fit.mean(0), std.clamp_min(max(1e-6, self.std_floor * std.mean().item()))
        self.splits = {k: {"x": self.standardise(x), "y": torch.from_numpy(y)} for k, (x, y) in raw.items()}
        n_classes = 1 + max(int(s["y"].max()) for s in self.splits.values() if len(s["y"]))
        if self.num_classes is None:
            self.num_classes = n_classes
        elif n_classes > self.num_classes:
            raise UserError(f"data.num_classes={self.num_classes}: {self.name} has labels up to {n_classes - 1}")
        if self.transfer == "augment":
            self._train_raw = raw["train"]
        self._check_transfer()

    def _check_transfer(self) -> None:
        """Fail now, before any run starts, if the transfer set asked for cannot be made from this data."""
        if self.transfer not in self.transfers:
            raise UserError(f"data.transfer={self.transfer}: {self.name} offers {', '.join(self.transfers)}")
        if self.transfer == "augment" and len(self.in_shape) != 3:
            raise UserError(f"data.transfer=augment: needs images (C, H, W); {self.name}'s inputs are "
                            f"{self.in_shape}")
        if self.transfer == "pool" and self.pool_dir is None and self._unlabelled is None:
            raise UserError(f"data.transfer=pool: {self.name} has no unlabelled pool; set data.pool_dir to a "
                            "folder of images (or, for data.path, store x_unlabelled beside x_train)")
        if self.transfer == "pool" and self.pool_dir is not None:
            if self._raw_dtype != np.uint8:
                raise UserError(f"data.pool_dir={self.pool_dir}: images hold 0..255 pixels, but {self.name}'s "
                                f"inputs are {self._raw_dtype}; give the pool as x_unlabelled in a data.path file")
            image_files(self.pool_dir)  # the folder exists and holds images

    def standardise(self, x: np.ndarray) -> Tensor:
        """Raw inputs -> float32, standardised with the training split's mean and std."""
        return (torch.from_numpy(x).float() - self.mean) / self.std

    def spec(self) -> dict:
        """Everything that determines the inputs, in train/val/test/transfer order (the logits cache key)."""
        self.setup()
        spec = {"name": self.name, "sha256": self.digest, "val_size": self.val_size, "split_seed": self.split_seed,
                "std_floor": self.std_floor, "transfer": self.transfer, "transfer_size": self.transfer_size,
                "transfer_seed": self.transfer_seed, "augment_pad": self.augment_pad,
                "augment_flip": self.augment_flip, "dup_tol": self.dup_tol}
        if self.transfer == "pool" and self.pool_dir is not None:
            spec["pool"] = self._pool_key()
        return spec

    def _generated_raw(self) -> np.ndarray:
        """Raw generated transfer inputs; only datasets with a generator have them."""
        raise NotImplementedError

    def _pool_key(self) -> str:
        """A key for the image pool: its files' names, sizes and modification times (cheap, no reading)."""
        files = image_files(self.pool_dir)
        return spec_key([(str(p.relative_to(self.pool_dir)), p.stat().st_size, p.stat().st_mtime_ns) for p in files])

    def _pool_raw(self) -> np.ndarray:
        """The unlabelled pool: the data's x_unlabelled, or the images in pool_dir (cached as one array)."""
        if self.pool_dir is None:
            return self._unlabelled
        path = self.cache_dir / f"{self.name}-pool-{spec_key([self._pool_key(), self.in_shape])}.npz"  # shape: RGB/grey
        arrays, hit = cached(path, lambda: {"x": read_image_folder(image_files(self.pool_dir), self.in_shape)})
        if not hit:
            log.info("read %d pool images from %s", len(arrays["x"]), self.pool_dir)
        return arrays["x"]

    def _augmented_raw(self) -> tuple[np.ndarray, np.ndarray]:
        """`transfer_size` augmented copies of the training images and their labels, made once and cached by
        their spec (so the teacher's logits over them can be cached too)."""
        n, seed = self.transfer_size, self.transfer_seed
        spec = {"name": self.name, "sha256": self.digest, "val_size": self.val_size, "split_seed": self.split_seed,
                "n": n, "seed": seed, "pad": self.augment_pad, "flip": self.augment_flip}
        path = self.cache_dir / f"{self.name}-augment-n{n}-s{seed}-{spec_key(spec)}.npz"

        def build() -> Arrays:
            x, y = self._train_raw
            log.info("making %d augmented copies of the %d %s training images", n, len(y), self.name)
            copies, source = augment(x, n, seed, self.augment_pad, self.augment_flip)
            return {"x": copies, "y": y[source]}

        arrays, _ = cached(path, build)
        return arrays["x"], arrays["y"]

    def _transfer_set(self) -> Batch:
        """The transfer set (standardised) with labels where it has them (-1 where not), near-duplicates of test
        and validation inputs dropped if `dup_tol` is set (validation picks the checkpoint: it must stay unseen)."""
        if self._transfer is not None:
            return self._transfer
        self.setup()
        y = None
        if self.transfer == "train" or (self.transfer != "pool" and self.transfer_size == 0):
            x = np.empty((0, *self.in_shape), np.float32)
        elif self.transfer == "generated":
            x = self._generated_raw()  # labels are never kept: the transfer set is unlabelled data
        elif self.transfer == "pool":
            x = self._pool_raw()
        else:
            x, y = self._augmented_raw()  # copies of labelled images keep their labels
        x = self.standardise(x)
        y = torch.full((len(x),), -1, dtype=torch.int64) if y is None else torch.from_numpy(y)
        if self.dup_tol is not None and len(x):
            keep = self._far_from(x, torch.cat([self.splits["test"]["x"], self.splits["val"]["x"]]))
            self.n_duplicates_dropped = int((~keep).sum())
            if self.n_duplicates_dropped:
                log.warning("dropped %d transfer inputs within %.0e of a test or validation input",
                            self.n_duplicates_dropped, self.dup_tol)
            x, y = x[keep], y[keep]
        self._transfer = {"x": x, "y": y}
        return self._transfer

    def transfer_inputs(self) -> Tensor:
        """The transfer inputs beyond the training split (standardised)."""
        return self._transfer_set()["x"]

    def _far_from(self, x: Tensor, ref: Tensor, chunk: int = 50_000) -> Tensor:
        """Mask of rows of x whose nearest row of ref is farther than dup_tol (RMS distance per dimension)."""
        ref, dim = ref.flatten(1), math.prod(ref.shape[1:])
        near = [torch.cdist(part.flatten(1), ref).min(1).values / dim**0.5 for part in x.split(chunk)]
        return torch.cat(near) > self.dup_tol

    def teacher_inputs(self) -> dict[str, Tensor]:
        """Every input the mimic needs the teacher's logits for, by split."""
        self.setup()
        return {**{k: v["x"] for k, v in self.splits.items()}, "transfer": self.transfer_inputs()}

    def attach_logits(self, logits: dict[str, Tensor]) -> None:
        """Give each split the teacher's logits `z`; the mimic then trains on train + transfer inputs, with `y` the
        true label of training rows and -1 on transfer rows without one."""
        for split in ("train", "val", "test"):
            self.splits[split]["z"] = logits[split]
        train, transfer = self.splits["train"], self._transfer_set()
        self.splits["mimic"] = {"x": torch.cat([train["x"], transfer["x"]]),
                                "y": torch.cat([train["y"], transfer["y"]]),
                                "z": torch.cat([logits["train"], logits["transfer"]])}

    def train_dataloader(self) -> InMemoryLoader:
        """Shuffled batches: labelled train split, or train + transfer with teacher logits once attached."""
        data = self.splits.get("mimic", self.splits["train"])
        return InMemoryLoader(data, self.batch_size, shuffle=True, seed=self.shuffle_seed)

    def val_dataloader(self) -> InMemoryLoader:
        return InMemoryLoader(self.splits["val"], self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> InMemoryLoader:
        return InMemoryLoader(self.splits["test"], self.eval_batch_size, shuffle=False)


class DigitsDataModule(ArrayDataModule):
    """scikit-learn's 8x8 digits: 1797 images (1, 8, 8) of 10 classes that ship with it, a fixed 20% test split."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(num_classes=10, **kwargs)

    def load_arrays(self) -> Arrays:
        return load_digits()


class TorchvisionFilesDataModule(ArrayDataModule):
    """A 10-class data set read from torchvision's on-disk layout under `data_dir`, downloaded there on request."""

    def __init__(self, data_dir: str, download: bool = False, **kwargs: Any) -> None:
        super().__init__(num_classes=10, **kwargs)
        self.data_dir, self.download = data_dir, download


class MNISTDataModule(TorchvisionFilesDataModule):
    """MNIST (LeCun et al. 1998): 28x28 digits, 60k train / 10k test, from `<data_dir>/MNIST/raw/` (torchvision's
    layout) or downloaded there through torchvision."""

    folder = "MNIST"

    def load_arrays(self) -> Arrays:
        return load_mnist(self.data_dir, self.folder, self.download)


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (Xiao et al. 2017): 28x28 clothing images in MNIST's format, from
    `<data_dir>/FashionMNIST/raw/`."""

    folder = "FashionMNIST"


class CIFAR10DataModule(TorchvisionFilesDataModule):
    """CIFAR-10 (Krizhevsky 2009): 32x32 colour images, 50k train / 10k test, from the python batches in
    `<data_dir>/cifar-10-batches-py/` or downloaded there through torchvision."""

    def load_arrays(self) -> Arrays:
        return load_cifar10(self.data_dir, self.download)


class FeaturesDataModule(ArrayDataModule):
    """The user's own arrays (e.g. TIMIT frames: 1845 dims, 183 classes) from an .npz file or a folder of .npy files
    at `path`; `num_classes` null counts them from the labels."""

    def __init__(self, path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path

    def load_arrays(self) -> Arrays:
        # x_unlabelled can be the largest array by far: read it only when it is the transfer set
        return load_features(self.path, unlabelled=self.transfer == "pool" and self.pool_dir is None)


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


class MNIST1DDataModule(ArrayDataModule):
    """MNIST-1D (Greydanus 2020), generated offline: canonical train/test split, a validation split carved from
    train, and an unlabelled transfer set drawn with another seed for the mimic (or none: transfer=train)."""

    transfers = ("generated", "train")

    def __init__(self, name: str = "mnist1d", num_samples: int = 5000, train_split: float = 0.8, seed: int = 42,
                 val_size: int = 500, transfer: str = "generated", transfer_size: int = 200_000,
                 transfer_seed: int = 1, dup_tol: float = 1e-3, batch_size: int = 256, eval_batch_size: int = 2048,
                 shuffle_seed: int = 0, cache_dir: str = "outputs/cache/data") -> None:
        # std_floor 0: MNIST-1D has no near-constant dimensions, and its standardisation stays as published here
        super().__init__(name, num_classes=10, val_size=val_size, transfer=transfer, transfer_size=transfer_size,
                         transfer_seed=transfer_seed, dup_tol=dup_tol, std_floor=0.0, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, shuffle_seed=shuffle_seed, cache_dir=cache_dir)
        self.num_samples, self.train_split, self.seed = num_samples, train_split, seed
        self.in_shape = (40,)

    def spec(self) -> dict:
        """Everything that determines the inputs, in train/val/test/transfer order (the logits cache key)."""
        spec = {"name": self.name, "generator": f"mnist1d=={version('mnist1d')}", "num_samples": self.num_samples,
                "train_split": self.train_split, "seed": self.seed, "val_size": self.val_size,
                "transfer_size": self.transfer_size, "transfer_seed": self.transfer_seed, "dup_tol": self.dup_tol}
        return spec if self.transfer == "generated" else spec | {"transfer": self.transfer}  # old keys stay valid

    def _cache_path(self, num_samples: int, seed: int) -> Path:
        key = spec_key({"generator": f"mnist1d=={version('mnist1d')}", "num_samples": num_samples, "seed": seed})
        return self.cache_dir / f"mnist1d-n{num_samples}-s{seed}-{key}.npz"

    def _generated(self, num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw generated set, cached on disk by the generator's arguments (generation is a slow Python loop)."""
        arrays, hit = cached(self._cache_path(num_samples, seed), lambda: _generate_arrays(num_samples, seed))
        if not hit:
            log.info("generated %d MNIST-1D samples (seed %d)", num_samples, seed)
        return arrays["x"], arrays["y"]

    def _generated_raw(self) -> np.ndarray:
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

    def raw_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The canonical split (make_dataset's: 4000 train / 1000 test by default), validation the last `val_size`
        of train."""
        x, y = self._generated(self.num_samples, self.seed)
        n_train = int(len(y) * self.train_split)
        n_fit = n_train - self.val_size
        return {"train": (x[:n_fit], y[:n_fit]), "val": (x[n_fit:n_train], y[n_fit:n_train]),
                "test": (x[n_train:], y[n_train:])}
