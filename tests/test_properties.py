"""Property tests: randomly built small networks from supported ops convert and converge to the
ANN as T grows; networks with an unsupported op raise the documented error, never an internal one."""

import dataclasses
import io
import json
import math

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import ann2snn
from ann2snn.config import ConversionConfig
from ann2snn.errors import ConfigError, ConversionError, SerializationError, UnsupportedOperationError

from .helpers import randomize_bn


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.bn(self.conv(x))
        out += x
        return torch.relu(out)


BLOCKS = ["conv_relu", "conv_bn_relu6", "maxpool", "avgpool", "residual", "bn_after_relu", "dwconv", "leaky",
          "prelu"]
UNSUPPORTED = {"gelu": nn.GELU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "elu": nn.ELU, "hardswish": nn.Hardswish,
               "softmax": lambda: nn.Softmax(dim=1), "layernorm": lambda: nn.GroupNorm(1, 4)}


def build(blocks, channels=4, size=8):
    layers = [nn.Conv2d(1, channels, 3, padding=1), nn.ReLU()]
    for b in blocks:
        if b == "conv_relu":
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        elif b == "conv_bn_relu6":
            layers += [nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels), nn.ReLU6()]
        elif b == "maxpool" and size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        elif b == "avgpool" and size >= 2:
            layers.append(nn.AvgPool2d(2))
            size //= 2
        elif b == "residual":
            layers.append(Residual(channels))
        elif b == "bn_after_relu":
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(channels)]
        elif b == "leaky":
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.LeakyReLU(0.1)]
        elif b == "prelu":
            layers += [nn.Conv2d(channels, channels, 1), nn.PReLU(channels, init=0.2)]
        elif b == "dwconv":
            layers += [nn.Conv2d(channels, channels, 3, padding=1, groups=channels), nn.ReLU()]
    layers += [nn.Flatten(), nn.Linear(channels * size * size, 3)]
    return randomize_bn(nn.Sequential(*layers))


settings.register_profile("ci", deadline=None, max_examples=10, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


@given(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=4), st.integers(0, 2**16))
def test_random_supported_networks_converge(blocks, seed):
    torch.manual_seed(seed)
    model = build(blocks)
    x = torch.randn(16, 1, 8, 8)
    snn = ann2snn.convert(model, x, threshold="max")
    ref = model(x).detach()
    scale = ref.abs().mean() + 1e-6
    e16 = float((snn.run(x, 16) - ref).abs().mean() / scale)
    e512 = float((snn.run(x, 512) - ref).abs().mean() / scale)
    assert e512 < 0.05, (blocks, e16, e512)
    assert e512 <= e16 + 1e-4


@given(st.lists(st.sampled_from(BLOCKS), max_size=3), st.sampled_from(sorted(UNSUPPORTED)), st.integers(0, 3))
def test_random_networks_with_an_unsupported_op_raise_the_documented_error(blocks, bad, where):
    model = build(blocks)
    seq = list(model)
    seq.insert(min(where, len(seq) - 3) + 2, UNSUPPORTED[bad]())
    model = nn.Sequential(*seq).eval()
    x = torch.randn(4, 1, 8, 8)
    try:
        model(x)
    except RuntimeError:  # the inserted layer does not fit there (GroupNorm after Flatten): no model
        assume(False)
    try:
        ann2snn.convert(model, x, threshold="max")
    except UnsupportedOperationError as err:
        assert len(err.offenders) == 1
        assert err.offenders[0].source is None or isinstance(err.offenders[0].source, str)
    else:
        raise AssertionError(f"{bad} was converted silently")


