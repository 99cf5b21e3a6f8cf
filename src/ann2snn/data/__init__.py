"""Dataset readers (digits, MNIST, Fashion-MNIST, .npz, image folders) and input encoders."""

from . import synthetic  # noqa: F401  (registers the synthetic-* datasets)
from .datasets import (
    DATASETS,
    ArrayDataset,
    DatasetInfo,
    DatasetNotFoundError,
    get_dataset,
    load_digits,
    load_fashion_mnist,
    load_image_folder,
    load_mnist,
    load_npz,
    read_idx,
    subset,
)
from .encoding import ENCODERS, direct, get_encoder, normalised_range, poisson

__all__ = [
    "DATASETS",
    "ENCODERS",
    "ArrayDataset",
    "DatasetInfo",
    "DatasetNotFoundError",
    "direct",
    "get_dataset",
    "get_encoder",
    "load_digits",
    "load_fashion_mnist",
    "load_image_folder",
    "load_mnist",
    "load_npz",
    "normalised_range",
    "poisson",
    "read_idx",
    "subset",
]
