"""Simulation paths: exact counts past 2**24, the static prefix computed once, the fused neuron update
and the time-batched mode, each against the plain step-by-step simulation."""

import numpy as np
import torch
from torch import nn

import ann2snn
from ann2snn.energy import SynapticCounter
from ann2snn.evaluation import merge_energy_reports


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
