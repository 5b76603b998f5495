"""Transfer sets: the inputs beyond the training split that a mimic learns the teacher's logits on. One builder per
kind, chosen by `data.transfer` from TRANSFERS; each returns raw inputs and their labels (None: unlabelled).

    train:     nothing beyond the training inputs (TIMIT style)
    generated: inputs drawn from the dataset's generator (MNIST-1D only)
    pool:      an unlabelled pool: the data's `x_unlabelled`, or the PNG/JPEG images in `pool_dir`
    augment:   `transfer_size` augmented copies of the training images, made once with `transfer_seed` and cached
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from shallowmimic.cache import Allocate, cached_maps, spec_key
from shallowmimic.data.mapped import Standardised
from shallowmimic.data.readers import image_files, read_image_folder
from shallowmimic.errors import UserError

log = logging.getLogger(__name__)

Raw = tuple[np.ndarray, np.ndarray | None]


class Source(Protocol):
    """What the builders read of their data module (data/module.py's ArrayDataModule): its settings, its splits."""

    name: str
    digest: str
    in_shape: tuple[int, ...]
    raw_dtype: np.dtype
    val_size: int
    split_seed: int
    transfer: str
    transfers: tuple[str, ...]
    transfer_size: int
    transfer_seed: int
    max_rows: int | None
    pool_dir: str | None
    augment_pad: int
    augment_flip: bool
    dup_tol: float | None
    cache_dir: Path
    unlabelled: np.ndarray | None
    train_raw: tuple[np.ndarray, np.ndarray] | None
    splits: dict[str, dict[str, Tensor]]
    mean: Tensor
    std: Tensor

    def generate_transfer(self) -> np.ndarray: ...

    def standardise(self, x: np.ndarray) -> Tensor: ...


def from_train(dm: Source) -> Raw:
    """No inputs beyond the training split."""
    return np.empty((0, *dm.in_shape), np.float32), None


def generated(dm: Source) -> Raw:
    """Fresh inputs from the data's generator; their labels are never kept: the transfer set is unlabelled."""
    return dm.generate_transfer(), None


def pool_key(pool_dir: str) -> str:
    """A key for an image pool: its files' names, sizes and modification times (cheap, no reading)."""
    files = image_files(pool_dir)
    return spec_key([(str(p.relative_to(pool_dir)), p.stat().st_size, p.stat().st_mtime_ns) for p in files])


def pool(dm: Source) -> Raw:
    """The unlabelled pool: the data's x_unlabelled, or the images in pool_dir (cached as one array)."""
    if dm.pool_dir is None:
        return dm.unlabelled, None
    key = spec_key([pool_key(dm.pool_dir), dm.in_shape])  # the shape: read as RGB or grey

    def build(allocate: Allocate) -> None:
        files = image_files(dm.pool_dir)
        read_image_folder(files, dm.in_shape, allocate("x", (len(files), *dm.in_shape), np.uint8))
        log.info("read %d pool images from %s", len(files), dm.pool_dir)

    # a memory map: build() below serves it standardised a batch at a time, never whole
    return cached_maps(dm.cache_dir / f"{dm.name}-pool-{key}", build)[0]["x"], None


def augmented(dm: Source) -> Raw:
    """`transfer_size` augmented copies of the training images with their labels, made once and cached by their
    spec (so the teacher's logits over them can be cached too)."""
    n, seed = dm.transfer_size, dm.transfer_seed
    spec = {"name": dm.name, "sha256": dm.digest, "val_size": dm.val_size, "split_seed": dm.split_seed,
            "n": n, "seed": seed, "pad": dm.augment_pad, "flip": dm.augment_flip}

    def build(allocate: Allocate) -> None:
        x, y = dm.train_raw
        log.info("making %d augmented copies of the %d %s training images", n, len(y), dm.name)
        _, source = augment(x, n, seed, dm.augment_pad, dm.augment_flip, allocate("x", (n, *x.shape[1:]), x.dtype))
        allocate("y", (n,), y.dtype)[:] = y[source]

    arrays, _ = cached_maps(dm.cache_dir / f"{dm.name}-augment-n{n}-s{seed}-{spec_key(spec)}", build)
    return arrays["x"], arrays["y"]  # copies of labelled images keep their labels


TRANSFERS: dict[str, Callable[[Source], Raw]] = {
    "train": from_train, "generated": generated, "pool": pool, "augment": augmented}


def check(dm: Source) -> None:
    """Fail before any run starts if the transfer set asked for cannot be made from this data."""
    kind = dm.transfer
    if kind not in dm.transfers:
        raise UserError(f"data.transfer={kind}: {dm.name} offers {', '.join(dm.transfers)}")
    if kind == "augment" and len(dm.in_shape) != 3:
        raise UserError(f"data.transfer=augment: needs images (C, H, W); {dm.name}'s inputs are {dm.in_shape}")
    if kind == "pool" and dm.pool_dir is None and dm.unlabelled is None:
        raise UserError(f"data.transfer=pool: {dm.name} has no unlabelled pool; set data.pool_dir to a folder of "
                        "images (or, for data.path, store x_unlabelled beside x_train)")
    if kind == "pool" and dm.pool_dir is not None:
        if dm.raw_dtype != np.uint8:
            raise UserError(f"data.pool_dir={dm.pool_dir}: images hold 0..255 pixels, but {dm.name}'s inputs are "
                            f"{dm.raw_dtype}; give the pool as x_unlabelled in a data.path file")
        image_files(dm.pool_dir)  # the folder exists and holds images


def build(dm: Source) -> tuple[dict[str, Tensor | Standardised], int]:
    """The transfer set, standardised, with labels where it has them (-1 where not), and how many near-duplicates of
    test and validation inputs were dropped if `dup_tol` is set (validation picks the checkpoint: it must stay
    unseen)."""
    empty = dm.transfer != "pool" and dm.transfer_size == 0
    raw, y = (from_train if empty else TRANSFERS[dm.transfer])(dm)
    if dm.max_rows is not None:  # a pool has no transfer_size to cap (and a whole memory map keeps its pread path)
        raw, y = raw[: dm.max_rows], None if y is None else y[: dm.max_rows]
    # a memory-mapped pool (data.path a folder of .npy files, or a large .npz member) stays on disk, standardised a
    # batch at a time
    x = Standardised(raw, dm.mean, dm.std) if isinstance(raw, np.memmap) else dm.standardise(raw)
    y = torch.full((len(x),), -1, dtype=torch.int64) if y is None else torch.from_numpy(y)
    if dm.dup_tol is None or not len(x):
        return {"x": x, "y": y}, 0
    keep = far_from(x, torch.cat([dm.splits["test"]["x"], dm.splits["val"]["x"]]), dm.dup_tol)
    dropped = int((~keep).sum())
    if dropped:
        log.warning("dropped %d transfer inputs within %.0e of a test or validation input", dropped, dm.dup_tol)
    return {"x": x[keep] if isinstance(x, Tensor) else x.subset(keep.numpy()), "y": y[keep]}, dropped


def far_from(x: Tensor | Standardised, ref: Tensor, tol: float, chunk: int = 50_000) -> Tensor:
    """Mask of rows of x whose nearest row of ref is farther than tol (RMS distance per dimension)."""
    ref, dim = ref.flatten(1), math.prod(ref.shape[1:])
    near = [torch.cdist(part.flatten(1), ref).min(1).values / dim**0.5 for part in x.split(chunk)]
    return torch.cat(near) > tol


def augment(x: np.ndarray, n: int, seed: int, pad: int, flip: bool, out: np.ndarray | None = None,
            chunk: int = 50_000) -> tuple[np.ndarray, np.ndarray]:
    """`n` random copies of images x (N, C, H, W): each a random H x W crop of the image zero-padded by `pad`
    pixels (a shift of up to `pad`), mirrored left-right half the time if `flip`. Returns the copies (x's dtype; in
    `out` if given) and the index of each copy's source image."""
    rng = np.random.default_rng(seed)
    _, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    source = rng.integers(0, len(x), n)
    out = np.empty((n, c, h, w), x.dtype) if out is None else out
    for start in range(0, n, chunk):  # bounded index arrays, whatever n
        idx = source[start : start + chunk]
        m = len(idx)
        rows = rng.integers(0, 2 * pad + 1, m)[:, None] + np.arange(h)  # (m, H)
        cols = rng.integers(0, 2 * pad + 1, m)[:, None] + np.arange(w)  # (m, W)
        if flip:
            cols = np.where(rng.random(m)[:, None] < 0.5, cols[:, ::-1], cols)
        out[start : start + m] = padded[idx[:, None, None, None], np.arange(c)[None, :, None, None],
                                        rows[:, None, :, None], cols[:, None, None, :]]
    return out, source
