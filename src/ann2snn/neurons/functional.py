"""Neuron dynamics as pure step functions: (input, state, parameters) -> (spike count, new state).

No module state, no side effects: the modules in :mod:`ann2snn.neurons.modules` are thin wrappers.
Every function runs on whatever device its inputs live on.
"""

from __future__ import annotations

import torch
from torch import Tensor


def if_step(x: Tensor, v: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    """Integrate-and-fire with reset by subtraction.

    ``v += x``; a spike (1) where ``v >= theta``; ``v -= spike * theta``.  Returns ``(spikes, v)``.
    """
    v = v + x
    spikes = (v >= theta).to(x.dtype)
    return spikes, v - spikes * theta


def burst_step(x: Tensor, v: Tensor, theta: Tensor, cap: int | Tensor) -> tuple[Tensor, Tensor]:
    """AdaFire burst neuron: up to ``cap`` spikes per step, ``s = clamp(floor(v / theta), 0, cap)``.

    With ``cap == 1`` this is exactly :func:`if_step` (the comparison ``v >= theta`` is used for the
    first spike so that rounding in ``v / theta`` can never make the two differ).
    """
    v = v + x
    if isinstance(cap, int) and cap == 1:
        spikes = (v >= theta).to(x.dtype)
    else:
        spikes = torch.floor(v / theta).clamp_(min=0.0)
        spikes = torch.minimum(spikes, torch.as_tensor(cap, dtype=x.dtype, device=x.device))
        # v / theta may round up to exactly 1.0 for v just below theta: the comparison decides.
        spikes = torch.where(v >= theta, spikes.clamp(min=1.0), torch.zeros_like(spikes))
    return spikes, v - spikes * theta


def initial_potential(x: Tensor, theta: Tensor, v0: float, offset: Tensor | None = None) -> Tensor:
    """The membrane at t = 0: ``v0 * theta`` (+ a per-channel offset from potential correction)."""
    v = torch.zeros_like(x) + v0 * theta
    if offset is not None:
        v = v + offset
    return v


def quantize(z: Tensor, theta: Tensor, timesteps: int, v0: float = 0.5, cap: int = 1) -> Tensor:
    """What an ideal rate-coded neuron outputs for a constant input ``z`` over ``timesteps`` steps.

    ``theta / T * clamp(floor(z * T / theta + v0), 0, cap * T)``: ReLU clipped at ``cap * theta`` and
    rounded to ``cap * T`` levels. This is the *quantisation ceiling* activation of ALGORITHMS.md §9.
    """
    levels = torch.floor(z * timesteps / theta + v0).clamp_(0.0, float(cap * timesteps))
    return levels * theta / timesteps
