"""Simulation paths: exact counts past 2**24, the static prefix computed once, the fused neuron update
and the time-batched mode, each against the plain step-by-step simulation."""

import numpy as np
import pytest
import torch
from torch import nn

import ann2snn
from ann2snn.energy import SynapticCounter
from ann2snn.evaluation import merge_energy_reports
from ann2snn.neurons.modules import _COMPILE_BROKEN

# -- exact counts ----------------------------------------------------------------------------------

def _wide_snn():
    """Linear 64 -> 1024 -> ReLU -> Linear 1024 -> 2047: the second layer's SOPs per sample pass 2**24 at
    T = 64 and are odd multiples of 2047, which float32 cannot hold."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 2047)).eval()
    x = torch.randn(48, 64)
    return ann2snn.convert(model, [x], threshold="max", progress=False), torch.randn(6, 64)


def test_counts_past_2_24_are_exact():
    snn, x = _wide_snn()
    T = 64
    neuron = next(iter(snn.neurons().values()))
    spikes = torch.zeros(x.shape[0], dtype=torch.int64)

    def tally(_snn):
        spikes.add_(neuron.last_spikes.flatten(1).sum(1, dtype=torch.int64))

    with SynapticCounter(snn) as counter:
        snn.step_hooks.append(tally)
        try:
            snn.run(x, T)
        finally:
            snn.step_hooks.remove(tally)
    report = counter.report()
    sops = {r.name: r for r in report.layers if r.kind == "synaptic" and r.sops}
    (row,) = sops.values()
    reference = int(spikes.sum()) * 2047  # every spike reaches all 2047 outputs of the last layer
    assert reference / x.shape[0] > 2**24
    assert float(np.float32(reference)) != reference  # float32 could not have held it
    assert row.total_sops == reference
    assert report.per_sample["sops"] == [float(s) * 2047 for s in spikes.tolist()]
    # the first layer sees the analog input: 64 x 1024 MACs a step
    macs = next(r for r in report.layers if r.kind == "synaptic" and r.macs)
    assert macs.total_macs == 64 * 1024 * T * x.shape[0]

    # reports of the two halves, merged in either order, give the very same numbers
    halves = []
    for part in (x[:4], x[4:]):
        with SynapticCounter(snn) as c:
            snn.run(part, T)
        halves.append(c.report())
    for order in (halves, halves[::-1]):
        merged = merge_energy_reports(order)
        assert merged.sops == report.sops and merged.spikes == report.spikes and merged.macs == report.macs
        for a, b in zip(merged.layers, report.layers, strict=True):
            assert (a.total_sops, a.total_spikes, a.total_macs, a.firing_rate) == \
                (b.total_sops, b.total_spikes, b.total_macs, b.firing_rate)


# -- shared models ---------------------------------------------------------------------------------

_SNNS = {}


def zoo_snn(name, batch=6):
    """A zoo model (random weights: fast, and every op still runs) converted with max thresholds."""
    if name not in _SNNS:
        from ann2snn.zoo import create_model
        from ann2snn.zoo.registry import get_entry

        torch.manual_seed(0)
        model = create_model(name, pretrained=False).eval()
        x = torch.rand(batch, *get_entry(name).input_shape)
        _SNNS[name] = ann2snn.convert(model, [x], threshold="max", progress=False), x
    return _SNNS[name]


def equal(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return len(a) == len(b) and all(equal(u, v) for u, v in zip(a, b, strict=True))


def first_weight_layer(snn):
    from ann2snn.passes.patterns import WEIGHTED_MODULES

    return next(m for m in snn.graph_module.modules() if isinstance(m, WEIGHTED_MODULES))


# -- the static prefix -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cnn_digits", "resnet_digits"])  # plain, residual
def test_static_prefix_is_bit_identical_and_computed_once(name):
    snn, x = zoo_snn(name)
    plan = snn.static_plan()
    assert plan is not None and plan.static_nodes  # the first conv (and its folded BN) at least
    calls = []
    handle = first_weight_layer(snn).register_forward_hook(lambda *a: calls.append(1))
    try:
        ref, ref_all = snn.run(x, 7, static_prefix=False, mode="step", return_all=True)
        assert len(calls) == 7
        calls.clear()
        out, out_all = snn.run(x, 7, mode="step", return_all=True)
        assert len(calls) == 1
    finally:
        handle.remove()
    assert equal(ref, out) and equal(ref_all, out_all)
    # streaming through step() computes the whole graph every step: still the same outputs
    snn.reset()
    with torch.no_grad():
        total = snn.step(x)
        for _ in range(6):
            total = total + snn.step(x)
    snn.reset()
    assert torch.equal(total / 7, ref)


def test_static_prefix_is_found_on_the_graph_not_on_names():
    snn, _ = zoo_snn("resnet_digits")
    gm = snn.graph_module
    first_neuron = next(n for n in gm.graph.nodes if n.op == "call_module"
                        and isinstance(gm.get_submodule(n.target), ann2snn.neurons.SpikingNeuron))
    static = snn.static_plan().static_nodes
    order = [n.name for n in gm.graph.nodes]
    assert all(order.index(s) < order.index(first_neuron.name) for s in static)
    assert first_neuron.name not in static


def test_poisson_and_sequence_input_are_not_static():
    snn, x = zoo_snn("cnn_digits")
    calls = []
    handle = first_weight_layer(snn).register_forward_hook(lambda *a: calls.append(1))
    try:
        a = snn.run(x, 5, encoding="poisson", mode="step")
        assert len(calls) == 5
        b = snn.run(x, 5, encoding="poisson", mode="step", static_prefix=False)
        calls.clear()
        seq = torch.stack([x * (t + 1) / 5 for t in range(5)])
        snn.run(seq, sequence=True, mode="step")
        assert len(calls) == 5
    finally:
        handle.remove()
    assert torch.equal(a, b)


def test_prefix_macs_charged_every_step_by_default_or_once():
    snn, x = zoo_snn("cnn_digits")
    T = 6
    reports = {}
    for how in ("step", "once"):
        with SynapticCounter(snn, prefix_macs=how) as counter:
            snn.run(x, T)
        reports[how] = counter.report()
    static = snn.static_plan().static_nodes
    rows = {how: {r.name: r for r in rep.layers} for how, rep in reports.items()}
    prefix_rows = [name for name in rows["step"] if name in static or name.replace(".", "_") in static]
    assert prefix_rows
    for name, row in rows["step"].items():
        other = rows["once"][name]
        if name in prefix_rows:
            assert row.macs == row.ann_macs * T and other.macs == row.ann_macs
        else:
            assert (row.sops, row.macs, row.spikes) == (other.sops, other.macs, other.spikes)
    assert reports["step"].prefix_macs == "step" and reports["once"].prefix_macs == "once"
    assert "once" in reports["once"].to_text()
    with pytest.raises(ValueError):
        SynapticCounter(snn, prefix_macs="never")


# -- time-batched mode -----------------------------------------------------------------------------

def _zoo_names():
    from ann2snn.zoo.registry import list_models

    return list_models()


@pytest.mark.parametrize("name", _zoo_names())  # residual (resnet), concatenating (unet), dict outputs (centernet)
def test_batched_mode_equals_step_mode_on_every_zoo_model(name):
    snn, x = zoo_snn(name, batch=3)
    ref, ref_all = snn.run(x, 9, mode="step", static_prefix=False, return_all=True)
    # a budget of one byte: chunks of one step; the default budget: all 9 steps in one chunk
    for budget in (1, None):
        out, out_all = snn.run(x, 9, mode="batched", return_all=True, memory_budget=budget)
        if name == "video3d_motion":
            # CPU Conv3d sums in another order for a batch of 6 or 27 than of 3: a membrane a rounding
            # away from its threshold may fire a step apart; a few outputs move by that spike's weight
            torch.testing.assert_close(out, ref, rtol=0, atol=2e-3)
            assert (out != ref).float().mean() < 0.2
        else:
            assert equal(ref, out) and equal(ref_all, out_all)


def test_batched_mode_with_poisson_and_sequence_input():
    snn, x = zoo_snn("resnet_digits")
    for kwargs in (dict(encoding="poisson"), dict(t0=2)):
        assert torch.equal(snn.run(x, 6, mode="step", **kwargs), snn.run(x, 6, mode="batched", memory_budget=2**16,
                                                                         **kwargs))
    seq = torch.stack([x * (t % 3) for t in range(7)])
    assert torch.equal(snn.run(seq, sequence=True, mode="step"), snn.run(seq, sequence=True, mode="batched"))


def test_batched_mode_refuses_step_hooks_and_counting():
    snn, x = zoo_snn("cnn_digits")
    with SynapticCounter(snn):
        with pytest.raises(ann2snn.errors.ConfigError, match="batched"):
            snn.run(x, 4, mode="batched")
        snn.run(x, 4, mode="auto")  # auto falls back to step mode
    with pytest.raises(ann2snn.errors.ConfigError, match="mode"):
        snn.run(x, 4, mode="fast")


class _BatchMixer(nn.Module):
    """A reshape that reads the batch size off the input: it cannot see time folded into the batch."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.neuron = ann2snn.neurons.SpikingNeuron(torch.full((8,), 0.5))
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        n = x.size(0)
        h = self.neuron(self.fc(x))
        return self.out(h.reshape(n, -1))


