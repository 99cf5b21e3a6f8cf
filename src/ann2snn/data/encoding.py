"""Input encoders applied to the input at every SNN timestep.

All encoders are pure functions ``encoder(x, generator=None) -> tensor`` that keep ``x``'s device
and dtype. ``direct`` feeds the analog input unchanged each step (the usual choice for converted
networks: the first layer acts as the encoder). ``poisson`` emits Bernoulli spikes with
probability ``clamp((x - low) / (high - low), 0, 1)``.

Poisson encoding is only meaningful for data in a known range. The bundled datasets are
*normalised* (``(x - mean) / std``), so either give ``[0, 1]`` data with the default range or pass
the normalised range, e.g. ``low=(0 - mean) / std, high=(1 - mean) / std`` (see
:func:`normalised_range`). Spikes are emitted in ``{0, 1}``; a network trained on normalised data
then sees ``0`` / ``1`` rather than the normalised values, so usually ``direct`` is preferable for
converted models.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["ENCODERS", "Encoder", "direct", "get_encoder", "normalised_range", "poisson"]

Encoder = Callable[..., torch.Tensor]


def direct(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Identity encoder: the analog input is presented at every timestep."""
    return x


def poisson(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    low: float = 0.0,
    high: float = 1.0,
) -> torch.Tensor:
    """Bernoulli ("Poisson rate") spikes with probability ``clamp((x - low) / (high - low), 0, 1)``.

    ``generator`` (optional) must live on ``x``'s device. Returns a tensor of 0/1 with ``x``'s
    dtype and device.
    """
    if not high > low:
        raise ValueError(f"poisson encoder needs high > low, got low={low}, high={high}")
    p = x if (low == 0.0 and high == 1.0) else (x - low) / (high - low)
    p = p.clamp(0.0, 1.0)
    r = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (r < p).to(x.dtype)


def normalised_range(mean: float, std: float) -> tuple[float, float]:
    """The ``(low, high)`` that pixel values ``0`` and ``1`` map to after ``(x - mean) / std``."""
    return (0.0 - mean) / std, (1.0 - mean) / std


ENCODERS: dict[str, Encoder] = {"direct": direct, "poisson": poisson}


def get_encoder(name: str) -> Encoder:
    try:
        return ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown encoder {name!r}; choose from {sorted(ENCODERS)}") from None
