"""Sensitivity Spike Compression (ALGORITHMS.md §4): scale thresholds layer by layer to cut spikes.

For each neuron layer l and scale r in the candidate grid, theta_l <- r * theta_l (the others
unscaled): measure the increase of the output divergence from the ANN, dS_l(r) = S_l(r) - S_base,
and the layer's spikes N_l(r). Choose one r per layer minimising sum N_l(r_l) subject to
sum max(dS_l(r_l), 0) <= tau * S_base, exactly, by dynamic programming. tau = 0 changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from .. import distributed as D
from ..model import SpikingModel
from .burst import (
    _first_tensor,
    divergence_sum,
    reduce_means,
    resolve_metric,
    simulate_with_tally,
    solve_budgeted,
)

DEFAULT_SCALES = tuple(1.0 + 0.5 * i for i in range(19))  # 1.0, 1.5, ..., 10.0


@dataclass
class SSCTable:
    layers: list[str]
    scales: list[float]
    divergence: list[list[float]]  # S_l(r)
    spikes: list[list[float]]  # N_l(r)
    baseline_divergence: float
    baseline_spikes: float
    metric: str
    timesteps: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SSCTable:
        return cls(**d)


@torch.no_grad()
def ssc_table(snn: SpikingModel, x: Tensor, timesteps: int, scales: Sequence[float] = DEFAULT_SCALES,
              metric: str = "auto", progress: bool | None = None) -> SSCTable:
    from ..api import progress as bar

    neurons = snn.neurons()
    ann = _first_tensor(snn.analog(x, "relu"))
    metric = resolve_metric(metric, ann)
    out, base = simulate_with_tally(snn, x, timesteps)
    base_sum, base_count = divergence_sum(_first_tensor(out), ann, metric)
    div_sums, div_counts, job_spikes = [], [], []
    jobs = [(name, r) for name in neurons for r in scales]
    for name, r in bar(jobs, len(jobs), "spike compression", progress):
        neuron = neurons[name]
        original = neuron.threshold.clone()
        neuron.threshold.mul_(r)
        try:
            out, tally = simulate_with_tally(snn, x, timesteps)
        finally:
            neuron.threshold.copy_(original)
        total, count = divergence_sum(_first_tensor(out), ann, metric)
        div_sums.append(total)
        div_counts.append(count)
        job_spikes.append(tally[name])
    # sums over samples, reduced over the ranks' shares of the data (no-op in one process)
    base_div, *divs = reduce_means([base_sum, *div_sums], [base_count, *div_counts])
    base_spikes, *job_spikes = D.sum_floats([sum(base.values()), *job_spikes])
    k = len(scales)
    rows = range(len(neurons))
    return SSCTable(list(neurons), [float(r) for r in scales], [divs[i * k:(i + 1) * k] for i in rows],
                    [job_spikes[i * k:(i + 1) * k] for i in rows], base_div, base_spikes, metric, timesteps)


def choose_scales(table: SSCTable, tau: float, resolution: int = 2000) -> dict[str, float]:
    """Scales minimising total spikes with total divergence increase <= tau * S_base."""
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    if tau == 0 or table.baseline_divergence <= 0:
        return {name: 1.0 for name in table.layers}
    costs = [[max(s - table.baseline_divergence, 0.0) for s in row] for row in table.divergence]
    picked = solve_budgeted(costs, table.spikes, tau * table.baseline_divergence, resolution)
    if picked is None:
        return {name: 1.0 for name in table.layers}
    return {name: table.scales[i] for name, i in zip(table.layers, picked, strict=True)}


@torch.no_grad()
def apply_scales(snn: SpikingModel, scales: dict[str, float]) -> None:
    """Multiply each named layer's threshold (and so its clipping value) by its scale."""
    neurons = snn.neurons()
    for name, r in scales.items():
        neurons[name].threshold.mul_(r)
        # the initial-potential offset of potential correction is absolute: keep it in proportion
        neurons[name].v0_offset.mul_(r)


def compress(snn: SpikingModel, x: Tensor, tau: float, timesteps: int | None = None,
             scales: Sequence[float] = DEFAULT_SCALES, metric: str = "auto",
             progress: bool | None = None, verify: bool = True) -> dict[str, float]:
    """Run SSC on ``snn`` in place with calibration inputs ``x``; returns the chosen scales.

    The table measures each layer's scale with the other layers unscaled, so the increases of the
    chosen combination need not add up as the DP assumes. With ``verify`` (the default) the combination
    is run on ``x``; while its divergence exceeds ``(1 + tau) * S_base`` the DP is re-solved with half
    the allowance (down to no scaling), so the allowance holds on the calibration data as a whole.
    """
    timesteps = timesteps or snn.config.timesteps
    x = x.to(snn.device)
    table = ssc_table(snn, x, timesteps, scales, metric, progress)
    if verify:
        chosen, checks = apply_verified(snn, table, tau, x, timesteps)
    else:
        chosen, checks = choose_scales(table, tau), []
        apply_scales(snn, chosen)
    snn.info["ssc"] = {"tau": tau, "scales": chosen, "table": table.to_dict(), "verified": checks}
    return chosen


@torch.no_grad()
def apply_verified(snn: SpikingModel, table: SSCTable, tau: float, x: Tensor,
                   timesteps: int) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Apply :func:`choose_scales` for ``tau``; while the combination's divergence on ``x`` exceeds
    ``(1 + tau) * S_base``, undo it and re-solve with half the allowance (at last: no scaling).
    Returns the scales kept and the checks made (allowance tried, divergence measured)."""
    original = threshold_state(snn)
    chosen = choose_scales(table, tau)
    apply_scales(snn, chosen)
    checks: list[dict[str, float]] = []
    if tau <= 0 or all(r == 1.0 for r in chosen.values()):
        return chosen, checks
    ann = _first_tensor(snn.analog(x, "relu"))
    limit = (1.0 + tau) * table.baseline_divergence
    budget = tau
    while True:
        out, _ = simulate_with_tally(snn, x, timesteps)
        total, count = divergence_sum(_first_tensor(out), ann, table.metric)
        (div,) = reduce_means([total], [count])
        checks.append({"tau": budget, "divergence": div})
        if div <= limit:
            return chosen, checks
        budget /= 2
        restore_thresholds(snn, original)
        chosen = choose_scales(table, budget) if budget > tau / 64 else {n: 1.0 for n in table.layers}
        apply_scales(snn, chosen)
        if all(r == 1.0 for r in chosen.values()):
            return chosen, checks


def threshold_state(snn: SpikingModel) -> dict[str, tuple[Tensor, Tensor]]:
    """A copy of what SSC scales (each layer's threshold and initial-potential offset)."""
    return {n: (m.threshold.clone(), m.v0_offset.clone()) for n, m in snn.neurons().items()}


@torch.no_grad()
def restore_thresholds(snn: SpikingModel, original: dict[str, tuple[Tensor, Tensor]]) -> None:
    """Undo scaling: put back a :func:`threshold_state` copy."""
    for name, m in snn.neurons().items():
        m.threshold.copy_(original[name][0])
        m.v0_offset.copy_(original[name][1])
