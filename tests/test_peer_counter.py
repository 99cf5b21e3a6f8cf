"""The SOP counter that benchmarks/compare_peers.py uses on SpikingJelly's converted models counts by
ann2snn's rules (ALGORITHMS.md §7): checked against a brute-force count on a small residual CNN.
Skipped where SpikingJelly is not installed (CI does not install it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("spikingjelly.activation_based.ann2snn")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compare_peers  # noqa: E402


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(4, 4, 3, stride=1, padding=1)
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        a = self.relu1(self.conv1(x))
        b = self.relu2(self.conv2(a))
        c = self.relu3(self.conv3(b) + a)
        return self.fc(torch.flatten(self.pool(c), 1))


def test_peer_counter_matches_brute_force():
    torch.manual_seed(0)
    model = Residual().eval()
    x = torch.rand(16, 2, 6, 6)
    snn = compare_peers.sj_convert(model, [x[:8], x[8:]], {"recipe": "ltb"})
    counter = compare_peers.PeerCounter(snn)
    neurons = [n.target for n in counter.neurons]
    assert len(neurons) == 3 and len(counter.shortcuts) == 1
    from spikingjelly.activation_based import functional
    functional.reset_net(snn)
    xb = x[:4]
    expect_sops = 0.0
    w2, w3 = torch.ones_like(model.conv2.weight), torch.ones_like(model.conv3.weight)
    with torch.no_grad():
        for _ in range(6):
            snn(xb)
            sa, sb, sc = (counter.spikes[n].double() for n in neurons)
            expect_sops += float(F.conv2d(sa, w2.double(), padding=1).sum())   # a -> conv2
            expect_sops += float(F.conv2d(sb, w3.double(), padding=1).sum())   # b -> conv3
            expect_sops += float(sa.sum())                                     # a -> identity shortcut
            expect_sops += float(sc.sum()) * model.fc.out_features             # c -> avg pool -> fc
            counter.step()
    counter.close()
    assert expect_sops > 0
    assert counter.sops == pytest.approx(expect_sops, rel=1e-12)
    # the analog first layer costs its dense MACs every step: 6 steps x 4 samples
    assert counter.macs == 6 * 4 * (4 * 6 * 6 * 2 * 9)
