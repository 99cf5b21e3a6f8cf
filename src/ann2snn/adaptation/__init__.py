"""Calibration that simulates the spiking network to decide: AdaFire burst caps (:mod:`.burst`),
bias / potential correction (:mod:`.correction`), Sensitivity Spike Compression (:mod:`.ssc`) and the
Input-aware Adaptive Timesteps exit schedule (:mod:`.iat`).

The thresholds these steps start from are set earlier, on the ANN graph, by the observers of
:mod:`ann2snn.calibration`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor

from .. import distributed as D
from ..errors import CalibrationError
from ..model import SpikingModel
from . import burst, correction
from .iat import calibrate_iat
from .ssc import GRIDS, compress, compress_to_target


def adapt(snn: SpikingModel, x: Tensor, *, progress_bar: bool | None = None) -> SpikingModel:
    """The calibration steps that simulate the SNN itself, on calibration inputs ``x``:

    * AdaFire (``neuron="adafire"``): per-layer burst caps, by sensitivity analysis and dynamic
      programming (``burst_alloc="sensitivity"``) or all equal to ``burst_cap`` (``"uniform"``);
    * ``correction``: bias ("light"), potential ("advanced") or both, layer by layer;
    * ``ssc_tau > 0``: Sensitivity Spike Compression; ``ssc_max_loss``: the same, to a target change
      of predictions checked on held-out adaptation samples;
    * ``iat``: the Input-aware Adaptive Timesteps exit schedule.

    Under ``torch.distributed`` give every rank the same ``x``: each simulates its share and the
    sums behind every statistic are all-reduced, so all ranks make the single-process choices.
    """
    cfg = snn.config
    progress_bar = cfg.progress if progress_bar is None else progress_bar
    if D.is_distributed():
        if x.shape[0] < D.world_size():
            raise CalibrationError(f"{x.shape[0]} adaptation samples cannot be shared by {D.world_size()} "
                                   f"processes: raise adapt_samples (and give at least that many calibration samples)")
        x = D.local_slice(x)  # every rank has the same samples: each simulates its share
    x = x.to(snn.device)
    times = snn.info.setdefault("stage_times", {})
    if cfg.neuron == "adafire" and cfg.burst_alloc == "sensitivity":
        with stage_timer(times, "sensitivity"):
            measure = burst.fisher_sensitivity_table if cfg.sensitivity_method == "fisher" else burst.sensitivity_table
            table = measure(snn, x, cfg.timesteps, list(range(cfg.burst_min, cfg.burst_initial + 1)),
                            cfg.burst_initial, cfg.burst_cap, cfg.sensitivity_metric, progress_bar)
            snn.info["sensitivity"] = table.to_dict()
            caps = burst.allocate_caps(table, cfg.burst_budget, cfg.burst_min, cost=cfg.burst_cost)
            burst.apply_caps(snn, caps)
            snn.info["caps"] = caps
    if cfg.correction != "none":
        with stage_timer(times, "correction"):
            snn.info["correction"] = correction.correct(snn, x, cfg.timesteps, cfg.correction,
                                                        cfg.correction_target, progress_bar)
    if cfg.ssc_tau > 0:
        with stage_timer(times, "ssc"):
            compress(snn, x, cfg.ssc_tau, cfg.timesteps, GRIDS[cfg.ssc_grid], metric=cfg.sensitivity_metric,
                     progress=progress_bar, cost=cfg.ssc_cost)
    elif cfg.ssc_max_loss is not None:
        with stage_timer(times, "ssc"):
            compress_to_target(snn, x, cfg.ssc_max_loss, cfg.timesteps, GRIDS[cfg.ssc_grid],
                               metric=cfg.sensitivity_metric, progress=progress_bar, cost=cfg.ssc_cost,
                               seed=cfg.seed)
    if cfg.iat:
        with stage_timer(times, "iat"):
            calibrate_iat(snn, x.split(64), cfg.timesteps, cfg.iat_a, cfg.iat_b, cfg.iat_confidence,
                          tolerance=cfg.iat_tolerance, seed=cfg.seed)
    return snn


@contextmanager
def stage_timer(times: dict[str, float], stage: str) -> Iterator[None]:
    """Record the wall time of the block in ``times[stage]`` (seconds)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        times[stage] = round(time.perf_counter() - start, 3)
