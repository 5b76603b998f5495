"""Paper-scale data in bounded memory: a folder of .npy files is memory-mapped, its x_unlabelled standardised a
batch at a time, and the mimic's train + transfer rows served by index, with the same batches and targets as the
in-memory path (a small .npz of the same arrays)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from shallowmimic.bench import main
from shallowmimic.cache import digest_arrays
from shallowmimic.data import FeaturesDataModule
from shallowmimic.data.mapped import Concat, Rows, Standardised
from shallowmimic.training.teachers import _logits, teacher_logits

from .conftest import runs_of

RNG = np.random.default_rng(0)


def write(tmp_path: Path, n_unlabelled: int = 70, dim: int = 6) -> tuple[Path, Path]:
    """The same arrays as an .npz (small: read into memory) and as a folder of .npy files (memory-mapped)."""
    arrays = {"x_train": RNG.normal(3, 2, (60, dim)).astype(np.float32), "y_train": np.arange(60) % 4,
              "x_test": RNG.normal(3, 2, (20, dim)).astype(np.float32), "y_test": np.arange(20) % 4,
              "x_unlabelled": RNG.normal(3, 2, (n_unlabelled, dim)).astype(np.float32)}
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, a in arrays.items():
        np.save(folder / f"{name}.npy", a)
    np.savez(tmp_path / "arrays.npz", **arrays)
    return tmp_path / "arrays.npz", folder


def module(path: Path, tmp_path: Path, **kwargs: object) -> FeaturesDataModule:
    dm = FeaturesDataModule(path=str(path), name="f", val_size=10, transfer="pool", batch_size=16,
                            cache_dir=str(tmp_path / "cache"), **kwargs)
    dm.setup()
    return dm


def attach(dm: FeaturesDataModule, net: torch.nn.Module) -> None:
    dm.attach_logits({k: torch.from_numpy(_logits(net, x, batch_size=32)) for k, x in dm.teacher_inputs().items()})


def test_a_mapped_pool_gives_the_same_inputs_targets_and_batches_as_in_memory(tmp_path: Path) -> None:
    npz, folder = write(tmp_path)
    plain, mapped = module(npz, tmp_path), module(folder, tmp_path)
    assert plain.spec() == mapped.spec()  # the same content digest: the same logits cache key
    assert isinstance(mapped.transfer_inputs(), Standardised) and isinstance(mapped.transfer_inputs().raw, np.memmap)
    assert torch.allclose(torch.cat(list(mapped.transfer_inputs().split(32))), plain.transfer_inputs())
    net = torch.nn.Linear(6, 4)
    attach(plain, net)
    mapped.attach_logits(teacher_logits(net, "w", mapped, tmp_path / "logits")[0])  # the cache's memory maps
    for key in ("x", "z"):  # never one concatenated copy of train + transfer
        assert isinstance(mapped.splits["mimic"][key], Concat)
    transfer_z = mapped.splits["mimic"]["z"].parts[1]
    assert isinstance(transfer_z, Rows) and isinstance(transfer_z.raw, np.memmap)
    assert torch.equal(mapped.splits["mimic"]["y"], plain.splits["mimic"]["y"])
    for _ in range(2):  # two epochs: the same permutation of the same rows
        pairs = list(zip(plain.train_dataloader(), mapped.train_dataloader(), strict=True))
        assert len(pairs) == -(-(50 + 70) // 16)
        for a, b in pairs:
            assert a.keys() == b.keys()
            assert torch.equal(a["y"], b["y"]) and torch.allclose(a["z"], b["z"]) and torch.allclose(a["x"], b["x"])
    assert mapped.transfer_inputs()._file is not None  # scattered rows were read with pread, not through the map
    assert transfer_z._file is not None  # their logits too


def test_mapped_batches_come_in_chunks_of_steps(tmp_path: Path) -> None:
    _, folder = write(tmp_path)
    dm = module(folder, tmp_path)
    dm.steps_per_batch = 3
    attach(dm, torch.nn.Linear(6, 4))
    items = list(dm.train_dataloader())
    assert [len(item) for item in items] == [3, 3, 2]
    assert sum(len(b["x"]) for item in items for b in item) == 50 + 70


def test_near_duplicates_are_dropped_from_a_mapped_pool_as_in_memory(tmp_path: Path) -> None:
    npz, folder = write(tmp_path)
    for path in (npz, folder):  # two unlabelled rows copy test rows
        x = np.load(path / "x_unlabelled.npy") if path.is_dir() else dict(np.load(path))["x_unlabelled"]
        x[[3, 40]] = np.load(folder / "x_test.npy")[[0, 5]]
        if path.is_dir():
            np.save(path / "x_unlabelled.npy", x)
        else:
            np.savez(path, **(dict(np.load(path)) | {"x_unlabelled": x}))
    plain, mapped = module(npz, tmp_path, dup_tol=1e-3), module(folder, tmp_path, dup_tol=1e-3)
    assert plain.n_duplicates_dropped == mapped.n_duplicates_dropped == 0  # counted when the transfer set is built
    kept = mapped.transfer_inputs()
    assert mapped.n_duplicates_dropped == 2 and len(kept) == 68
    assert torch.allclose(torch.cat(list(kept.split(30))), plain.transfer_inputs())


def test_a_mapped_array_hashes_as_in_memory_and_stays_a_map(tmp_path: Path) -> None:
    a = RNG.normal(size=(1000, 7)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="c")
    assert digest_arrays({"a": mapped}) == digest_arrays({"a": a})
    _, folder = write(tmp_path)
    dm = module(folder, tmp_path)
    assert isinstance(dm.unlabelled, np.memmap)


def test_the_scale_bench_runs_at_a_tiny_size(store_uri: str, outputs: Path, client: MlflowClient,
                                             capsys: pytest.CaptureFixture) -> None:
    tiny = ["--scale", "2000", "--scale-dim", "20", "--scale-classes", "5", "--scale-labelled", "300",
            "--scale-teacher", "16", "--tracking-uri", store_uri, "--outputs", str(outputs), "--scale-width", "32",
            "--scale-rank", "4", "--set", "data.batch_size=64", "data.eval_batch_size=256"]
    rows = main([*tiny, "--scale-steps", "2"])
    assert rows[0][1]["peak_rss_mb"] > 0
    assert "peak RSS" in capsys.readouterr().out
    folder = next((outputs / "scale").iterdir())
    assert np.load(folder / "x_unlabelled.npy", mmap_mode="r").shape == (2000, 20)
    main(["--scale", "300", "--scale-images", "--scale-classes", "3", "--scale-labelled", "60", "--scale-teacher", "8",
          "--scale-steps", "1", "--scale-width", "16", "--scale-rank", "2", "--tracking-uri", store_uri, "--outputs",
          str(outputs), "--set", "data.batch_size=32"])
    pool = np.load(outputs / "scale" / "uint8-n300-3x32x32-c3-l60" / "x_unlabelled.npy", mmap_mode="r")
    assert pool.dtype == np.uint8 and pool.shape == (300, 3, 32, 32)
    (mimic,) = [r for r in runs_of(client, "scale_images") if r.data.tags["role"] == "mimic"]
    assert mimic.info.status == "FINISHED" and mimic.data.params["data.in_shape"] == "3x32x32"
    roles = sorted(r.data.tags["role"] for r in runs_of(client, "scale"))
    assert roles == ["mimic", "teacher"]
    (mimic,) = [r for r in runs_of(client, "scale") if r.data.tags["role"] == "mimic"]
    assert mimic.info.status == "FINISHED" and mimic.data.params["data.n_transfer"] == "2000"
    main([*tiny, "--scale-steps", "1", "--scale-npz"])  # the same data from one .npz (small here: read, not mapped)
    with np.load(folder.with_suffix(".npz")) as packed:  # the folder's .npy files, as np.savez would store them
        assert sorted(packed.files) == sorted(p.stem for p in folder.glob("*.npy"))
        assert all(np.array_equal(packed[p.stem], np.load(p)) for p in folder.glob("*.npy"))
    (newest, _) = [r for r in runs_of(client, "scale") if r.data.tags["role"] == "mimic"]
    assert newest.info.status == "FINISHED" and newest.data.params["data.path"] == str(folder.with_suffix(".npz"))
    assert newest.data.params["data.split_sha256"] == mimic.data.params["data.split_sha256"]  # the same content
