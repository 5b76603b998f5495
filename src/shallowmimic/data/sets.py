"""DataModules for the data sets read from files: scikit-learn's digits, MNIST, Fashion-MNIST, CIFAR-10, the user's
own arrays."""

from __future__ import annotations

from typing import Any

from shallowmimic import checks
from shallowmimic.cache import Arrays
from shallowmimic.data.module import ArrayDataModule
from shallowmimic.data.readers import load_cifar10, load_digits, load_features, load_mnist


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
        checks.path("data_dir", data_dir, optional=False)
        checks.flag("download", download)
        self.data_dir, self.download = data_dir, download


class MNISTDataModule(TorchvisionFilesDataModule):
    """MNIST (LeCun et al. 1998): 28x28 digits, 60k train / 10k test, from `<data_dir>/MNIST/raw/` (torchvision's
    layout) or downloaded there through torchvision."""

    folder = "MNIST"
    system_dir: str | None = None  # where a system package installs the files, looked in last

    def load_arrays(self) -> Arrays:
        return load_mnist(self.data_dir, self.folder, self.download, self.system_dir)


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (Xiao et al. 2017): 28x28 clothing images in MNIST's format, from
    `<data_dir>/FashionMNIST/raw/`, `<data_dir>` or the folder Debian's package dataset-fashion-mnist installs."""

    folder = "FashionMNIST"
    system_dir = "/usr/share/datasets/fashion-mnist"  # `apt-get install dataset-fashion-mnist` (Debian, Ubuntu)


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
        checks.path("path", path)
        self.path = path

    @property
    def origin(self) -> str:
        return f"data.path={self.path}"

    def load_arrays(self) -> Arrays:
        # x_unlabelled can be the largest array by far: read it only when it is the transfer set
        return load_features(self.path, unlabelled=self.transfer == "pool" and self.pool_dir is None)
