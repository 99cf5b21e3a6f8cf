"""Capture with torch.export: real model code (shape assertions, `if` on the input size, fused BN +
activation layers, functional batch norm), LeakyReLU / PReLU, errors grouped by kind."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ann2snn
from ann2snn.energy import measure
from ann2snn.errors import UnsupportedOperationError

from .helpers import randomize_bn
from .test_convert import Branchy


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's pattern: a BatchNorm subclass that asserts the rank, calls F.batch_norm and its activation."""

    def __init__(self, channels, act=nn.ReLU):
        super().__init__(channels)
        self.act = act(inplace=True) if act in (nn.ReLU, nn.ReLU6) else act()

    def forward(self, x):
        torch._assert(x.ndim == 4, f"expected 4D input (got {x.ndim}D input)")
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return self.act(x)


class RealWorldNet(nn.Module):
    """Python a symbolic tracer cannot follow, as real model code has it."""

    def __init__(self, act=nn.ReLU):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = BatchNormAct2d(8, act)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = BatchNormAct2d(8, act)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        if x.shape[-2] < 8 or x.shape[-1] < 8:  # an `if` on the input size
            raise ValueError("input too small")
        x = F.max_pool2d(self.bn1(self.stem(x)), 2)
        x = x + self.bn2(self.conv(x))  # residual
        x = F.adaptive_avg_pool2d(x, 4)
        return self.head(x.view(x.size(0), -1))


def _relative_errors(model, x, timesteps=(16, 256), **cfg):
    snn = ann2snn.convert(model, x, threshold="max", **cfg)
    with torch.no_grad():
        _, steps = snn.run(x, timesteps=max(timesteps), return_all=True)
        ref = model(x)
    return [float((steps[t - 1] - ref).norm() / ref.norm()) for t in timesteps], snn


@pytest.mark.parametrize("act", [nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU])
def test_real_world_code_converts_and_converges(act):
    torch.manual_seed(0)
    model = randomize_bn(RealWorldNet(act)).eval()
    if act is nn.PReLU:  # per-channel slopes
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.PReLU):
                    m.weight.copy_(torch.linspace(0.05, 0.5, m.weight.numel()))
    x = torch.randn(32, 3, 16, 16)
    with pytest.raises(Exception):  # noqa: B017 - symbolic tracing cannot read this model
        ann2snn.prepare(model)
    before = copy.deepcopy(model.state_dict())
    (e16, e256), snn = _relative_errors(model, x)
    assert e256 < 0.05 and e256 < e16 / 2, (e16, e256)
    for k, v in model.state_dict().items():  # the user's model is untouched
        assert torch.equal(v, before[k])
    assert snn.info["passes"]["capture"] == "torch.export"
    assert snn.info["passes"]["bn_folded"] == 2
    expected = 4 if act in (nn.LeakyReLU, nn.PReLU) else 2
    assert len(snn.neurons()) == expected


def test_leaky_relu_has_a_threshold_on_each_side_and_negative_outputs():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 16), nn.LeakyReLU(0.2), nn.Linear(16, 3)).eval()
    x = torch.randn(64, 6)
    snn = ann2snn.convert(model, x, threshold="max", timesteps=64)
    pos, neg = (n for n in snn.neurons().values())
    assert pos.name == "1" and neg.name == "1.neg"
    hidden = model[0](x)
    # each side is calibrated on its own half of the pre-activations
    assert torch.allclose(pos.threshold, hidden.clamp(min=0).amax(0), rtol=1e-5)
    assert torch.allclose(neg.threshold, (-hidden).clamp(min=0).amax(0), rtol=1e-5)
    analog = snn.analog(x, mode="relu")
    assert torch.allclose(analog, model(x), atol=1e-5)


