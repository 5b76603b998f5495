"""Arrays too large to hold in memory (a paper-scale transfer set: 1M x 1845 floats, 7.4 GB; its logits: 0.73 GB):
kept as a memory map of the file in its stored dtype, read a batch of rows at a time (Rows) and standardised as they
are read (Standardised); and sources of rows laid end to end (train + transfer) served by index without one
concatenated copy (Concat)."""

from __future__ import annotations

import copy
import math
import mmap
import os
import struct
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

from shallowmimic.cache import release

MAP_BYTES = 256 << 20  # an .npz member at least this large is memory-mapped; smaller ones train faster in memory
RELEASE_BYTES = 64 << 20  # drop a map's resident pages after about this much has been read through it


def map_npz(path: Path, names: Sequence[str], min_bytes: int = MAP_BYTES) -> dict[str, np.ndarray]:
    """The arrays `names` found in the .npz at `path`. A member of at least `min_bytes` stored uncompressed
    (np.savez) is a copy-on-write memory map into the zip, as a folder's .npy would be; a smaller one, or a compressed
    one (np.savez_compressed), is read into memory, where it trains faster. Raises ValueError for an object array (it
    would need pickle) or a malformed member. The file must not be rewritten while the arrays are in use."""
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as fp:
        members = {i.filename.removesuffix(".npy"): i for i in zf.infolist()}
        for name in (n for n in names if n in members):
            info = members[name]
            if info.compress_type != zipfile.ZIP_STORED or info.file_size < min_bytes:
                with zf.open(info) as member:
                    out[name] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            shape, fortran, dtype = _npy_header(fp, info)
            out[name] = np.empty(shape, dtype) if math.prod(shape) == 0 else np.memmap(
                path, dtype, mode="c", offset=fp.tell(), shape=shape, order="F" if fortran else "C")
    return out


def _npy_header(fp: BinaryIO, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype of the uncompressed .npy member `info` of the zip open as `fp`, leaving `fp`
    at the member's first data byte."""
    fp.seek(info.header_offset)  # the data follow the local header, whose extra field may differ from the directory's
    header = fp.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise ValueError(f"member {info.filename}: no local file header")
    start = info.header_offset + 30 + sum(struct.unpack("<HH", header[26:30]))  # + name and extra field
    fp.seek(start)
    version = np.lib.format.read_magic(fp)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f"member {info.filename}: .npy format {version} is not supported")
    shape, fortran, dtype = read(fp)
    if dtype.hasobject:
        raise ValueError(f"member {info.filename}: an object array needs pickle, which is not allowed")
    if fp.tell() - start + math.prod(shape) * dtype.itemsize != info.file_size:  # else a map reads past the member
        raise ValueError(f"member {info.filename}: {info.file_size} bytes do not hold a {dtype} array of {shape}")
    return shape, fortran, dtype


def as_tensor(a: np.ndarray) -> Tensor:
    """A tensor over `a`'s memory, or over a copy where `a` is misaligned for its dtype (an .npz member is mapped at
    whatever offset the zip gives it): torch's kernels assume aligned storage."""
    return torch.from_numpy(np.require(a, requirements="A"))


