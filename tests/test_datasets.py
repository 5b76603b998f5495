"""Real datasets: readers over tiny files written in the real formats, the generic in-memory DataModule (splits,
standardisation, transfer sets) and one end-to-end run per data config."""

import gzip
import io
import pickle
import struct
import sys
import types
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from shallowmimic.data import ArrayDataModule, FeaturesDataModule, MNIST1DDataModule, readers
from shallowmimic.data.mapped import Rows, Standardised, as_tensor, map_npz
from shallowmimic.data.readers import load_cifar10, load_digits, load_features, load_mnist, read_idx
from shallowmimic.data.transfer import augment
from shallowmimic.errors import UserError
from shallowmimic.training.pipeline import train

from .conftest import runs_of

RNG = np.random.default_rng(0)


def write_idx(path: Path, a: np.ndarray) -> None:
    """An idx file as MNIST ships it (uint8 elements), gzipped if the name ends in .gz."""
    data = bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 120, n_test: int = 40, gz: bool = False) -> dict:
    """Tiny MNIST-format files in torchvision's layout `<root>/<folder>/raw/`; returns the arrays written."""
    arrays = {"x_train": RNG.integers(0, 256, (n_train, 28, 28)), "y_train": np.arange(n_train) % 10,
              "x_test": RNG.integers(0, 256, (n_test, 28, 28)), "y_test": np.arange(n_test) % 10}
    for key, name in readers.MNIST_FILES.items():
        write_idx(root / folder / "raw" / (name + (".gz" if gz and key.startswith("x") else "")), arrays[key])
    return arrays


def write_cifar(root: Path, per_batch: int = 24, n_test: int = 30) -> dict:
    """Tiny CIFAR-10 python batches (pickled dicts with bytes keys, as the official files hold them)."""
    folder = root / readers.CIFAR10_DIR
    folder.mkdir(parents=True)
    out = {}
    for name in readers.CIFAR10_FILES:
        n = n_test if name == "test_batch" else per_batch
        batch = {b"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(RNG.integers(0, 10, n))}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        out[name] = batch
    return out


def features(n_train: int = 90, n_test: int = 30, dim: int = 12, classes: int = 5, **extra: int) -> dict:
    """Random float features and labels by name, plus extra arrays of `extra[name]` rows."""
    arrays = {"x_train": RNG.normal(3, 2, (n_train, dim)).astype(np.float32), "y_train": np.arange(n_train) % classes,
              "x_test": RNG.normal(3, 2, (n_test, dim)).astype(np.float32), "y_test": np.arange(n_test) % classes}
    for name, n in extra.items():
        arrays[name] = (RNG.normal(3, 2, (n, dim)).astype(np.float32) if name.startswith("x")
                        else np.arange(n) % classes)
    return arrays


def images(n: int = 60, shape: tuple = (1, 8, 8)) -> dict:
    """Random uint8 images by name: a tiny image dataset."""
    return {"x_train": RNG.integers(0, 256, (n, *shape), dtype=np.uint8), "y_train": np.arange(n) % 10,
            "x_test": RNG.integers(0, 256, (20, *shape), dtype=np.uint8), "y_test": np.arange(20) % 10}


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# --- readers -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["MNIST", "FashionMNIST"])
def test_mnist_idx_files_plain_and_gzipped(tmp_path: Path, folder: str) -> None:
    written = write_mnist(tmp_path, folder, gz=True)  # images gzipped, labels plain: either is found
    arrays = load_mnist(tmp_path, folder)
    assert arrays["x_train"].shape == (120, 1, 28, 28) and arrays["x_train"].dtype == np.uint8
    assert arrays["y_test"].dtype == np.int64
    for key, a in written.items():
        np.testing.assert_array_equal(arrays[key].reshape(a.shape), a)


def test_mnist_files_are_found_flat_and_in_the_system_folder(tmp_path: Path) -> None:
    flat = write_mnist(tmp_path / "flat", "FashionMNIST")
    for path in (tmp_path / "flat" / "FashionMNIST" / "raw").iterdir():  # the four files side by side, as Debian has
        path.rename(tmp_path / "flat" / path.name)
    np.testing.assert_array_equal(load_mnist(tmp_path / "flat", "FashionMNIST")["y_train"], flat["y_train"])
    (tmp_path / "empty").mkdir()
    arrays = load_mnist(tmp_path / "empty", "FashionMNIST", system_dir=str(tmp_path / "flat"))
    np.testing.assert_array_equal(arrays["x_test"][:, 0], flat["x_test"])
    own = write_mnist(tmp_path / "own", "FashionMNIST", n_train=30)  # the user's own files come first
    assert len(load_mnist(tmp_path / "own", "FashionMNIST", system_dir=str(tmp_path / "flat"))["y_train"]) == 30
    assert len(own["y_train"]) == 30
    with pytest.raises(UserError) as err:
        load_mnist(tmp_path / "empty", "FashionMNIST", system_dir=str(tmp_path / "none"))
    assert f"(nor flat in it, nor in {tmp_path / 'none'})" in one_line(err)


def test_idx_header_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 28, 28) + bytes(100))  # too few bytes
    with pytest.raises(UserError, match="bad-idx3-ubyte: 116 bytes, but its header"):
        read_idx(path)
    path.write_bytes(b"PK\x03\x04" + bytes(20))
    with pytest.raises(UserError, match="not an idx file") as err:
        read_idx(path)
    assert str(path) in one_line(err)
    path.with_suffix(".gz").write_bytes(b"not gzip")
    with pytest.raises(UserError, match="cannot read it"):
        read_idx(path.with_suffix(".gz"))