def test_leaky_relu_synaptic_operations_count_both_sides():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 16), nn.LeakyReLU(0.1), nn.Linear(16, 3)).eval()
    x = torch.randn(8, 6)
    snn = ann2snn.convert(model, x, threshold="max", timesteps=10)
    events = []
    snn.step_hooks.append(lambda s: events.append(sum(float(n.last_spikes.sum()) for n in s.neurons().values())))
    _, report = measure(snn, x, 10)
    layer = next(r for r in report.layers if r.name == "2")
    assert sum(events) > 0
    # every spike of either side reaches all 3 outputs of the last layer
    assert layer.sops * x.shape[0] == pytest.approx(sum(events) * 3)


def test_any_batch_size_runs_after_capture():
    model = randomize_bn(RealWorldNet()).eval()
    snn = ann2snn.convert(model, torch.randn(16, 3, 16, 16), threshold="max")
    for batch in (1, 3, 40):
        out = snn.run(torch.randn(batch, 3, 16, 16), timesteps=4)
        assert out.shape == (batch, 5)


def test_output_structure_is_kept():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
            self.a, self.b = nn.Linear(8, 2), nn.Linear(8, 3)

        def forward(self, x):
            h = self.body(x)
            return {"a": self.a(h), "b": self.b(h)}

    model = TwoHeads().eval()
    snn = ann2snn.convert(model, torch.randn(16, 4), threshold="max")
    out = snn.run(torch.randn(5, 4), timesteps=3)
    assert set(out) == {"a", "b"} and out["a"].shape == (5, 2) and out["b"].shape == (5, 3)


class SiLUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), BatchNormAct2d(4, nn.SiLU))
                                    for _ in range(3))
        self.norm = nn.LayerNorm(4)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.norm(x.mean((2, 3)))


def test_unconvertible_model_error_names_the_activation_first_and_no_shape_checks():
    with pytest.raises(UnsupportedOperationError) as info:
        ann2snn.convert(SiLUNet().eval(), torch.randn(8, 4, 8, 8))
    text = str(info.value)
    lines = text.splitlines()
    assert lines[1].lstrip().startswith("- SiLU at 3 places"), text
    assert "LayerNorm" in lines[2], text
    assert "test_capture.py" in lines[1]  # the user's source line of the first SiLU
    assert "eq" not in [o.op for o in info.value.offenders] and "assert" not in text.lower().replace("assertion", "")
    assert len(lines) <= 5, text
    assert "replace the activation by ReLU" in text


def test_data_dependent_control_flow_names_the_user_line():
    with pytest.raises(UnsupportedOperationError) as info:
        ann2snn.convert(Branchy(), torch.randn(4, 4))
    assert "control flow" in str(info.value)
    assert "test_convert.py" in str(info.value)  # where Branchy's `if` is


def test_docs_list_every_aten_op_of_the_table():
    from pathlib import Path

    from ann2snn.capture import ATEN_OPS

    page = (Path(__file__).parent.parent / "docs" / "capture.md").read_text()
    table = page.split("## The ATen op table", 1)[1]
    missing = sorted({p.__name__ for p in ATEN_OPS if f"`{p.__name__}`" not in table})
    assert not missing, missing


class StdConv2d(nn.Conv2d):
    """NF-ResNet's pattern: the weight standardised at run time from the stored parameter."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0,
                         eps=1e-5).reshape_as(self.weight)
        return F.conv2d(x, w * 0.5, self.bias, self.stride, self.padding)


class LearnableAffine(nn.Module):
    """HGNetV2's pattern: a learnt scalar scale and bias on an activation."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([1.5]))
        self.bias = nn.Parameter(torch.tensor([0.1]))

    def forward(self, x):
        return self.scale * x + self.bias


