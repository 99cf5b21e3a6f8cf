import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ann2snn
from ann2snn.errors import CalibrationError, ConfigError, UnsupportedOperationError
from ann2snn.neurons import Affine, RunningMaxPool, SpikingNeuron

from .helpers import PoolAfterSpikes, SmallResNet, randomize_bn


def count(gm, predicate):
    return sum(1 for n in gm.graph.nodes if predicate(n, gm))


def is_module(kind):
    return lambda n, gm: n.op == "call_module" and isinstance(gm.get_submodule(n.target), kind)


class Spellings(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(6, 6)
        self.r1 = nn.ReLU(inplace=True)
        self.l2 = nn.Linear(6, 6)
        self.r6 = nn.ReLU6()
        self.ht = nn.Hardtanh(0.0, 3.0)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        x = self.r1(self.l1(x))
        x = F.relu(self.l2(x))
        x = torch.relu(x + 1)
        x = x.relu()
        x = torch.clamp(x, min=0)
        x = x.clamp(min=0.0, max=4.0)
        x = F.relu6(x)
        x = self.r6(x)
        x = self.ht(x)
        x = F.hardtanh(x, 0.0, 2.0)
        x = x.clamp_min(0)
        x = F.relu(x, inplace=True)
        return self.out(x)


def test_every_relu_spelling_becomes_a_neuron_with_its_cap():
    model = Spellings().eval()
    prepared = ann2snn.prepare(model, threshold="max")
    obs = list(ann2snn.api.observers(prepared).values())
    assert len(obs) == 12
    assert [o.clip for o in obs] == [None, None, None, None, None, 4.0, 6.0, 6.0, 3.0, 2.0, None, None]
    x = torch.randn(16, 6) * 3
    assert torch.allclose(prepared(x), model(x), atol=1e-6)


def test_pass_node_counts_and_bn_folding_exact():
    model = randomize_bn(SmallResNet())
    prepared = ann2snn.prepare(model, threshold="max")
    passes = prepared.meta["ann2snn"]["passes"]
    assert passes["bn_folded"] == 3 and passes["bn_affine"] == 0
    assert passes["neurons"] == 3
    assert count(prepared, is_module(nn.BatchNorm2d)) == 0
    x = torch.randn(8, 1, 8, 8)
    assert torch.allclose(prepared(x), model(x), atol=1e-5)


def test_bn_after_relu_is_kept_as_affine():
    model = randomize_bn(PoolAfterSpikes())
    prepared = ann2snn.prepare(model, threshold="max")
    assert count(prepared, is_module(Affine)) == 1
    assert prepared.meta["ann2snn"]["passes"]["maxpool_moved"] == 0  # BN stands between neuron and pool
    x = torch.randn(8, 1, 8, 8)
    assert torch.allclose(prepared(x), model(x), atol=1e-5)


def test_dropout_and_identity_removed():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Dropout(0.5), nn.ReLU(), nn.Identity(), nn.Linear(8, 2)).eval()
    prepared = ann2snn.prepare(model)
    assert prepared.meta["ann2snn"]["passes"]["removed"] == 2
    assert count(prepared, is_module((nn.Dropout, nn.Identity))) == 0


def test_maxpool_moves_before_the_neuron_it_follows():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 3)).eval()
    prepared = ann2snn.prepare(model, threshold="max")
    order = [n for n in prepared.graph.nodes if n.op == "call_module"]
    kinds = [type(prepared.get_submodule(n.target)).__name__ for n in order]
    assert kinds == ["Conv2d", "MaxPool2d", "ThresholdObserver", "Flatten", "Linear"]
    x = torch.randn(5, 1, 8, 8)
    assert torch.allclose(prepared(x), model(x), atol=1e-6)