def test_cifar10_python_batches(tmp_path: Path) -> None:
    written = write_cifar(tmp_path)
    arrays = load_cifar10(tmp_path)
    assert arrays["x_train"].shape == (120, 3, 32, 32) and arrays["x_test"].shape == (30, 3, 32, 32)
    first = written["data_batch_1"]
    np.testing.assert_array_equal(arrays["x_train"][0, 0].ravel(), first[b"data"][0, :1024])  # red plane first
    np.testing.assert_array_equal(arrays["y_train"][:24], first[b"labels"])
    (tmp_path / readers.CIFAR10_DIR / "data_batch_3").write_bytes(pickle.dumps({b"data": [1, 2]}))
    with pytest.raises(UserError, match="data_batch_3: not a CIFAR-10 python batch") as err:
        load_cifar10(tmp_path)
    one_line(err)


def test_digits_have_a_fixed_test_split() -> None:
    a, b = load_digits(), load_digits()
    assert a["x_train"].shape == (1438, 1, 8, 8) and a["x_test"].shape == (359, 1, 8, 8)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert sorted(set(a["y_test"].tolist())) == list(range(10))


def test_features_npz_and_npy_folder_read_the_same(tmp_path: Path) -> None:
    arrays = features(x_val=20, y_val=20, x_unlabelled=50)
    np.savez(tmp_path / "f.npz", **arrays)
    (tmp_path / "npy").mkdir()
    for name, a in arrays.items():
        np.save(tmp_path / "npy" / f"{name}.npy", a)
    from_npz, from_dir = load_features(tmp_path / "f.npz"), load_features(tmp_path / "npy")
    assert set(from_npz) == set(from_dir) == set(arrays)
    for name in arrays:
        np.testing.assert_array_equal(from_npz[name], from_dir[name])
    assert "x_unlabelled" not in load_features(tmp_path / "f.npz", unlabelled=False)


