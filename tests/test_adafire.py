import itertools
import random

import pytest
import torch
from torch import nn

import ann2snn
from ann2snn.adaptation.burst import (
    SensitivityTable,
    allocate_caps,
    multiple_choice_knapsack,
    reallocate,
    simulate_with_tally,
)

from .helpers import SmallResNet, randomize_bn


def brute_force(costs, values, budget):
    best = None
    for combo in itertools.product(*[range(len(c)) for c in costs]):
        if sum(costs[g][i] for g, i in enumerate(combo)) <= budget:
            v = sum(values[g][i] for g, i in enumerate(combo))
            if best is None or v < best - 1e-12:
                best = v
    return best


@pytest.mark.parametrize("seed", range(25))
def test_knapsack_dp_equals_brute_force(seed):
    rng = random.Random(seed)
    groups, options = rng.randint(1, 4), rng.randint(1, 4)
    costs = [[rng.randint(0, 12) for _ in range(options)] for _ in range(groups)]
    values = [[rng.random() for _ in range(options)] for _ in range(groups)]
    budget = rng.randint(0, 30)
    picked = multiple_choice_knapsack(costs, values, budget)
    expected = brute_force(costs, values, budget)
    if expected is None:
        assert picked is None
    else:
        assert sum(costs[g][i] for g, i in enumerate(picked)) <= budget
        assert sum(values[g][i] for g, i in enumerate(picked)) == pytest.approx(expected)


def test_allocation_respects_the_budget_and_prefers_sensitive_layers():
    table = SensitivityTable(
        layers=["a", "b"], caps=[1, 2, 4],
        sensitivity=[[1.0, 0.5, 0.1], [0.02, 0.01, 0.0]],  # a is sensitive, b is not
        spikes=[[10, 12, 14], [10, 12, 14]], target_cap=2, initial_cap=4, baseline_spikes=24.0, metric="kl",
        timesteps=4, samples=1)
    caps = allocate_caps(table, rho=1.0)
    assert caps == {"a": 4, "b": 1}  # 14 + 10 <= 24
    spent = sum(table.spikes[i][table.caps.index(caps[n])] for i, n in enumerate(table.layers))
    assert spent <= 24
    assert allocate_caps(table, rho=20 / 24) == {"a": 1, "b": 1}


def test_adafire_conversion_allocates_within_budget_and_caches_the_table():
    model = randomize_bn(SmallResNet())
    x = torch.randn(96, 1, 8, 8)
    snn = ann2snn.convert(model, x, threshold="mse", neuron="adafire", timesteps=4, burst_cap=2, burst_initial=4)
    table = SensitivityTable.from_dict(snn.info["sensitivity"])
    caps = snn.info["caps"]
    assert set(caps) == set(snn.neurons()) and all(1 <= m <= 4 for m in caps.values())
    spent = sum(table.spikes[i][table.caps.index(caps[n])] for i, n in enumerate(table.layers))
    assert spent <= 0.95 * table.baseline_spikes + 1e-6
    assert {n: m.cap for n, m in snn.neurons().items()} == caps
    # a new budget re-uses the stored table: no simulation
    calls = []
    snn.step_hooks.append(lambda s: calls.append(1))
    tight = reallocate(snn, 0.5)
    assert not calls
    assert sum(tight.values()) <= sum(caps.values())


def test_clip_value_kept_when_cap_changes():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    x = torch.randn(32, 4)
    snn = ann2snn.convert(model, x, threshold="max", neuron="adafire", burst_alloc="uniform", burst_cap=3)
    n = next(iter(snn.neurons().values()))
    clip = n.threshold * n.cap
    n.set_cap(5)
    assert torch.allclose(n.threshold * 5, clip)
    _, spikes = simulate_with_tally(snn, x, 4)
    assert sum(spikes.values()) > 0


@pytest.mark.parametrize("mode", ["light", "advanced", "both"])
@pytest.mark.parametrize("levels", ["T", "Tm"])
def test_corrections_reduce_each_layers_error(mode, levels):
    model = randomize_bn(SmallResNet(), seed=3)
    x = torch.randn(128, 1, 8, 8)
    snn = ann2snn.convert(model, x, threshold="mse", timesteps=4, correction=mode, neuron="adafire",
                          burst_alloc="uniform", burst_cap=2, mse_levels=levels)
    log = snn.info["correction"]
    assert len(log) == 3
    # With T levels the clipping values are coarse and the errors large: corrections at least halve them.
    # With T*m levels the errors start smaller (finer clipping); corrections still cut every layer's.
    factor = 0.5 if levels == "T" else 0.8
    for name, entry in log.items():
        assert entry["mean_error_after"] < factor * entry["mean_error_before"], name


