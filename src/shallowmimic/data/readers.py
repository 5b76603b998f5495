"""Readers for real datasets in their on-disk formats (no torchvision needed to read).

Every reader returns raw arrays by name: `x_train, y_train, x_test, y_test` and, where the source has them,
`x_val, y_val, x_unlabelled`. Inputs keep their stored dtype (uint8 pixels stay uint8: 4x smaller caches);
labels are int64. Mistakes in the user's files or settings raise UserError with one line naming the file.
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from shallowmimic.cache import Arrays, block_rows, blocks
from shallowmimic.data.mapped import map_npz
from shallowmimic.errors import UserError

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL = ("x_val", "y_val", "x_unlabelled")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# idx's third magic byte names the element type (https://yann.lecun.com/exdb/mnist/); values are big-endian
IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
MNIST_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
               "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def read_idx(path: str | Path) -> np.ndarray:
    """An idx file (MNIST's format, optionally gzipped): magic 0 0 <type> <ndim>, ndim big-endian uint32 sizes,
    then the elements."""
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:  # a corrupt .gz raises BadGzipFile (an OSError) or EOFError
        raise UserError(f"{path}: cannot read it ({err})") from None
    if len(data) < 4 or data[0] or data[1] or data[2] not in IDX_DTYPES:
        raise UserError(f"{path}: not an idx file (magic bytes {data[:4].hex() or 'missing'})")
    ndim, header = data[3], 4 + 4 * data[3]
    if len(data) < header:
        raise UserError(f"{path}: truncated idx header ({len(data)} bytes, {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[data[2]]
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise UserError(f"{path}: {len(data)} bytes, but its header (shape {dims}) says {expected}")
    return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _missing(data_dir: str | Path, path: Path, what: str, also: str = "") -> UserError:
    """The error for a file missing under data.data_dir, saying the two ways out."""
    return UserError(f"data.data_dir={data_dir}: no {path.relative_to(data_dir)} in it{also}; place the {what} files "
                     "there or set data.download=true (needs torchvision)")


def download(dataset: str, data_dir: Path) -> None:
    """Fetch a dataset with torchvision, which writes exactly the layouts the readers here expect."""
    try:
        from torchvision import datasets as tv
    except ImportError:
        raise UserError(f"data.download=true needs torchvision: `pip install torchvision` (or the [vision] extra), "
                        f"or place the {dataset} files under {data_dir}") from None
    try:
        getattr(tv, dataset)(str(data_dir), train=True, download=True)  # fetches the test files too
    except (OSError, RuntimeError) as err:  # no network, a mirror down, a bad checksum
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"data.download=true: could not download {dataset} into {data_dir}: {first_line}") from None


def load_mnist(data_dir: str | Path, folder: str = "MNIST", download_missing: bool = False,
               system_dir: str | None = None) -> Arrays:
    """MNIST or Fashion-MNIST (`folder` = torchvision's class name) as uint8 (N, 1, 28, 28) images: 60k train, 10k
    test. The four idx files (each plain or .gz) are read from the first folder that holds them all:
    `<data_dir>/<folder>/raw/` (torchvision's layout), `<data_dir>` itself (a flat folder), then `system_dir` (where a
    system package put them, e.g. Debian's dataset-fashion-mnist)."""
    raw = Path(data_dir) / folder / "raw"

    def files_in(where: Path) -> dict[str, Path] | None:
        found = {key: next((p for p in (where / n, where / f"{n}.gz") if p.is_file()), None)
                 for key, n in MNIST_FILES.items()}
        return found if all(found.values()) else None

    if download_missing and not (files_in(raw) or files_in(Path(data_dir))):
        download(folder, Path(data_dir))
    places = [raw, Path(data_dir), *([Path(system_dir)] if system_dir else [])]
    files = next((found for where in places if (found := files_in(where))), None)
    if files is None:
        also = f" (nor flat in it{f', nor in {system_dir}' if system_dir else ''})"
        raise _missing(data_dir, raw / MNIST_FILES["x_train"],
                       f"{folder} idx ({', '.join(MNIST_FILES.values())}, or .gz)", also)
    arrays = {}
    for key, path in files.items():
        a = read_idx(path)
        if a.ndim != (3 if key.startswith("x") else 1):
            expected = "images (N, H, W)" if key.startswith("x") else "labels (N,)"
            raise UserError(f"{path}: shape {a.shape}; expected {expected}")
        arrays[key] = a[:, None] if key.startswith("x") else a.astype(np.int64)  # images get a channel axis
    for split in ("train", "test"):
        if len(arrays[f"x_{split}"]) != len(arrays[f"y_{split}"]):
            n_x, n_y = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
            raise UserError(f"{files[f'x_{split}'].parent}: {n_x} {split} images but {n_y} labels")
    return arrays


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR-10 batch: uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # the official batches are Python 2 pickles
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError) as err:
        raise UserError(f"{path}: not a CIFAR-10 python batch ({type(err).__name__}: {err})") from None
    if data is None or labels is None:
        raise UserError(f"{path}: not a CIFAR-10 python batch (no b'data' or b'labels' entry)")
    data, labels = np.asarray(data), np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise UserError(f"{path}: data {data.dtype} {data.shape} and labels {labels.shape}; expected uint8 "
                        "(N, 3072) and (N,)")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)  # rows are 1024 red, 1024 green, 1024 blue


def load_cifar10(data_dir: str | Path, download_missing: bool = False) -> Arrays:
    """CIFAR-10 from torchvision's `<data_dir>/cifar-10-batches-py/`: uint8 (N, 3, 32, 32), 50k train, 10k test."""
    folder = Path(data_dir) / CIFAR10_DIR
    if download_missing and not all((folder / n).is_file() for n in CIFAR10_FILES):
        download("CIFAR10", Path(data_dir))
    for name in CIFAR10_FILES:
        if not (folder / name).is_file():
            raise _missing(data_dir, folder / name, "CIFAR-10 python batch (data_batch_1..5, test_batch)")
    train = [_cifar_batch(folder / n) for n in CIFAR10_FILES[:-1]]
    x_test, y_test = _cifar_batch(folder / "test_batch")
    return {"x_train": np.concatenate([x for x, _ in train]), "y_train": np.concatenate([y for _, y in train]),
            "x_test": x_test, "y_test": y_test}


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Arrays:
    """scikit-learn's 8x8 digits (1797 images, values 0..16, ships offline) as float32 (N, 1, 8, 8), with a fixed
    test split: a seeded permutation's first `test_fraction`."""
    from sklearn.datasets import load_digits as sklearn_digits  # imported here: only this reader needs it

    digits = sklearn_digits()
    x, y = digits.images.astype(np.float32)[:, None], digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = round(len(y) * test_fraction)
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


def load_features(path: str | Path | None, unlabelled: bool = True) -> Arrays:
    """User arrays (e.g. TIMIT frames): an .npz, or a folder of .npy files, holding x_train, y_train, x_test,
    y_test and optionally x_val, y_val, x_unlabelled (read only if `unlabelled`). A folder's files, and an .npz's
    uncompressed members of 256 MiB or more (mapped.map_npz), are memory-mapped; the rest is read into memory."""
    if path is None:
        raise UserError("data.path is not set: give an .npz file or a folder of .npy files holding "
                        "x_train, y_train, x_test, y_test")
    path = Path(path)
    names = REQUIRED + OPTIONAL if unlabelled else REQUIRED + OPTIONAL[:2]
    try:
        if path.is_dir():
            # memory maps in the stored dtype: a paper-scale x_unlabelled (7.4 GB) is read a batch at a time, never
            # whole; copy-on-write ("c"), so torch.from_numpy gets a writable array and the file is never changed
            arrays = {n: np.load(path / f"{n}.npy", mmap_mode="c", allow_pickle=False)
                      for n in names if (path / f"{n}.npy").is_file()}
        elif zipfile.is_zipfile(path):
            arrays = map_npz(path, names)
        elif path.is_file():
            np.load(path, mmap_mode="r", allow_pickle=False)  # raises for what is not an .npy either
            raise UserError(f"data.path={path}: holds one array; give an .npz of named arrays or a folder")
        else:
            raise UserError(f"data.path={path}: no such file or folder; give an .npz file or a folder of .npy files")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # a corrupt file, or an object array
        raise UserError(f"data.path={path}: cannot read it ({type(err).__name__}: {err})") from None
    for name in REQUIRED:
        if name not in arrays:
            raise UserError(f"data.path={path}: no array {name} (needs x_train, y_train, x_test, y_test; "
                            "optional x_val, y_val, x_unlabelled)")
    return validate(arrays, str(path))


def validate(arrays: Arrays, origin: str) -> Arrays:
    """Check the arrays' shapes agree (one line naming `origin` and the array if not); labels become int64."""
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise UserError(f"{origin}: has {'x_val' if 'x_val' in arrays else 'y_val'} without its pair")
    if arrays["x_train"].ndim < 2:
        raise UserError(f"{origin}: x_train has shape {arrays['x_train'].shape}; expected (N, ...) with one row per "
                        "sample")
    sample = arrays["x_train"].shape[1:]
    out = {}
    for name, a in arrays.items():
        if not len(a) and name != "x_unlabelled":
            raise UserError(f"{origin}: {name} has no rows; every split needs at least one sample")
        if name.startswith("x_"):
            if a.ndim < 2 or a.shape[1:] != sample or not np.issubdtype(a.dtype, np.number):
                raise UserError(f"{origin}: {name} is {a.dtype} {a.shape}; expected numbers shaped (N, *{sample}) "
                                "like x_train")
            bad = first_non_finite(a)
            if bad is not None:
                raise UserError(f"{origin}: {name} row {bad} holds a NaN or infinity; inputs must be finite numbers")
            out[name] = a
            continue
        x = arrays[f"x{name[1:]}"]
        if a.shape != (len(x),):
            raise UserError(f"{origin}: {name} has shape {a.shape}; expected ({len(x)},), one label per row of "
                            f"x{name[1:]}")
        if not np.issubdtype(a.dtype, np.number):
            raise UserError(f"{origin}: {name} is {a.dtype}; it must hold class indices 0, 1, 2, ...")
        bad = np.flatnonzero(~np.isfinite(a) | (a < 0) | (a != np.round(a)))
        if bad.size:
            raise UserError(f"{origin}: {name} row {bad[0]} is {a[bad[0]]}; labels must be class indices 0, 1, 2, ...")
        out[name] = a.astype(np.int64)
    return out


def first_non_finite(a: np.ndarray, rows: int | None = None) -> int | None:
    """The first row of `a` holding a NaN or infinity, or None; read in blocks of rows, so a memory-mapped file
    of millions of rows is checked without a copy of it."""
    if not np.issubdtype(a.dtype, np.floating):
        return None  # integers (uint8 pixels) are always finite
    rows = rows or block_rows(a)
    for start, block in zip(range(0, len(a), rows), blocks(a, rows), strict=True):
        finite = np.isfinite(block.reshape(len(block), -1)).all(1)
        if not finite.all():
            return start + int(np.argmin(finite))
    return None


def image_files(folder: str | Path) -> list[Path]:
    """Every PNG/JPEG file under `folder`, sorted by path (the pool's fixed order)."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"data.pool_dir={folder}: no such folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"data.pool_dir={folder}: no .png, .jpg or .jpeg images in it")
    return files


def read_image_folder(files: list[Path], shape: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
    """Images as uint8 (N, C, H, W), greyscale or RGB as `shape` says, into `out` if given (a memory map: a
    paper-scale pool is GBs); each must be the dataset's H x W."""
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise UserError(f"data.pool_dir: an image pool needs 1- or 3-channel image data; inputs here are {shape}")
    from PIL import Image, UnidentifiedImageError  # imported here: only image pools need it

    channels, height, width = shape
    out = np.empty((len(files), channels, height, width), np.uint8) if out is None else out
    for i, path in enumerate(files):
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
        except (OSError, UnidentifiedImageError) as err:
            raise UserError(f"{path}: cannot read the image ({err})") from None
        if pixels.shape[:2] != (height, width):
            raise UserError(f"{path}: {pixels.shape[1]}x{pixels.shape[0]} pixels; the dataset's images are "
                            f"{width}x{height}")
        out[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return out
