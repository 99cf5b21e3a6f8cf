"""``spike_linear``: bipolar neurons on the analog values that reach weight layers (MobileNet's linear
bottlenecks), so that every weight layer but the input's runs on spikes."""

import pytest
import torch
from torch import nn

import ann2snn
from ann2snn.data.datasets import load_digits
from ann2snn.energy import SynapticCounter
from ann2snn.neurons.modules import SpikingNeuron
from ann2snn.zoo import create_model


@pytest.fixture(scope="module")
def digits():
    train, test = load_digits("train"), load_digits("test")
    return train.x[:256], test.x, test.y


@pytest.mark.parametrize("cap", [1, 3])
def test_bipolar_neuron_rounds_its_running_sum_of_either_sign(cap):
    theta = torch.tensor([1.0])
    neuron = SpikingNeuron(theta, cap=cap, bipolar=True)
    x = torch.tensor([-2.6, -1.0, -0.74, -0.26, 0.0, 0.26, 0.74, 1.0, 2.6]).reshape(-1, 1) * cap / 2.7
    x = torch.cat([x, torch.tensor([[-1.5 * cap], [1.5 * cap]])])  # beyond the cap: clipped at cap a step
    total = torch.zeros_like(x)
    for t in range(1, 41):
        out = neuron(x)
        assert torch.all(out.abs() <= cap)  # at most cap spikes a step, of either sign
        total += out
        # the net output so far is the running input sum rounded to whole thresholds (ties up)
        assert torch.allclose(total[:-2], torch.floor(t * x[:-2] + 0.5), atol=1e-5), t
        assert torch.equal(total[-2:].flatten(), torch.tensor([-cap * t, cap * t], dtype=total.dtype))


def test_bipolar_silent_channel_stays_silent():
    neuron = SpikingNeuron(torch.tensor([0.0, 1.0]), bipolar=True)
    x = torch.tensor([[-5.0, -5.0]])
    out = sum(neuron(x) for _ in range(4))
    assert out[0, 0] == 0 and out[0, 1] < 0


def _macs_by_layer(snn, x, T):
    with SynapticCounter(snn) as c:
        snn.run(x, T)
    return {r.name: r.macs for r in c.report().layers if r.kind == "synaptic" and r.macs > 0}


def test_mobilenet_runs_on_spikes_and_converges(digits):
    xc, xt, yt = digits
    model = create_model("mobilenet_digits", pretrained=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = ann2snn.convert(model, xc, threshold="max")
    snn = ann2snn.convert(model, xc, threshold="max", spike_linear=True)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the user's model untouched
    bipolar = [m for m in snn.neurons().values() if m.bipolar]
    assert len(bipolar) == snn.info["passes"]["bipolar_neurons"] > 0
    # without it, the layers after each linear bottleneck multiply analog values every step; with it,
    # only the first layer (fed by the input) does
    assert len(_macs_by_layer(plain, xt[:8], 4)) > 1
    assert len(_macs_by_layer(snn, xt[:8], 4)) == 1
    with torch.no_grad():
        ref = model(xt)
    assert torch.allclose(snn.analog(xt, "relu"), ref, atol=1e-4)  # the analog forms are the ANN's
    clipped = snn.analog(xt, "clip")
    err = {T: float((snn.run(xt, T) - clipped).abs().mean() / clipped.abs().mean()) for T in (16, 512)}
    assert err[512] < err[16] / 8, err
    agree = float((snn.run(xt, 512).argmax(1) == ref.argmax(1)).float().mean())
    assert agree >= 0.99


def test_only_analog_values_feeding_weight_layers_get_neurons():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 1)
            self.c = nn.Conv2d(4, 4, 1)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            h = torch.relu(self.a(x))
            lin = self.b(h)  # a linear bottleneck: no ReLU
            y = torch.relu(self.c(lin + lin))  # one neuron, on the value that enters c
            return self.head(y.mean((2, 3))), lin  # outputs stay analog

    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(32, 1, 6, 6)
    snn = ann2snn.convert(model, x, threshold="max", spike_linear=True)
    assert snn.info["passes"]["bipolar_neurons"] == 1
    assert [n for n, m in snn.neurons().items() if m.bipolar] == ["add.out"]
    out, lin = snn.run(x, 256)
    with torch.no_grad():
        ref_out, ref_lin = model(x)
    for got, ref in ((out, ref_out), (lin, ref_lin)):  # the returned bottleneck is b's analog output
        assert float((got - ref).abs().mean() / ref.abs().mean()) < 0.05


def test_bipolar_save_load_and_export_refusal(digits, tmp_path):
    xc, xt, _ = digits
    model = create_model("mobilenet_digits", pretrained=True)
    snn = ann2snn.convert(model, xc, threshold="mse", timesteps=4, spike_linear=True)
    path = tmp_path / "snn.pt"
    ann2snn.save(snn, path)
    back = ann2snn.load(path)
    assert [m.bipolar for m in back.neurons().values()] == [m.bipolar for m in snn.neurons().values()]
    assert torch.equal(back.run(xt[:16], 4), snn.run(xt[:16], 4))
    from ann2snn.export.ir import ExportError

    with pytest.raises(ExportError, match="spike_linear=False"):
        ann2snn.export_nir(snn, tmp_path / "m.nir")


@pytest.mark.parametrize("name", ["vgg_digits", "resnet_digits", "cnn_digits"])
def test_nets_with_a_relu_before_every_weight_layer_get_no_bipolar_neuron(name):
    gm = ann2snn.prepare(create_model(name), threshold="max", spike_linear=True)
    stats = next(m for m in gm.meta.values() if isinstance(m, dict) and "passes" in m)["passes"]
    assert stats["bipolar_neurons"] == 0


def test_bipolar_layers_are_priced_and_compressed_by_their_spikes_of_both_signs(digits):
    """Spike tallies (SSC, AdaFire) count negative spikes too: a bipolar layer's spikes are its events."""
    from ann2snn.adaptation.ssc import ssc_table

    xc, xt, _ = digits
    model = create_model("mobilenet_digits", pretrained=True)
    snn = ann2snn.convert(model, xc, threshold="mse", timesteps=4, spike_linear=True)
    table = ssc_table(snn, xc[:64], 4, scales=[1.0, 2.0])
    with SynapticCounter(snn) as c:
        snn.run(xc[:64], 4)
        events = c.pending_spikes()
    for i, name in enumerate(table.layers):
        assert table.spikes[i][0] == pytest.approx(events[name], rel=1e-6)  # |spikes|, not the net count
        if snn.neurons()[name].bipolar:
            assert table.spikes[i][0] > 0 and table.sops_per_spike[i] > 0
            assert table.spikes[i][1] < table.spikes[i][0]  # a larger threshold: fewer spikes
