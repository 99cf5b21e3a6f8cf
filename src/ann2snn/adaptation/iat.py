"""Input-aware Adaptive Timesteps (ALGORITHMS.md §5): each input stops as soon as the network is sure.

At step t a sample's confidence is ``1 - H(p_t) / log C`` (entropy form) or ``max p_t``, with ``p_t``
the softmax of its output averaged so far; it exits at the first t with confidence above
``theta_t = a + b * exp(min_t' e_t' - e_t)``, where ``e_t`` is the mean normalised entropy at step t
on calibration data. Exited samples are dropped from the batch: their neuron states are removed and
no further work (or synaptic operation) is spent on them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..config import field_error
from ..errors import ConfigError
from ..model import SpikingModel

CONFIDENCES = ("entropy", "prob")


def normalised_entropy(logits: Tensor) -> Tensor:
    """``H(softmax(logits)) / log C`` per row, in [0, 1]."""
    logp = torch.log_softmax(logits.flatten(1).float(), dim=1)
    h = -(logp.exp() * logp).sum(1)
    return h / math.log(max(logits.shape[1], 2))


def confidence(logits: Tensor, kind: str = "entropy") -> Tensor:
    if kind == "entropy":
        return 1.0 - normalised_entropy(logits)
    if kind == "prob":
        return torch.softmax(logits.flatten(1).float(), dim=1).amax(1)
    raise field_error("iat_confidence", f"unknown confidence {kind!r}; choose entropy or prob")


@dataclass
class IATSchedule:
    """The exit threshold per step, from the mean entropy on calibration data."""

    a: float
    b: float
    mean_entropy: list[float]
    confidence: str = "entropy"
    fit: dict[str, Any] | None = None  # how (a, b) were chosen, when calibrated to a tolerance

    def thresholds(self) -> list[float]:
        low = min(self.mean_entropy)
        return [self.a + self.b * math.exp(low - e) for e in self.mean_entropy]

    def threshold(self, t: int) -> float:
        """Threshold at step ``t`` (1-based); beyond the calibrated horizon the last one holds."""
        th = self.thresholds()
        return th[min(t, len(th)) - 1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IATSchedule:
        return cls(**d)


@torch.no_grad()
def calibrate_iat(snn: SpikingModel, data: Any, timesteps: int | None = None, a: float = 0.6, b: float = 0.4,
                  kind: str = "entropy", max_batches: int = 100, tolerance: float | None = None,
                  check_fraction: float | None = 0.5, seed: int | None = None) -> IATSchedule:
    """Calibrate the exit schedule on calibration data; stored in ``snn.info['iat']``.

    The mean normalised entropy at every step gives the schedule's shape. With ``tolerance=None`` the
    constants ``a, b`` are used as given (the paper's 0.6 / 0.4). With a tolerance, ``a`` and ``b``
    are chosen per model: the pair that needs the fewest mean steps on the calibration data while at
    most a ``tolerance`` fraction of its samples exit with a prediction different from the one the
    full ``timesteps`` run gives (no labels needed; that disagreement bounds the accuracy lost).

    A schedule fitted on n samples is the fastest of many tries on them and keeps its tolerance on
    those samples only. With ``check_fraction`` (default 0.5) the fit uses the other samples and the
    schedule is checked on these (a seeded random split); while the change of predictions on the
    checked samples exceeds the tolerance the fit is tightened (see :func:`fit_checked`). The change
    measured on the checked samples, with its 95 % Clopper-Pearson interval, is stored as
    ``fit["check"]``: what to expect on new data. ``check_fraction=None`` fits on all samples.

    Under ``torch.distributed`` each rank gives its share of the data; the sums are all-reduced and
    the per-sample confidences gathered, so every rank fits the same schedule.
    """
    from .. import distributed as D
    from ..utils import iter_inputs

    if tolerance is not None and not 0.0 <= tolerance < 1.0:
        raise field_error("iat_tolerance", f"IAT tolerance must be in [0, 1), got {tolerance}")
    timesteps = timesteps or snn.config.timesteps
    sums = torch.zeros(timesteps, dtype=torch.float64)
    confs, preds = [], []
    n = 0
    for i, x in enumerate(iter_inputs(data)):
        if i >= max_batches:
            break
        if x.shape[0] == 0:  # a rank's share can be empty
            continue
        _, history = snn.run(x, timesteps, return_all=True)
        ent = torch.stack([normalised_entropy(h) for h in history])  # [T, B]
        sums += ent.sum(1).double().cpu()
        if tolerance is not None:
            confs.append(torch.stack([confidence(h, kind) for h in history]).cpu())
            preds.append(torch.stack([h.flatten(1).argmax(1) for h in history]).cpu())
        n += x.shape[0]
    if D.is_distributed():
        reduced = D.all_reduce_sum(torch.cat([sums, torch.tensor([float(n)], dtype=torch.float64)]))
        sums, n = reduced[:-1], int(reduced[-1])
    if n == 0:
        raise ConfigError("IAT calibration needs at least one batch")
    schedule = IATSchedule(a, b, (sums / n).tolist(), kind)
    if tolerance is not None:
        conf = torch.cat(confs, 1) if confs else torch.empty(timesteps, 0)
        pred = torch.cat(preds, 1) if preds else torch.empty(timesteps, 0, dtype=torch.long)
        if D.is_distributed():  # samples are columns: gather them in rank order
            conf, pred = D.all_gather_cat(conf.T.contiguous()).T, D.all_gather_cat(pred.T.contiguous()).T
        if check_fraction is None:
            schedule = _fit_schedule(schedule, conf, pred, tolerance)
        else:
            schedule = fit_checked(schedule, conf, pred, tolerance, check_fraction,
                                   snn.config.seed if seed is None else seed)
    snn.info["iat"] = schedule.to_dict()
    return schedule


def exit_steps(thresholds: Tensor, conf: Tensor) -> Tensor:
    """0-based exit step of each sample (columns of ``conf [T, N]``) under per-step ``thresholds [T]``."""
    over = conf > thresholds[:, None]
    over[-1] = True  # everyone stops at the horizon
    return over.to(torch.uint8).argmax(0)  # the first step over the threshold


def _fit_schedule(base: IATSchedule, conf: Tensor, pred: Tensor, tolerance: float) -> IATSchedule:
    """Grid search over (a, b), a + b <= 1.5, for the fewest mean steps within the tolerance."""
    T, n = conf.shape
    final = pred[-1]
    best = None
    grid = [i / 40 for i in range(41)]
    for a in grid:
        for b in grid:
            if a + b > 1.5:
                continue
            th = torch.tensor(IATSchedule(a, b, base.mean_entropy, base.confidence).thresholds(), dtype=conf.dtype)
            steps = exit_steps(th, conf)
            changed = float((pred.gather(0, steps[None])[0] != final).float().mean())
            if changed > tolerance:
                continue
            key = (float(steps.float().mean()), changed, -(a + b))
            if best is None or key < best[0]:
                best = (key, a, b)
    if best is None:  # cannot happen: a schedule no sample passes exits everyone at T, changing nothing
        return base
    (mean_steps, changed, _), a, b = best
    fit = {"tolerance": tolerance, "samples": n, "mean_steps": mean_steps + 1, "changed": changed,
           "paper_a": base.a, "paper_b": base.b}
    return IATSchedule(a, b, base.mean_entropy, base.confidence, fit)


def changed_at_exit(thresholds: Tensor, conf: Tensor, pred: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample: the 0-based exit step and whether its prediction there differs from the last step's."""
    steps = exit_steps(thresholds, conf)
    return steps, pred.gather(0, steps[None])[0] != pred[-1]


def fit_checked(base: IATSchedule, conf: Tensor, pred: Tensor, tolerance: float, check_fraction: float = 0.5,
                seed: int = 0) -> IATSchedule:
    """Fit (a, b) on part of the samples (columns of ``conf`` / ``pred`` ``[T, N]``) and check the
    schedule on the rest; tighten until the changed fraction of the checked samples is within
    ``tolerance``. Tightening first fits again with half the tolerance (while that still lowers the
    number of fitted samples allowed to change), then raises ``a`` by 0.025 at a time; at ``a >= 1``
    no sample exits early, which changes nothing. ``fit`` records the tries, the change and mean
    steps over all samples, and ``check``: the change on the checked samples with its interval."""
    from .checks import estimate, split

    T, n = conf.shape
    fit_idx, check_idx = split(n, check_fraction, seed) if n >= 2 else (torch.arange(n), torch.arange(0))
    conf_fit, pred_fit = conf[:, fit_idx], pred[:, fit_idx]
    conf_chk, pred_chk = conf[:, check_idx], pred[:, check_idx]
    n_fit, n_chk = len(fit_idx), len(check_idx)
    tries: list[dict[str, Any]] = []

    def candidates() -> Iterator[tuple[IATSchedule, float]]:
        target = tolerance
        while True:
            fitted = _fit_schedule(base, conf_fit, pred_fit, target)
            yield fitted, target
            allowed = math.floor(target * n_fit + 1e-9)
            if allowed == 0:
                break
            smaller = target / 2
            while smaller > 0 and math.floor(smaller * n_fit + 1e-9) == allowed:
                smaller /= 2
            target = smaller if math.floor(smaller * n_fit + 1e-9) > 0 else 0.0
        a = fitted.a
        while a < 1.0:
            a = min(1.0, round(a + 0.025, 6))
            yield IATSchedule(a, fitted.b, base.mean_entropy, base.confidence), target

    chosen = None
    for schedule, target in candidates():
        th = torch.tensor(schedule.thresholds(), dtype=conf.dtype)
        _, changed = changed_at_exit(th, conf_chk, pred_chk)
        k = int(changed.sum())
        tries.append({"fit_tolerance": target, "a": schedule.a, "b": schedule.b, "check_changed": k})
        chosen = schedule
        if k <= tolerance * n_chk + 1e-9:
            break
    th = torch.tensor(chosen.thresholds(), dtype=conf.dtype)
    steps, changed = changed_at_exit(th, conf, pred)
    steps_chk, changed_chk = changed_at_exit(th, conf_chk, pred_chk)
    fit = {"tolerance": tolerance, "samples": n, "fit_samples": n_fit, "check_samples": n_chk,
           "mean_steps": float(steps.float().mean()) + 1, "changed": float(changed.float().mean()),
           "check": {**estimate(int(changed_chk.sum()), n_chk),
                     "mean_steps": float(steps_chk.float().mean()) + 1 if n_chk else None},
           "tightened": len(tries) - 1, "tries": tries, "paper_a": base.a, "paper_b": base.b}
    return IATSchedule(chosen.a, chosen.b, base.mean_entropy, base.confidence, fit)


@dataclass
class StepState:
    """What the stream knows after a step, for the samples still running (``active`` indexes them)."""

    t: int
    active: Tensor
    mean_output: Tensor
    confidence: Tensor
    done: Tensor


@dataclass
class IATResult:
    output: Tensor  # in input order: each sample's averaged output at its exit step
    exit_steps: Tensor  # 1-based step at which each sample stopped
    timesteps: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_steps(self) -> float:
        return float(self.exit_steps.float().mean())


class Stream:
    """Step a batch through the SNN and let finished samples leave.

    ``for state in Stream(snn, x, T, schedule): ...`` yields a :class:`StepState` per step; samples
    whose ``done`` flag is set are removed from the batch before the next step. ``result()`` gives
    the outputs in input order.
    """

    def __init__(self, snn: SpikingModel, x: Tensor, timesteps: int | None = None,
                 schedule: IATSchedule | None = None, t0: int | None = None):
        if schedule is None:
            stored = snn.info.get("iat")
            if not stored:
                raise field_error("iat", "no IAT schedule: call ann2snn.calibrate_iat(snn, data) or convert with iat=True")
            schedule = IATSchedule.from_dict(stored)
        self.snn, self.schedule = snn, schedule
        self.timesteps = timesteps or snn.config.timesteps
        self.x = x.to(snn.device)
        if t0 is None:  # the config's delay, where the run is longer than it (as SpikingModel.run)
            t0 = snn.config.t0 if snn.config.t0 < self.timesteps else 0
        self.t0 = t0
        b = x.shape[0]
        self.active = torch.arange(b, device=self.x.device)
        self.output: Tensor | None = None
        self.exit_steps = torch.full((b,), self.timesteps, dtype=torch.long, device=self.x.device)

    def __iter__(self) -> Iterator[StepState]:
        snn = self.snn
        snn.reset()
        for c in snn.counters:
            c.begin(self.x.shape[0], self.x.device)
        xa = self.x
        total = None
        count = 0
        try:
            for t in range(1, self.timesteps + 1):
                out = snn.step(xa)
                if total is None or t - 1 == self.t0:
                    total, count = out, 1
                else:
                    total, count = total + out, count + 1
                mean = total / count
                if self.output is None:
                    self.output = torch.zeros((self.x.shape[0], *mean.shape[1:]), dtype=mean.dtype, device=mean.device)
                conf = confidence(mean, self.schedule.confidence)
                done = conf > self.schedule.threshold(t) if t - 1 >= self.t0 else torch.zeros_like(conf, dtype=torch.bool)
                if t == self.timesteps:
                    done = torch.ones_like(done)
                yield StepState(t, self.active, mean, conf, done)
                if done.any():
                    idx = self.active[done]
                    self.output[idx] = mean[done]
                    self.exit_steps[idx] = t
                    keep = (~done).nonzero().flatten()
                    if keep.numel() == 0:
                        break
                    self.active = self.active[keep]
                    xa, total = xa[keep], total[keep]
                    snn.select(keep)
        finally:
            snn.reset()

    def result(self) -> IATResult:
        return IATResult(self.output, self.exit_steps, self.timesteps)


@torch.no_grad()
def run_iat(snn: SpikingModel, x: Tensor, timesteps: int | None = None, schedule: IATSchedule | None = None,
            t0: int | None = None) -> IATResult:
    """Simulate with per-sample early exit; outputs come back in input order with each exit step.

    The output is averaged over steps ``t >= t0`` (default: the config's ``t0``, as in
    ``SpikingModel.run``), and no sample exits before step ``t0 + 1``."""
    stream = Stream(snn, x, timesteps, schedule, t0)
    for _ in stream:
        pass
    return stream.result()