def test_weights_computed_from_parameters_are_folded_and_constant_affines_count_as_spikes():
    torch.manual_seed(3)
    model = nn.Sequential(StdConv2d(3, 8, 3, padding=1), nn.ReLU(), LearnableAffine(), nn.Conv2d(8, 8, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    x = torch.randn(16, 3, 8, 8)
    (e16, e256), snn = _relative_errors(model, x)
    assert e256 < 0.05 and e256 < e16 / 2, (e16, e256)
    # the standardised weight became the first conv's stored weight
    assert isinstance(snn.graph_module.get_submodule("0"), nn.Conv2d)
    _, report = measure(snn, x, 8)
    layers = {r.name: r for r in report.layers}
    assert layers["0"].macs > 0 and layers["0"].sops == 0  # analog input
    assert layers["3"].sops > 0 and layers["3"].macs == 0  # spikes scaled and shifted by constants


def test_offenders_list_the_activation_first():
    with pytest.raises(UnsupportedOperationError) as info:
        ann2snn.convert(SiLUNet().eval(), torch.randn(8, 4, 8, 8))
    assert info.value.offenders[0].op == "SiLU"
    assert info.value.offenders[-1].op == "LayerNorm"


def test_stored_tensors_used_as_values_become_graph_constants():
    class Token(nn.Module):  # ViT's pattern: a stored token expanded to the batch and concatenated
        def __init__(self):
            super().__init__()
            self.token = nn.Parameter(torch.randn(1, 4, 1))
            self.conv = nn.Conv1d(4, 4, 1)

        def forward(self, x):
            t = self.token.expand(x.shape[0], -1, -1)
            return torch.relu(self.conv(torch.cat([t, x], dim=2))).flatten(1)

    model = Token().eval()
    x = torch.randn(8, 4, 3)
    (e16, e256), _ = _relative_errors(model, x)
    assert e256 < 0.05, (e16, e256)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_that_copies_entries_converts(mode):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1, padding_mode=mode), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 36, 3)).eval()
    x = torch.randn(16, 2, 6, 6)
    (e16, e256), snn = _relative_errors(model, x)
    assert e256 < 0.05 and e256 < e16 / 2, (e16, e256)
    _, report = measure(snn, x, 4)
    assert next(r for r in report.layers if r.name == "2").sops > 0  # padded spikes are still spikes


class SamePadMaxPool(nn.Module):
    """TensorFlow-style "same" max-pooling as timm's MaxPool2dSame writes it: pad with -inf, pool."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x):
        pads = []
        for size in reversed(x.shape[-2:]):
            total = max((-(-size // self.stride) - 1) * self.stride + self.kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.max_pool2d(F.pad(x, pads, value=-float("inf")), self.kernel, self.stride)


class SamePoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.pool1, self.pool2 = SamePadMaxPool(3, 2), SamePadMaxPool(3, 1)
        self.conv2, self.head = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.pool1(self.bn(self.conv1(x))))  # pooling signed values: -inf is not 0 here
        y = self.pool2(torch.relu(self.conv2(y)))
        return self.head(y.mean((2, 3)))


@pytest.mark.parametrize("size", [8, 9])  # even: padding on one side only; odd: on both
def test_minus_inf_padding_before_max_pooling_is_taken_over_by_the_pool(size):
    torch.manual_seed(5)
    model = randomize_bn(SamePoolNet()).eval()
    x = torch.randn(16, 3, size, size)
    (e16, e256), snn = _relative_errors(model, x)
    assert e256 < 0.05 and e256 < e16 / 2, (e16, e256)
    with torch.no_grad():
        assert torch.allclose(snn.analog(x, "relu"), model(x), atol=1e-5)
    names = [str(n.target) for n in snn.graph_module.graph.nodes]
    assert not any("pad" in t for t in names), names


def test_minus_inf_padding_without_a_pool_is_still_refused():
    class PadOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.relu(F.pad(self.conv(x), [1, 1, 1, 1], value=-float("inf"))).flatten(1)

    with pytest.raises(UnsupportedOperationError, match="value=-inf"):
        ann2snn.convert(PadOnly().eval(), torch.randn(4, 3, 8, 8), threshold="max")