@given(st.binary(min_size=0, max_size=300))
def test_random_bytes_are_rejected_as_files(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("f") / "snn.pt"
    path.write_bytes(data)
    try:
        ann2snn.load(path)
    except ConversionError:
        pass
    else:
        raise AssertionError("garbage loaded")


# -- damaged files and configs ---------------------------------------------------------------------

_SAVED: dict[str, object] = {}


def saved_snn(tmp_dir) -> tuple[bytes, object]:
    """A real saved SNN (a small conv net with max-pool, residual and BN-after-ReLU) as bytes, and the model."""
    if "bytes" not in _SAVED:
        torch.manual_seed(0)
        model = build(["conv_bn_relu6", "maxpool", "residual", "bn_after_relu"])
        snn = ann2snn.convert(model, torch.randn(8, 1, 8, 8), threshold="max", timesteps=4)
        path = tmp_dir / "snn.pt"
        ann2snn.save(snn, path)
        _SAVED["bytes"], _SAVED["snn"] = path.read_bytes(), ann2snn.load(path)
    return _SAVED["bytes"], _SAVED["snn"]


def assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.info == b.info and a.config == b.config


DAMAGE = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 0.999)),
    st.tuples(st.just("flip"), st.floats(0.0, 0.999), st.integers(0, 7)),
    st.tuples(st.just("overwrite"), st.floats(0.0, 0.999), st.binary(min_size=1, max_size=16)),
)


@given(st.lists(DAMAGE, min_size=1, max_size=3))
def test_damaged_snn_files_are_rejected_or_load_unchanged(tmp_path_factory, damage):
    """Truncated files, flipped bits, overwritten runs of bytes: a clear SerializationError, or (for
    bytes that carry no content, such as zip padding) exactly the saved model, never other numbers."""
    tmp = tmp_path_factory.mktemp("f")
    data, original = saved_snn(tmp)
    b = bytearray(data)
    for d in damage:
        at = int(d[1] * len(b))
        if d[0] == "truncate":
            del b[at:]
        elif d[0] == "flip":
            if at < len(b):
                b[at] ^= 1 << d[2]
        else:
            b[at:at + len(d[2])] = d[2]
    path = tmp / "damaged.pt"
    path.write_bytes(bytes(b))
    try:
        loaded = ann2snn.load(path)
    except SerializationError as err:
        assert str(err) and "\n" not in str(err).strip()
    else:
        assert_same_model(loaded, original)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _set(obj, path, value):
    if not path:
        return value
    obj[path[0]] = _set(obj[path[0]], path[1:], value)
    return obj


@given(st.sampled_from(["graph", "config", "info"]), st.integers(0, 10**6), JSON_VALUES, st.booleans())
def test_edited_json_fields_are_rejected_with_a_clear_error(tmp_path_factory, field, which, value, reseal):
    """Change one field of a real file's graph / config / info. As stored (checksum not updated) it is
    refused; even with a matching checksum (a deliberate edit) loading gives a working model or a
    SerializationError, never an internal exception."""
    import json

    from ann2snn.serialize import content_digest

    tmp = tmp_path_factory.mktemp("f")
    saved_snn(tmp)
    payload = torch.load(io.BytesIO(_SAVED["bytes"]), weights_only=True)
    doc = json.loads(payload[field])
    paths = list(_paths(doc))
    path = paths[which % len(paths)]
    edited = _set(doc, path, value)
    payload[field] = json.dumps(edited)
    changed = json.loads(payload[field]) != json.loads(torch.load(io.BytesIO(_SAVED["bytes"]),
                                                                  weights_only=True)[field])
    if reseal:
        payload["checksum"] = content_digest(payload)
    target = tmp / "edited.pt"
    torch.save(payload, target)
    try:
        snn = ann2snn.load(target)
    except SerializationError as err:
        assert "corrupt" in str(err) or "unsupported" in str(err) or "not an ann2snn" in str(err)
        return
    assert reseal or not changed, f"an edited {field} loaded without a checksum error"
    snn.run(torch.randn(2, 1, 8, 8), 2)  # a model that loads also runs


CONFIG_KEYS = [f.name for f in dataclasses.fields(ConversionConfig)] + ["thresholds", "T", ""]
CONFIG_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**4), st.floats(-10, 300), st.sampled_from([math.nan, math.inf]),
    st.text(max_size=6), st.sampled_from(["ltb", "mse", "max", "adafire", "light", "layer", "poisson"]),
    st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), max_size=2),
)


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if math.isinf(v) else repr(v))
    if isinstance(v, (int, str)):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


