"""Fit on one part of the adaptation samples, check on the rest: what IAT's exit schedule and SSC's
allowance promise about new data, with a confidence interval that says how many samples stand behind it.

A choice fitted on n samples (the schedule with the fewest steps whose changed predictions stay
within the tolerance, the SSC allowance with the most SOPs cut under a target) is biased towards
those samples: its measured change is the smallest of many tries. Measured on samples it was not
chosen on, the change is an unbiased estimate; the Clopper-Pearson interval around it is exact for a
binomial count, so that a user reads "0 of 128 changed: at most 2.8 % with 95 % confidence" rather
than a bare 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CONFIDENCE = 0.95


def _log_pmf(k: int, n: int, p: float) -> float:
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    return min(1.0, sum(math.exp(_log_pmf(i, n, p)) for i in range(k + 1)))


def _solve(f, target: float) -> float:
    """The p in [0, 1] with f(p) = target for a decreasing f, by bisection (to 1e-10)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval for a proportion seen ``k`` times in ``n``."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    alpha = 1.0 - confidence
    lower = 0.0 if k == 0 else _solve(lambda p: binomial_cdf(k - 1, n, p), 1.0 - alpha / 2)
    upper = 1.0 if k == n else _solve(lambda p: binomial_cdf(k, n, p), alpha / 2)
    return lower, upper


def split(n: int, check_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices of the samples to fit on and of those to check on: a seeded random split of ``range(n)``
    with ``round(n * check_fraction)`` samples (at least one of each when ``n >= 2``) to check."""
    if not 0.0 < check_fraction < 1.0:
        raise ValueError(f"the check fraction must be in (0, 1), got {check_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held = min(max(round(n * check_fraction), 1 if n >= 2 else 0), n - 1) if n >= 2 else 0
    return order[held:].sort().values, order[:held].sort().values


def estimate(changed: int, n: int, confidence: float = CONFIDENCE) -> dict[str, float | int | list[float]]:
    """A change-of-predictions figure as stored in ``snn.info``: count, samples, rate and interval."""
    lower, upper = clopper_pearson(changed, n, confidence)
    return {"changed": changed, "samples": n, "rate": changed / n if n else 0.0,
            "interval": [lower, upper], "confidence": confidence}


def _pct(x: float) -> str:
    return f"{x * 100:.2f} %"


def summaries(info: dict) -> list[str]:
    """One line per calibration choice recorded in ``snn.info`` that was checked on samples: the
    ``auto`` threshold choice, IAT's exit schedule, SSC's allowance chosen for a target."""
    lines = []
    th = info.get("thresholds")
    if th:
        figures = ", ".join(f"{m} {c['divergence']:.4g}" + (f" ({_pct(c['agreement'])} agree)" if "agreement" in c else "")
                            for m, c in th["candidates"].items())
        lines.append(f"thresholds: {th['picked']} (auto), its spiking model closest to the ANN at T = {th['timesteps']} "
                     f"on {th['samples']} adaptation samples; {th['metric']} divergence: {figures}")
    fit = (info.get("iat") or {}).get("fit") or {}
    check = fit.get("check")
    if check:
        lo, hi = check["interval"]
        lines.append(f"IAT schedule: tolerance {_pct(fit['tolerance'])} of predictions changed; on {check['samples']} "
                     f"held-out adaptation samples {check['changed']} changed ({_pct(check['rate'])}, "
                     f"{check['confidence'] * 100:.0f} % interval {_pct(lo)} to {_pct(hi)}), "
                     f"fitted on {fit['fit_samples']}, tightened {fit['tightened']} time(s)")
    ssc = info.get("ssc") or {}
    check = ssc.get("check")
    if check and ssc.get("max_loss") is not None:
        lo, hi = check["interval"]
        cut = 1 - check["sops_after"] / check["sops_before"] if check["sops_before"] else 0.0
        lines.append(f"SSC target: at most {_pct(ssc['max_loss'])} of predictions changed; allowance tau = "
                     f"{ssc['tau']:g}; on {check['samples']} held-out adaptation samples {check['changed']} changed "
                     f"({_pct(check['rate'])}, {check['confidence'] * 100:.0f} % interval {_pct(lo)} to {_pct(hi)}), "
                     f"SOPs {-cut * 100:+.1f} %; chosen on {ssc['fit']['samples']}")
    return lines