def test_an_npz_maps_its_large_stored_members_and_reads_the_rest(tmp_path: Path) -> None:
    arrays = features(x_unlabelled=50) | {"x_test": np.asfortranarray(features()["x_test"].astype(np.float64))}
    arrays["empty"] = arrays["x_train"][:0]  # never mapped (load_features does not read it)
    np.savez(tmp_path / "stored.npz", **arrays)
    np.savez_compressed(tmp_path / "packed.npz", **arrays)
    mapped = map_npz(tmp_path / "stored.npz", list(arrays), min_bytes=0)  # every member counts as large
    packed = map_npz(tmp_path / "packed.npz", list(arrays), min_bytes=0)  # compressed: cannot be mapped
    assert [n for n, a in mapped.items() if isinstance(a, np.memmap)] == ["x_train", "y_train", "x_test", "y_test",
                                                                           "x_unlabelled"]
    assert mapped["x_test"].flags.f_contiguous and mapped["x_test"].dtype == np.float64
    assert not any(isinstance(a, np.memmap) for a in packed.values())
    for name, a in arrays.items():
        np.testing.assert_array_equal(mapped[name], a)
        np.testing.assert_array_equal(packed[name], a)
    assert not any(isinstance(a, np.memmap) for a in load_features(tmp_path / "stored.npz").values())  # small
    # a member sits wherever the zip puts it, misaligned for its dtype: torch gets an aligned copy
    assert not mapped["x_train"].flags.aligned and torch.equal(as_tensor(mapped["x_train"]),
                                                               torch.from_numpy(arrays["x_train"]))
    rows = Rows(mapped["x_unlabelled"])  # scattered rows are read from the member with pread
    assert torch.equal(rows[torch.tensor([7, 2, 49])], torch.from_numpy(arrays["x_unlabelled"][[7, 2, 49]]))
    assert rows._file is not None


def test_an_npz_member_cut_short_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.npz"
    member = io.BytesIO()
    np.lib.format.write_array(member, features()["x_train"])
    with zipfile.ZipFile(path, "w") as zf:  # stored, as np.savez writes, but 100 bytes short of its header's shape
        zf.writestr("x_train.npy", member.getvalue()[:-100])
    with pytest.raises(ValueError, match="x_train.npy: 4348 bytes do not hold a float32 array of \\(90, 12\\)"):
        map_npz(path, ["x_train"], min_bytes=0)  # a map would read past the member
    with pytest.raises(UserError, match="f.npz: cannot read it") as err:
        load_features(path)  # small: read, and found short too
    one_line(err)


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("y_test"), "no array y_test"),
    (lambda a: a.update(y_train=a["y_train"][:-1]), "y_train has shape (89,); expected (90,)"),
    (lambda a: a.update(x_test=a["x_test"][:, :5]), "x_test is float32 (30, 5); expected numbers shaped (N, *(12,))"),
    (lambda a: a.update(y_train=a["y_train"] - 1), "labels must be class indices"),
    (lambda a: a["x_train"].__setitem__((7, 3), np.nan), "x_train row 7 holds a NaN or infinity"),
    (lambda a: a["x_test"].__setitem__((2, 0), np.inf), "x_test row 2 holds a NaN or infinity"),
    (lambda a: a.update(y_val=a["y_train"][:4].astype(float) + 0.5, x_val=a["x_train"][:4]),
     "y_val row 0 is 0.5"),
    (lambda a: a.update(x_test=a["x_test"][:0], y_test=a["y_test"][:0]), "x_test has no rows"),
    (lambda a: a.update(x_val=a["x_train"][:4]), "has x_val without its pair"),
])
def test_bad_features_name_the_file_and_the_array(tmp_path: Path, change: Callable, message: str) -> None:
    arrays = features()
    change(arrays)
    np.savez(tmp_path / "f.npz", **arrays)
    with pytest.raises(UserError) as err:
        load_features(tmp_path / "f.npz")
    assert str(tmp_path / "f.npz") in one_line(err) and message in str(err.value)


