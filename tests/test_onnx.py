"""ONNX models in: exported from PyTorch (and written the way Keras' exporter writes them), they
convert like any other model."""

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ann2snn
from ann2snn.cli import main
from ann2snn.data.datasets import load_digits
from ann2snn.loading import LoadError, load_model
from ann2snn.zoo import create_model

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

T = 8


@pytest.fixture(scope="module")
def digits():
    train, test = load_digits("train"), load_digits("test")
    return train.x[:256], test.x[:64]


def export_onnx(model, path, fold=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, opset_version=17,
                          do_constant_folding=fold, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    return path


@pytest.mark.parametrize("name", ["cnn_digits", "vgg_digits", "resnet_digits", "mobilenet_digits"])
def test_pytorch_onnx_export_converts_like_the_pytorch_model(name, digits, tmp_path):
    model = create_model(name, pretrained=True)
    loaded = load_model(str(export_onnx(model, tmp_path / f"{name}.onnx")))
    assert loaded.kind == "onnx" and loaded.input_shape == (1, 8, 8)
    xc, x = digits
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), model(x), atol=1e-5)
    a = ann2snn.convert(model, xc, timesteps=T, threshold="max", progress=False)
    b = ann2snn.convert(loaded.module, xc, timesteps=T, threshold="max", progress=False)
    assert torch.equal(a.run(x, T), b.run(x, T))  # BN, residuals, ReLU6, max-pools: the same SNN


def test_exporter_folded_batchnorm_gives_the_same_predictions(digits, tmp_path):
    model = create_model("resnet_digits", pretrained=True)
    loaded = load_model(str(export_onnx(model, tmp_path / "r.onnx", fold=True)))
    xc, x = digits
    a = ann2snn.convert(model, xc, timesteps=T, threshold="max", progress=False).run(x, T)
    b = ann2snn.convert(loaded.module, xc, timesteps=T, threshold="max", progress=False).run(x, T)
    # BN folded in float32 by the exporter, in float64 by ann2snn: the weights differ by ~1e-6, which can
    # move a membrane potential across its threshold a step earlier or later in a few samples (one
    # spike flip changes that sample's output by a whole weight / T); every other sample is identical.
    close = ((a - b).abs().amax(1) <= 1e-3).float().mean()
    assert close >= 0.95
    assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.98


