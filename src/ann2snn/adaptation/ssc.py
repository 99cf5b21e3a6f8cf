"""Sensitivity Spike Compression (ALGORITHMS.md §4): scale thresholds layer by layer to cut spikes.

For each neuron layer l and scale r in the candidate grid, theta_l <- r * theta_l (the others
unscaled): measure the increase of the output divergence from the ANN, dS_l(r) = S_l(r) - S_base,
and the layer's spikes N_l(r). Choose one r per layer minimising sum N_l(r_l) subject to
sum max(dS_l(r_l), 0) <= tau * S_base, exactly, by dynamic programming. tau = 0 changes nothing.

Three choices beyond the paper, all measured (docs/history.md): the objective may price each layer's
spikes by the synaptic operations one of them causes (``cost="sops"``: what energy counts, so layers
with a large fan-out are compressed first), and a model with bias / potential correction is corrected
again after its thresholds are scaled (the corrections cancel the mean error of the thresholds in use);
the default scale grid steps by 0.25 up to 2 (``FINE_SCALES``; the paper's 0.5 steps: ``PAPER_SCALES``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from .. import distributed as D
from ..model import SpikingModel
from . import incremental
from .burst import (
    _first_tensor,
    divergence_sum,
    priced_run,
    prices,
    reduce_means,
    resolve_metric,
    runner_tally,
    simulate_with_tally,
    solve_budgeted,
)
from .incremental import IncrementalRunner

PAPER_SCALES = tuple(1.0 + 0.5 * i for i in range(19))  # 1.0, 1.5, ..., 10.0
# finer where choices are made (most layers end at 1.25-2), coarser where they are not
FINE_SCALES = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 10.0)
GRIDS = {"fine": FINE_SCALES, "paper": PAPER_SCALES}
DEFAULT_SCALES = FINE_SCALES


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
    sops_per_spike: list[float] | None = None  # per layer: synaptic operations one of its spikes causes
    baseline_sops: float | None = None  # per sample, the whole network unscaled

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SSCTable:
        return cls(**d)


@torch.no_grad()
def ssc_table(snn: SpikingModel, x: Tensor, timesteps: int, scales: Sequence[float] = DEFAULT_SCALES,
              metric: str = "auto", progress: bool | None = None) -> SSCTable:
    from ..utils import progress as bar

    neurons = snn.neurons()
    ann = _first_tensor(snn.analog(x, "relu"))
    metric = resolve_metric(metric, ann)
    out, base, caused, window, base_sops = priced_run(snn, x, timesteps)  # the baseline also prices spikes
    base_sum, base_count = divergence_sum(_first_tensor(out), ann, metric)
    div_sums, div_counts, job_spikes = [], [], []
    jobs = [(name, r) for name in neurons for r in scales]
    # each job scales one layer: only the part of the network downstream of it runs again, on the
    # values the unscaled network computes (kept by a first run)
    runner = IncrementalRunner(snn, x, timesteps) if incremental.applies(snn, x) else None
    if runner is not None:
        runner.run()
    for name, r in bar(jobs, len(jobs), "spike compression", progress):
        neuron = neurons[name]
        original = neuron.threshold.clone(), neuron.v0_offset.clone()
        apply_scales(snn, {name: r})  # the table measures what is applied
        try:
            if runner is None:
                out, tally = simulate_with_tally(snn, x, timesteps)
            else:
                out, spikes = runner_tally(runner, name, commit=False)
                tally = {name: spikes}
        finally:
            neuron.threshold.copy_(original[0])
            neuron.v0_offset.copy_(original[1])
        total, count = divergence_sum(_first_tensor(out), ann, metric)
        div_sums.append(total)
        div_counts.append(count)
        job_spikes.append(tally[name])
    # sums over samples, reduced over the ranks' shares of the data (no-op in one process)
    base_div, *divs = reduce_means([base_sum, *div_sums], [base_count, *div_counts])
    names = list(neurons)
    L = len(names)
    totals = D.sum_floats([*job_spikes, *(base[n] for n in names), *(caused[n] for n in names),
                           *(window[n] for n in names), base_sops, x.shape[0]])
    *totals, base_sops, samples = totals
    job_spikes, layer_spikes = totals[:-3 * L], totals[-3 * L:-2 * L]
    layer_sops, window_spikes = totals[-2 * L:-L], totals[-L:]
    per_spike = prices(layer_sops, window_spikes)
    k = len(scales)
    rows = range(L)
    return SSCTable(names, [float(r) for r in scales], [divs[i * k:(i + 1) * k] for i in rows],
                    [job_spikes[i * k:(i + 1) * k] for i in rows], base_div, sum(layer_spikes), metric, timesteps,
                    per_spike, base_sops / max(samples, 1.0))


COSTS = ("spikes", "sops")


def choose_scales(table: SSCTable, tau: float, resolution: int = 2000, cost: str = "spikes") -> dict[str, float]:
    """Scales minimising total spikes (``cost="spikes"``, the paper) or the synaptic operations they
    cause (``"sops"``) with total divergence increase <= tau * S_base."""
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    if cost not in COSTS:
        raise ValueError(f"unknown SSC cost {cost!r}; choose spikes or sops")
    if tau == 0 or table.baseline_divergence <= 0:
        return {name: 1.0 for name in table.layers}
    if cost == "sops":
        if table.sops_per_spike is None:
            raise ValueError("this SSC table has no per-layer prices; measure it again")
        values = [[n * p for n in row] for row, p in zip(table.spikes, table.sops_per_spike, strict=True)]
    else:
        values = table.spikes
    costs = [[max(s - table.baseline_divergence, 0.0) for s in row] for row in table.divergence]
    picked = solve_budgeted(costs, values, tau * table.baseline_divergence, resolution)
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
             progress: bool | None = None, verify: bool = True, cost: str = "sops",
             correction: str | None = "auto", refine: int = 3) -> dict[str, float]:
    """Run SSC on ``snn`` in place with calibration inputs ``x``; returns the chosen scales.

    ``cost``: the DP minimises the SOPs the layers' spikes cause (default) or their ``"spikes"``.
    ``correction``: after scaling, run bias / potential correction again (``"light"``, ``"advanced"``,
    ``"both"``; ``"auto"``: the model's configured correction; ``None`` / ``"none"``: keep the
    corrections measured for the unscaled thresholds).

    The table measures each layer's scale with the other layers unscaled, so the increases of the
    chosen combination need not add up as the DP assumes. With ``verify`` (the default) the combination
    (corrected again) is run on ``x``; while its divergence exceeds ``(1 + tau) * S_base`` the DP is
    re-solved with half the allowance (down to no scaling), so the allowance holds on the calibration
    data as a whole. Once an allowance passes, ``refine`` bisection steps try allowances between it
    and the smallest allowance that failed (a step whose combination was already run costs nothing),
    and the passing combination with the fewest SOPs (or spikes) measured is kept: halving alone can
    give a larger tau less compression than a smaller one.
    """
    timesteps = timesteps or snn.config.timesteps
    if correction == "auto":
        correction = snn.config.correction
    correction = None if correction in (None, "none") else correction
    x = x.to(snn.device)
    table = ssc_table(snn, x, timesteps, scales, metric, progress)
    chosen, checks = apply_verified(snn, table, tau, x, timesteps, cost=cost, correction=correction, verify=verify,
                                    refine=refine)
    scaled = any(r != 1.0 for r in chosen.values())
    # what is kept: the check marked kept, or the unscaled model when the search fell back to it
    kept = [c for c in checks if c.get("kept")]
    after = kept[-1] if scaled and kept else {"divergence": table.baseline_divergence, "sops": table.baseline_sops}
    # the correction measured for the kept thresholds (per layer, as info["correction"] has it for the
    # unscaled ones): moved from the kept check into its own entry
    recorrection = kept[-1].pop("correction", None) if scaled and kept else None
    snn.info["ssc"] = {"tau": tau, "cost": cost, "recorrected": correction if scaled else None,
                       "correction": recorrection, "scales": chosen,
                       "calibration": {"divergence_before": table.baseline_divergence,
                                       "divergence_after": after["divergence"],
                                       "sops_before": table.baseline_sops, "sops_after": after["sops"]},
                       "table": table.to_dict(), "checks": checks}
    return chosen


@torch.no_grad()
def measure(snn: SpikingModel, x: Tensor, timesteps: int, metric: str, ann: Tensor | None = None,
            spikes: bool = False) -> dict[str, float]:
    """The output divergence from the ANN and the SOPs per sample of ``snn`` as it is, on ``x`` (and,
    with ``spikes``, the spikes per sample)."""
    return _measure_output(snn, x, timesteps, metric, ann, spikes)[0]


def _measure_output(snn: SpikingModel, x: Tensor, timesteps: int, metric: str, ann: Tensor | None = None,
                    spikes: bool = False) -> tuple[dict[str, float], Tensor]:
    """:func:`measure`, and the output of the run it made."""
    from ..energy import SynapticCounter

    if ann is None:
        ann = _first_tensor(snn.analog(x, "relu"))
    with SynapticCounter(snn) as counter:
        out = _first_tensor(snn.run(x, timesteps))
        report = counter.report()
    values = [report.sops * x.shape[0]] + ([report.spikes * x.shape[0]] if spikes else [])
    total, count = divergence_sum(out, ann, metric)
    reduced = reduce_means([total, *values], [count] + [x.shape[0]] * len(values))
    return dict(zip(["divergence", "sops", "spikes"], reduced, strict=False)), out


def apply_corrected(snn: SpikingModel, chosen: dict[str, float], x: Tensor, timesteps: int,
                    correction: str | None) -> dict[str, Any] | None:
    """:func:`apply_scales`, then (when anything was scaled) ``correction`` measured again on ``x``;
    returns the correction's per-layer log (``None`` when none ran)."""
    apply_scales(snn, chosen)
    if correction and any(r != 1.0 for r in chosen.values()):
        from .correction import correct

        return correct(snn, x, timesteps, correction, snn.config.correction_target)
    return None