def test_missing_or_unset_paths_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="data.path is not set"):
        load_features(None)
    with pytest.raises(UserError, match="no such file or folder"):
        load_features(tmp_path / "nope.npz")
    np.save(tmp_path / "one.npy", np.zeros((3, 2)))
    with pytest.raises(UserError, match="one.npy: holds one array; give an .npz of named arrays or a folder"):
        load_features(tmp_path / "one.npy")
    np.savez(tmp_path / "cut.npz", **features())
    (tmp_path / "cut.npz").write_bytes((tmp_path / "cut.npz").read_bytes()[:-100])  # its directory cut off
    (tmp_path / "junk.txt").write_text("not an array")
    for bad in ("cut.npz", "junk.txt"):
        with pytest.raises(UserError, match=f"{bad}: cannot read it"):
            load_features(tmp_path / bad)
    with pytest.raises(UserError) as err:
        load_mnist(tmp_path)
    message = one_line(err)
    assert message.startswith(f"data.data_dir={tmp_path}: no MNIST/raw/train-images-idx3-ubyte in it (nor flat in "
                              "it); place the")
    assert "data.download=true" in message
    with pytest.raises(UserError, match="no cifar-10-batches-py/data_batch_1 in it"):
        load_cifar10(tmp_path)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # torchvision not installed
    with pytest.raises(UserError, match="pip install torchvision") as err:
        load_cifar10(tmp_path, download_missing=True)
    assert str(tmp_path) in one_line(err)


def test_download_goes_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class FakeMNIST:  # torchvision.datasets.MNIST(root, train, download) writes <root>/MNIST/raw/
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, train, download))
            write_mnist(Path(root), gz=True)

    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(MNIST=FakeMNIST)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    assert load_mnist(tmp_path, download_missing=True)["x_train"].shape == (120, 1, 28, 28)
    assert load_mnist(tmp_path, download_missing=True)["x_test"].shape == (40, 1, 28, 28)  # files there: no fetch
    assert calls == [(str(tmp_path), True, True)]


# --- the in-memory DataModule --------------------------------------------------------------------------------------


def test_standardisation_uses_the_training_split(tmp_path: Path) -> None:
    dm = ArrayDataModule("f", features(n_train=400), val_size=50, cache_dir=str(tmp_path))
    dm.setup()
    train = dm.splits["train"]["x"]
    assert dm.in_shape == (12,) and dm.num_classes == 5
    assert torch.allclose(train.mean(0), torch.zeros(12), atol=1e-5)
    assert torch.allclose(train.std(0), torch.ones(12), atol=1e-4)
    assert not torch.allclose(dm.splits["val"]["x"].mean(0), torch.zeros(12), atol=1e-3)  # not their own stats
    x = dm.standardise(np.full((1, 12), 3.0, np.float32))
    torch.testing.assert_close(x[0], (3 - dm.mean) / dm.std)


def test_constant_dimensions_do_not_blow_up(tmp_path: Path) -> None:
    arrays = images()
    arrays["x_train"][:, :, 0, 0] = 0  # a border pixel that never lights up in training
    arrays["x_test"][:, :, 0, 0] = 255
    dm = ArrayDataModule("img", arrays, val_size=10, cache_dir=str(tmp_path))
    dm.setup()
    assert dm.splits["test"]["x"].abs().max() < 100


def test_validation_split_is_disjoint_and_seeded(tmp_path: Path) -> None:
    arrays = features(n_train=100)
    arrays["x_train"][:, 0] = np.arange(100)  # an id per row

    def ids(seed: int) -> tuple[set, set]:
        dm = ArrayDataModule("f", arrays, val_size=25, split_seed=seed, cache_dir=str(tmp_path))
        dm.setup()
        return tuple({round(float(v)) for v in dm.splits[s]["x"][:, 0] * dm.std[0] + dm.mean[0]}
                     for s in ("train", "val"))

    train, val = ids(0)
    assert len(val) == 25 and not train & val and train | val == set(range(100))
    assert ids(0) == (train, val) and ids(1)[1] != val


def test_a_given_validation_split_is_used(tmp_path: Path) -> None:
    dm = ArrayDataModule("f", features(x_val=7, y_val=7), val_size=50, cache_dir=str(tmp_path))
    dm.setup()
    assert {k: len(v["y"]) for k, v in dm.splits.items()} == {"train": 90, "val": 7, "test": 30}


