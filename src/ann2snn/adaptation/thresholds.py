"""``threshold="auto"``: thresholds chosen for the requested number of steps.

LTB and the MSE search err in opposite directions. LTB's clipping values sit low (it stops early on
the clipping error alone), which suits few steps: each spike is worth more and the network's
unevenness error, not the clipping, dominates. The MSE search minimises the clip-and-quantise error
at the configured T and, as T grows, its clipping values rise towards the maxima: it reaches the ANN
where LTB stays a point or two below. Calibration computes both (one pass over the data for the
MSE sample, ``ltb_iters`` batches for LTB); this module simulates the spiking network with each set
of thresholds for ``timesteps`` steps on the adaptation samples and keeps the set whose output is
closest to the ANN's (the same divergence as the burst-cap and SSC searches: symmetric KL of the
softmax outputs for classifiers, MSE for dense outputs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import distributed as D
from ..model import SpikingModel
from .burst import _first_tensor, divergence_sum, reduce_means, resolve_metric


@torch.no_grad()
def choose_thresholds(snn: SpikingModel, x: Tensor, candidates: dict[str, dict[str, Tensor]],
                      timesteps: int | None = None, metric: str | None = None) -> str:
    """Set every neuron layer's threshold to one method's candidate: the method whose spiking model,
    run for ``timesteps`` steps on ``x``, diverges least from the ANN. ``candidates`` maps each layer
    name to ``{method: threshold}``; ties go to the first method listed. The check's figures go to
    ``snn.info["thresholds"]`` (and the picked clipping values to ``snn.info["layers"]``). Returns the
    method picked.

    Under ``torch.distributed`` give every rank the same ``x``: each simulates its share and the sums
    are all-reduced, so every rank picks the same method.
    """
    cfg = snn.config
    timesteps = timesteps or cfg.timesteps
    metric = metric or cfg.sensitivity_metric
    neurons = snn.neurons()
    missing = sorted(set(neurons) - set(candidates))
    if missing:
        raise ValueError(f"no threshold candidates for layer(s) {', '.join(missing)}")
    methods = list(next(iter(candidates.values())))
    if D.is_distributed():
        x = D.local_slice(x)
    x = x.to(snn.device)
    ann = _first_tensor(snn.analog(x, "relu"))
    metric = resolve_metric(metric, ann)
    classes = metric == "kl"
    sums, counts = [], []
    for method in methods:
        _apply(neurons, candidates, method)
        out = _first_tensor(snn.run(x, timesteps))
        total, count = divergence_sum(out, ann, metric)
        agree = float((out.flatten(1).argmax(1) == ann.flatten(1).argmax(1)).sum()) if classes else 0.0
        sums += [total, agree]
        counts += [count, x.shape[0]]
    means = reduce_means(sums, counts)
    samples = int(D.sum_floats([float(x.shape[0])])[0])
    figures: dict[str, dict[str, Any]] = {}
    for i, method in enumerate(methods):
        figures[method] = {"divergence": means[2 * i]}
        if classes:
            figures[method]["agreement"] = means[2 * i + 1]
    picked = min(methods, key=lambda m: figures[m]["divergence"])  # min keeps the first of equals
    _apply(neurons, candidates, picked)
    for row in snn.info.get("layers", []):
        lam = candidates[row["name"]][picked] * (neurons[row["name"]].cap if cfg.neuron == "adafire" else 1)
        row["clip_value_mean"], row["clip_value_max"] = float(lam.mean()), float(lam.max())
    snn.info["thresholds"] = {
        "method": "auto", "picked": picked, "timesteps": timesteps, "samples": samples, "metric": metric,
        "why": f"lowest output divergence ({metric}) from the ANN of the spiking model run for {timesteps} "
               f"steps on {samples} adaptation samples",
        "candidates": figures,
    }
    return picked


def _apply(neurons: dict[str, Any], candidates: dict[str, dict[str, Tensor]], method: str) -> None:
    for name, neuron in neurons.items():
        neuron.threshold.copy_(candidates[name][method].to(neuron.threshold.device))