@torch.no_grad()
def apply_verified(snn: SpikingModel, table: SSCTable, tau: float, x: Tensor, timesteps: int,
                   cost: str = "sops", correction: str | None = None, verify: bool = True, refine: int = 3
                   ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Apply :func:`choose_scales` for ``tau`` (and ``correction`` again, if given) and check the
    combination on ``x``: its divergence must stay within ``(1 + tau) * S_base``. While no allowance
    has passed, the next is half the last (down to tau / 64, then no scaling); once one has, ``refine``
    bisection steps try allowances between the largest allowance that passed and the smallest that
    failed. The passing combination with the lowest measured cost is kept. Returns the scales kept and
    the checks made (allowance tried, divergence and SOPs measured, passed, kept; the kept one also
    carries the log of the ``correction`` run for it). ``verify=False``: the DP's first choice is kept,
    measured once."""
    original = threshold_state(snn)
    try:
        return _search(snn, table, tau, x, timesteps, cost, correction, original, verify, refine)
    except BaseException:  # an error or Ctrl-C half-way leaves the model as it was
        restore_thresholds(snn, original)
        raise


def _search(snn: SpikingModel, table: SSCTable, tau: float, x: Tensor, timesteps: int, cost: str,
            correction: str | None, original: dict[str, tuple[Tensor, Tensor, Tensor]], verify: bool,
            refine: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    unscaled = {n: 1.0 for n in table.layers}
    chosen = choose_scales(table, tau, cost=cost)
    if tau <= 0 or chosen == unscaled:
        return unscaled, []
    log = apply_corrected(snn, chosen, x, timesteps, correction)
    if not verify:
        return chosen, [{"tau": tau, **measure(snn, x, timesteps, table.metric), "passed": None, "kept": True,
                         "correction": log}]
    ann = _first_tensor(snn.analog(x, "relu"))
    limit = (1.0 + tau) * table.baseline_divergence
    key = "sops" if cost == "sops" else "spikes"
    checks: list[dict[str, Any]] = []
    seen: dict[tuple[float, ...], dict[str, Any]] = {}
    # the cheapest passing check, its scales, the model state and correction log that go with them
    best: tuple[dict[str, Any], dict[str, float], dict[str, tuple[Tensor, Tensor, Tensor]], Any] | None = None
    passed, failed, budget = 0.0, tau, tau
    while True:
        signature = tuple(chosen[n] for n in table.layers)
        check = seen.get(signature)
        if check is None:  # a new combination (the DP gives the same one for nearby allowances)
            if checks:
                restore_thresholds(snn, original)
                log = apply_corrected(snn, chosen, x, timesteps, correction)
            measured = measure(snn, x, timesteps, table.metric, ann, spikes=key == "spikes")
            check = {"tau": budget, **measured, "passed": measured["divergence"] <= limit, "kept": False}
            checks.append(check)
            seen[signature] = check
            if check["passed"] and (best is None or check[key] < best[0][key]):
                best = (check, chosen, threshold_state(snn), log)
        if check["passed"]:
            passed = max(passed, budget)
        else:
            failed = min(failed, budget)
        if best is None:
            if budget <= tau / 64:
                break
            budget /= 2
        else:
            if budget == tau or refine <= 0:
                break
            refine -= 1
            budget = (passed + failed) / 2
        chosen = choose_scales(table, budget, cost=cost)
        if chosen == unscaled:
            break
    if best is None:
        restore_thresholds(snn, original)
        return unscaled, checks
    best[0].update(kept=True, correction=best[3])
    restore_thresholds(snn, best[2])
    return best[1], checks


def threshold_state(snn: SpikingModel) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """A copy of what SSC changes: each layer's threshold, initial-potential offset and bias shift."""
    return {n: (m.threshold.clone(), m.v0_offset.clone(), m.bias_shift.clone()) for n, m in snn.neurons().items()}


@torch.no_grad()
def restore_thresholds(snn: SpikingModel, original: dict[str, tuple[Tensor, ...]]) -> None:
    """Undo scaling (and correction after it): put back a :func:`threshold_state` copy."""
    for name, m in snn.neurons().items():
        for tensor, saved in zip((m.threshold, m.v0_offset, m.bias_shift), original[name], strict=False):
            tensor.copy_(saved)


# allowances the target search asks the DP for: from almost nothing to far more than any target needs
TARGET_TAUS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0)


