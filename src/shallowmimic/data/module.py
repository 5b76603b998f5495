"""The generic DataModule: labelled arrays held in memory, split, standardised, with a transfer set for the mimic."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor

from shallowmimic import checks
from shallowmimic.cache import Arrays, digest_arrays, spec_key
from shallowmimic.data import transfer as transfers
from shallowmimic.data.loader import Batch, InMemoryLoader
from shallowmimic.data.mapped import Concat, Rows, Standardised, as_tensor
from shallowmimic.data.readers import validate
from shallowmimic.errors import UserError


class ArrayDataModule(L.LightningDataModule):
    """Labelled arrays held in memory: a validation split carved from train with a seed (unless the data gives one),
    each input dimension standardised with the training split's statistics, and a transfer set (data/transfer.py).

    Give `arrays` (x_train, y_train, x_test, y_test, optional x_val, y_val, x_unlabelled), or subclass and read
    them in `load_arrays`.
    """

    transfers: tuple[str, ...] = ("train", "pool", "augment")  # the transfer sets this data can make
    split_keys: tuple[str, ...] = ("sha256", "val_size", "split_seed")  # the keys of spec() that fix the splits
    steps_per_batch = 1  # training batches per loader item (the pipeline sets loop.steps_per_batch; System steps each)

    def __init__(self, name: str, arrays: Arrays | None = None, num_classes: int | None = None,
                 val_size: int = 5000, split_seed: int = 0, transfer: str = "train", transfer_size: int = 0,
                 transfer_seed: int = 1, pool_dir: str | None = None, augment_pad: int = 4, augment_flip: bool = False,
                 dup_tol: float | None = None, std_floor: float = 0.1, batch_size: int = 256,
                 eval_batch_size: int = 2048, shuffle_seed: int = 0, cache_dir: str = "outputs/cache/data",
                 max_rows: int | None = None) -> None:
        super().__init__()
        checks.integer("num_classes", num_classes, minimum=2, optional=True)
        checks.integer("max_rows", max_rows, optional=True)
        for key, value in (("val_size", val_size), ("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            checks.integer(key, value)
        for key, value in (("split_seed", split_seed), ("transfer_size", transfer_size),
                           ("transfer_seed", transfer_seed), ("augment_pad", augment_pad)):
            checks.integer(key, value, minimum=0)
        checks.choice("transfer", transfer, list(transfers.TRANSFERS))
        checks.path("pool_dir", pool_dir)
        checks.flag("augment_flip", augment_flip)
        checks.number("dup_tol", dup_tol, 0, optional=True)  # null: no duplicate check
        checks.number("std_floor", std_floor, 0)
        self.name, self.arrays, self.num_classes = name, arrays, num_classes
        self.val_size, self.split_seed, self.std_floor = val_size, split_seed, std_floor
        # max_rows: the first rows of every split and of the transfer set alone (a study's quick smoke size)
        self.max_rows = max_rows
        self.transfer_size = transfer_size if max_rows is None else min(transfer_size, max_rows)
        self.transfer, self.transfer_seed = transfer, transfer_seed
        self.pool_dir, self.augment_pad, self.augment_flip = pool_dir, augment_pad, augment_flip
        self.dup_tol, self.batch_size, self.eval_batch_size = dup_tol, batch_size, eval_batch_size
        self.shuffle_seed, self.cache_dir = shuffle_seed, Path(cache_dir)
        self.in_shape: tuple[int, ...] = ()  # one sample's shape, e.g. (40,) or (3, 32, 32); known after setup()
        self.splits: dict[str, Batch] = {}
        self.mean, self.std = torch.empty(0), torch.empty(0)  # the training split's, per dimension, from setup()
        self.digest = ""  # sha256 of the arrays read, so the caches keyed by spec() notice changed files
        self.unlabelled: np.ndarray | None = None  # the data's own x_unlabelled, if any
        self.train_raw: tuple[np.ndarray, np.ndarray] | None = None  # kept only to augment from
        self.raw_dtype = np.dtype(np.float32)
        self.n_duplicates_dropped = 0
        self._transfer: dict[str, Tensor | Standardised] | None = None

    def load_arrays(self) -> Arrays:
        """The raw arrays by name; subclasses read them from disk."""
        if self.arrays is None:
            raise NotImplementedError(f"{type(self).__name__} needs `arrays` or its own load_arrays()")
        return self.arrays

    @property
    def origin(self) -> str:
        """Where the arrays come from, as errors name it: a file for read data, the data set's name otherwise."""
        return self.name

    def raw_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Raw (x, y) for train, val and test: the data's own validation split, or `val_size` samples drawn from
        train with `split_seed`."""
        arrays = validate(self.load_arrays(), self.origin)
        self.digest = digest_arrays(arrays)
        self.unlabelled = arrays.get("x_unlabelled")
        x, y = arrays["x_train"], arrays["y_train"]
        splits = {"test": (arrays["x_test"], arrays["y_test"])}
        if "x_val" in arrays:
            return {"train": (x, y), "val": (arrays["x_val"], arrays["y_val"])} | splits
        if not self.val_size < len(y):
            raise UserError(f"data.val_size={self.val_size}: must be below the {len(y)} training samples of "
                            f"{self.name}")
        return carve_validation(x, y, self.val_size, self.split_seed) | splits

    def setup(self, stage: str | None = None) -> None:
        """Load the splits (idempotent) and standardise each input dimension with the training split's statistics.

        A dimension's std is floored at `std_floor` times the mean std over dimensions: near-constant ones (an
        image's border pixels) would otherwise blow a rare non-zero test or transfer value up a million times.
        """
        if self.splits:
            return
        raw = {k: (x[: self.max_rows], y[: self.max_rows]) for k, (x, y) in self.raw_splits().items()}
        x_fit = as_tensor(raw["train"][0]).float()
        self.in_shape, self.raw_dtype = tuple(x_fit.shape[1:]), raw["train"][0].dtype
        std = x_fit.std(0)
        self.mean, self.std = x_fit.mean(0), std.clamp_min(max(1e-6, self.std_floor * std.mean().item()))
        self.splits = {k: {"x": self.standardise(x), "y": torch.from_numpy(y)} for k, (x, y) in raw.items()}
        self.num_classes = check_classes(self.splits, self.num_classes, self.origin)
        if self.transfer == "augment":
            self.train_raw = raw["train"]
        transfers.check(self)

    def standardise(self, x: np.ndarray) -> Tensor:
        """Raw inputs -> float32, standardised with the training split's mean and std."""
        return (as_tensor(x).float() - self.mean) / self.std

    def spec(self) -> dict:
        """Everything that determines the inputs, in train/val/test/transfer order (the logits cache key)."""
        self.setup()
        spec = {"name": self.name, "sha256": self.digest, "val_size": self.val_size, "split_seed": self.split_seed,
                "std_floor": self.std_floor, "transfer": self.transfer, "transfer_size": self.transfer_size,
                "transfer_seed": self.transfer_seed, "augment_pad": self.augment_pad,
                "augment_flip": self.augment_flip, "dup_tol": self.dup_tol}
        if self.transfer == "pool" and self.pool_dir is not None:
            spec["pool"] = transfers.pool_key(self.pool_dir)
        return spec | self.cap()

    def cap(self) -> dict:
        """`max_rows` as spec() holds it: absent when every row is used, so the keys of full-size data stay as
        they were."""
        return {} if self.max_rows is None else {"max_rows": self.max_rows}

    def split_key(self) -> str:
        """A hash of what defines the train/validation/test splits (not the transfer set): a teacher and its
        student must agree on it, or the teacher may have trained on the student's validation or test points."""
        spec = self.spec()
        return spec_key({k: spec[k] for k in (*self.split_keys, "max_rows") if k in spec})

    def generate_transfer(self) -> np.ndarray:
        raise NotImplementedError("raw generated transfer inputs: only data sets with a generator have them")

    def transfer_inputs(self) -> Tensor | Standardised:
        """The transfer inputs beyond the training split, built once (standardised; a mapped pool as it is read)."""
        if self._transfer is None:
            self.setup()
            self._transfer, self.n_duplicates_dropped = transfers.build(self)
        return self._transfer["x"]

    def teacher_inputs(self) -> dict[str, Tensor | Standardised]:
        """Every input the mimic needs the teacher's logits for, by split."""
        self.setup()
        return {**{k: v["x"] for k, v in self.splits.items()}, "transfer": self.transfer_inputs()}

    def attach_logits(self, logits: dict[str, Tensor | np.ndarray]) -> None:
        """Give each split the teacher's logits `z` (tensors, or arrays such as the cache's memory maps); the mimic
        then trains on train + transfer inputs, with `y` the true label of training rows and -1 on transfer rows
        without one."""
        for split in ("train", "val", "test"):
            self.splits[split]["z"] = tensor(logits[split])
        self.transfer_inputs()
        self.splits["mimic"] = mimic_split(self.splits["train"], self._transfer, logits["transfer"])

    @property
    def n_train_rows(self) -> int:
        """Rows in one training epoch: the training split, plus the transfer set once logits are attached."""
        return len(self.splits.get("mimic", self.splits["train"])["x"])

    def train_dataloader(self) -> InMemoryLoader:
        """Shuffled batches: labelled train split, or train + transfer with teacher logits once attached."""
        data = self.splits.get("mimic", self.splits["train"])
        return InMemoryLoader(data, self.batch_size, shuffle=True, seed=self.shuffle_seed, steps=self.steps_per_batch)

    def val_dataloader(self) -> InMemoryLoader:
        return InMemoryLoader(self.splits["val"], self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> InMemoryLoader:
        return InMemoryLoader(self.splits["test"], self.eval_batch_size, shuffle=False)


def carve_validation(x: np.ndarray, y: np.ndarray, val_size: int, seed: int) -> dict[str, tuple[np.ndarray, ...]]:
    """Train and validation splits: `val_size` rows of (x, y) drawn with `seed`, each split in the files' order."""
    order = np.random.default_rng(seed).permutation(len(y))
    val, fit = np.sort(order[:val_size]), np.sort(order[val_size:])
    return {"train": (x[fit], y[fit]), "val": (x[val], y[val])}


def check_classes(splits: dict[str, Batch], num_classes: int | None, origin: str) -> int:
    """The number of classes: `num_classes`, or counted from the labels when null; a label beyond it is refused with
    its split and row."""
    found = 1 + max(int(s["y"].max()) for s in splits.values() if len(s["y"]))
    if num_classes is None or found <= num_classes:
        return found if num_classes is None else num_classes
    split, row = next((k, int(torch.argmax((s["y"] >= num_classes).int())))
                      for k, s in splits.items() if len(s["y"]) and s["y"].max() >= num_classes)
    raise UserError(f"data.num_classes={num_classes}: {origin} has label {int(splits[split]['y'][row])} in the "
                    f"{split} split (row {row}); labels must be 0 to {num_classes - 1}")


def tensor(a: Tensor | np.ndarray) -> Tensor:
    """A tensor over an array's memory (a memory map stays mapped), or the tensor itself."""
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else a


def mimic_split(train: Batch, extra: dict[str, Tensor | Standardised], z_extra: Tensor | np.ndarray) -> Batch:
    """What a mimic trains on: the training rows (with their logits `z`) followed by the transfer rows and theirs;
    `y` is the true label of training rows and -1 on transfer rows without one."""
    if isinstance(extra["x"], Tensor):
        join, z = torch.cat, tensor(z_extra)
    else:  # a memory-mapped transfer set (and its logits) is served by index beside the training rows, never
        join = Concat  # concatenated with them; mapped logits read by pread, as the inputs (mapped.Rows)
        z = Rows(z_extra) if isinstance(z_extra, np.memmap) else tensor(z_extra)
    return {"x": join([train["x"], extra["x"]]), "y": torch.cat([train["y"], extra["y"]]),
            "z": join([train["z"], z])}