def test_augmented_transfer_set_is_cached_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kw = dict(val_size=10, transfer="augment", transfer_size=70, augment_pad=2, cache_dir=str(tmp_path))
    dm = ArrayDataModule("img", images(shape=(3, 8, 8)), **kw)
    first = dm.transfer_inputs()
    assert first.shape == (70, 3, 8, 8) and len(list(tmp_path.glob("img-augment-n70-*"))) == 1
    monkeypatch.setattr("shallowmimic.data.transfer.augment", lambda *a: pytest.fail("augmented again"))
    again = ArrayDataModule("img", {k: v.copy() for k, v in dm.arrays.items()}, **kw)  # the same images, anew
    assert isinstance(first, Standardised) and isinstance(first.raw, np.memmap)  # served from disk, never whole
    assert torch.equal(whole(again.transfer_inputs()), whole(first)) and again.spec() == dm.spec()
    other = ArrayDataModule("img", dm.arrays, **(kw | {"transfer_seed": 2}))
    assert other.spec() != dm.spec()  # the logits cache must not mix them up


def test_augment_makes_shifted_and_flipped_copies() -> None:
    x = RNG.integers(1, 256, (5, 3, 6, 6), dtype=np.uint8)  # no zeros: padding shows
    copies, source = augment(x, 200, seed=0, pad=2, flip=True)
    assert copies.dtype == np.uint8 and copies.shape == (200, 3, 6, 6)
    np.testing.assert_array_equal(augment(x, 200, seed=0, pad=2, flip=True)[0], copies)  # seeded
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    flips = 0
    for copy, s in zip(copies, source, strict=True):
        crops = [(padded[s, :, i : i + 6, j : j + 6], f) for i in range(5) for j in range(5) for f in (0, 1)]
        match = [f for crop, f in crops if np.array_equal(copy, crop[..., ::-1] if f else crop)]
        assert match, "every copy is a crop of its padded source, maybe mirrored"
        flips += min(match)
    assert 50 < flips < 150


def whole(x: Standardised) -> torch.Tensor:
    """A memory-mapped source's rows, standardised, as one tensor."""
    return torch.cat(list(x.split(1000)))


