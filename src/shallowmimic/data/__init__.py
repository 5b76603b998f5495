"""Data: in-memory batches, the generic DataModule, transfer sets, file readers and MNIST-1D."""

from shallowmimic.data.loader import Batch, InMemoryLoader
from shallowmimic.data.mnist1d import MNIST1DDataModule, generate_mnist1d
from shallowmimic.data.module import ArrayDataModule
from shallowmimic.data.sets import (
    CIFAR10DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    FeaturesDataModule,
    MNISTDataModule,
)
from shallowmimic.data.transfer import TRANSFERS

__all__ = ["TRANSFERS", "ArrayDataModule", "Batch", "CIFAR10DataModule", "DigitsDataModule", "FashionMNISTDataModule",
           "FeaturesDataModule", "InMemoryLoader", "MNIST1DDataModule", "MNISTDataModule", "generate_mnist1d"]
