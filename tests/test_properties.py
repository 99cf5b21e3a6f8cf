"""Property tests: randomly built small networks from supported ops convert and converge to the
ANN as T grows; networks with an unsupported op raise the documented error, never an internal one."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import ann2snn
from ann2snn.errors import ConversionError, UnsupportedOperationError

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


BLOCKS = ["conv_relu", "conv_bn_relu6", "maxpool", "avgpool", "residual", "bn_after_relu", "dwconv"]
UNSUPPORTED = {"gelu": nn.GELU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "leaky": nn.LeakyReLU,
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
    try:
        ann2snn.convert(model, torch.randn(4, 1, 8, 8), threshold="max")
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