class Rows:
    """Rows of a large array (a memory map, in its stored dtype) served by index, a batch at a time: `self[idx]` reads
    rows idx (in file order, for sequential reads) and casts them to float32 on the device they are moved to."""

    def __init__(self, raw: np.ndarray, index: np.ndarray | None = None, device: torch.device | str = "cpu") -> None:
        self.raw, self.index, self.device = raw, index, torch.device(device)
        self._read = 0  # bytes read through the map since its pages were last released
        self._file = None  # the mapped file, opened for pread on the first scattered read

    def __len__(self) -> int:
        return len(self.raw) if self.index is None else len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.raw.shape[1:])

    def numpy(self) -> np.ndarray:
        """The raw rows (MLflow's dataset profile reads the shape and dtype only)."""
        return self.raw if self.index is None else self.raw[self.index]

    def to(self, device: torch.device | str) -> Rows:
        """Serve rows on `device` from now on (they are read on the CPU, then moved there)."""
        self.device = torch.device(device)
        return self

    def subset(self, keep: np.ndarray) -> Rows:
        """The rows where the mask `keep` is true."""
        rows = np.flatnonzero(keep)
        out = copy.copy(self)
        out.index, out._read = rows if self.index is None else self.index[rows], 0  # the open file is shared
        return out

    def _convert(self, rows: np.ndarray) -> Tensor:
        self._read += rows.nbytes
        if self._read > RELEASE_BYTES:
            release(self.raw)
            self._read = 0
        return as_tensor(rows).to(self.device, non_blocking=True).float()

    def __getitem__(self, idx: Tensor) -> Tensor:
        """Rows idx (a 1-d index tensor), in the order asked."""
        i = idx.cpu().numpy()
        if self.index is not None:
            i = self.index[i]
        order = np.argsort(i, kind="stable")
        rows = np.empty((len(i), *self.raw.shape[1:]), self.raw.dtype)
        rows[order] = self._gather(i[order])  # read in file order, put back in the order asked
        return self._convert(rows)

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """Rows (sorted) of the raw array. A whole mapped .npy (a file, or an .npz member) is read with pread, not
        through the map: a fault on one scattered row maps a large block of the file around it (about 1.4 MB a row
        here, with large folios), so 256 random rows left some 370 MB resident; pread copies the row and maps
        nothing."""
        if not (isinstance(self.raw, np.memmap) and isinstance(self.raw.base, mmap.mmap) and self.raw.filename
                and self.raw.flags.c_contiguous):
            return self.raw[rows]  # in memory (or a view of a map): plain indexing
        if self._file is None:
            self._file = open(self.raw.filename, "rb")  # noqa: SIM115 (held open while the source lives)
        out = np.empty((len(rows), *self.raw.shape[1:]), self.raw.dtype)
        size, buffer = out[:1].nbytes, memoryview(out.reshape(-1).view(np.uint8))
        for k, row in enumerate(rows.tolist()):
            got = os.preadv(self._file.fileno(), [buffer[k * size : (k + 1) * size]], self.raw.offset + row * size)
            if got != size:
                raise OSError(f"{self.raw.filename}: row {row} is cut short ({got} of {size} bytes)")
        return out

    def split(self, size: int) -> Iterator[Tensor]:
        """Consecutive chunks of up to `size` rows, as served (as Tensor.split; one empty chunk if no rows)."""
        for start in range(0, max(1, len(self)), size):
            if self.index is None:
                yield self._convert(np.asarray(self.raw[start : start + size]))
            else:
                yield self[torch.from_numpy(np.arange(start, min(start + size, len(self))))]


class Standardised(Rows):
    """Raw rows served standardised: cast to float32 and standardised on the device they are moved to (a paper-scale
    transfer set is never held standardised in memory)."""

    def __init__(self, raw: np.ndarray, mean: Tensor, std: Tensor, index: np.ndarray | None = None) -> None:
        super().__init__(raw, index, mean.device)
        self.mean, self.std = mean, std

    def to(self, device: torch.device | str) -> Standardised:
        """Standardise on `device` from now on."""
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return super().to(device)

    def _convert(self, rows: np.ndarray) -> Tensor:
        return (super()._convert(rows) - self.mean) / self.std


class Concat:
    """Sources of rows (tensors, Rows) end to end, served by index: `self[idx]` gathers each row from the
    source holding it, so the mimic's train + transfer rows never exist as one concatenated copy."""

    def __init__(self, parts: Sequence[Tensor | Rows]) -> None:
        self.parts = list(parts)
        self.starts = torch.tensor(np.cumsum([0] + [len(p) for p in self.parts]))

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.parts[0].shape[1:])

    def to(self, device: torch.device | str) -> Concat:
        """The tensors moved to `device` (copies there), the Rows sources told to serve there."""
        self.parts = [p.to(device) for p in self.parts]
        return self

    def __getitem__(self, idx: Tensor) -> Tensor:
        """Rows idx (a 1-d index tensor) in the order asked."""
        idx = idx.cpu()
        which = torch.bucketize(idx, self.starts[1:], right=True)  # the part holding each row
        out: Tensor | None = None
        for p, part in enumerate(self.parts):
            mask = which == p
            if not mask.any():
                continue
            local = idx[mask] - self.starts[p]
            rows = part[local.to(part.device) if isinstance(part, Tensor) else local]
            if out is None:
                out = torch.empty((len(idx), *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
            out[mask.to(rows.device)] = rows
        if out is None:  # no rows asked
            return self.parts[0][idx[:0]]
        return out
