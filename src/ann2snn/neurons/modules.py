"""Thin stateful wrappers around :mod:`ann2snn.neurons.functional` that sit where the ReLUs were.

Every stateful module of a spiking model implements ``reset()`` (forget the state; it is rebuilt
lazily on the next step) and ``select(index)`` (keep only some samples of the batch, used when
samples exit early).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..passes.patterns import resolve_function
from . import functional as NF

ANALOG_MODES = ("relu", "clip", "quant")


# -- the fused update ------------------------------------------------------------------------------

def _if_update(v: Tensor, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Charge, fire, subtract for IF neurons: ``(spikes as bool, output, new membrane)``."""
    v = v + x
    spikes = v >= theta
    out = torch.where(spikes, theta, 0.0)
    return spikes, out, v - out


def _burst_update(v: Tensor, x: Tensor, theta: Tensor, cap: float) -> tuple[Tensor, Tensor, Tensor]:
    """The same for burst neurons (up to ``cap`` spikes a step), spikes as float counts."""
    v = v + x
    spikes = torch.floor(v / theta).clamp(0.0, cap)
    spikes = torch.where(v >= theta, spikes.clamp(min=1.0), torch.zeros_like(spikes))
    out = spikes * theta
    return spikes, out, v - out


_COMPILED: dict[str, Any] = {}
_COMPILE_BROKEN: set[str] = set()  # device types where compiling failed once: eager from then on


def fused_update(kind: str, device: torch.device) -> Any:
    """``torch.compile`` of :func:`_if_update` (``kind="if"``) or :func:`_burst_update` (``"burst"``):
    one loop over memory per step instead of four passes; None where it cannot compile (no C++
    compiler for the CPU backend, no Triton for CUDA, or an earlier failure on this device type)."""
    if device.type in _COMPILE_BROKEN or device.type not in ("cpu", "cuda"):
        return None
    if device.type == "cpu":
        import shutil

        if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            _COMPILE_BROKEN.add(device.type)
            return None
    fn = _COMPILED.get(kind)
    if fn is None:
        fn = _COMPILED[kind] = torch.compile(_if_update if kind == "if" else _burst_update, dynamic=None)
    return fn


def broadcast_channel(param: Tensor, ndim: int, channel_dim: int = 1) -> Tensor:
    """View a per-channel vector (or scalar) so that it broadcasts against an ``ndim`` tensor."""
    if param.ndim == 0 or param.numel() == 1 or ndim < 2:
        return param.reshape(())
    shape = [1] * ndim
    shape[channel_dim] = param.numel()
    return param.reshape(shape)


def unique_label(label: str, taken: set[str]) -> str:
    """``label``, or ``label.call<k>`` with the smallest ``k >= 2`` not yet in ``taken``; added to ``taken``."""
    out, k = label, 2
    while out in taken:
        out, k = f"{label}.call{k}", k + 1
    taken.add(out)
    return out


class StatefulModule(nn.Module):
    """Base of every module that carries state across timesteps."""

    def reset(self) -> None:
        raise NotImplementedError

    def select(self, index: Tensor) -> None:
        """Keep only the samples ``index`` (1-D long tensor) of the batch in the state."""
        raise NotImplementedError