def test_a_graph_that_mixes_the_batch_falls_back_to_step_mode():
    from torch import fx

    from ann2snn.config import ConversionConfig
    from ann2snn.model import SpikingModel

    torch.manual_seed(0)
    class Tracer(fx.Tracer):
        def is_leaf_module(self, m, name):
            return isinstance(m, ann2snn.neurons.SpikingNeuron) or super().is_leaf_module(m, name)

    root = _BatchMixer()
    snn = SpikingModel(fx.GraphModule(root, Tracer().trace(root)), ConversionConfig(threshold="max"))
    x = torch.randn(4, 8)
    ref = snn.run(x, 5, mode="step")
    with pytest.raises(ann2snn.errors.ConfigError, match="time-batched"):
        snn.run(x, 5, mode="batched")
    assert torch.equal(snn.run(x, 5, mode="step"), ref)  # the failed attempt left no state behind


# -- the neuron update -----------------------------------------------------------------------------

def _reference_neuron(x_steps, theta, cap, shift, signed, bipolar, v0=0.5):
    """The dynamics step by step from the pure functions, out of place, spikes as float."""
    from ann2snn.neurons import functional as NF

    th = theta.reshape(1, -1, 1, 1)
    v = NF.initial_potential(x_steps[0], th, v0)
    count = torch.zeros_like(v)
    outs = []
    for x in x_steps:
        x = x + shift.reshape(1, -1, 1, 1)
        s, v = (NF.if_step(x, v, th) if cap == 1 else NF.burst_step(x, v, th, cap))
        if signed:
            neg = torch.ceil(-v / th).clamp(0.0, float(cap))
            if not bipolar:
                neg = torch.minimum(neg, count + s)
            v = v + neg * th
            s = s - neg
            count = count + s
        outs.append(s * th)
    return outs


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("cap", [1, 3])
@pytest.mark.parametrize("kind", ["plain", "signed", "bipolar"])
@pytest.mark.parametrize("shifted", [False, True])
def test_neuron_update_equals_the_pure_step_functions_bit_for_bit(cap, kind, shifted, fused):
    """The eager in-place update and the compiled one (``fused``) against the pure step functions."""
    from ann2snn.neurons import SpikingNeuron
    from ann2snn.neurons.modules import fused_update

    if fused and fused_update("if", torch.device("cpu")) is None:
        pytest.skip("torch.compile needs a C++ compiler here")

    g = torch.Generator().manual_seed(cap)
    theta = torch.rand(5, generator=g) + 0.25
    neuron = SpikingNeuron(theta, cap=cap, signed=kind == "signed", bipolar=kind == "bipolar")
    neuron.fused = fused
    shift = (torch.rand(5, generator=g) - 0.5) * 0.2 if shifted else torch.zeros(5)
    neuron.bias_shift.copy_(shift)
    lo = -1.0 if kind != "plain" else -0.3
    xs = [torch.rand(7, 5, 3, 3, generator=g) * (1.5 * cap - lo) + lo for _ in range(12)]
    ref = _reference_neuron(xs, theta, cap, shift, kind != "plain", kind == "bipolar")
    neuron.reset()
    with torch.no_grad():
        for t, x in enumerate(xs):
            out = neuron(x)
            assert torch.equal(out, ref[t]), (kind, cap, shifted, t)
    assert any(bool((r != 0).any()) for r in ref)
    assert "cpu" not in _COMPILE_BROKEN  # the compiled update really ran (no silent fallback)


