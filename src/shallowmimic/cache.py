"""Content-addressed caches: atomic writes, sha256 verified on every read, rebuilt when corrupt. Small arrays go in
one .npz read into memory (`cached`); large ones (teacher logits, image pools: paper scale is GBs) in a folder of
.npy files, written and read as memory maps (`cached_maps`)."""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
Allocate = Callable[[str, tuple[int, ...], np.dtype | str], np.ndarray]  # (name, shape, dtype) -> array to fill
BLOCK_BYTES = 32 << 20  # a block read (and released) at a time: its temporaries (isfinite's mask) stay small too
SUMS = "sha256sums.txt"  # a map folder's checksums: "<sha256>  <name>.npy" per array, as sha256sum writes them


def release(a: np.ndarray) -> None:
    """Drop a memory map's pages from this process (the page cache keeps them): pages read through a map count in
    the process's RSS until unmapped, so one pass over a 7 GB file would otherwise leave 7 GB resident."""
    mm = getattr(a, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_DONTNEED)


def block_rows(a: np.ndarray) -> int:
    """Rows in a block of about BLOCK_BYTES."""
    return max(1, BLOCK_BYTES // max(1, a[:1].nbytes))


def blocks(a: np.ndarray, rows: int | None = None) -> Iterator[np.ndarray]:
    """`a` in blocks of `rows` rows (default: about BLOCK_BYTES; views, no copy); a memory map's pages are released
    after each block."""
    rows = rows or block_rows(a)
    for start in range(0, len(a), rows):
        yield a[start : start + rows]
        if isinstance(a, np.memmap):
            release(a)


def sha256(chunks: Iterable[bytes]) -> str:
    """Hex sha256 of a stream of bytes."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return sha256(iter(lambda: f.read(1 << 20), b""))


def digest_arrays(arrays: Arrays) -> str:
    """sha256 of named arrays' names, dtypes, shapes and bytes: the identity of a data set's (or a net's) content."""

    def chunks() -> Iterator[bytes]:
        for name in sorted(arrays):
            a = arrays[name]
            yield f"{name} {a.dtype.str} {a.shape}".encode()
            # a memory map is hashed a block of rows at a time, its pages released after each (blocks above)
            for block in blocks(a) if isinstance(a, np.memmap) and a.ndim else [a]:
                yield memoryview(np.ascontiguousarray(block).reshape(-1).view(np.uint8))

    return sha256(chunks())


def spec_key(spec: dict) -> str:
    """A short stable hash of a JSON-able spec (the arguments that determine a cached object)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_verified(path: Path) -> Arrays | None:
    """The arrays in `path` if its checksum sidecar matches, else None (missing, truncated or corrupt)."""
    sidecar = path.with_suffix(path.suffix + ".sha256")
    if not path.exists():
        return None
    if not sidecar.exists() or sidecar.read_text().strip() != sha256_file(path):
        log.warning("cache file %s fails its checksum: rebuilding it", path)
        return None
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def save_atomic(path: Path, arrays: Arrays) -> str:
    """Write arrays to `path` atomically with a sha256 sidecar; return the checksum."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)
    digest = sha256_file(path)
    atomic_write(path.with_suffix(path.suffix + ".sha256"), lambda tmp: tmp.write_text(digest + "\n"))
    return digest


def cached(path: Path, build: Callable[[], Arrays]) -> tuple[Arrays, bool]:
    """Arrays from the verified cache at `path`, or built, saved and returned; the flag says it was a hit."""
    arrays = load_verified(path)
    if arrays is not None:
        return arrays, True
    arrays = build()
    save_atomic(path, arrays)
    return arrays, False


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def load_maps(folder: Path) -> Arrays | None:
    """The arrays of the map folder, memory-mapped copy-on-write (a write changes this process's copy, never the
    file), if every file matches its checksum; else None (missing, partial or corrupt)."""
    sums = folder / SUMS
    if not sums.is_file():
        return None
    expected = {name: sha for sha, name in (line.split() for line in sums.read_text().splitlines() if line.strip())}
    actual = {p.name: sha256_file(p) for p in sorted(folder.glob("*.npy"))}
    if actual != expected:
        log.warning("cache folder %s fails its checksums: rebuilding it", folder)
        return None
    return _open_maps(folder)


def _open_maps(folder: Path) -> Arrays:
    return {p.stem: np.load(p, mmap_mode="c", allow_pickle=False) for p in sorted(folder.glob("*.npy"))}


def folder_digest(folder: Path) -> str:
    """sha256 of a map folder's checksum file: one hex string naming all its arrays' bytes."""
    return sha256_file(folder / SUMS)


def cached_maps(folder: Path, build: Callable[[Allocate], None]) -> tuple[Arrays, bool]:
    """Arrays memory-mapped from the verified map folder, or built there first; the flag says it was a hit.

    `build(allocate)` fills arrays it asks for with `allocate(name, shape, dtype)`: each a memory map of a new .npy
    in a temporary folder beside `folder`, so nothing is held whole in memory. Once built, the files are flushed,
    checksummed and the folder renamed into place: readers never see a partial one. A job that loses the race to
    another writing the same folder keeps the other's (the same arrays: the folder's name is their key)."""
    arrays = load_maps(folder)
    if arrays is not None:
        return arrays, True
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        build(lambda name, shape, dtype: np.lib.format.open_memmap(tmp / f"{name}.npy", "w+", np.dtype(dtype),
                                                                   tuple(shape)))
        lines = []
        for path in sorted(tmp.glob("*.npy")):
            _fsync(path)
            lines.append(f"{sha256_file(path)}  {path.name}\n")
        (tmp / SUMS).write_text("".join(lines))
        _fsync(tmp / SUMS)
        if load_maps(folder) is None:  # none, or a corrupt one; else another job wrote it meanwhile: keep that
            shutil.rmtree(folder, ignore_errors=True)
            try:
                os.rename(tmp, folder)
                return _open_maps(folder), False  # just checksummed: not read a second time
            except OSError:  # another job renamed its folder into place first
                pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    arrays = load_maps(folder)  # the other job's
    if arrays is None:
        raise RuntimeError(f"cache folder {folder} fails its checksums right after it was written; delete it")
    return arrays, False
