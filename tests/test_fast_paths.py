"""Fast paths of conversion give exactly what the straightforward computations give: the incremental
runner and the calibration steps built on it, the MSE threshold search, max-pooling, spike totals."""

import copy

import pytest
import torch
from torch import nn

import ann2snn
from ann2snn.adaptation import burst, correction, incremental, ssc
from ann2snn.adaptation.burst import simulate_with_tally
from ann2snn.adaptation.incremental import IncrementalRunner
from ann2snn.neurons.modules import _tiled_max, _tiles
from ann2snn.zoo import create_model

from .helpers import SmallResNet, digits_tensors, randomize_bn


@pytest.fixture(scope="module")
def digits_x():
    x, _ = digits_tensors()
    return x


def _converted(model, x, **cfg):
    """A spiking model with calibrated thresholds and no adaptation step run yet."""
    prepared = ann2snn.prepare(model, example_input=x[:64], **cfg)
    ann2snn.calibrate(prepared, x)
    return ann2snn.to_snn(prepared, with_adapt=False)


@pytest.fixture(scope="module")
def vgg(digits_x):
    """The bundled digits VGG as AdaFire neurons (max-pools, a linear head)."""
    model = create_model("vgg_digits", pretrained=True)
    return _converted(model, digits_x[:256], neuron="adafire", threshold="mse", timesteps=4, correction="advanced",
                      progress=False)


