"""Bias ("light") and potential ("advanced") correction [Calib], layer by layer (ALGORITHMS.md §3).

For each neuron layer in graph order, simulate T steps on calibration data, take the per-channel mean
of (SNN output averaged over T) - (ANN activation), and cancel it: *light* subtracts it from the
layer's input current every step (the bias of the layer before it), *advanced* lowers the initial
membrane by that error times T. Later layers are measured after earlier ones are corrected.
Under ``torch.distributed`` every mean is a sum / count reduced over the ranks' shares of the data.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import distributed as D
from ..calibration.observers import channels_last_2d
from ..model import SpikingModel
from . import incremental
from .incremental import IncrementalRunner


class _LayerOutputs:
    """Captures each neuron layer's output: analog (a forward hook) or summed over steps (a step hook)."""

    def __init__(self, snn: SpikingModel, names: list[str]):
        self.neurons = {n: snn.neurons()[n] for n in names}
        self.sums: dict[str, Tensor] = {}
        self.steps = 0

    def __call__(self, snn: SpikingModel) -> None:
        self.steps += 1
        for name, mod in self.neurons.items():
            out = mod.last_spikes * mod.effective_threshold(mod.last_spikes.ndim)
            self.sums[name] = out if name not in self.sums else self.sums[name] + out


def _analog_outputs(snn: SpikingModel, x: Tensor, mode: str) -> dict[str, Tensor]:
    captured: dict[str, Tensor] = {}
    handles = [mod.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out.detach()))
               for name, mod in snn.neurons().items()]
    try:
        snn.analog(x, mode)
    finally:
        for h in handles:
            h.remove()
    return captured


def _channel_mean(err: Tensor, per_channel: bool) -> Tensor:
    rows = channels_last_2d(err, per_channel)
    if not D.is_distributed():
        return rows.mean(dim=0)
    count = torch.tensor([rows.shape[0]], dtype=torch.float64, device=rows.device)
    total = D.all_reduce_sum(torch.cat([rows.double().sum(dim=0), count]))
    return (total[:-1] / total[-1]).to(err.dtype)


def _abs_mean(err: Tensor) -> float:
    if not D.is_distributed():
        return float(err.abs().mean())
    total, count = D.sum_floats([float(err.abs().double().sum()), err.numel()])
    return total / count


@torch.no_grad()
def correct(snn: SpikingModel, x: Tensor, timesteps: int, mode: str = "light", target: str = "clip",
            progress: bool | None = None) -> dict[str, Any]:
    """Correct every neuron layer in place.

    Returns, per layer, the mean over channels of |mean error| (what the correction cancels) and the
    mean absolute error, before and after.
    """
    from ..utils import progress as bar

    if mode not in ("light", "advanced", "both"):
        raise ValueError(f"unknown correction {mode!r}; choose light, advanced or both")
    x = x.to(snn.device)
    reference = _analog_outputs(snn, x, target)
    names = list(snn.neurons())
    # a layer's output depends only on the layers before it: each measurement runs just the part of the
    # network that changed since the last (the layer corrected last, up to the layer measured)
    runner = IncrementalRunner(snn, x, timesteps) if incremental.applies(snn, x) else None
    log: dict[str, Any] = {}
    for name in bar(names, len(names), f"{mode} correction", progress):
        neuron = snn.neurons()[name]
        per_channel = neuron.threshold.numel() > 1
        phases = ["light", "advanced"] if mode == "both" else [mode]
        first = None
        for phase in phases:
            err = _measure(snn, x, timesteps, name, reference[name], runner)
            mu = _channel_mean(err, per_channel).to(neuron.threshold.dtype).reshape(neuron.threshold.shape)
            first = first or {"mean_error_before": float(mu.abs().mean()), "abs_error_before": _abs_mean(err)}
            if phase == "light":
                neuron.bias_shift -= mu
            else:
                neuron.v0_offset -= mu * timesteps
        err = _measure(snn, x, timesteps, name, reference[name], runner)
        mu = _channel_mean(err, per_channel)
        log[name] = {**first, "mean_error_after": float(mu.abs().mean()), "abs_error_after": _abs_mean(err)}
    return log


def _measure(snn: SpikingModel, x: Tensor, timesteps: int, name: str, reference: Tensor,
             runner: IncrementalRunner | None = None) -> Tensor:
    rec = _LayerOutputs(snn, [name])
    if runner is not None:
        runner.run(evaluate=[name], output=False, on_step=lambda _t: rec(snn))
        return rec.sums[name] / rec.steps - reference
    snn.step_hooks.append(rec)
    try:
        snn.run(x, timesteps)
    finally:
        snn.step_hooks.remove(rec)
    return rec.sums[name] / rec.steps - reference
