"""Classification accuracy of a spiking model at every timestep, with its yardsticks and energy.

One ``snn.run(x, T, return_all=True)`` per batch gives the accuracy at every t = 1..T; beside it the
ANN's accuracy (``snn.analog(x, "relu")``: the original network with BN folded) and the
quantisation ceiling at chosen T (``snn.analog(x, "quant", timesteps=t)``, ALGORITHMS.md §9), and
synaptic operations / energy counted during the same run (:class:`~ann2snn.energy.SynapticCounter`).

    result = evaluate_classifier(snn, test_loader, timesteps=32)
    print(result.to_text())
    result.accuracy_at(8), result.ann_accuracy, result.ceiling[32], result.energy.saving
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from . import distributed as D
from .config import field_error
from .energy import EnergyModel, EnergyReport, LayerStats, SynapticCounter, resolve_energy_model
from .errors import ConfigError
from .model import SpikingModel
from .utils import progress as _progress

__all__ = ["ANNResult", "EvalResult", "default_timesteps", "evaluate_ann", "evaluate_classifier",
           "merge_energy_reports"]


def default_timesteps(t_max: int) -> list[int]:
    """1, 2, 4, 8, ... below ``t_max``, then ``t_max`` itself."""
    ts, t = [], 1
    while t < t_max:
        ts.append(t)
        t *= 2
    ts.append(t_max)
    return ts


@dataclass
class EvalResult:
    """What :func:`evaluate_classifier` measured.

    Attributes:
        accuracy_per_t: SNN accuracy after t = 1..T steps (``accuracy_per_t[t - 1]``), in [0, 1].
        ann_accuracy: the ANN's accuracy (the original network, BN folded).
        ceiling: quantisation-ceiling accuracy at chosen T, ``{T: accuracy}``.
        energy: spikes, SOPs, MACs and energy per sample at T, averaged over all samples (None if off).
        sops_per_t / macs_per_t: SOPs and MACs per sample spent during the first t steps, t = 1..T
            (empty if energy counting is off): the cost of stopping at t.
        iat: with an Input-aware Adaptive Timesteps schedule (``convert --iat``): accuracy, mean steps
            per sample, SOPs / MACs per sample and energy relative to the ANN when each sample stops
            at its own exit step (None without a schedule).
        samples: the number of evaluated samples.
        timesteps: T.
        seconds: wall time of the evaluation.
    """

    accuracy_per_t: list[float]
    ann_accuracy: float
    ceiling: dict[int, float]
    energy: EnergyReport | None
    samples: int
    timesteps: int
    sops_per_t: list[float] = field(default_factory=list)
    macs_per_t: list[float] = field(default_factory=list)
    iat: dict[str, Any] | None = None
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """Accuracy at the full T."""
        return self.accuracy_per_t[-1]

    def accuracy_at(self, t: int) -> float:
        if not 1 <= t <= len(self.accuracy_per_t):
            raise ValueError(f"t must be in 1..{len(self.accuracy_per_t)}, got {t}")
        return self.accuracy_per_t[t - 1]

    def energy_at(self, t: int) -> float | None:
        """SNN energy per sample (J) if the simulation stops after ``t`` steps (None without counting)."""
        if self.energy is None or not self.sops_per_t:
            return None
        m = self.energy.energy_model
        return self.macs_per_t[t - 1] * m.e_mac + self.sops_per_t[t - 1] * m.e_ac

    def rows(self, timesteps: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Table rows at ``timesteps`` (default 1, 2, 4, ..., T): T, SNN accuracy, ceiling (or None),
        SOPs per sample and energy relative to the ANN (None without counting)."""
        ts = list(timesteps) if timesteps is not None else default_timesteps(self.timesteps)
        rows = []
        for t in ts:
            e = self.energy_at(t)
            ann = self.energy.ann_energy if self.energy is not None else 0.0
            rows.append({"T": t, "snn": self.accuracy_at(t), "ceiling": self.ceiling.get(t),
                         "sops": self.sops_per_t[t - 1] if self.sops_per_t else None,
                         "energy_ratio": e / ann if e is not None and ann else None})
        return rows

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (ceiling keys become strings in JSON; ``per_sample`` lists dropped)."""
        energy = None
        if self.energy is not None:
            energy = self.energy.to_dict()
            energy.pop("per_sample", None)
        return {
            "samples": self.samples,
            "timesteps": self.timesteps,
            "accuracy": self.accuracy,
            "ann_accuracy": self.ann_accuracy,
            "accuracy_per_t": list(self.accuracy_per_t),
            "ceiling": {str(t): acc for t, acc in sorted(self.ceiling.items())},
            "energy": energy,
            "sops_per_t": list(self.sops_per_t),
            "macs_per_t": list(self.macs_per_t),
            "iat": self.iat,
            "seconds": self.seconds,
            "meta": self.meta,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def to_text(self, timesteps: Sequence[int] | None = None) -> str:
        """The accuracy table, the ANN and the energy summary, for a terminal."""
        counted = self.energy is not None and bool(self.sops_per_t)
        head = f"{'T':>6}  {'SNN acc':>8}  {'ceiling':>8}  {'SNN-ANN':>8}"
        if counted:
            head += f"  {'SOPs/sample':>13}  {'energy/ANN':>10}"
        lines = [head, "-" * len(head)]
        for r in self.rows(timesteps):
            ceil = f"{r['ceiling'] * 100:7.2f}%" if r["ceiling"] is not None else f"{'-':>8}"
            line = f"{r['T']:>6}  {r['snn'] * 100:7.2f}%  {ceil}  {(r['snn'] - self.ann_accuracy) * 100:+8.2f}"
            if counted:
                line += f"  {r['sops']:>13,.0f}  {r['energy_ratio'] * 100:9.1f}%"
            lines.append(line)
        if self.iat is not None:
            i = self.iat
            line = (f"{'IAT':>6}  {i['accuracy'] * 100:7.2f}%  {'':>8}  {(i['accuracy'] - self.ann_accuracy) * 100:+8.2f}")
            if counted and i.get("sops") is not None:
                line += f"  {i['sops']:>13,.0f}  {i['energy_ratio'] * 100:9.1f}%"
            lines.append(line + f"   (adaptive exit: {i['mean_steps']:.2f} steps per sample on average)")
        lines.append("-" * len(head))
        lines.append(f"{'ANN':>6}  {self.ann_accuracy * 100:7.2f}%   ({self.samples} samples, {self.seconds:.1f} s)")
        e = self.energy
        if e is not None:
            m = e.energy_model
            lines += [
                "",
                f"per sample at T={self.timesteps}: spikes {e.spikes:,.0f}  SOPs {e.sops:,.0f}  MACs {e.macs:,.0f}"
                f"  (ANN: {e.ann_macs:,.0f} MACs)",
                f"energy ({m.name}: {m.e_mac * 1e12:.3g} pJ/MAC, {m.e_ac * 1e12:.3g} pJ/SOP): "
                f"SNN {_uj(e.snn_energy)}, ANN {_uj(e.ann_energy)}, saving {e.saving * 100:.1f} % vs the ANN",
            ]
        return "\n".join(lines)


def _uj(joules: float) -> str:
    return f"{joules * 1e6:.4g} uJ"


# -- aggregation -----------------------------------------------------------------------------------

def merge_energy_reports(reports: Sequence[EnergyReport]) -> EnergyReport:
    """One report over all batches. Counts are summed over the samples of every report (integers held
    exactly in float64, so the order of the reports does not matter) and the per-sample means and
    firing rates derive from those sums."""
    if not reports:
        raise ValueError("no energy reports to merge")
    n = sum(r.samples for r in reports)
    names = list(dict.fromkeys(layer.name for r in reports for layer in r.layers))
    layers = []
    for name in names:
        present = [x for r in reports for x in r.layers if x.name == name]
        first = present[0]
        layers.append(LayerStats(name, first.kind, first.neurons, 0.0, 0.0, 0.0, 0.0, first.ann_macs,
                                 math.fsum(x.total_spikes for x in present), math.fsum(x.total_sops for x in present),
                                 math.fsum(x.total_macs for x in present)))
    per_sample: dict[str, list[float]] = {}
    for r in reports:
        for k, v in r.per_sample.items():
            per_sample.setdefault(k, []).extend(v)
    merged = EnergyReport.from_totals(reports[0].energy_model, n, math.fsum(r.total_steps for r in reports), layers,
                                      per_sample)
    merged.prefix_macs = reports[0].prefix_macs
    return merged


# -- evaluation ------------------------------------------------------------------------------------

def _batches(data: Any, batch_size: int, max_batches: int | None, shard: bool) -> tuple[Iterable, int | None]:
    """(iterable of this rank's ``(x, y)`` batches, their number if known), streamed: nothing is
    copied or loaded ahead. Distributed (with ``shard``), a Dataset or tensor pair is split into
    contiguous runs of whole batches (each rank reads only its samples, and every batch is the batch
    one process would make, so per-batch results are bit-identical); any other iterable is split
    batch by batch (round robin)."""
    split = shard and D.is_distributed()

    def sample_range(n: int) -> tuple[int, int]:
        first, last = D.shard_range(-(-n // batch_size)) if split else (0, -(-n // batch_size))
        return min(first * batch_size, n), min(last * batch_size, n)

    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        n = x.shape[0] if max_batches is None else min(x.shape[0], max_batches * batch_size)
        start, stop = sample_range(n)
        starts = range(start, stop, batch_size)
        return ((x[i:min(i + batch_size, stop)], y[i:min(i + batch_size, stop)]) for i in starts), len(starts)
    if isinstance(data, Dataset) and not isinstance(data, (DataLoader, IterableDataset)):
        n = len(data) if max_batches is None else min(len(data), max_batches * batch_size)
        start, stop = sample_range(n)
        if (start, stop) != (0, len(data)):
            data = Subset(data, range(start, stop))
        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
        return loader, len(loader)
    if isinstance(data, IterableDataset):
        data = DataLoader(data, batch_size=batch_size)
    try:
        total = len(data)
    except TypeError:
        total = None
    if max_batches is not None and total is not None:
        total = min(total, max_batches)
    if split and total is not None:
        total = len(range(D.rank(), total, D.world_size()))

    def batches() -> Iterable:
        for i, batch in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            if not split or i % D.world_size() == D.rank():
                yield batch
    return batches(), total


@torch.no_grad()
def evaluate_classifier(
    snn: SpikingModel,
    data: Any,
    timesteps: int | None = None,
    *,
    energy: EnergyModel | str | dict | None = "45nm",
    progress: bool | None = None,
    max_batches: int | None = None,
    ceiling_at: Sequence[int] | None = None,
    batch_size: int = 256,
    iat: bool | None = None,
    shard: bool = True,
    prefix_macs: str = "step",
    desc: str | None = None,
) -> EvalResult:
    """Accuracy of ``snn`` at every t = 1..T, the ANN's accuracy, the quantisation ceiling and energy.

    Args:
        snn: a converted model whose output is class scores ``[batch, classes]``.
        data: a DataLoader (or any iterable) of ``(x, y)`` batches, a Dataset of ``(x, y)`` items, or
            a pair of tensors ``(x, y)``.
        timesteps: T (default: the model's ``config.timesteps``).
        energy: an energy model or preset name (``45nm``, ``neuromorphic``); ``None`` skips counting.
        progress: show a progress bar (None: only when stderr is a terminal).
        max_batches: stop after this many batches.
        ceiling_at: the T values for the quantisation ceiling (default 1, 2, 4, ..., T).
        batch_size: batch size when ``data`` is a Dataset or a pair of tensors.
        iat: also evaluate with per-sample early exit (the model's IAT schedule); None: if it has one.
        shard: under ``torch.distributed``, split ``data`` across the ranks (default); False when each
            rank already holds its own part. Either way the counts are all-reduced and every rank
            returns the result over all the data.
        prefix_macs: charge the MACs of the layers before the first neuron (whose input is the same
            every step under direct coding) every ``step`` (default, as ALGORITHMS.md §7 counts analog
            layers) or ``once`` per sample (see :mod:`ann2snn.energy`).
        desc: the progress bar's label (default ``evaluating T=...``).

    Data is streamed one batch at a time: a Dataset larger than memory (one that reads its items
    lazily, or an IterableDataset / generator) is evaluated in memory bounded by one batch.
    """
    timesteps = snn.config.timesteps if timesteps is None else timesteps
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps <= 0:
        raise field_error("timesteps", f"timesteps must be a positive integer, got {timesteps!r}")
    if max_batches is not None and max_batches <= 0:
        raise ConfigError(f"max_batches must be a positive integer, got {max_batches!r}")
    ceiling_ts = sorted(set(ceiling_at if ceiling_at is not None else default_timesteps(timesteps)))
    if any(t <= 0 for t in ceiling_ts):
        raise ConfigError(f"ceiling timesteps must be positive, got {ceiling_ts}")
    energy_model = resolve_energy_model(energy) if energy is not None else None
    if prefix_macs not in ("step", "once"):
        raise ConfigError(f"prefix_macs must be 'step' or 'once', got {prefix_macs!r}")
    has_schedule = bool(snn.info.get("iat"))
    if iat and not has_schedule:
        raise field_error("iat", "the model has no IAT schedule: convert it with iat=True (ann2snn convert --iat)")
    use_iat = has_schedule if iat is None else bool(iat)
    iat_correct, iat_steps, iat_sops, iat_macs = 0, 0.0, 0.0, 0.0
    iat_hist = torch.zeros(timesteps, dtype=torch.long)

    batches, total = _batches(data, batch_size, max_batches, shard)
    start = time.perf_counter()
    correct_t = torch.zeros(timesteps, dtype=torch.long)
    correct_ann = 0
    correct_ceiling = dict.fromkeys(ceiling_ts, 0)
    reports: list[EnergyReport] = []
    sops_t = torch.zeros(timesteps, dtype=torch.float64)
    macs_t = torch.zeros(timesteps, dtype=torch.float64)
    samples = 0
    snn.eval()
    for batch in _progress(batches, total, desc or f"evaluating T={timesteps}", progress):
        x, y = _split_batch(batch)
        y = y.to(snn.device)
        if energy_model is not None:
            with SynapticCounter(snn, energy_model, prefix_macs) as counter:
                cumulative = _CumulativeOps(counter)
                snn.step_hooks.append(cumulative)  # after the counter's own hook
                try:
                    _, history = snn.run(x, timesteps, return_all=True)
                finally:
                    snn.step_hooks.remove(cumulative)
            reports.append(counter.report())
            sops_t += torch.tensor(cumulative.sops, dtype=torch.float64)
            macs_t += torch.tensor(cumulative.macs, dtype=torch.float64)
        else:
            _, history = snn.run(x, timesteps, return_all=True)
        correct_t += (_predict(history) == y.unsqueeze(0)).sum(1).cpu()
        correct_ann += int((_predict(snn.analog(x, "relu")) == y).sum())
        for t in ceiling_ts:
            correct_ceiling[t] += int((_predict(snn.analog(x, "quant", timesteps=t)) == y).sum())
        if use_iat:
            from .adaptation.iat import run_iat

            if energy_model is not None:
                with SynapticCounter(snn, energy_model, prefix_macs) as counter:
                    exited = run_iat(snn, x, timesteps)
                rep = counter.report()
                iat_sops += rep.sops * rep.samples
                iat_macs += rep.macs * rep.samples
            else:
                exited = run_iat(snn, x, timesteps)
            iat_correct += int((_predict(exited.output) == y).sum())
            iat_steps += float(exited.exit_steps.sum())
            iat_hist += torch.bincount(exited.exit_steps.cpu() - 1, minlength=timesteps)[:timesteps]
        samples += int(y.shape[0])
    if D.is_distributed():  # counts and sums over every rank's share; energy reports gathered in rank order
        ints = D.all_reduce_sum(torch.tensor([*correct_t.tolist(), correct_ann, samples, iat_correct,
                                              *(correct_ceiling[t] for t in ceiling_ts)], dtype=torch.long))
        correct_t, (correct_ann, samples, iat_correct) = ints[:timesteps], ints[timesteps:timesteps + 3].tolist()
        correct_ceiling = dict(zip(ceiling_ts, ints[timesteps + 3:].tolist(), strict=True))
        floats = D.all_reduce_sum(torch.cat([sops_t, macs_t, torch.tensor([iat_steps, iat_sops, iat_macs],
                                                                          dtype=torch.float64)]))
        sops_t, macs_t = floats[:timesteps], floats[timesteps:2 * timesteps]
        iat_steps, iat_sops, iat_macs = floats[2 * timesteps:].tolist()
        reports = [r for part in D.all_gather_object(reports) for r in part]
        iat_hist = D.all_reduce_sum(iat_hist)
    if samples == 0:
        raise ConfigError("evaluation data is empty")
    merged = merge_energy_reports(reports) if reports else None
    iat_result = None
    if use_iat:
        iat_result = {"accuracy": iat_correct / samples, "mean_steps": iat_steps / samples,
                      "exit_histogram": iat_hist.tolist(),  # samples that stopped after 1, 2, ..., T steps
                      "sops": None, "macs": None, "energy_ratio": None}
        if merged is not None:
            m = merged.energy_model
            sops, macs = iat_sops / samples, iat_macs / samples
            iat_result.update(sops=sops, macs=macs,
                              energy_ratio=(macs * m.e_mac + sops * m.e_ac) / merged.ann_energy if merged.ann_energy else None)
    return EvalResult(
        accuracy_per_t=[float(c) / samples for c in correct_t.tolist()],
        ann_accuracy=correct_ann / samples,
        ceiling={t: c / samples for t, c in correct_ceiling.items()},
        energy=merged,
        samples=samples,
        timesteps=timesteps,
        sops_per_t=(sops_t / samples).tolist() if reports else [],
        macs_per_t=(macs_t / samples).tolist() if reports else [],
        iat=iat_result,
        seconds=time.perf_counter() - start,
    )


@dataclass
class ANNResult:
    """What :func:`evaluate_ann` measured: the ANN's accuracy in [0, 1], the samples, the wall time."""

    accuracy: float
    samples: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "samples": self.samples, "seconds": self.seconds}


@torch.no_grad()
def evaluate_ann(snn: SpikingModel, data: Any, *, progress: bool | None = None, max_batches: int | None = None,
                 batch_size: int = 256, shard: bool = True, desc: str = "evaluating the ANN") -> ANNResult:
    """The ANN alone: ``snn.analog(x, "relu")`` (the original network, BN folded), counted as
    :func:`evaluate_classifier` counts its ``ann_accuracy`` on the same ``data``, and timed. The
    arguments are :func:`evaluate_classifier`'s."""
    if max_batches is not None and max_batches <= 0:
        raise ConfigError(f"max_batches must be a positive integer, got {max_batches!r}")
    batches, total = _batches(data, batch_size, max_batches, shard)
    start = time.perf_counter()
    correct = samples = 0
    snn.eval()
    for batch in _progress(batches, total, desc, progress):
        x, y = _split_batch(batch)
        y = y.to(snn.device)
        correct += int((_predict(snn.analog(x, "relu")) == y).sum())
        samples += int(y.shape[0])
    if D.is_distributed():
        correct, samples = D.all_reduce_sum(torch.tensor([correct, samples], dtype=torch.long)).tolist()
    if samples == 0:
        raise ConfigError("evaluation data is empty")
    return ANNResult(correct / samples, samples, time.perf_counter() - start)


class _CumulativeOps:
    """A step hook that reads a :class:`SynapticCounter`'s running totals (summed over the batch)."""

    def __init__(self, counter: SynapticCounter):
        self.counter = counter
        self.sops: list[float] = []
        self.macs: list[float] = []

    def __call__(self, _snn: SpikingModel) -> None:
        self.counter.flush()  # the counter defers its fan-out products; read totals need them now
        layers = self.counter.layers.values()
        self.sops.append(float(sum(float(la.sops.sum()) for la in layers if la.sops is not None)))
        self.macs.append(float(sum(float(la.macs.sum()) for la in layers if la.macs is not None)))


def _split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        x, y = batch[0], batch[1]
    elif isinstance(batch, dict) and "x" in batch and "y" in batch:
        x, y = batch["x"], batch["y"]
    else:
        raise ConfigError("evaluation batches must be (input, label) pairs")
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    if not x.is_floating_point():
        x = x.float()
    return x, y.long().reshape(-1)


def _predict(scores: Any) -> Tensor:
    if not isinstance(scores, Tensor):
        raise ConfigError(f"the model's output must be a tensor of class scores, got {type(scores).__name__}")
    return scores.argmax(-1)