@torch.no_grad()
def _predicted(snn: SpikingModel, x: Tensor, timesteps: int) -> tuple[Tensor, float]:
    """The class each sample of ``x`` gets from ``snn`` and the SOPs per sample of that run."""
    from ..energy import SynapticCounter

    with SynapticCounter(snn) as counter:
        out = _first_tensor(snn.run(x, timesteps))
        sops = counter.report().sops
    return out.flatten(1).argmax(1), sops


def compress_to_target(snn: SpikingModel, x: Tensor, max_loss: float, timesteps: int | None = None,
                       scales: Sequence[float] = DEFAULT_SCALES, metric: str = "auto",
                       progress: bool | None = None, cost: str = "sops", correction: str | None = "auto",
                       check_fraction: float = 0.5, seed: int = 0, table: SSCTable | None = None
                       ) -> dict[str, float]:
    """SSC by target: the thresholds that cut the most SOPs (or spikes) while at most ``max_loss`` of
    the predictions change against the uncompressed SNN, on samples the choice was not made on.

    ``x`` is split (seeded) into a part to choose on and a part to check on (``check_fraction`` of
    it). On the first part the SSC table is measured and the DP asked for its combination at each
    allowance of :data:`TARGET_TAUS`; each distinct combination (corrected again, as in
    :func:`compress`) is run and its changed predictions and cost measured. The cheapest combination
    within ``max_loss`` on the first part is checked on the second; while the check fails, the next
    cheapest is tried (a tightening: it costs more), down to no scaling. ``snn.info["ssc"]`` records the
    allowance kept, the tries, and the change on the checked samples with its 95 % Clopper-Pearson
    interval (``check``): what to expect on new data. Classifiers only (the change of predictions is
    that of the arg-max class). ``table``: an SSC table already measured on the same part of ``x``
    (:func:`target_split`; several targets on one model share it). Returns the chosen scales.
    """
    from ..config import field_error
    from .checks import estimate

    if not 0.0 <= max_loss < 1.0:
        raise field_error("ssc_max_loss", f"ssc_max_loss must be in [0, 1), got {max_loss}")
    timesteps = timesteps or snn.config.timesteps
    if correction == "auto":
        correction = snn.config.correction
    correction = None if correction in (None, "none") else correction
    x = x.to(snn.device)
    if x.shape[0] < 2:
        raise field_error("ssc_max_loss", "ssc_max_loss needs at least 2 adaptation samples (one to choose on, one to check on)")
    x_fit, x_chk = target_split(x, check_fraction, seed)
    ann = _first_tensor(snn.analog(x_fit[:1], "relu"))
    if ann.ndim != 2:
        raise field_error("ssc_max_loss", "ssc_max_loss counts changed classes: it needs a classifier ([batch, classes] "
                          "output); use ssc_tau for other outputs")
    original = threshold_state(snn)
    base_fit, sops_fit = _predicted(snn, x_fit, timesteps)
    base_chk, sops_chk = _predicted(snn, x_chk, timesteps)
    if table is None:
        table = ssc_table(snn, x_fit, timesteps, scales, metric, progress)
    key = "sops" if cost == "sops" else "spikes"
    unscaled = {n: 1.0 for n in table.layers}
    tries: dict[tuple[float, ...], dict[str, Any]] = {}
    try:
        for tau in TARGET_TAUS:
            chosen = choose_scales(table, tau, cost=cost)
            signature = tuple(chosen[n] for n in table.layers)
            if chosen == unscaled or signature in tries:
                continue
            restore_thresholds(snn, original)
            apply_corrected(snn, chosen, x_fit, timesteps, correction)
            # one run gives the divergence, the cost and the predictions
            measured, out = _measure_output(snn, x_fit, timesteps, table.metric, spikes=key == "spikes")
            pred = out.flatten(1).argmax(1)
            changed = int(D.sum_floats([float((pred != base_fit).sum())])[0])
            tries[signature] = {"tau": tau, "scales": chosen, **measured, "fit_changed": changed,
                                "check_changed": None, "kept": False}
        n_fit = int(D.sum_floats([float(x_fit.shape[0])])[0])
        n_chk = int(D.sum_floats([float(x_chk.shape[0])])[0])
        within = sorted((t for t in tries.values() if t["fit_changed"] <= max_loss * n_fit + 1e-9),
                        key=lambda t: t[key])
        kept, log = None, None
        for t in within:  # the cheapest first; each failed check moves to a costlier one
            restore_thresholds(snn, original)
            log = apply_corrected(snn, t["scales"], x_fit, timesteps, correction)
            pred, sops = _predicted(snn, x_chk, timesteps)
            t["check_changed"] = int(D.sum_floats([float((pred != base_chk).sum())])[0])
            t["check_sops"] = D.sum_floats([sops * x_chk.shape[0]])[0] / max(n_chk, 1)
            if t["check_changed"] <= max_loss * n_chk + 1e-9:
                kept = t
                break
        if kept is None:
            restore_thresholds(snn, original)
            log = None
    except BaseException:
        restore_thresholds(snn, original)
        raise
    chosen = kept["scales"] if kept else unscaled
    if kept:
        kept["kept"] = True
    check_changed = kept["check_changed"] if kept else 0
    sops_fit_all = D.sum_floats([sops_fit * x_fit.shape[0]])[0] / max(n_fit, 1)
    sops_chk_all = D.sum_floats([sops_chk * x_chk.shape[0]])[0] / max(n_chk, 1)
    snn.info["ssc"] = {
        "max_loss": max_loss, "tau": kept["tau"] if kept else 0.0, "cost": cost,
        "recorrected": correction if kept else None, "correction": log, "scales": chosen,
        "calibration": {"divergence_before": table.baseline_divergence,
                        "divergence_after": kept["divergence"] if kept else table.baseline_divergence,
                        "sops_before": sops_fit_all, "sops_after": kept["sops"] if kept else sops_fit_all},
        "fit": {"samples": n_fit, "changed": kept["fit_changed"] if kept else 0},
        "check": {**estimate(check_changed, n_chk), "sops_before": sops_chk_all,
                  "sops_after": kept["check_sops"] if kept else sops_chk_all},
        "tries": [{k: v for k, v in t.items() if k != "scales"} for t in tries.values()],
        "table": table.to_dict(),
    }
    return chosen


def target_split(x: Tensor, check_fraction: float = 0.5, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The samples :func:`compress_to_target` chooses on and those it checks on."""
    from .checks import split

    fit_idx, check_idx = split(x.shape[0], check_fraction, seed)
    return x[fit_idx.to(x.device)], x[check_idx.to(x.device)]