def test_fused_run_equals_eager_run():
    snn, x = zoo_snn("resnet_digits")
    for cap in (1, 2):
        for n in snn.neurons().values():
            n.set_cap(cap)
        with SynapticCounter(snn) as eager:
            ref = snn.run(x, 5)
        with SynapticCounter(snn) as fused:
            out = snn.run(x, 5, fused=True)
        assert torch.equal(ref, out)
        assert [r.total_spikes for r in eager.report().layers] == [r.total_spikes for r in fused.report().layers]
        assert not any(n.fused for n in snn.neurons().values())  # only for that run
    for n in snn.neurons().values():
        n.set_cap(1)
    assert "cpu" not in _COMPILE_BROKEN


def test_evaluation_charges_the_prefix_once_on_request():
    from ann2snn.evaluation import evaluate_classifier

    snn, x = zoo_snn("cnn_digits")
    y = torch.zeros(x.shape[0], dtype=torch.long)
    step = evaluate_classifier(snn, (x, y), 4, ceiling_at=[4])
    once = evaluate_classifier(snn, (x, y), 4, ceiling_at=[4], prefix_macs="once")
    assert step.accuracy_per_t == once.accuracy_per_t and step.sops_per_t == once.sops_per_t
    prefix = step.energy.macs / 4
    assert once.energy.macs == prefix > 0 and step.macs_per_t == [prefix * t for t in (1, 2, 3, 4)]
    assert once.macs_per_t == [prefix] * 4
    with pytest.raises(ann2snn.errors.ConfigError):
        evaluate_classifier(snn, (x, y), 4, prefix_macs="sometimes")
