"""Paper-scale data in bounded memory: write a synthetic `data=features` folder (N x D float32 unlabelled rows, 7.4 GB
at the paper's 1M x 1845, beside a small labelled set), train a DeepMLP teacher briefly, extract its logits over
the pool and train one mimic epoch (k = 250, width 8192) through the real `train()`, then print the peak RSS.
`--set` overrides go to both runs (data.*, trainer.*).

    python -m shallowmimic.bench --scale                 # 1,000,000 x 1845, 183 classes
    python -m shallowmimic.bench --scale 200000 --scale-steps 50
    python -m shallowmimic.bench --scale --scale-images --scale-classes 10    # 1M uint8 images 3x32x32 (3.1 GB)
    python -m shallowmimic.bench --scale --scale-npz     # the same arrays from one .npz instead of a folder
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np

from shallowmimic.bench.contenders import compose_train
from shallowmimic.cache import atomic_write, release
from shallowmimic.training.pipeline import train

CHUNK_BYTES = 32 << 20  # written at a time: the writer's memory stays bounded too


def peak_rss_mb() -> tuple[float, float]:
    """Peak resident set size of this process and of its finished children, in MB (Linux reports KiB)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def draw(rng: np.random.Generator, rows: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Random inputs: standard normal float32 features, or uint8 pixels."""
    if dtype == "uint8":
        return rng.integers(0, 256, (rows, *shape), dtype=np.uint8)
    return rng.standard_normal((rows, *shape), dtype=np.float32)


def write_features(folder: Path, n: int, shape: tuple[int, ...], classes: int, labelled: int, dtype: str = "float32",
                   seed: int = 0) -> None:
    """x_unlabelled (n, *shape) written a block at a time through a memory map (released as it goes), and
    x_train / x_val / x_test of `labelled`, labelled // 5, labelled // 5 rows labelled by a fixed random linear map
    (learnable, so the teacher's logits mean something). Kept if already written (the `done` marker)."""
    done = folder / "done"
    if done.is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((int(np.prod(shape)), classes)).astype(np.float32)
    for split, rows in (("train", labelled), ("val", max(1, labelled // 5)), ("test", max(1, labelled // 5))):
        x = draw(rng, rows, shape, dtype)
        np.save(folder / f"x_{split}.npy", x)
        np.save(folder / f"y_{split}.npy", (x.reshape(rows, -1).astype(np.float32) @ w).argmax(1).astype(np.int64))
    out = np.lib.format.open_memmap(folder / "x_unlabelled.npy", "w+", np.dtype(dtype), (n, *shape))
    chunk = max(1, CHUNK_BYTES // out[:1].nbytes)
    for start in range(0, n, chunk):
        out[start : start + chunk] = draw(rng, min(chunk, n - start), shape, dtype)
        out.flush()
        release(out)  # written pages count in RSS until dropped from the map
    del out
    done.write_text(f"{n} {shape} {dtype} {classes} {labelled} {seed}\n")


def pack_npz(folder: Path) -> Path:
    """The folder's .npy files as one uncompressed .npz beside it (what np.savez writes: a zip storing each .npy as it
    is), copied file to file so that no array passes through this process's memory; kept once written."""
    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for npy in sorted(folder.glob("*.npy")):
                with open(npy, "rb") as src, zf.open(npy.name, "w", force_zip64=True) as out:
                    shutil.copyfileobj(src, out, CHUNK_BYTES)

    path = folder.with_suffix(".npz")
    if not path.is_file():
        atomic_write(path, write)
    return path


def overrides(args: argparse.Namespace, folder: Path) -> list[str]:
    """The train config's keys shared by teacher and mimic: this folder as `data=features` with its pool."""
    name = "scale_images" if args.scale_images else "scale"  # an experiment each: the mimic takes its newest teacher
    common = [f"data.path={folder}", f"data.name={name}", "data.transfer=pool", "trainer.max_epochs=1",
              "trainer.enable_progress_bar=false", "reuse=false", f"seed={args.scale_seed}"]
    common += [f"logger.tracking_uri={args.tracking_uri}"] if args.tracking_uri else []
    return common + ([f"paths.outputs={args.outputs}"] if args.outputs else [])


def run_scale(args: argparse.Namespace) -> dict[str, float]:
    """Write (or reuse) the data, fit the teacher and one mimic epoch; print and return the times and peak RSS."""
    shape, dtype = ((3, 32, 32), "uint8") if args.scale_images else ((args.scale_dim,), "float32")
    root = Path(args.outputs or "outputs") / "scale"
    folder = root / (f"{dtype}-n{args.scale}-{'x'.join(map(str, shape))}-c{args.scale_classes}-l{args.scale_labelled}")
    times, started = {}, time.perf_counter()
    write_features(folder, args.scale, shape, args.scale_classes, args.scale_labelled, dtype)
    source = pack_npz(folder) if args.scale_npz else folder
    times["write_s"], rss_written = time.perf_counter() - started, peak_rss_mb()[0]
    common = overrides(args, source)
    started = time.perf_counter()
    train(compose_train(["experiment=timit/teacher", f"model.hidden=[{args.scale_teacher}]", *common, *args.set]))
    times["teacher_s"], started = time.perf_counter() - started, time.perf_counter()
    steps = [f"+trainer.limit_train_batches={args.scale_steps}"] if args.scale_steps else []
    train(compose_train(["experiment=timit/mimic", f"model.width={args.scale_width}", f"model.rank={args.scale_rank}",
                         *steps, *common, *args.set]))
    times["mimic_s"] = time.perf_counter() - started
    self_mb, children_mb = peak_rss_mb()
    gb = (folder / "x_unlabelled.npy").stat().st_size / 1e9
    print(f"\nscale bench: x_unlabelled {args.scale:,} x {'x'.join(map(str, shape))} {dtype} ({gb:.1f} GB on disk) in "
          f"{source}; "
          f"teacher hidden [{args.scale_teacher}], mimic k={args.scale_rank} w={args.scale_width}, "
          f"{'one full epoch' if not args.scale_steps else f'{args.scale_steps} loader items'}")
    print(f"  times: write {times['write_s']:.0f} s, teacher {times['teacher_s']:.0f} s, mimic (logits included) "
          f"{times['mimic_s']:.0f} s; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"  peak RSS: {self_mb:,.0f} MB (this process; {rss_written:,.0f} MB after writing the data), "
          f"children {children_mb:,.0f} MB")
    return times | {"peak_rss_mb": self_mb, "peak_rss_children_mb": children_mb, "peak_rss_written_mb": rss_written}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The --scale options."""
    p.add_argument("--scale", type=int, nargs="?", const=1_000_000, default=None, metavar="N",
                   help="the paper-scale memory bench instead: N unlabelled rows (default 1,000,000); bench/scale.py")
    p.add_argument("--scale-dim", type=int, default=1845, help="--scale: input dimension (TIMIT's 1845)")
    p.add_argument("--scale-npz", action="store_true",
                   help="--scale: read the data from one uncompressed .npz (its large members mapped), not a folder")
    p.add_argument("--scale-images", action="store_true",
                   help="--scale: a uint8 image pool of 3x32x32 (CIFAR-like) instead of float32 features")
    p.add_argument("--scale-classes", type=int, default=183, help="--scale: classes (TIMIT's 183)")
    p.add_argument("--scale-labelled", type=int, default=10_000, help="--scale: labelled training rows")
    p.add_argument("--scale-teacher", default="512,512", help="--scale: the DeepMLP teacher's hidden widths")
    p.add_argument("--scale-width", type=int, default=8192, help="--scale: the mimic's hidden units")
    p.add_argument("--scale-rank", type=int, default=250, help="--scale: the mimic's bottleneck k")
    p.add_argument("--scale-steps", type=int, default=None,
                   help="--scale: cap the mimic's epoch at this many loader items (trainer.limit_train_batches)")
    p.add_argument("--scale-seed", type=int, default=0, help="--scale: the runs' seed")
