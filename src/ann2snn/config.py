"""Conversion configuration: one frozen, validated dataclass. CLI flags map onto its fields 1:1."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

THRESHOLD_METHODS = ("ltb", "mse", "percentile", "max")
GRANULARITIES = ("channel", "layer")
NEURONS = ("if", "adafire")
ENCODINGS = ("direct", "poisson")
LTB_FORWARDS = ("relu", "clip")
CORRECTIONS = ("none", "light", "advanced", "both")


@dataclass(frozen=True)
class ConversionConfig:
    """Everything that decides how an ANN becomes an SNN.

    Attributes:
        threshold: threshold calibration method: ``ltb`` (local-learning threshold balancing),
            ``mse`` (clipping search minimising the quantisation MSE), ``percentile`` or ``max``.
        granularity: one threshold per output ``channel`` or per ``layer``.
        percentile: the percentile used by ``percentile`` (of the positive activations).
        ltb_iters: LTB iterations (calibration batches, the data is cycled if shorter).
        ltb_lr: LTB step size ``c``.
        ltb_forward: whether the LTB forward pass runs the original ReLU network (``relu``) or the
            network clipped at the current thresholds (``clip``).
        timesteps: default number of simulation steps T (also the quantisation T of the MSE search).
        neuron: ``if`` (integrate-and-fire, soft reset) or ``adafire`` (burst neuron).
        burst_cap: burst cap m for every layer of an AdaFire network (when not allocated per layer).
        v0: initial membrane potential as a fraction of the threshold (0.5 = half-threshold start).
        t0: delayed evaluation: the output is averaged over steps t >= t0 only.
        encoding: ``direct`` (analog input every step) or ``poisson`` (rate-coded input spikes).
        calib_batches: at most this many calibration batches are used (None: all).
        sample_size: per layer, at most this many activation vectors are kept for percentile / mse.
        seed: seed for every random choice made during calibration and Poisson coding.
        correction: bias ("light") / potential ("advanced") correction; ``none`` by default.
        progress: show progress bars (None: only when attached to a terminal).
    """

    threshold: str = "ltb"
    granularity: str = "channel"
    percentile: float = 99.99
    ltb_iters: int = 200
    ltb_lr: float = 1.0
    ltb_forward: str = "relu"
    timesteps: int = 32
    neuron: str = "if"
    burst_cap: int = 1
    v0: float = 0.5
    t0: int = 0
    encoding: str = "direct"
    calib_batches: int | None = None
    sample_size: int = 20000
    seed: int = 0
    correction: str = "none"
    progress: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _choice("threshold", self.threshold, THRESHOLD_METHODS)
        _choice("granularity", self.granularity, GRANULARITIES)
        _choice("neuron", self.neuron, NEURONS)
        _choice("encoding", self.encoding, ENCODINGS)
        _choice("ltb_forward", self.ltb_forward, LTB_FORWARDS)
        _choice("correction", self.correction, CORRECTIONS)
        if not (0.0 < self.percentile <= 100.0):
            raise ConfigError(f"percentile must be in (0, 100], got {self.percentile}")
        _positive_int("timesteps", self.timesteps)
        _positive_int("ltb_iters", self.ltb_iters)
        _positive_int("burst_cap", self.burst_cap)
        _positive_int("sample_size", self.sample_size)
        if self.calib_batches is not None:
            _positive_int("calib_batches", self.calib_batches)
        if not (self.ltb_lr > 0):
            raise ConfigError(f"ltb_lr must be > 0, got {self.ltb_lr}")
        if not (0.0 <= self.v0 <= 1.0):
            raise ConfigError(f"v0 must be in [0, 1] (a fraction of the threshold), got {self.v0}")
        if not isinstance(self.t0, int) or self.t0 < 0:
            raise ConfigError(f"t0 must be an integer >= 0, got {self.t0!r}")
        if self.t0 >= self.timesteps:
            raise ConfigError(f"t0 ({self.t0}) must be smaller than timesteps ({self.timesteps})")

    def replace(self, **overrides: Any) -> ConversionConfig:
        """A copy with some fields changed (validated); unknown names raise ``ConfigError``."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"unknown configuration option(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConversionConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a configuration must be a mapping, got {type(data).__name__}")
        return cls().replace(**data)


def resolve_config(config: ConversionConfig | dict | None, **overrides: Any) -> ConversionConfig:
    """Turn ``None`` / a dict / a config plus keyword overrides into one validated config."""
    if config is None:
        base = ConversionConfig()
    elif isinstance(config, ConversionConfig):
        base = config
    elif isinstance(config, dict):
        base = ConversionConfig.from_dict(config)
    else:
        raise ConfigError(f"config must be a ConversionConfig, a dict or None, got {type(config).__name__}")
    return base.replace(**overrides) if overrides else base


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
