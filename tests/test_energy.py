import itertools

import pytest
import torch
from torch import nn

import ann2snn
from ann2snn.energy import EnergyModel, SynapticCounter, dense_macs, measure
from ann2snn.neurons import SpikingNeuron


def brute_conv2d_sops(spikes, conv, out_hw):
    """Enumerate every spike and every synapse it reaches."""
    cin, h, w = spikes.shape
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    ph, pw = conv.padding
    dh, dw = conv.dilation
    cout_per_group = conv.out_channels // conv.groups
    cin_per_group = cin // conv.groups
    total = 0
    for c, i, j in itertools.product(range(cin), range(h), range(w)):
        n = int(spikes[c, i, j])
        if n == 0:
            continue
        synapses = 0
        for y, x, ky, kx in itertools.product(range(out_hw[0]), range(out_hw[1]), range(kh), range(kw)):
            if y * sh - ph + ky * dh == i and x * sw - pw + kx * dw == j:
                synapses += cout_per_group  # every output channel of c's group
        total += n * synapses
        assert cin_per_group > 0
    return total


class SpikeRecorder:
    def __init__(self, snn):
        self.snn, self.steps = snn, []
        snn.step_hooks.append(self)

    def __call__(self, snn):
        self.steps.append({n: m.last_spikes.clone() for n, m in snn.neurons().items()})


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (2, 1, 1, 2),
                                                            (1, 1, 1, 4)])
def test_conv_sops_equal_brute_force(stride, padding, dilation, groups):
    torch.manual_seed(stride * 10 + padding + groups)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 8, 3, stride=stride, padding=padding, dilation=dilation, groups=groups),
                          nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    x = torch.randn(3, 2, 7, 7)
    model(x)
    model.eval()
    snn = ann2snn.convert(model, x, threshold="max", neuron="adafire", burst_cap=3)
    rec = SpikeRecorder(snn)
    _, report = measure(snn, x, 5)
    conv = snn.graph_module.get_submodule("2")
    out_hw = conv(torch.zeros(1, 4, 7, 7)).shape[2:]
    first, second = list(snn.neurons())
    expected = 0
    for step in rec.steps:
        spikes = step[first]
        for b in range(x.shape[0]):
            expected += brute_conv2d_sops(spikes[b], conv, out_hw)
    layer = next(r for r in report.layers if r.name == "2")
    assert layer.sops * x.shape[0] == pytest.approx(expected)
    assert any(s[first].max() > 1 for s in rec.steps)  # bursts exercised: each unit counts
    # the linear layer: every spike reaches all 3 outputs
    lin = next(r for r in report.layers if r.name == "5")
    spikes_l2 = sum(s[second].sum() for s in rec.steps) / x.shape[0]
    assert lin.sops == pytest.approx(float(spikes_l2) * 3)


def test_residual_identity_spikes_cost_one_each():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.c0 = nn.Conv2d(1, 4, 3, padding=1)
            self.c1 = nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 36, 2)

        def forward(self, x):
            a = torch.relu(self.c0(x))
            b = self.c1(a)
            b += a
            return self.fc(torch.relu(b).flatten(1))

    model = Block().eval()
    x = torch.randn(2, 1, 6, 6)
    snn = ann2snn.convert(model, x, threshold="max")
    rec = SpikeRecorder(snn)
    _, report = measure(snn, x, 7)
    first = list(snn.neurons())[0]
    spikes_a = sum(s[first].sum() for s in rec.steps) / 2
    shortcut = next(r for r in report.layers if r.kind == "shortcut")
    assert shortcut.sops == pytest.approx(float(spikes_a))
    c1 = next(r for r in report.layers if r.name == "c1")
    expected = sum(brute_conv2d_sops(s[first][b], model.c1, (6, 6)) for s in rec.steps for b in range(2)) / 2
    assert c1.sops == pytest.approx(expected)
    c0 = next(r for r in report.layers if r.name == "c0")
    assert c0.sops == 0 and c0.macs == 7 * 4 * 36 * 9  # analog input: dense MACs every step