class SpikingNeuron(StatefulModule):
    """A layer of integrate-and-fire neurons (burst neurons when ``cap > 1``) with soft reset.

    Emits ``spikes * threshold`` each step, so the next layer's weights stay untouched. The spike
    counts of the last step are kept in ``last_spikes`` for synaptic-operation counting.

    Args:
        threshold: per-channel thresholds (shape ``[C]``) or one scalar.
        cap: burst cap m (1 = IF neuron).
        v0: initial membrane as a fraction of the threshold.
        spread_steps: if > 0, the membrane starts at 0 and ``v0 * threshold / spread_steps`` is added
            every step instead (ALGORITHMS.md §2: the half-threshold start spread over the window).
        clip: an upper bound of the activation it replaces (ReLU6: 6), ``None`` for plain ReLU.
        name: the graph node it replaces, for reports.
        signed: a neuron that has fired may also send negative spikes (up to ``cap`` a step, never
            more than its net count so far) when its membrane falls below 0: each takes back an earlier
            spike. Its net count then follows the rounded ReLU of its running input sum whatever the
            order of the inputs, which inputs that change sign over time (event streams) need.
        bipolar: a neuron for a value with no ReLU (a linear bottleneck): negative spikes whenever the
            membrane falls below 0, with no limit from earlier spikes, so that its net output follows
            its running input sum rounded to whole thresholds, of either sign (clipped at
            ``cap * threshold`` per step). Implies ``signed``. Its analog forms are the identity
            (``relu``), a symmetric clip and a symmetric quantisation.
    """

    def __init__(
        self,
        threshold: Tensor,
        cap: int = 1,
        v0: float = 0.5,
        clip: float | None = None,
        name: str = "",
        spread_steps: int = 0,
        signed: bool = False,
        bipolar: bool = False,
    ) -> None:
        super().__init__()
        threshold = torch.as_tensor(threshold, dtype=torch.float32).detach().clone()
        self.register_buffer("threshold", threshold)
        self.register_buffer("v0_offset", torch.zeros_like(threshold))
        self.register_buffer("bias_shift", torch.zeros_like(threshold))
        self.cap = int(cap)
        self.v0 = float(v0)
        self.spread_steps = int(spread_steps)
        self.clip = clip
        self.name = name
        self.bipolar = bool(bipolar)
        self.signed = bool(signed) or self.bipolar
        self.count: Tensor | None = None  # net spikes so far (signed neurons only)
        self.analog: str | None = None
        self.fused = False  # the compiled update (fused_update); set for a run by SpikingModel.run(fused=True)
        self.quant_timesteps = 0
        self.v: Tensor | None = None
        self.last_spikes: Tensor | None = None
        self.has_bias_shift = False
        self._shift: Tensor | None = None
        self._theta_cache: tuple | None = None

    def extra_repr(self) -> str:
        kind = "IF" if self.cap == 1 else f"AdaFire(cap={self.cap})"
        kind = f"bipolar {kind}" if self.bipolar else f"signed {kind}" if self.signed else kind
        spread = f" spread over {self.spread_steps} steps" if self.spread_steps else ""
        return f"{kind}, channels={self.threshold.numel()}, v0={self.v0}{spread}, name={self.name!r}"

    def spec(self) -> dict[str, Any]:
        return {"cap": self.cap, "v0": self.v0, "clip": self.clip, "name": self.name,
                "threshold_shape": list(self.threshold.shape), "spread_steps": self.spread_steps,
                "signed": self.signed, "bipolar": self.bipolar}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> SpikingNeuron:
        return cls(torch.zeros(spec["threshold_shape"]), spec["cap"], spec["v0"], spec["clip"], spec["name"],
                   int(spec.get("spread_steps", 0)), bool(spec.get("signed", False)), bool(spec.get("bipolar", False)))

    @torch.no_grad()
    def set_cap(self, cap: int) -> None:
        """Change the burst cap, keeping the clipping value ``cap * threshold``."""
        clip_value = self.threshold * self.cap
        self.cap = int(cap)
        self.threshold.copy_(clip_value / self.cap)

    def effective_threshold(self, ndim: int, dtype: torch.dtype | None = None) -> Tensor:
        """The threshold shaped to broadcast over an ``ndim`` input; cached until the buffer changes
        (any in-place update bumps its version counter)."""
        theta = self.threshold
        key = (ndim, dtype, theta.device, theta.data_ptr(), theta._version)
        if self._theta_cache is not None and self._theta_cache[0] == key:
            return self._theta_cache[1]
        # A channel that never activated on calibration data gets threshold 0: it must stay silent.
        out = broadcast_channel(torch.where(theta > 0, theta, torch.full_like(theta, 1e30)), ndim)
        if dtype is not None:
            out = out.to(dtype)
        self._theta_cache = (key, out)
        return out

    def reset(self) -> None:
        self.v = None
        self.count = None
        self.last_spikes = None

    def select(self, index: Tensor) -> None:
        if self.v is not None:
            self.v = self.v.index_select(0, index)
        if self.count is not None:
            self.count = self.count.index_select(0, index)

    def forward(self, x: Tensor) -> Tensor:
        theta = self.effective_threshold(x.ndim, x.dtype)
        if self.analog is not None:
            return self._analog(x, theta)
        if self.v is None:
            offset = broadcast_channel(self.v0_offset, x.ndim).to(x.dtype)
            start = 0.0 if self.spread_steps else self.v0
            self.v = NF.initial_potential(x, theta, start, offset)
            shift = self.bias_shift
            if self.spread_steps:
                shift = shift + self.threshold * (self.v0 / self.spread_steps)
            self.has_bias_shift = bool(shift.any())
            self._shift = broadcast_channel(shift, x.ndim).to(x.dtype) if self.has_bias_shift else None
        if self.has_bias_shift:
            x = x + self._shift
        if self.fused and not self.signed:
            out = self._fused(x, theta)
            if out is not None:
                return out
        # The same dynamics as NF.burst_step, fused and in place on the state this module owns:
        # the charge a spike removes is exactly the output it sends on.
        v = self.v.add_(x)
        fired = None
        if self.cap == 1:
            spikes = v >= theta  # bool: counted as 0/1 spikes
        else:
            # NF.burst_step's values in fewer passes (on the CPU a select with torch.where costs more than
            # the in-place passes below): v >= theta > 0 gives v / theta >= 1 (a correctly rounded quotient
            # never falls below 1), so where the comparison (not the quotient, which may round up to 1 for
            # v just below theta) says the neuron fires the spikes are floor(v / theta) capped; elsewhere
            # 0, as the finite quotient (NaN counted 0) times 0, plus 0 to make a -0 a +0
            fired = torch.ge(v, theta, out=torch.empty_like(v))  # 1.0 where it fires, else 0.0
            spikes = torch.div(v, theta).floor_().clamp_(0.0, float(self.cap)).nan_to_num_(0.0)
            spikes.mul_(fired).add_(0.0)
        if self.signed:
            spikes = self._signed(v, theta, spikes)
        if spikes.dtype == torch.bool:
            # theta where it fires, +0 elsewhere: the map as floats times the thresholds, in place
            out = spikes.to(v.dtype).mul_(theta)
        elif fired is not None and not self.signed:
            out = torch.mul(spikes, theta, out=fired)  # the comparison's memory, no longer needed
        else:
            out = spikes * theta
        v.sub_(out)
        self.last_spikes = spikes
        return out

    def _fused(self, x: Tensor, theta: Tensor) -> Tensor | None:
        """The compiled update (see :func:`fused_update`); None to fall back to the eager one."""
        fn = fused_update("if" if self.cap == 1 else "burst", x.device)
        if fn is None:
            return None
        try:
            if self.cap == 1:
                spikes, out, v = fn(self.v, x, theta)
            else:
                spikes, out, v = fn(self.v, x, theta, float(self.cap))
        except Exception:  # noqa: BLE001 - any compiler failure: the eager update gives the same values
            _COMPILE_BROKEN.add(x.device.type)
            return None
        self.v = v
        self.last_spikes = spikes
        return out

    def spike_events(self) -> Tensor:
        """This step's spikes as events: a negative spike (signed, bipolar) is an event too."""
        return self.last_spikes.abs() if self.signed else self.last_spikes

    def spike_total(self) -> float:
        """This step's spike events summed over the layer and the batch: an exact count (the float64
        sum of :meth:`spike_events`, computed in fewer passes)."""
        events = self.spike_events()
        if events.dtype == torch.bool:
            return float(torch.count_nonzero(events))
        if events.ndim > 1 and events.shape[0] * self.cap < 2**24:
            # whole counts of at most ``cap``: float32 sums over the batch stay exact below 2**24
            return float(events.sum(0).sum(dtype=torch.float64))
        return float(events.sum(dtype=torch.float64))

    def _signed(self, v: Tensor, theta: Tensor, spikes: Tensor) -> Tensor:
        """Add negative spikes where ``v < 0``: ``ceil(-v / theta)``, at most ``cap`` and the net count."""
        spikes = spikes.to(v.dtype)
        if self.bipolar:  # no earlier spikes to take back needed; silent channels (threshold 0) stay silent
            neg = torch.ceil(-v / theta).clamp_(0.0, float(self.cap))
            neg = torch.where(theta < 1e29, neg, torch.zeros_like(neg))
            return spikes - neg
        if self.count is None:
            self.count = torch.zeros_like(v)
        if self.cap == 1:
            neg = ((v < 0) & (self.count > 0)).to(v.dtype)
        else:
            neg = torch.minimum(torch.ceil(-v / theta).clamp_(0.0, float(self.cap)), self.count)
        spikes = spikes - neg
        self.count.add_(spikes)
        return spikes

    def _analog(self, x: Tensor, theta: Tensor) -> Tensor:
        if self.bipolar:  # the value it stands for has no ReLU: identity, symmetric clip or quantisation
            if self.analog == "relu":
                return x
            live = broadcast_channel(self.threshold, x.ndim).to(x.dtype) > 0
            bound = theta * self.cap
            if self.analog == "clip":
                out = torch.clamp(x, -bound, bound)
            else:
                out = torch.sign(x) * NF.quantize(x.abs(), theta, self.quant_timesteps, self.v0, self.cap)
            return torch.where(live, out, torch.zeros_like(out))
        if self.analog == "relu":
            out = torch.relu(x)
            return out.clamp(max=self.clip) if self.clip is not None else out
        live = broadcast_channel(self.threshold, x.ndim).to(x.dtype) > 0
        if self.analog == "clip":
            out = torch.minimum(torch.relu(x), theta * self.cap)
        else:
            out = NF.quantize(x, theta, self.quant_timesteps, self.v0, self.cap)
        return torch.where(live, out, torch.zeros_like(out))


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _tiles(pool: nn.Module, x: Tensor) -> tuple[int, int] | None:
    """``(kh, kw)`` when ``pool`` is a 2-D max-pool over non-overlapping windows that
    :func:`_tiled_max` computes for ``x`` (a 4-D float tensor on the CPU), else None."""
    if type(pool) is not nn.MaxPool2d or pool.return_indices or x.ndim != 4 or x.device.type != "cpu":
        return None
    if not x.is_floating_point():
        return None
    kernel, stride = _pair(pool.kernel_size), _pair(pool.stride if pool.stride is not None else pool.kernel_size)
    if kernel != stride or _pair(pool.padding) != (0, 0) or _pair(pool.dilation) != (1, 1):
        return None
    if pool.ceil_mode and (x.shape[2] % kernel[0] or x.shape[3] % kernel[1]):
        return None
    if x.shape[2] < kernel[0] or x.shape[3] < kernel[1]:
        return None
    return kernel