@pytest.fixture(scope="module")
def resnet():
    """A residual block: a neuron's region is read by an addition from outside it."""
    x = torch.randn(96, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return _converted(randomize_bn(SmallResNet(), seed=2), x, neuron="adafire", threshold="mse", timesteps=4,
                      burst_cap=2, burst_initial=4, correction="both"), x


def _both(fn, snn):
    """``fn`` on a copy of ``snn`` with the incremental runner and on one with full runs."""
    out = {}
    for enabled in (True, False):
        copy_ = copy.deepcopy(snn)
        saved = incremental.ENABLED
        incremental.ENABLED = enabled
        try:
            out[enabled] = (fn(copy_), copy_)
        finally:
            incremental.ENABLED = saved
    return out[True], out[False]


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert {n: m.cap for n, m in a.neurons().items()} == {n: m.cap for n, m in b.neurons().items()}


def test_runner_matches_full_runs_as_layers_change(vgg, digits_x):
    snn = copy.deepcopy(vgg)
    x = digits_x[:48]
    runner = IncrementalRunner(snn, x, 4)
    assert torch.equal(runner.run(), snn.run(x, 4))
    names = list(snn.neurons())
    calls = []
    first = snn.graph_module.get_submodule(next(n.target for n in snn.graph_module.graph.nodes
                                                if n.op == "call_module"))
    handle = first.register_forward_hook(lambda *_: calls.append(1))
    try:
        for name, change in [(names[-1], 3), (names[1], 2), (names[0], 1), (names[2], 4)]:
            snn.neurons()[name].set_cap(change)
            totals = []
            out = runner.run(evaluate=[name], on_step=lambda _t, name=name, totals=totals: totals.append(
                snn.neurons()[name].spike_total()))
            expected, tally = simulate_with_tally(snn, x, 4)
            assert torch.equal(out, expected), name
            assert sum(totals) == tally[name]
    finally:
        handle.remove()
    # the first convolution reads only the input: computed once by the runner, once per full run
    assert len(calls) == 4


def test_runner_recomputes_only_downstream_of_a_change(vgg, digits_x):
    snn = copy.deepcopy(vgg)
    x = digits_x[:32]
    runner = IncrementalRunner(snn, x, 4)
    runner.run()
    calls: dict[str, int] = {}
    handles = [m.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
               for name, m in snn.graph_module.named_children()]
    try:
        last = list(snn.neurons().values())[-1]
        last.threshold.mul_(1.5)
        out = runner.run(commit=False)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(out, snn.run(x, 4))
    neuron_targets = {n.target: n for n in snn.graph_module.graph.nodes if n.op == "call_module"}
    ran = {name for name in calls}
    last_target = next(t for t, n in neuron_targets.items() if snn.graph_module.get_submodule(t) is last)
    order = list(neuron_targets)
    assert ran == set(order[order.index(last_target):])  # the last neuron layer and what follows it
    assert all(c == 4 for c in calls.values())


def test_runner_without_memory_still_matches(resnet):
    snn, x = resnet
    snn = copy.deepcopy(snn)
    runner = IncrementalRunner(snn, x, 4, memory_budget=0)
    for name, n in snn.neurons().items():
        n.v0_offset.add_(0.1)
        assert torch.equal(runner.run(evaluate=[name]), snn.run(x, 4)), name
    assert not runner.kept


def test_runner_with_a_small_budget_keeps_the_values_around_the_layer_it_is_at(vgg, digits_x):
    """Walking down the network as a correction does: past the budget, values of layers that changed
    and values not read for longest make room, so each run still starts near the layer it measures;
    every run equals a full run."""
    x = digits_x[:32]
    probe = IncrementalRunner(copy.deepcopy(vgg), x, 4)
    probe.run()
    budget = 2 * max(probe.sizes.values())  # room for about two nodes' values
    evaluated = {}
    for label, limit in (("small", budget), ("unlimited", None)):
        snn = copy.deepcopy(vgg)
        runner = IncrementalRunner(snn, x, 4, memory_budget=limit)
        calls = []
        handles = [m.register_forward_hook(lambda *_, calls=calls: calls.append(1)) for m in snn.graph_module.children()]
        names = list(snn.neurons())
        try:
            for i, name in enumerate(names):
                snn.neurons()[name].v0_offset.add_(0.05)
                out = runner.run(evaluate=names[i + 1:i + 2])
                n_calls = len(calls)
                assert torch.equal(out, snn.run(x, 4)), name
                del calls[n_calls:]  # the full run's calls do not count
                assert runner.kept_bytes <= runner.budget and runner.kept_bytes == sum(runner.sizes.values())
        finally:
            for h in handles:
                h.remove()
        evaluated[label] = len(calls)
    assert evaluated["small"] <= 1.25 * evaluated["unlimited"], evaluated


def test_sensitivity_table_equals_the_full_simulation_one(vgg, digits_x):
    x = digits_x[:96]
    cfg = vgg.config

    def table(snn):
        return burst.sensitivity_table(snn, x, 4, [1, 2, 3, 4, 5, 6, 7, 8], cfg.burst_initial, cfg.burst_cap,
                                       progress=False)

    (fast, a), (slow, b) = _both(table, vgg)
    assert fast == slow
    _same_state(a, b)  # the caps are put back the way the full runs put them back


def test_sensitivity_table_on_a_residual_network(resnet):
    snn, x = resnet
    (fast, a), (slow, b) = _both(lambda s: burst.sensitivity_table(s, x, 4, [1, 2, 3, 4, 6], 4, 2, progress=False),
                                 snn)
    assert fast == slow
    _same_state(a, b)


@pytest.mark.parametrize("mode", ["light", "advanced", "both"])
def test_correction_equals_the_full_simulation_one(resnet, mode):
    snn, x = resnet
    (fast, a), (slow, b) = _both(lambda s: correction.correct(s, x, 4, mode, progress=False), snn)
    assert fast == slow
    _same_state(a, b)


def test_ssc_equals_the_full_simulation_one(vgg, digits_x):
    x = digits_x[:96]

    def run(snn):
        correction.correct(snn, x, 4, "advanced", progress=False)
        return ssc.compress(snn, x, 1.0, 4, progress=False), snn.info["ssc"]

    (fast, a), (slow, b) = _both(run, vgg)
    assert fast == slow
    assert any(r != 1.0 for r in fast[0].values())  # something was compressed
    _same_state(a, b)


def test_ssc_by_target_equals_the_full_simulation_one(resnet):
    snn, x = resnet

    def run(snn):
        return ssc.compress_to_target(snn, x, 0.1, 4, progress=False), snn.info["ssc"]

    (fast, a), (slow, b) = _both(run, snn)
    assert fast == slow
    _same_state(a, b)


def test_runner_is_not_used_where_it_cannot_replay(vgg, digits_x):
    snn = copy.deepcopy(vgg)
    x = digits_x[:8]
    assert incremental.applies(snn, x)
    snn.step_hooks.append(lambda s: None)
    assert not incremental.applies(snn, x)  # a hook must see every step of every run
    snn.step_hooks.clear()
    poisson = copy.deepcopy(snn)
    poisson.config = poisson.config.replace(encoding="poisson")
    assert not incremental.applies(poisson, x)


@pytest.mark.parametrize("kernel,stride,shape,ceil", [
    (2, 2, (3, 4, 8, 8), False), (2, 2, (3, 4, 7, 9), False), (3, 3, (2, 3, 10, 9), False),
    ((2, 3), (2, 3), (2, 3, 6, 9), False), (2, None, (2, 3, 6, 6), True), (1, 1, (2, 3, 5, 5), False)])
def test_tiled_max_pool_equals_max_pool(kernel, stride, shape, ceil):
    pool = nn.MaxPool2d(kernel, stride, ceil_mode=ceil)
    x = torch.randn(*shape)
    x[0, 0, 0, 0] = float("nan")  # both propagate NaN
    tiles = _tiles(pool, x)
    assert tiles is not None
    assert torch.equal(_tiled_max(x, *tiles).nan_to_num(7.0), pool(x).nan_to_num(7.0))
    assert _tiles(nn.MaxPool2d(3, 2), x) is None  # overlapping windows: the pooling kernel


def test_spike_total_is_the_exact_count():
    from ann2snn.neurons.modules import SpikingNeuron

    for cap in (1, 3, 8):
        n = SpikingNeuron(torch.rand(5) + 0.1, cap=cap)
        for _ in range(3):
            n(torch.randn(70, 5, 6, 6) * 4)
            assert n.spike_total() == float(n.spike_events().sum(dtype=torch.float64))


def test_stage_times_are_recorded(digits_x):
    model = create_model("vgg_digits", pretrained=True)
    snn = ann2snn.convert(model, digits_x[:128], neuron="adafire", threshold="mse", timesteps=2,
                          correction="light", ssc_tau=0.5, adapt_samples=32, progress=False)
    times = snn.info["stage_times"]
    assert list(times) == ["prepare", "calibrate", "thresholds", "sensitivity", "correction", "ssc"]
    assert all(isinstance(v, float) and v >= 0 for v in times.values())


@pytest.mark.parametrize("cap,steps,v0", [(1, 4, 0.5), (4, 4, 0.5), (2, 7, 0.3)])
def test_mse_search_equals_the_quantize_loop(cap, steps, v0):
    from ann2snn.calibration.observers import MSE_STEPS, ThresholdObserver
    from ann2snn.neurons.functional import quantize

    obs = ThresholdObserver("l", "mse", timesteps=steps, burst_cap=cap, v0=v0, sample_size=500)
    g = torch.Generator().manual_seed(cap + steps)
    for _ in range(3):
        obs(torch.randn(64, 6, 3, 3, generator=g) * torch.rand(6, 1, 1, generator=g) * 3)
    obs.sample, obs.sample_keys = obs.sample[torch.argsort(obs.sample_keys)], None
    values = obs.sample.clamp(min=0.0)
    best_err, best = torch.full_like(obs.max, float("inf")), obs.max.clone()
    for i in range(MSE_STEPS):  # the search written out with the quantisation function
        lam = obs.max * (1.0 - 0.01 * i)
        err = (quantize(values, (lam / cap).clamp(min=1e-12), steps, v0, cap) - values).pow(2).mean(dim=0)
        better = err < best_err
        best_err, best = torch.where(better, err, best_err), torch.where(better, lam, best)
    assert torch.equal(obs._mse_search(), best)


@pytest.mark.parametrize("cap", [1, 3, 8])
def test_neuron_update_equals_the_select_formula(cap):
    """Spikes, output and membrane as the select formula gives them, with a silent channel (threshold
    0), inputs just below the threshold, infinities and NaN."""
    from ann2snn.neurons.modules import SpikingNeuron

    g = torch.Generator().manual_seed(cap)
    theta = torch.rand(6, generator=g) + 0.2
    theta[0] = 0.0
    neuron = SpikingNeuron(theta.clone(), cap=cap)
    th = torch.where(theta > 0, theta, torch.full_like(theta, 1e30)).reshape(1, 6, 1, 1)
    v = None
    for step in range(5):
        x = torch.randn(16, 6, 3, 3, generator=g) * 2
        x[0, 1, 0, 0] = float("nan") if step == 2 else float("inf") if step == 3 else -float("inf")
        x[1, 2] = th[0, 2] * 0.99999994 - (0 if v is None else v[1, 2])  # the membrane just below theta
        out = neuron(x)
        v = torch.zeros_like(x) + 0.5 * th if v is None else v
        v = v + x
        if cap == 1:
            spikes = v >= th
            ref_out = torch.where(spikes, th, 0.0)
        else:
            q = torch.floor(v / th).clamp(0.0, float(cap))
            spikes = torch.where(v >= th, q.clamp(min=1.0), torch.zeros_like(q))
            ref_out = spikes * th
        v = v - ref_out
        assert torch.equal(neuron.last_spikes, spikes) and torch.equal(out, ref_out)
        assert torch.equal(neuron.v.nan_to_num(7.0), v.nan_to_num(7.0))
        assert not torch.signbit(out[out == 0]).any()  # zeros are +0, as the select gives them