def test_vgg_block_ann_macs_closed_form():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                          nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    x = torch.randn(4, 3, 12, 12)
    snn = ann2snn.convert(model, x, threshold="max")
    _, report = measure(snn, x, 4)
    expected = 12 * 12 * 16 * 3 * 9 + 12 * 12 * 16 * 16 * 9 + 6 * 6 * 32 * 16 * 9 + 32 * 10
    assert report.ann_macs == expected
    assert dense_macs(nn.Conv2d(4, 8, 3, groups=2), (4, 5, 5), (8, 3, 3)) == 8 * 9 * 2 * 9


def test_hand_computed_energy():
    e = EnergyModel("test", e_mac=4.6e-12, e_ac=0.9e-12)
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 3, bias=False)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.5]])
    snn = ann2snn.convert(model, x, threshold="max")  # thresholds 1.0 and 0.5: both neurons fire every step
    _, report = measure(snn, x, 4, energy=e)
    assert report.spikes == 8
    assert report.sops == 8 * 3
    assert report.macs == 4 * 4  # first layer: 2x2 MACs each step
    assert report.ann_macs == 4 + 6
    assert report.snn_energy == pytest.approx(16 * 4.6e-12 + 24 * 0.9e-12)
    assert report.ann_energy == pytest.approx(10 * 4.6e-12)
    assert report.saving == pytest.approx(1 - (16 * 4.6 + 24 * 0.9) / (10 * 4.6))


def test_counts_are_per_sample_and_report_serialises(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    x = torch.randn(6, 4)
    snn = ann2snn.convert(model, x, threshold="max")
    with SynapticCounter(snn, "neuromorphic") as counter:
        snn.run(x, 8)
    report = counter.report()
    assert len(report.per_sample["sops"]) == 6
    assert sum(report.per_sample["sops"]) / 6 == pytest.approx(report.sops)
    import json

    assert json.loads(report.to_json())["sops"] == pytest.approx(report.sops)
    png = report.plot(str(tmp_path / "layers.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "saving" in report.to_text()
    assert not snn.step_hooks and not snn.counters  # detached


def test_counting_does_not_change_outputs():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)).eval()
    x = torch.randn(5, 1, 8, 8)
    snn = ann2snn.convert(model, x)
    plain = snn.run(x, 10)
    counted, _ = measure(snn, x, 10)
    assert torch.equal(plain, counted)
    assert isinstance(next(iter(snn.neurons().values())), SpikingNeuron)


def test_long_runs_and_early_exit_count_every_spike_exactly():
    """Counts are accumulated lazily (uint8 maps for 1-bit spikes, flushed before they could overflow
    and whenever samples exit): over T > 255 steps and with a mid-run exit they must still equal the
    spikes recorded step by step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 2)).eval()
    x = torch.rand(4, 1, 5, 5) * 4
    snn = ann2snn.convert(model, x, threshold="percentile", percentile=90.0)
    rec = SpikeRecorder(snn)
    T = 300
    _, report = measure(snn, x, T)
    (name,) = list(snn.neurons())
    per_sample = sum(s[name].flatten(1).sum(1).double() for s in rec.steps)
    per_position = sum(s[name].double() for s in rec.steps)
    assert per_position.max() > 255  # a neuron fired more often than one uint8 window could hold
    layer = next(r for r in report.layers if r.name == name)
    assert layer.spikes == pytest.approx(float(per_sample.mean()), rel=1e-12)
    lin = next(r for r in report.layers if r.name == "3")
    assert lin.sops == pytest.approx(float(per_sample.mean()) * 2, rel=1e-12)

    # samples 1 and 3 exit after 7 steps: they are charged for 7 steps only
    rec.steps.clear()
    with SynapticCounter(snn) as counter:
        snn.reset()
        counter.begin(4, x.device)
        for t in range(20):
            snn.step(x if t < 7 else x[[0, 2]])
            if t == 6:
                snn.select(torch.tensor([0, 2]))
        rep = counter.report()
    assert rep.per_sample["steps"] == [20.0, 7.0, 20.0, 7.0]
    expected = torch.zeros(4, dtype=torch.float64)
    for t, s in enumerate(rec.steps):
        rows = [0, 1, 2, 3] if t < 7 else [0, 2]
        expected[rows] += s[name].flatten(1).sum(1).double()
    assert rep.per_sample["sops"] == pytest.approx((expected * 2).tolist())