def _tiled_max(x: Tensor, kh: int, kw: int) -> Tensor:
    """Max-pooling over non-overlapping ``kh x kw`` windows as the elementwise maximum of the windows'
    ``kh * kw`` strided slices: the values of ``nn.MaxPool2d`` (a maximum is exact), several times
    faster than its CPU kernel on NCHW tensors."""
    oh, ow = x.shape[2] // kh, x.shape[3] // kw
    parts = [x[:, :, i:i + oh * kh:kh, j:j + ow * kw:kw] for i in range(kh) for j in range(kw)]
    if len(parts) == 1:
        return parts[0].contiguous()
    out = torch.maximum(parts[0], parts[1])
    for part in parts[2:]:
        if out.requires_grad:  # a differentiable analog pass (gradients for the sensitivity estimate)
            out = torch.maximum(out, part)
        else:
            torch.maximum(out, part, out=out)
    return out


class RunningMaxPool(StatefulModule):
    """Max-pooling that is exact for rate codes (ALGORITHMS.md §6).

    It pools the running sum of its input and emits the increments, so that after t steps the charge
    it has passed on is ``t * maxpool(mean input so far)``; max-pooling is positively homogeneous, so
    ``maxpool(S_t) - maxpool(S_{t-1})`` is exactly that increment.

    ``pool`` is the original pooling module, or ``None`` with ``function`` naming a functional pool
    whose extra arguments arrive in ``forward``.
    """

    def __init__(self, pool: nn.Module | None = None, function: str | None = None) -> None:
        super().__init__()
        if (pool is None) == (function is None):
            raise ValueError("RunningMaxPool needs exactly one of pool / function")
        self.pool = pool
        self.function = function
        # resolved once here, not on every step
        self._function = resolve_function(function) if function is not None else None
        self.analog: str | None = None
        self.total: Tensor | None = None
        self.previous: Tensor | None = None

    def spec(self) -> dict[str, Any]:
        return {"function": self.function}

    def _apply_pool(self, x: Tensor, args: tuple, kwargs: dict) -> Tensor:
        if self.pool is not None:
            tiles = _tiles(self.pool, x)
            return _tiled_max(x, *tiles) if tiles else self.pool(x)
        return self._function(x, *args, **kwargs)

    def reset(self) -> None:
        self.total = None
        self.previous = None

    def select(self, index: Tensor) -> None:
        if self.total is not None:
            self.total = self.total.index_select(0, index)
            self.previous = self.previous.index_select(0, index)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if self.analog is not None:
            return self._apply_pool(x, args, kwargs)
        self.total = x.clone() if self.total is None else self.total.add_(x)
        pooled = self._apply_pool(self.total, args, kwargs)
        out = pooled if self.previous is None else pooled - self.previous
        self.previous = pooled
        return out


class Affine(nn.Module):
    """A per-channel affine map ``x * scale + shift`` (a BatchNorm in eval mode that follows a neuron)."""

    def __init__(self, scale: Tensor, shift: Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).detach().clone())
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32).detach().clone())

    def spec(self) -> dict[str, Any]:
        return {"channels": self.scale.numel()}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Affine:
        return cls(torch.ones(spec["channels"]), torch.zeros(spec["channels"]))

    def forward(self, x: Tensor) -> Tensor:
        return x * broadcast_channel(self.scale, x.ndim).to(x.dtype) + broadcast_channel(self.shift, x.ndim).to(x.dtype)