class Bad(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(4)

    def forward(self, x):
        x = self.act(self.l1(x))
        x = torch.sigmoid(self.norm(x))
        return F.softmax(x * x, dim=-1)


def test_unsupported_ops_are_all_listed_with_source_lines():
    with pytest.raises(UnsupportedOperationError) as info:
        ann2snn.prepare(Bad())
    err = info.value
    ops = " ".join(o.op for o in err.offenders)
    assert len(err.offenders) == 5, str(err)
    for word in ("GELU", "LayerNorm", "sigmoid", "mul", "softmax"):
        assert word in ops
    assert all(o.source and "test_convert.py" in o.source for o in err.offenders)
    assert "x = self.act(self.l1(x))" in str(err)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.l1(x)
        return x


def test_data_dependent_control_flow_is_a_clear_error():
    with pytest.raises(UnsupportedOperationError) as info:
        ann2snn.prepare(Branchy())
    assert "control flow" in str(info.value)
    assert "test_convert.py" in str(info.value)


def test_user_model_is_not_modified():
    model = randomize_bn(SmallResNet())
    before = copy.deepcopy(model.state_dict())
    model.train()
    snn = ann2snn.convert(model, torch.randn(32, 1, 8, 8), threshold="ltb", ltb_iters=5)
    assert model.training  # mode untouched
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert isinstance(snn, ann2snn.SpikingModel)


@pytest.mark.parametrize("method", ["max", "percentile", "mse", "ltb"])
def test_methods_and_convergence_with_pool_after_spikes(method):
    model = randomize_bn(PoolAfterSpikes())
    x = torch.randn(64, 1, 8, 8)
    snn = ann2snn.convert(model, x, threshold=method, ltb_iters=300, granularity="channel")
    ref = model(x).detach()
    clip_ref = snn.analog(x, "clip")
    assert count(snn.graph_module, is_module(RunningMaxPool)) == 1
    assert count(snn.graph_module, is_module(SpikingNeuron)) == 2
    err16 = (snn.run(x, 16) - clip_ref).abs().mean()
    err1024 = (snn.run(x, 1024) - clip_ref).abs().mean()
    assert err1024 < err16 / 8
    if method == "max":  # nothing clipped: the SNN converges to the ANN itself
        assert (snn.run(x, 1024) - ref).abs().max() < 0.02 * ref.abs().max()


def test_running_maxpool_beats_plain_pooling_after_spikes():
    model = randomize_bn(PoolAfterSpikes())
    x = torch.randn(64, 1, 8, 8)
    snn = ann2snn.convert(model, x, threshold="max")
    ref = model(x).detach()
    good = (snn.run(x, 512) - ref).abs().mean()
    for m in snn.graph_module.modules():  # swap in the naive rule: max-pool each step's values
        if isinstance(m, RunningMaxPool):
            m.forward = lambda x, *a, m=m, **k: m.pool(x)
    naive = (snn.run(x, 512) - ref).abs().mean()
    assert naive > 5 * good


def test_ltb_thresholds_converge():
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    data = [torch.randn(64, 8) for _ in range(10)]
    prepared = ann2snn.prepare(model, threshold="ltb", ltb_iters=400)
    ann2snn.calibrate(prepared, data)
    obs = next(iter(ann2snn.api.observers(prepared).values()))
    hist = torch.stack(obs.ltb_history)
    steps = (hist[1:] - hist[:-1]).abs().mean(dim=1)
    assert torch.all(hist[1:] >= hist[:-1] - 1e-7)  # monotone from 0
    assert steps[-50:].mean() < steps[:50].mean() / 20
    assert torch.all(obs.result <= obs.max + 1e-6) and torch.all(obs.result > 0)


def test_return_all_matches_runs_at_each_t():
    model = randomize_bn(SmallResNet())
    x = torch.randn(16, 1, 8, 8)
    snn = ann2snn.convert(model, x, threshold="max")
    final, history = snn.run(x, 12, return_all=True)
    assert history.shape == (12, 16, 10)
    assert torch.allclose(history[-1], final)
    for t in (1, 5, 9):
        assert torch.allclose(history[t - 1], snn.run(x, t), atol=1e-6)


def test_delayed_evaluation_averages_only_late_steps():
    model = randomize_bn(SmallResNet())
    x = torch.randn(4, 1, 8, 8)
    snn = ann2snn.convert(model, x, threshold="max")
    snn.reset()
    outs = [snn.step(x) for _ in range(10)]
    assert torch.allclose(snn.run(x, 10, t0=4), torch.stack(outs[4:]).mean(0), atol=1e-6)


def test_save_load_round_trip_bit_exact(tmp_path):
    model = randomize_bn(PoolAfterSpikes())
    x = torch.randn(16, 1, 8, 8)
    snn = ann2snn.convert(model, x, threshold="mse", timesteps=8)
    path = ann2snn.save(snn, tmp_path / "snn.pt")
    again = ann2snn.load(path)
    assert again.config == snn.config
    assert torch.equal(again.run(x, 20), snn.run(x, 20))
    assert again.info["layers"] == snn.info["layers"]


def test_poisson_coding_converges_in_expectation():
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(32, 6)
    snn = ann2snn.convert(model, x, threshold="max")
    ref = model(x).detach()
    err = (snn.run(x, 2000, encoding="poisson") - ref).abs().mean() / ref.abs().mean()
    assert err < 0.1


def test_bad_inputs_give_clear_errors():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with pytest.raises(ConfigError, match="unknown threshold"):
        ann2snn.convert(model, torch.randn(4, 6), threshold="nope")
    with pytest.raises(ConfigError, match="timesteps"):
        ann2snn.convert(model, torch.randn(4, 6), timesteps=0)
    with pytest.raises(CalibrationError, match="empty"):
        ann2snn.convert(model, [])
    with pytest.raises(CalibrationError, match="NaN"):
        ann2snn.convert(model, torch.full((4, 6), float("nan")))
    with pytest.raises(CalibrationError, match="does not fit"):
        ann2snn.convert(model, torch.randn(4, 7))
    snn = ann2snn.convert(model, [(torch.randn(4, 6), torch.zeros(4))])
    with pytest.raises(ConfigError, match="timesteps"):
        snn.run(torch.randn(2, 6), timesteps=-1)
    with pytest.raises(ann2snn.SerializationError):
        ann2snn.load("/nonexistent/file.pt")


def test_percentile_on_a_wide_layer_beyond_quantile_size_limits():
    model = nn.Sequential(nn.Linear(4, 1200), nn.ReLU(), nn.Linear(1200, 2)).eval()
    x = torch.randn(16000, 4)
    prepared = ann2snn.prepare(model, threshold="percentile", percentile=99.0, sample_size=16000)
    ann2snn.calibrate(prepared, x.split(4000))
    obs = next(iter(ann2snn.api.observers(prepared).values()))
    act = torch.relu(model[0](x)).detach()
    positive = torch.where(act > 0, act, torch.full_like(act, float("nan")))
    expected = torch.nan_to_num(torch.nanquantile(positive[:, :10], 0.99, dim=0), nan=0.0)
    assert torch.allclose(obs.result[:10], expected, rtol=1e-4, atol=1e-5)


class TorchvisionStyleBlock(nn.Module):
    """torchvision's BasicBlock calls one ``self.relu`` module twice."""

    def __init__(self, c=4):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


def test_a_relu_module_called_twice_gives_two_named_neuron_layers():
    from ann2snn.energy import measure

    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), TorchvisionStyleBlock(), TorchvisionStyleBlock(),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.randn(16, 1, 6, 6)
    snn = ann2snn.convert(model, x, threshold="max", progress=False)
    neurons = snn.neurons()
    assert list(neurons) == ["1", "2.relu", "2.relu.call2", "3.relu", "3.relu.call2"]
    assert len({id(m) for m in neurons.values()}) == 5
    # each call site has its own thresholds (the two calls see different inputs)
    assert not torch.equal(neurons["2.relu"].threshold, neurons["2.relu.call2"].threshold)
    # per-layer spike counts are the layers' own: compare with hooks on each neuron module
    seen = {name: 0.0 for name in neurons}
    handles = [m.register_forward_hook(lambda mod, i, o, n=name: seen.__setitem__(n, seen[n] + float(mod.last_spikes.sum())))
               for name, m in neurons.items()]
    _, report = measure(snn, x, 8)
    for h in handles:
        h.remove()
    spikes = {layer.name: layer.spikes for layer in report.layers if layer.kind == "neuron"}
    assert set(spikes) == set(neurons)
    for name, total in seen.items():
        assert spikes[name] == pytest.approx(total / len(x), rel=1e-6)