def test_image_pool_is_read_with_pil(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    (pool / "sub").mkdir(parents=True)
    pixels = RNG.integers(0, 256, (4, 8, 8), dtype=np.uint8)
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(pool / ("sub" if i % 2 else "") / f"{i}.png")
    (pool / "notes.txt").write_text("not an image")
    dm = ArrayDataModule("img", images(), val_size=10, transfer="pool", pool_dir=str(pool), cache_dir=str(tmp_path))
    t = dm.transfer_inputs()
    assert t.shape == (4, 1, 8, 8) and isinstance(t, Standardised) and isinstance(t.raw, np.memmap)
    torch.testing.assert_close(whole(t)[0], dm.standardise(pixels[:1, None])[0])  # 0.png first: sorted by path
    Image.fromarray(pixels[0][:5]).save(pool / "small.jpg")
    with pytest.raises(UserError, match="small.jpg: 8x5 pixels; the dataset's images are 8x8") as err:
        ArrayDataModule("img", images(), val_size=10, transfer="pool", pool_dir=str(pool),
                        cache_dir=str(tmp_path)).transfer_inputs()
    one_line(err)


@pytest.mark.parametrize("transfer, labels", [("pool", [-1] * 6), ("augment", None)])
def test_mimic_split_has_a_label_or_minus_one_on_every_row(tmp_path: Path, transfer: str, labels: list | None) -> None:
    arrays = images() | {"x_unlabelled": RNG.integers(0, 256, (6, 1, 8, 8), dtype=np.uint8)}
    dm = ArrayDataModule("img", arrays, val_size=10, transfer=transfer, transfer_size=6, cache_dir=str(tmp_path))
    inputs = dm.teacher_inputs()
    dm.attach_logits({k: torch.randn(len(v), 10) for k, v in inputs.items()})
    mimic = dm.splits["mimic"]
    assert len(mimic["x"]) == len(mimic["y"]) == len(mimic["z"]) == 50 + 6
    assert torch.equal(mimic["y"][:50], dm.splits["train"]["y"])
    if labels is None:  # augmented copies keep their source image's label
        assert (mimic["y"][50:] >= 0).all()
    else:
        assert mimic["y"][50:].tolist() == labels


def test_mnist1d_transfer_rows_are_unlabelled(tmp_path: Path) -> None:
    dm = MNIST1DDataModule(num_samples=500, val_size=50, transfer_size=30, cache_dir=str(tmp_path))
    dm.attach_logits({k: torch.randn(len(v), 10) for k, v in dm.teacher_inputs().items()})
    assert dm.splits["mimic"]["y"][350:].tolist() == [-1] * 30
    assert MNIST1DDataModule(transfer="train", cache_dir=str(tmp_path)).spec()["transfer"] == "train"


@pytest.mark.parametrize("kw, message", [
    (dict(transfer="generated", transfer_size=5), "data.transfer=generated: f offers train, pool, augment"),
    (dict(transfer="augment", transfer_size=5), "data.transfer=augment: needs images (C, H, W)"),
    (dict(transfer="pool"), "data.transfer=pool: f has no unlabelled pool"),
    (dict(val_size=90), "data.val_size=90: must be below the 90 training samples of f"),
    (dict(num_classes=3), "data.num_classes=3: f has label 3 in the train split (row 3); labels must be 0 to 2"),
])
def test_impossible_settings_are_user_errors(tmp_path: Path, kw: dict, message: str) -> None:
    dm = ArrayDataModule("f", features(), **({"val_size": 10, "cache_dir": str(tmp_path)} | kw))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        dm.transfer_inputs()
    one_line(err)


def test_features_pool_reads_x_unlabelled_only_when_used(tmp_path: Path) -> None:
    np.savez(tmp_path / "f.npz", **features(x_unlabelled=40))
    pooled = FeaturesDataModule(str(tmp_path / "f.npz"), name="f", val_size=10, transfer="pool",
                                cache_dir=str(tmp_path))
    plain = FeaturesDataModule(str(tmp_path / "f.npz"), name="f", val_size=10, cache_dir=str(tmp_path))
    assert len(pooled.transfer_inputs()) == 40 and len(plain.transfer_inputs()) == 0
    assert pooled.spec()["sha256"] != plain.spec()["sha256"]


# --- end to end through Hydra configs ------------------------------------------------------------------------------


def tiny_files(kind: str, root: Path) -> list[str]:
    """Write tiny files for data=`kind` under root; return the overrides that point the config at them."""
    if kind in ("mnist", "fashion_mnist"):
        write_mnist(root, "MNIST" if kind == "mnist" else "FashionMNIST", gz=kind == "mnist")
        return [f"data.data_dir={root}", "data.val_size=20", "data.transfer_size=50"]
    if kind == "cifar10":
        write_cifar(root)
        return [f"data.data_dir={root}", "data.val_size=20", "data.transfer_size=50"]
    if kind == "features":
        np.savez(root / "timit.npz", **features(x_val=20, y_val=20))
        return [f"data.path={root / 'timit.npz'}", "data.name=timit"]
    return ["data.transfer_size=100"]  # digits ship with scikit-learn


@pytest.mark.parametrize("kind", ["digits", "mnist", "fashion_mnist", "cifar10", "features"])
def test_baseline_runs_on_each_dataset(kind: str, data_cfg, client: MlflowClient, tmp_path: Path) -> None:
    overrides = tiny_files(kind, tmp_path)
    metrics = train(data_cfg(f"data={kind}", "experiment=baseline", "model.width=16", *overrides))
    assert 0 <= metrics["test/acc"] <= 1
    name = "timit" if kind == "features" else kind
    (run,) = runs_of(client, name)
    assert run.info.status == "FINISHED" and run.data.tags["role"] == "baseline"
    shape = {"features": "12", "digits": "1x8x8", "cifar10": "3x32x32"}.get(kind, "1x28x28")
    assert run.data.params["data.in_shape"] == shape


@pytest.mark.parametrize("kind, transfer, n_transfer", [("digits", "augment", 100), ("features", "pool", 30)])
def test_mimic_runs_on_a_real_dataset(kind: str, transfer: str, n_transfer: int, data_cfg, client: MlflowClient,
                                      tmp_path: Path) -> None:
    overrides = tiny_files(kind, tmp_path)
    if kind == "features":
        np.savez(tmp_path / "timit.npz", **features(x_val=20, y_val=20, x_unlabelled=n_transfer))
    overrides += [f"data.transfer={transfer}"]
    train(data_cfg(f"data={kind}", "experiment=teacher", "model.channels=4", "model.depth=1", *overrides))
    train(data_cfg(f"data={kind}", "experiment=mimic", "model.width=16", *overrides))
    (mimic,) = [r for r in runs_of(client, "timit" if kind == "features" else kind) if r.data.tags["role"] == "mimic"]
    assert mimic.info.status == "FINISHED" and mimic.data.params["data.n_transfer"] == str(n_transfer)
    assert 0 <= mimic.data.metrics["test/agreement"] <= 1


def test_new_data_keys_are_checked(data_cfg, client: MlflowClient) -> None:
    with pytest.raises(UserError, match="data.transfer=magic: must be one of train, generated, pool, augment"):
        train(data_cfg("data=digits", "data.transfer=magic"))
    with pytest.raises(UserError, match="data.augment_pad=-1: must be an integer >= 0"):
        train(data_cfg("data=digits", "data.augment_pad=-1"))
    with pytest.raises(UserError, match="data.download=yes: must be true or false"):
        train(data_cfg("data=cifar10", "data.download=yes"))
    with pytest.raises(UserError, match="data.path is not set"):
        train(data_cfg("data=features"))
    with pytest.raises(UserError, match="data.transfer=pool: mnist1d offers generated, train"):
        train(data_cfg("data.transfer=pool", "data.num_samples=200", "data.val_size=20", "data.transfer_size=0"))
    assert not runs_of(client, "features") and not runs_of(client, "mnist1d")  # caught before any run starts


def test_max_rows_caps_an_unlabelled_pool_too(tmp_path: Path) -> None:
    np.savez(tmp_path / "f.npz", **features(x_unlabelled=30))
    dm = FeaturesDataModule(name="f", path=str(tmp_path / "f.npz"), val_size=20, transfer="pool", max_rows=10,
                            cache_dir=str(tmp_path / "cache"))
    assert len(dm.transfer_inputs()) == 10
    assert {k: len(v["y"]) for k, v in dm.splits.items()} == {"train": 10, "val": 10, "test": 10}


def test_pool_near_copies_of_test_images_are_dropped(tmp_path: Path) -> None:
    arrays = images()
    pool = np.concatenate([RNG.integers(0, 256, (5, 1, 8, 8), dtype=np.uint8), arrays["x_test"][:2]])
    dm = ArrayDataModule("img", arrays | {"x_unlabelled": pool}, val_size=10, transfer="pool", dup_tol=1e-3,
                         cache_dir=str(tmp_path))
    assert len(dm.transfer_inputs()) == 5 and dm.n_duplicates_dropped == 2


def test_changed_files_change_the_spec(tmp_path: Path) -> None:
    path = tmp_path / "f.npz"
    np.savez(path, **features())
    before = FeaturesDataModule(str(path), name="f", val_size=10).spec()
    np.savez(path, **features())  # same shapes, new values: cached logits of the old ones must not be reused
    assert FeaturesDataModule(str(path), name="f", val_size=10).spec()["sha256"] != before["sha256"]
