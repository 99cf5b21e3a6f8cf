"""Conversion configuration: one frozen, validated dataclass. CLI flags map onto its fields 1:1."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

THRESHOLD_METHODS = ("auto", "ltb", "mse", "percentile", "max")
GRANULARITIES = ("channel", "layer")
NEURONS = ("if", "adafire")
ENCODINGS = ("direct", "poisson")
LTB_FORWARDS = ("relu", "clip")
BURST_ALLOCS = ("sensitivity", "uniform")
SENSITIVITY_METRICS = ("auto", "kl", "mse")
SENSITIVITY_METHODS = ("simulate", "fisher")
MSE_LEVELS = ("T", "Tm")
CORRECTION_TARGETS = ("clip", "relu")
CORRECTIONS = ("none", "light", "advanced", "both")
BURST_COSTS = ("spikes", "sops")
SSC_COSTS = ("sops", "spikes")
SSC_GRIDS = ("fine", "paper")
IAT_CONFIDENCES = ("entropy", "prob")
V0_MODES = ("initial", "spread")


@dataclass(frozen=True)
class FieldGroup:
    """A group of config fields: ``ann2snn convert --help`` shows their flags together under
    ``title`` with ``summary`` and the docs pages; ``pages`` maps each page (None: none) to the fields
    it explains, and a ConfigError about one of those fields names that page."""

    title: str
    summary: str
    pages: dict[str | None, tuple[str, ...]]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for names in self.pages.values() for name in names)


# Every ConversionConfig field belongs to exactly one group (tests/test_cli.py checks it).
CONFIG_GROUPS: dict[str, FieldGroup] = {
    "thresholds": FieldGroup("thresholds", "how each layer's firing threshold is calibrated", {
        "docs/methods/thresholds.md": ("threshold", "granularity", "percentile", "ltb_iters", "ltb_lr", "ltb_forward",
                                       "mse_levels", "calib_batches", "sample_size"),
    }),
    "neurons": FieldGroup("neurons and simulation", "the neuron model, its burst caps and the simulated steps", {
        "docs/methods/adafire.md": ("neuron", "burst_cap", "burst_initial", "burst_min", "burst_budget",
                                    "burst_alloc", "burst_cost", "sensitivity_metric", "sensitivity_method"),
        "docs/methods/events.md": ("signed", "step_cap"),
        "docs/methods/neurons.md": ("timesteps", "encoding", "v0", "v0_mode", "t0", "spike_linear"),
    }),
    "corrections": FieldGroup("corrections", "bias / membrane-potential corrections after calibration", {
        "docs/methods/corrections.md": ("correction", "correction_target"),
        "docs/methods/thresholds.md": ("adapt_samples",),
    }),
    "ssc": FieldGroup("spike compression (SSC)", "scale thresholds up to cut spikes and SOPs", {
        "docs/methods/ssc.md": ("ssc_tau", "ssc_max_loss", "ssc_cost", "ssc_grid"),
    }),
    "iat": FieldGroup("adaptive timesteps (IAT)", "let each sample stop once its output is confident", {
        "docs/methods/iat.md": ("iat", "iat_a", "iat_b", "iat_confidence", "iat_tolerance"),
    }),
    "other": FieldGroup("output and other", "", {"docs/methods/thresholds.md": ("seed", "progress", "extra")}),
}

FIELD_GROUP: dict[str, str] = {name: key for key, group in CONFIG_GROUPS.items() for name in group.fields}
FIELD_PAGE: dict[str, str] = {name: page for group in CONFIG_GROUPS.values() for page, names in group.pages.items()
                              if page is not None for name in names}


def field_error(name: str, message: str) -> ConfigError:
    """A ConfigError about config field ``name``, ending with the docs page that explains it."""
    page = FIELD_PAGE.get(name)
    return ConfigError(f"{message} (see {page})" if page else message)


@dataclass(frozen=True)
class ConversionConfig:
    """Everything that decides how an ANN becomes an SNN.

    Attributes:
        threshold: threshold calibration method: ``ltb`` (local-learning threshold balancing,
            the default), ``mse`` (clipping search minimising the quantisation MSE at ``timesteps``),
            ``percentile``, ``max`` or ``auto`` (both LTB and MSE are computed, the spiking model is run
            for ``timesteps`` steps on the adaptation samples with each, and the set whose output is
            closest to the ANN's is kept; ``snn.info["thresholds"]`` records the check. LTB wins at
            few steps, MSE as T grows, where LTB stays 1-2 points below the ANN).
        granularity: one threshold per output ``channel`` or per ``layer``.
        percentile: the percentile used by ``percentile`` (of the positive activations).
        ltb_iters: LTB iterations (calibration batches, the data is cycled if shorter).
        ltb_lr: LTB step size ``c``.
        ltb_forward: whether the LTB forward pass runs the original ReLU network (``relu``) or the
            network clipped at the current thresholds (``clip``).
        timesteps: default number of simulation steps T (also the quantisation T of the MSE search).
        neuron: ``if`` (integrate-and-fire, soft reset) or ``adafire`` (burst neuron).
        burst_cap: AdaFire's target cap: every layer's cap with ``burst_alloc="uniform"``, and the cap
            that defines the spike budget B of the sensitivity allocation.
        burst_initial: the cap of the other layers while one layer's sensitivity is measured.
        burst_min: the smallest cap the allocation may choose.
        burst_budget: rho, the allocation keeps total spikes <= rho * B.
        burst_alloc: ``sensitivity`` (per-layer caps by dynamic programming) or ``uniform``.
        burst_cost: what the allocation's budget counts: ``spikes`` (the paper) or ``sops`` (each
            layer's spikes priced by the synaptic operations they cause: a budget on energy).
        sensitivity_metric: ``kl`` (symmetric KL of softmax outputs), ``mse`` (for dense outputs) or
            ``auto`` (KL when the output is ``[batch, classes]``, MSE otherwise).
        sensitivity_method: how the sensitivity table is measured: ``simulate`` (the paper: the
            network simulated to its output once per layer and candidate cap) or ``fisher`` (one
            simulation: each layer's rate and spikes at every cap exactly, their effect on the output
            estimated to second order from the ANN's gradients; for deep or large models, where the
            simulated table costs layers x caps runs of the network below each layer).
        mse_levels: the MSE search quantises to ``T * burst_cap`` (``Tm``, the levels a burst neuron
            with the target cap can emit) or to ``T`` levels; the same for IF neurons (m = 1).
            ``Tm`` gave the same accuracy with 20-30 % fewer SOPs on VGG and +2.6 points on
            MobileNetV2 at T = 4 (benchmarks/results/adafire_tm.json against adafire*.json).
        adapt_samples: calibration samples kept for sensitivity analysis and corrections.
        correction_target: corrections aim at the ``clip``-ped ANN activations or the plain ``relu`` ones.
        ssc_tau: Sensitivity Spike Compression allowance tau (0: off): thresholds are scaled layer by
            layer to cut spikes while the output divergence grows by at most tau * its baseline.
            A configured correction is measured again after the scaling.
        ssc_max_loss: SSC by target (None: off): the thresholds are scaled to cut the most SOPs while at
            most this fraction of predictions (e.g. 0.005) changes against the uncompressed SNN, chosen
            on half of the adaptation samples and checked on the other half (the allowance tau is found,
            tightened until the check holds); ``snn.info["ssc"]["check"]`` holds the change on the
            checked samples with its 95 % interval. Classifiers only; not together with ``ssc_tau``.
        ssc_cost: what SSC minimises: ``sops`` (the default: each layer's spikes priced by the
            synaptic operations they cause, so large fan-outs are compressed first) or ``spikes``
            (the paper). The same choice on VGG; more SOPs cut per point on MobileNetV2.
        ssc_grid: SSC's candidate scales: ``fine`` (1, 1.25, ..., 2, 2.5, ..., 10) or ``paper``
            (1, 1.5, ..., 10).
        iat: calibrate an Input-aware Adaptive Timesteps schedule (stored with the model).
        iat_a, iat_b: the schedule's constants in theta_t = a + b * exp(min e - e_t).
        iat_confidence: ``entropy`` (1 - H / log C) or ``prob`` (max probability).
        iat_tolerance: if set, ``iat_a`` / ``iat_b`` are not used as given but fitted per model: the
            fewest mean steps with at most this fraction of samples exiting with a prediction other than
            the full run's (e.g. 0.005): fitted on half of the adaptation samples, checked on the other
            half and tightened until the check holds; ``snn.info["iat"]["fit"]["check"]`` holds the
            change on the checked samples with its 95 % interval.
        v0: initial membrane potential as a fraction of the threshold (0.5 = half-threshold start).
        v0_mode: ``initial`` (the membrane starts at ``v0 * theta``) or ``spread`` (it starts at 0 and
            ``v0 * theta / T`` is added every step: the same charge over T steps, spread out).
        t0: delayed evaluation: the output is averaged over steps t >= t0 only.
        signed: signed neurons: a neuron that has fired sends a negative spike (taking one back) when
            its membrane falls below 0, so that its net count follows the rounded ReLU of its running
            input sum even when the input changes sign over time (event streams, one frame per step).
            Not exportable to NIR / the portable format.
        spike_linear: put a bipolar neuron (spikes of either sign) on every value that reaches a weight
            layer without a ReLU (MobileNet's linear bottlenecks and the residual sums they feed), so
            that layer runs on spikes (SOPs) instead of analog values (MACs) every step. The network's
            input and outputs stay analog. Off by default: it adds quantisation where the ANN had none.
        step_cap: IF neurons only: up to this many spikes per step, each worth the full threshold, so a
            neuron can pass up to ``step_cap`` times its clip value in one step. Inputs that arrive in
            bursts (one event frame per step) then need not wait for later steps; the resolution stays
            ``threshold / T``. 1: plain IF.
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
    ltb_iters: int = 64
    ltb_lr: float = 1.0
    ltb_forward: str = "relu"
    timesteps: int = 32
    neuron: str = "if"
    burst_cap: int = 4
    burst_initial: int = 8
    burst_min: int = 1
    burst_budget: float = 0.95
    burst_alloc: str = "sensitivity"
    burst_cost: str = "spikes"
    sensitivity_metric: str = "auto"
    sensitivity_method: str = "simulate"
    mse_levels: str = "Tm"
    adapt_samples: int = 256
    correction_target: str = "clip"
    ssc_tau: float = 0.0
    ssc_max_loss: float | None = None
    ssc_cost: str = "sops"
    ssc_grid: str = "fine"
    iat: bool = False
    iat_a: float = 0.6
    iat_b: float = 0.4
    iat_confidence: str = "entropy"
    iat_tolerance: float | None = None
    v0: float = 0.5
    v0_mode: str = "initial"
    t0: int = 0
    signed: bool = False
    spike_linear: bool = False
    step_cap: int = 1
    encoding: str = "direct"
    calib_batches: int | None = None
    sample_size: int = 20000
    seed: int = 0
    correction: str = "none"
    progress: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_types(self)
        _choice("threshold", self.threshold, THRESHOLD_METHODS)
        _choice("granularity", self.granularity, GRANULARITIES)
        _choice("neuron", self.neuron, NEURONS)
        _choice("encoding", self.encoding, ENCODINGS)
        _choice("ltb_forward", self.ltb_forward, LTB_FORWARDS)
        _choice("correction", self.correction, CORRECTIONS)
        _choice("burst_alloc", self.burst_alloc, BURST_ALLOCS)
        _choice("burst_cost", self.burst_cost, BURST_COSTS)
        _choice("ssc_cost", self.ssc_cost, SSC_COSTS)
        _choice("ssc_grid", self.ssc_grid, SSC_GRIDS)
        _choice("v0_mode", self.v0_mode, V0_MODES)
        _choice("sensitivity_metric", self.sensitivity_metric, SENSITIVITY_METRICS)
        _choice("sensitivity_method", self.sensitivity_method, SENSITIVITY_METHODS)
        _choice("mse_levels", self.mse_levels, MSE_LEVELS)
        _choice("correction_target", self.correction_target, CORRECTION_TARGETS)
        _choice("iat_confidence", self.iat_confidence, IAT_CONFIDENCES)
        if not (self.ssc_tau >= 0):
            raise field_error("ssc_tau", f"ssc_tau must be >= 0, got {self.ssc_tau}")
        if self.ssc_max_loss is not None:
            if not (0.0 <= self.ssc_max_loss < 1.0):
                raise field_error("ssc_max_loss", f"ssc_max_loss must be in [0, 1), got {self.ssc_max_loss}")
            if self.ssc_tau > 0:
                raise field_error("ssc_tau", "give ssc_tau (the paper's allowance) or ssc_max_loss (a target), not both")
        for name in ("burst_initial", "burst_min", "adapt_samples"):
            _positive_int(name, getattr(self, name))
        if not (self.burst_min <= self.burst_cap <= self.burst_initial):
            raise field_error("burst_cap", f"need burst_min <= burst_cap <= burst_initial, got {self.burst_min}, "
                              f"{self.burst_cap}, {self.burst_initial}")
        if not (0.0 < self.burst_budget <= 10.0):
            raise field_error("burst_budget", f"burst_budget (rho) must be in (0, 10], got {self.burst_budget}")
        if not (0.0 < self.percentile <= 100.0):
            raise field_error("percentile", f"percentile must be in (0, 100], got {self.percentile}")
        _positive_int("timesteps", self.timesteps)
        _positive_int("ltb_iters", self.ltb_iters)
        _positive_int("burst_cap", self.burst_cap)
        _positive_int("step_cap", self.step_cap)
        if self.step_cap > 1 and self.neuron != "if":
            raise field_error("step_cap", f"step_cap={self.step_cap} applies to IF neurons; AdaFire sets its caps itself")
        _positive_int("sample_size", self.sample_size)
        if self.calib_batches is not None:
            _positive_int("calib_batches", self.calib_batches)
        if not (self.ltb_lr > 0):
            raise field_error("ltb_lr", f"ltb_lr must be > 0, got {self.ltb_lr}")
        if not (0.0 <= self.v0 <= 1.0):
            raise field_error("v0", f"v0 must be in [0, 1] (a fraction of the threshold), got {self.v0}")
        if not (0 <= self.seed < 2**63):
            raise field_error("seed", f"seed must be in [0, 2**63), got {self.seed}")
        if self.iat_tolerance is not None and not (0.0 <= self.iat_tolerance < 1.0):
            raise field_error("iat_tolerance", f"iat_tolerance must be in [0, 1), got {self.iat_tolerance}")
        if not isinstance(self.t0, int) or self.t0 < 0:
            raise field_error("t0", f"t0 must be an integer >= 0, got {self.t0!r}")
        if self.t0 >= self.timesteps:
            raise field_error("t0", f"t0 ({self.t0}) must be smaller than timesteps ({self.timesteps})")

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


_FIELD_TYPES: dict[str, tuple[type, ...]] = {}
_TYPE_WORDS = {float: "a number", int: "an integer", str: "a string", bool: "true or false", dict: "a table",
               type(None): "None"}


def _check_types(cfg: ConversionConfig) -> None:
    """Every field holds a value of its declared type (an int is fine where a float belongs, a bool is
    not a number), and every float is finite: a config file with ``timesteps = "32"`` or
    ``percentile = nan`` fails here with the field's name instead of deep inside calibration."""
    if not _FIELD_TYPES:
        hints = typing.get_type_hints(ConversionConfig)
        for f in dataclasses.fields(ConversionConfig):
            tp = hints[f.name]
            origin = typing.get_origin(tp)
            # ``int | None`` -> (int, NoneType); ``dict[str, Any]`` -> (dict,)
            allowed = typing.get_args(tp) if origin in (typing.Union, types.UnionType) else (origin or tp,)
            _FIELD_TYPES[f.name] = allowed + ((int,) if float in allowed and int not in allowed else ())
    for name, allowed in _FIELD_TYPES.items():
        value = getattr(cfg, name)
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        if not ok:
            shown = [t for t in allowed if not (t is int and float in allowed)]
            expected = " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in shown)
            raise field_error(name, f"{name} must be {expected}, got {type(value).__name__} {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise field_error(name, f"{name} must be a finite number, got {value!r}")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise field_error(name, f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise field_error(name, f"{name} must be a positive integer, got {value!r}")