def test_sops_cost_prices_each_layers_spikes_by_their_fanout():
    table = SensitivityTable(
        layers=["a", "b"], caps=[1, 2, 4],
        sensitivity=[[1.0, 0.6, 0.05], [1.0, 0.6, 0.1]],
        spikes=[[10, 12, 14], [10, 12, 14]], target_cap=2, initial_cap=4, baseline_spikes=24.0, metric="kl",
        timesteps=4, samples=1, baseline_layer_spikes=[12.0, 12.0], sops_per_spike=[100.0, 1.0])
    # counting spikes, a's big cap is the better buy; priced by SOPs (a's spikes cost 100x), b's is
    assert allocate_caps(table, rho=1.0) == {"a": 4, "b": 1}  # 14 + 10 spikes <= 24
    assert allocate_caps(table, rho=1.0, cost="sops") == {"a": 1, "b": 4}  # 1000 + 14 SOPs <= 1212
    with pytest.raises(ValueError):
        allocate_caps(table, cost="joules")


def test_attributed_sops_add_up_to_the_total():
    from ann2snn.energy import SynapticCounter

    model = randomize_bn(SmallResNet())
    x = torch.randn(6, 1, 8, 8)
    snn = ann2snn.convert(model, x, threshold="max", neuron="adafire", burst_alloc="uniform", burst_cap=2)
    with SynapticCounter(snn) as counter:
        snn.run(x, 6)
        caused = counter.attribute()
        report = counter.report()
    assert set(caused) == set(snn.neurons())
    assert sum(caused.values()) == pytest.approx(report.sops * x.shape[0], rel=1e-9)
    assert all(v > 0 for v in caused.values())


def _digits_sensitivity(method):
    from ann2snn.adaptation.burst import fisher_sensitivity_table, sensitivity_table
    from ann2snn.data.datasets import load_digits
    from ann2snn.zoo import create_model

    x = load_digits("train").x[:192]
    snn = ann2snn.convert(create_model("vgg_digits", pretrained=True), x, threshold="mse", neuron="adafire",
                          timesteps=4, burst_alloc="uniform", progress=False)
    measure = fisher_sensitivity_table if method == "fisher" else sensitivity_table
    return measure(snn, x[:128], 4, list(range(1, 9)), 8, 4)


def test_fisher_sensitivity_counts_the_same_spikes_and_ranks_like_the_simulated_table():
    fisher, simulated = _digits_sensitivity("fisher"), _digits_sensitivity("simulate")
    assert fisher.layers == simulated.layers and fisher.caps == simulated.caps
    # each layer's input is the same as in every simulated job: its spikes at every cap too
    assert torch.allclose(torch.tensor(fisher.spikes), torch.tensor(simulated.spikes), rtol=1e-3)
    assert fisher.baseline_spikes == pytest.approx(simulated.baseline_spikes)
    a, b = torch.tensor(fisher.sensitivity).flatten(), torch.tensor(simulated.sensitivity).flatten()
    assert (a >= 0).all() and a.max() > 0
    ranks = [torch.argsort(torch.argsort(t)).double() for t in (a, b)]
    assert torch.corrcoef(torch.stack(ranks))[0, 1] > 0.5  # Spearman correlation of the two estimates


def test_fisher_sensitivity_converts_dense_outputs_and_leaves_the_model_alone():
    model = randomize_bn(SmallResNet())
    before = {k: v.clone() for k, v in model.state_dict().items()}

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = model

        def forward(self, x):
            y = self.body(x)
            return {"logits": y, "map": y[:, :2] * 2}

    x = torch.randn(64, 1, 8, 8)
    snn = ann2snn.convert(TwoHeads().eval(), x, threshold="mse", neuron="adafire", timesteps=4, burst_cap=2,
                          burst_initial=4, sensitivity_method="fisher", sensitivity_metric="mse", progress=False)
    table = SensitivityTable.from_dict(snn.info["sensitivity"])
    assert table.metric == "mse" and len(table.layers) == len(snn.neurons())
    assert all(1 <= m <= 4 for m in snn.info["caps"].values())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ann2snn.ConfigError, match="sensitivity_method"):
        ann2snn.ConversionConfig(sensitivity_method="guess")