@given(st.dictionaries(st.sampled_from(CONFIG_KEYS), CONFIG_VALUES, max_size=4), st.booleans(), st.binary(max_size=4),
       st.floats(0, 1))
def test_random_config_files_give_a_config_or_a_config_error(tmp_path_factory, values, table, junk, where):
    """TOML files with wrong types, unknown keys, out-of-range values or stray bytes: ``convert``
    either gets a valid config or a ConfigError naming the problem, never a KeyError / TypeError."""
    import argparse

    from ann2snn.cli.common import build_config

    lines = ["[conversion]"] if table else []
    lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    text = ("\n".join(lines) + "\n").encode()
    at = int(where * len(text))
    text = text[:at] + junk + text[at:]
    path = tmp_path_factory.mktemp("c") / "conv.toml"
    path.write_bytes(text)
    try:
        cfg = build_config(argparse.Namespace(config=str(path), quiet=True))
    except ConfigError as err:
        assert str(err) and "\n" not in str(err)
    else:
        assert isinstance(cfg, ConversionConfig)
        for k, v in values.items():  # a config that was accepted holds what the file said
            if v is not None and not junk and k in CONFIG_KEYS[:-3]:
                assert getattr(cfg, k) == v or (isinstance(v, float) and math.isnan(v))


@given(st.dictionaries(st.sampled_from(CONFIG_KEYS), CONFIG_VALUES, max_size=4))
def test_random_config_dicts_give_a_config_or_a_config_error(values):
    try:
        ann2snn.config.ConversionConfig.from_dict(values)
    except ConfigError as err:
        assert str(err)


@given(st.integers(0, 10**6), st.lists(st.integers(0, 5), max_size=3), st.sampled_from([torch.float32, torch.int64,
                                                                                         torch.bool]),
       st.booleans())
def test_replaced_tensors_are_rejected_with_a_clear_error(tmp_path_factory, which, shape, dtype, reseal):
    """A tensor of another shape or dtype in place of a stored one: refused by the checksum, or, if
    resealed, either loads into a model that runs or raises SerializationError."""
    from ann2snn.serialize import content_digest

    tmp = tmp_path_factory.mktemp("f")
    saved_snn(tmp)
    payload = torch.load(io.BytesIO(_SAVED["bytes"]), weights_only=True)
    names = sorted(payload["state"])
    name = names[which % len(names)]
    old = payload["state"][name]
    payload["state"][name] = torch.ones(shape, dtype=dtype)
    same = old.shape == torch.Size(shape) and old.dtype == dtype and bool((old == 1).all())
    if reseal:
        payload["checksum"] = content_digest(payload)
    torch.save(payload, tmp / "edited.pt")
    try:
        snn = ann2snn.load(tmp / "edited.pt")
    except SerializationError as err:
        assert str(err).startswith("corrupt ann2snn file")
        return
    assert reseal or same
    snn.run(torch.randn(2, 1, 8, 8), 2)


@given(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=3), st.sampled_from(["ltb", "mse", "percentile", "max"]),
       st.sampled_from(["channel", "layer"]), st.sampled_from(["if", "adafire"]),
       st.sampled_from(["none", "light", "advanced"]), st.sampled_from([0.0, 1e-3, 1.0, 100.0]), st.integers(1, 9),
       st.integers(0, 2**16))
def test_random_networks_and_methods_convert_to_a_finite_snn(blocks, method, granularity, neuron, correction, scale,
                                                             batch, seed):
    """Any supported net, any method combination, calibration data of any scale (all zeros included)
    and any batch size: a spiking model with finite outputs, or a ConversionError; nothing else."""
    torch.manual_seed(seed)
    model = build(blocks)
    x = torch.randn(batch, 1, 8, 8) * scale
    try:
        snn = ann2snn.convert(model, x.split(4), threshold=method, granularity=granularity, neuron=neuron,
                              correction=correction, timesteps=4, ltb_iters=3, burst_cap=2, burst_initial=2,
                              adapt_samples=4, progress=False)
    except ConversionError:
        return
    out = snn.run(torch.randn(3, 1, 8, 8), 4)
    assert out.shape == (3, 3) and torch.isfinite(out).all()
