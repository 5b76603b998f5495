"""MNIST-1D generation, splits, standardisation, the transfer set, caches and the batch loader."""

from pathlib import Path

import numpy as np
import pytest
import torch

from shallowmimic import cache
from shallowmimic.data import InMemoryLoader, MNIST1DDataModule, generate_mnist1d
from shallowmimic.data.transfer import far_from


def small_dm(tmp_path: Path, **kw) -> MNIST1DDataModule:
    args = dict(num_samples=500, val_size=50, transfer_size=300, cache_dir=str(tmp_path / "cache"))
    return MNIST1DDataModule(**(args | kw))


def test_generator_matches_mnist1d_make_dataset() -> None:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = 200
    ref = make_dataset(args)
    x, y = generate_mnist1d(200, 42)
    x = x.astype(np.float64)
    x = (x - x.mean()) / x.std()  # make_dataset's own scalar standardisation
    np.testing.assert_allclose(x[:160], ref["x"], atol=1e-5)
    np.testing.assert_array_equal(y[160:], ref["y_test"])


def test_splits_and_standardisation(tmp_path: Path) -> None:
    dm = small_dm(tmp_path)
    dm.setup()
    sizes = {k: len(v["y"]) for k, v in dm.splits.items()}
    assert sizes == {"train": 350, "val": 50, "test": 100}
    train = dm.splits["train"]["x"]
    assert torch.allclose(train.mean(0), torch.zeros(40), atol=1e-5)  # per dimension, from train statistics
    assert torch.allclose(train.std(0), torch.ones(40), atol=1e-4)
    assert not torch.allclose(dm.splits["test"]["x"].mean(0), torch.zeros(40), atol=1e-5)  # not its own stats


def test_transfer_set_is_new_unlabelled_data_on_the_train_scale(tmp_path: Path) -> None:
    dm = small_dm(tmp_path)
    t = dm.transfer_inputs()
    assert t.shape == (300, 40)
    nearest = torch.cdist(t, dm.splits["test"]["x"]).min(1).values
    assert nearest.min() > 0.1  # another seed: no copies of test points
    assert abs(t.mean().item()) < 0.2 and abs(t.std().item() - 1) < 0.2


def test_max_rows_keeps_the_first_rows_of_every_split_and_of_the_transfer_set(tmp_path: Path) -> None:
    full, capped = small_dm(tmp_path), small_dm(tmp_path, max_rows=40)
    full.setup()
    capped.setup()
    for split in ("train", "val", "test"):
        assert torch.equal(capped.splits[split]["y"], full.splits[split]["y"][:40]), split
    assert capped.transfer_inputs().shape == (40, 40)
    assert "max_rows" not in full.spec() and capped.spec()["max_rows"] == 40  # full-size keys stay as they were
    assert capped.split_key() != full.split_key()  # a teacher of the capped splits does not fit the full ones


def test_near_duplicates_of_test_points_are_dropped(tmp_path: Path) -> None:
    dm = small_dm(tmp_path)
    dm.setup()
    test = dm.splits["test"]["x"]
    x = torch.cat([torch.randn(5, 40) * 3, test[:3] + 1e-5])
    assert far_from(x, test, dm.dup_tol).tolist() == [True] * 5 + [False] * 3


def test_generated_sets_are_cached_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small_dm(tmp_path).transfer_inputs()
    files = sorted((tmp_path / "cache").glob("*.npz"))
    assert len(files) == 2  # the canonical set and one transfer chunk
    monkeypatch.setattr("shallowmimic.data.mnist1d.generate_mnist1d", lambda *a: pytest.fail("regenerated"))
    dm = small_dm(tmp_path)
    assert dm.transfer_inputs().shape == (300, 40)


def test_corrupt_cache_is_detected_and_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    cache.save_atomic(path, {"x": np.arange(10)})
    path.write_bytes(path.read_bytes()[:-7])  # truncated
    assert cache.load_verified(path) is None
    arrays, hit = cache.cached(path, lambda: {"x": np.arange(3)})
    assert not hit and arrays["x"].tolist() == [0, 1, 2]
    assert cache.load_verified(path)["x"].tolist() == [0, 1, 2]
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def fill(values: dict[str, list[int]]):  # noqa: ANN201
    """A cached_maps build writing these values into the arrays it allocates."""
    def build(allocate: cache.Allocate) -> None:
        for name, v in values.items():
            allocate(name, (len(v),), np.int64)[:] = v
    return build


def test_map_caches_are_memory_mapped_verified_and_rebuilt(tmp_path: Path) -> None:
    folder = tmp_path / "logits-k"
    arrays, hit = cache.cached_maps(folder, fill({"train": [1, 2, 3], "transfer": []}))
    assert not hit and isinstance(arrays["train"], np.memmap) and arrays["train"].tolist() == [1, 2, 3]
    assert arrays["transfer"].shape == (0,) and not list(tmp_path.glob(".*tmp"))  # no temporary folder left
    digest = cache.folder_digest(folder)
    again, hit = cache.cached_maps(folder, lambda allocate: pytest.fail("rebuilt a sound cache"))
    assert hit and again["train"].tolist() == [1, 2, 3] and isinstance(again["train"], np.memmap)
    again["train"][0] = 9  # copy-on-write: this process's copy only
    assert np.load(folder / "train.npy").tolist() == [1, 2, 3]

    (folder / "train.npy").write_bytes((folder / "train.npy").read_bytes()[:-8])  # truncated
    assert cache.load_maps(folder) is None
    arrays, hit = cache.cached_maps(folder, fill({"train": [1, 2, 3], "transfer": []}))
    assert not hit and arrays["train"].tolist() == [1, 2, 3] and cache.folder_digest(folder) == digest


def test_a_map_cache_that_fails_to_build_leaves_nothing(tmp_path: Path) -> None:
    def broken(allocate: cache.Allocate) -> None:
        allocate("train", (3,), np.float32)[:] = 1
        raise KeyboardInterrupt  # killed mid-build

    with pytest.raises(KeyboardInterrupt):
        cache.cached_maps(tmp_path / "logits-k", broken)
    assert list(tmp_path.iterdir()) == []  # neither a partial cache nor its temporary folder


def test_a_map_cache_written_meanwhile_by_another_job_is_kept(tmp_path: Path) -> None:
    folder = tmp_path / "logits-k"

    def racing(allocate: cache.Allocate) -> None:
        cache.cached_maps(folder, fill({"train": [1, 2]}))  # the other job finishes first
        allocate("train", (2,), np.int64)[:] = [7, 7]  # (the same in truth: told apart here to see whose is kept)

    arrays, hit = cache.cached_maps(folder, racing)
    assert not hit and arrays["train"].tolist() == [1, 2] and [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_loader_serves_every_sample_once_per_epoch_in_a_new_order() -> None:
    x = torch.arange(10).float()
    loader = InMemoryLoader({"x": x, "y": torch.arange(10)}, batch_size=4, shuffle=True, seed=0)
    epochs = [torch.cat([b["x"] for b in loader]) for _ in range(2)]
    assert len(loader) == 3 and [len(b["x"]) for b in loader] == [4, 4, 2]
    for seen in epochs:
        assert sorted(seen.tolist()) == list(range(10))
    assert not torch.equal(epochs[0], epochs[1])
    batch = next(iter(loader))
    assert torch.equal(batch["x"].long(), batch["y"])  # fields stay aligned


def test_eval_loader_keeps_order() -> None:
    loader = InMemoryLoader({"x": torch.arange(5)}, batch_size=2, shuffle=False)
    assert torch.cat([b["x"] for b in loader]).tolist() == [0, 1, 2, 3, 4]