def keras_style_onnx(path, extra_op=None):
    """What tf2onnx writes for a small Keras CNN: NHWC input, a transpose, 'same' padding that is
    asymmetric at stride 2, Dense layers as MatMul + Add, a softmax at the end."""
    g = np.random.default_rng(0)
    w = g.normal(0, 0.4, (4, 1, 3, 3)).astype(np.float32)
    bc = g.normal(0, 0.1, 4).astype(np.float32)
    w1 = g.normal(0, 0.2, (64, 16)).astype(np.float32)
    b1 = g.normal(0, 0.1, 16).astype(np.float32)
    w2 = g.normal(0, 0.3, (16, 10)).astype(np.float32)
    b2 = g.normal(0, 0.1, 10).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((w, "w"), (bc, "bc"), (w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"),
              (np.array([-1, 64], np.int64), "shape"))]
    nodes = [
        helper.make_node("Transpose", ["in"], ["nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Conv", ["nchw", "w", "bc"], ["c"], pads=[0, 0, 1, 1], strides=[2, 2], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Transpose", ["r"], ["nhwc"], perm=[0, 2, 3, 1], name="to_nhwc"),
        helper.make_node("Reshape", ["nhwc", "shape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "w1"], ["m1"], name="dense1"),
        helper.make_node("Add", ["m1", "b1"], ["a1"], name="dense1_bias"),
        helper.make_node("Relu" if extra_op is None else extra_op, ["a1"], ["h"], name="act1"),
        helper.make_node("MatMul", ["h", "w2"], ["m2"], name="dense2"),
        helper.make_node("Add", ["m2", "b2"], ["logits"], name="dense2_bias"),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(nodes, "keras_cnn", [helper.make_tensor_value_info("in", TensorProto.FLOAT, ["N", 8, 8, 1])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))

    def reference(x_nhwc):
        z = F.conv2d(F.pad(x_nhwc.permute(0, 3, 1, 2), (0, 1, 0, 1)), torch.from_numpy(w), torch.from_numpy(bc), 2)
        h = torch.relu(torch.relu(z).permute(0, 2, 3, 1).reshape(len(x_nhwc), -1) @ torch.from_numpy(w1)
                       + torch.from_numpy(b1))
        return h @ torch.from_numpy(w2) + torch.from_numpy(b2)
    return reference


def test_keras_style_onnx_reads_and_converts(digits, tmp_path):
    reference = keras_style_onnx(tmp_path / "k.onnx")
    loaded = load_model(str(tmp_path / "k.onnx"))
    assert loaded.input_shape == (8, 8, 1)
    assert "Softmax" in " ".join(loaded.extra["notes"])
    xc, x = (d.permute(0, 2, 3, 1) for d in digits)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), reference(x), atol=1e-5)
    snn = ann2snn.convert(loaded.module, xc, timesteps=64, threshold="max", progress=False)
    assert len(snn.neurons()) == 2
    agree = (snn.run(x, 64).argmax(1) == reference(x).argmax(1)).float().mean()
    assert agree >= 0.9


def test_unsupported_onnx_ops_are_listed(tmp_path):
    keras_style_onnx(tmp_path / "s.onnx", extra_op="Sigmoid")
    with pytest.raises(LoadError, match="Sigmoid node 'act1'"):
        load_model(str(tmp_path / "s.onnx"))
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(LoadError, match="not a readable ONNX file"):
        load_model(str(tmp_path / "bad.onnx"))


def test_cli_converts_an_onnx_model_and_exports_it(tmp_path, capsys):
    pytest.importorskip("nir")
    export_onnx(create_model("cnn_digits", pretrained=True), tmp_path / "cnn.onnx")
    snn_file = tmp_path / "snn.pt"
    fast = ["--calib-samples", "128", "--threshold", "max", "--timesteps", "4", "-q"]
    assert main(["convert", "--model", str(tmp_path / "cnn.onnx"), "--data", "digits", "--out", str(snn_file),
                 *fast]) == 0
    nir_file, folder = tmp_path / "snn.nir", tmp_path / "portable"
    assert main(["export", str(snn_file), "--format", "nir", "--out", str(nir_file)]) == 0
    assert main(["export", str(snn_file), "--format", "portable", "--out", str(folder)]) == 0
    capsys.readouterr()
    ref = ann2snn.load(snn_file)
    x = load_digits("test").x[:32]
    from ann2snn.export import load_snn

    for path in (nir_file, folder):
        assert torch.equal(load_snn(path).run(x, 4), ref.run(x, 4))
    # the exported files evaluate like the original: same data (recorded in them), same accuracy
    results = []
    for path in (snn_file, nir_file, folder):
        assert main(["evaluate", str(path), "--max-samples", "50", "--json", "-q"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["samples"] == 50 and results[0]["accuracy"] > 0.5
    assert results[1]["accuracy"] == results[0]["accuracy"] == results[2]["accuracy"]


def test_cli_export_refusal_is_one_line_exit_2(tmp_path, capsys):
    snn_file = tmp_path / "vgg.pt"
    assert main(["convert", "--model", "vgg_digits", "--data", "digits", "--out", str(snn_file),
                 "--calib-samples", "64", "--threshold", "max", "-q"]) == 0
    pytest.importorskip("nir")
    capsys.readouterr()
    assert main(["export", str(snn_file), "--format", "nir", "--out", str(tmp_path / "v.nir")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "max-pooling has no NIR node" in err and "--maxpool extension" in err
    assert not (tmp_path / "v.nir").exists()
    assert main(["export", str(snn_file), "--format", "nir", "--maxpool", "extension",
                 "--out", str(tmp_path / "v.nir")]) == 0
