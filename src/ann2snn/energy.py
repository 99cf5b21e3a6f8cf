"""Synaptic-operation counting and energy estimates, as part of the simulation (ALGORITHMS.md §7).

Counting rules (per sample, per step):

* **SOPs** at a synaptic layer (conv, transposed conv, linear) fed by spikes: every spike, and every
  unit of a burst, costs one accumulate per outgoing synapse. The spike counts reaching the layer are
  rebuilt from the neurons' spike counts through the ops between them (reshape, concatenation,
  residual addition, zero padding, average pooling as sum pooling, scaling by constants), and
  multiplied by the layer's *fan-out map* (how many outputs each input position reaches with its
  stride, padding, dilation and groups), computed once per input shape.
* **Identity shortcuts**: spikes that reach a neuron through an addition without a synaptic layer
  (a ResNet's identity path) cost one accumulate each.
* **MACs** at a synaptic layer fed by analog values (the first layer under direct coding, a layer
  after a max-pool of currents or a mixed addition): the dense closed-form count
  ``C_out * prod(out spatial) * C_in / groups * prod(kernel)``, every step.
* **The static prefix** (the layers before the first neuron, whose input under direct coding is the
  same every step, see :mod:`ann2snn.simulation`): charged every step by default
  (``prefix_macs="step"``), as ALGORITHMS.md §7 counts every layer fed by analog values at every
  step, the count papers' energy figures for an SNN with an analog first layer use (MACs of the
  first layer times T), and what hardware that recomputes the encoding layer each step spends.
  ``prefix_macs="once"`` charges them once per run: what this simulator computes, and what hardware
  that holds the encoded input in a buffer spends. Poisson or sequence input is not static: its
  first layer is charged every step either way.
* **Neuron updates**: every neuron, every step (reported; not in the energy by default).

Energy = MACs * E_MAC + SOPs * E_AC; the ANN's energy is its MACs * E_MAC on the same input.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .model import SpikingModel
from .neurons.modules import Affine, RunningMaxPool, SpikingNeuron
from .passes.patterns import WEIGHTED_MODULES
from .simulation import static_node_names


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation in joules."""

    name: str
    e_mac: float
    e_ac: float
    e_neuron: float = 0.0

    @classmethod
    def preset(cls, name: str) -> EnergyModel:
        try:
            return ENERGY_PRESETS[name]
        except KeyError as exc:
            raise ValueError(f"unknown energy model {name!r}; presets: {', '.join(ENERGY_PRESETS)}") from exc


ENERGY_PRESETS = {
    # Horowitz 2014, 45 nm CMOS, 32-bit float
    "45nm": EnergyModel("45nm", e_mac=4.6e-12, e_ac=0.9e-12),
    # [LTB]: 77 fJ per synaptic operation on neuromorphic hardware against 12.5 pJ per FLOP (a MAC is 2 FLOPs)
    "neuromorphic": EnergyModel("neuromorphic", e_mac=2 * 12.5e-12, e_ac=77e-15),
}


def resolve_energy_model(model: EnergyModel | str | dict) -> EnergyModel:
    if isinstance(model, EnergyModel):
        return model
    if isinstance(model, str):
        return EnergyModel.preset(model)
    if isinstance(model, dict):
        return EnergyModel(**{"name": "custom", **model})
    raise TypeError(f"energy model must be a preset name, a dict or an EnergyModel, not {type(model).__name__}")


# -- static structure ------------------------------------------------------------------------------

def dense_macs(layer: nn.Module, in_shape: torch.Size, out_shape: torch.Size) -> int:
    """Closed-form multiply-accumulates of one sample through ``layer`` (shapes without batch)."""
    if isinstance(layer, nn.Linear):
        return int(math.prod(in_shape)) * layer.out_features
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        k = math.prod(layer.kernel_size)
        return int(math.prod(in_shape)) * (layer.out_channels // layer.groups) * k
    k = math.prod(layer.kernel_size)
    return int(math.prod(out_shape)) * (layer.in_channels // layer.groups) * k


def fanout_map(layer: nn.Module, in_shape: torch.Size, device: torch.device) -> Tensor:
    """How many outputs of ``layer`` each input position reaches (all-ones weights, no bias)."""
    x = torch.zeros((1, *in_shape), device=device, requires_grad=True)
    with torch.enable_grad():
        if isinstance(layer, nn.Linear):
            y = F.linear(x, torch.ones_like(layer.weight))
        else:
            ones = torch.ones_like(layer.weight)
            if isinstance(layer, nn.modules.conv._ConvTransposeNd):
                fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[ones.ndim - 2]
                y = fn(x, ones, None, layer.stride, layer.padding, layer.output_padding, layer.groups,
                       layer.dilation)
            else:
                fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[ones.ndim - 2]
                y = fn(x, ones, None, layer.stride, layer.padding, layer.dilation, layer.groups)
        (grad,) = torch.autograd.grad(y.sum(), x)
    return grad[0].detach()


_POOL_AREA = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_AVG_FUNCS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, torch.avg_pool1d}
_ADAPTIVE_FUNCS = {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.adaptive_avg_pool1d}
_SCALE_FUNCS = {operator.mul, operator.truediv, operator.neg}
_SCALE_METHODS = {"mul", "div", "neg"}
_ADD_FUNCS = {operator.add, operator.sub, torch.add, torch.sub}


class _EventTracer:
    """Rebuilds, each step, the spike counts that reach each point of the graph (None: analog)."""

    def __init__(self, gm: fx.GraphModule, poisson_input: bool):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.poisson_input = poisson_input
        self.memo: dict[fx.Node, Any] = {}
        self.frame: Tensor | None = None
        self.sources: dict[str, Tensor] = {}

    def new_step(self, frame: Tensor | None, sources: dict[str, Tensor]) -> None:
        """Trace from Poisson input events ``frame`` and neuron spike counts ``sources`` (by name)."""
        self.memo = {}
        self.frame = frame
        self.sources = sources

    def events(self, node: Any) -> Any:
        if not isinstance(node, fx.Node):
            return node
        if node not in self.memo:
            self.memo[node] = self._events(node)
        return self.memo[node]

    def _events(self, node: fx.Node) -> Any:
        op = node.op
        if op == "placeholder":
            return self.frame if self.poisson_input else None
        if op == "get_attr":
            return None
        if op == "call_module":
            mod = self.modules[node.target]
            if isinstance(mod, SpikingNeuron):
                return self.sources.get(mod.name)
            if isinstance(mod, WEIGHTED_MODULES) or isinstance(mod, RunningMaxPool):
                return None
            src = self.events(node.args[0])
            if src is None:
                return None
            if isinstance(mod, Affine):
                return src
            if isinstance(mod, _POOL_AREA):
                k = mod.kernel_size if isinstance(mod.kernel_size, tuple) else (mod.kernel_size,) * (src.ndim - 2)
                return mod(src) * math.prod(k)
            if isinstance(mod, _ADAPTIVE):
                out = mod(src)
                return out * (math.prod(src.shape[2:]) / max(1, math.prod(out.shape[2:])))
            if isinstance(mod, nn.Upsample) and mod.mode != "nearest":
                return F.interpolate(src, size=mod.size, scale_factor=mod.scale_factor, mode="nearest")
            return mod(src)
        node_args = node.all_input_nodes
        if any(self.events(a) is None for a in node_args if not _is_structural(a) and a.op != "get_attr"):
            return None
        args = fx.node.map_arg(node.args, self.events)
        kwargs = fx.node.map_arg(node.kwargs, self.events)
        target = node.target
        if op == "call_function":
            if target in _SCALE_FUNCS:
                return next(a for a in args if isinstance(a, Tensor))
            if target in _ADD_FUNCS:
                if all(isinstance(a, Tensor) for a in args[:2]):
                    return args[0] + args[1]
                # spikes plus a constant (a number or a stored tensor): the constant is a bias of the
                # next layer, the spikes are what it receives
                spikes = [e for e, a in zip(args[:2], node.args[:2], strict=False)
                          if isinstance(e, Tensor) and isinstance(a, fx.Node) and a.op != "get_attr"]
                constant = [a for a in node.args[:2] if not isinstance(a, fx.Node) or a.op == "get_attr"]
                return spikes[0] if len(spikes) == 1 and len(constant) == 1 else None
            if target in _AVG_FUNCS:
                ks = args[1] if len(args) > 1 else kwargs["kernel_size"]
                ks = ks if isinstance(ks, (tuple, list)) else (ks,) * (args[0].ndim - 2)
                return target(*args, **kwargs) * math.prod(ks)
            if target in _ADAPTIVE_FUNCS:
                out = target(*args, **kwargs)
                return out * (math.prod(args[0].shape[2:]) / max(1, math.prod(out.shape[2:])))
            if target is torch.mean:
                return torch.sum(*args, **kwargs)
            if target is F.interpolate:
                kwargs = {**kwargs, "mode": "nearest"}
                kwargs.pop("align_corners", None)
                return target(*args, **kwargs)
            if target in (F.linear, F.conv1d, F.conv2d, F.conv3d):
                return None
            return target(*args, **kwargs)
        if op == "call_method":
            if target in _SCALE_METHODS:
                return args[0]
            if target in ("add", "sub"):
                return args[0] + args[1] if isinstance(args[1], Tensor) else args[0]
            if target == "mean":
                return args[0].sum(*args[1:], **kwargs)
            return getattr(args[0], target)(*args[1:], **kwargs)
        return None


def _flat(values: Any) -> list:
    out = []
    for v in values:
        if isinstance(v, (list, tuple)):
            out.extend(_flat(v))
        elif isinstance(v, dict):
            out.extend(_flat(list(v.values())))
        else:
            out.append(v)
    return out


def _is_structural(node: fx.Node) -> bool:
    return (node.op == "call_method" and node.target in ("size", "dim", "numel")) or \
        (node.op == "call_function" and node.target is getattr)


# -- the counter -----------------------------------------------------------------------------------

@dataclass
class LayerCount:
    name: str
    kind: str  # "neuron" | "synaptic" | "shortcut"
    neurons: int = 0
    spikes: Tensor | None = None  # per sample
    sops: Tensor | None = None
    macs: Tensor | None = None
    dense_macs: int = 0  # the ANN's MACs of this layer, per sample


class SynapticCounter:
    """Counts spikes, synaptic operations and MACs per sample while a :class:`SpikingModel` runs.

    Use as a context manager::

        with SynapticCounter(snn) as counter:
            out = snn.run(x, 16)
        report = counter.report()

    Counting is cheap because every count is linear in the spike trains: each step only adds every
    neuron layer's spikes into a per-layer count map (one elementwise op per layer). The fan-out
    products, event tracing through pooling / residual / concatenation and the MAC charges are done
    on those accumulated maps when the counts are read (:meth:`flush`), when samples exit
    (:meth:`select`) or when the report is built, in float64 so the totals are exact integers.
    """

    def __init__(self, snn: SpikingModel, energy: EnergyModel | str | dict = "45nm", prefix_macs: str = "step"):
        if prefix_macs not in ("step", "once"):
            raise ValueError(f"prefix_macs must be 'step' or 'once', got {prefix_macs!r}")
        self.snn = snn
        self.energy = resolve_energy_model(energy)
        self.prefix_macs = prefix_macs
        self._static_nodes = static_node_names(snn.graph_module)
        self._static_input = False
        self._prefix_charged = False
        self.gm = snn.graph_module
        self.events = _EventTracer(self.gm, snn.config.encoding == "poisson")
        self.modules = dict(self.gm.named_modules())
        self._plan()
        self._fanout: dict[tuple[str, tuple], Tensor] = {}
        self._shape: dict[str, tuple] = {}
        self.layers: dict[str, LayerCount] = {}
        self.index: Tensor | None = None
        self.steps: Tensor | None = None
        self.batch = 0
        self._handles: list[Any] = []
        self._attached = False
        self.compacted = False
        self._pending: dict[str, Tensor] = {}  # neuron name -> spikes summed since the last flush
        self._pending_input: Tensor | None = None  # Poisson input events since the last flush
        self._pending_steps = 0

    def _plan(self) -> None:
        """Find synaptic layers, neuron layers and the additions that feed neurons directly."""
        self.synaptic: list[fx.Node] = []
        self.neurons: list[fx.Node] = []
        self.shortcuts: list[tuple[fx.Node, list[fx.Node]]] = []
        for node in self.gm.graph.nodes:
            if node.op != "call_module":
                continue
            mod = self.modules[node.target]
            if isinstance(mod, WEIGHTED_MODULES):
                self.synaptic.append(node)
            elif isinstance(mod, SpikingNeuron):
                self.neurons.append(node)
                operands = _additive_operands(node.args[0])
                if len(operands) > 1:
                    self.shortcuts.append((node, operands))
        self._neuron_mods = [self.modules[n.target] for n in self.neurons]

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> SynapticCounter:
        self.attach()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def attach(self) -> None:
        self.layers = {}
        self.batch = 0
        self._static_nodes = static_node_names(self.gm)  # the graph may have changed since construction
        self._attached = True
        self.snn.step_hooks.append(self._on_step)
        self.snn.counters.append(self)
        self._watch_shapes()

    def detach(self) -> None:
        self.flush()
        self._attached = False
        if self._on_step in self.snn.step_hooks:
            self.snn.step_hooks.remove(self._on_step)
        if self in self.snn.counters:
            self.snn.counters.remove(self)
        self._unwatch_shapes()

    def _watch_shapes(self) -> None:
        """Record every synaptic layer's input / output shape on the next step (then stop watching)."""
        if self._handles:
            return
        for node in self.synaptic:
            mod = self.modules[node.target]
            self._handles.append(mod.register_forward_hook(self._shape_hook(node.target)))

    def _unwatch_shapes(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _shape_hook(self, target: str):
        def hook(_mod, inputs, output):
            self._shape[target] = (tuple(inputs[0].shape[1:]), tuple(output.shape[1:]))
        return hook

    def begin(self, batch: int, device: torch.device, static_input: bool = False) -> None:
        """Called by the model at the start of a run: counts restart for a new batch. ``static_input``:
        the input is the same every step (direct coding), so the static prefix may be charged once."""
        self.batch = batch
        self._static_input = static_input
        self._prefix_charged = False
        dtype = _count_dtype(device)
        self.index = torch.arange(batch, device=device)
        self.steps = torch.zeros(batch, device=device, dtype=dtype)
        self.layers = {}
        self.compacted = False
        self._pending = {}
        self._pending_input = None
        self._pending_steps = 0
        if self._attached:
            self._watch_shapes()  # the input size may differ from the previous run's

    def select(self, index: Tensor) -> None:
        """Samples outside ``index`` have exited: they stop being counted."""
        if self.index is not None:
            self.flush()
            self.index = self.index.index_select(0, index.to(self.index.device))
            self.compacted = True

    # -- per step: one elementwise accumulation per neuron layer ------------------------------------
    def _on_step(self, snn: SpikingModel) -> None:
        if self.index is None:
            return
        if self._handles:
            self._unwatch_shapes()  # shapes are known after the first step of a run
        if self._pending_steps >= _UINT8_STEPS:
            self.flush()  # 1-bit spikes are summed in uint8: flush before a count could overflow
        pending = self._pending
        for mod in self._neuron_mods:
            s = mod.spike_events()
            buf = pending.get(mod.name)
            if buf is None:  # bool spikes sum in uint8: a third of the memory traffic of float32
                pending[mod.name] = s.to(torch.uint8 if s.dtype == torch.bool else mod.threshold.dtype)
            else:
                buf.add_(s)
        if self.events.poisson_input and snn.last_input is not None:
            nz = snn.last_input != 0
            if self._pending_input is None:
                self._pending_input = nz.to(torch.uint8)
            else:
                self._pending_input.add_(nz)
        self._pending_steps += 1

    # -- accumulated maps -> per-sample counts ------------------------------------------------------
    def _acc(self, name: str, kind: str, attr: str, values: Tensor) -> LayerCount:
        layer = self.layers.get(name)
        if layer is None:
            layer = self.layers[name] = LayerCount(name, kind)
        total = getattr(layer, attr)
        if total is None:
            total = torch.zeros(self.batch, device=values.device, dtype=self.steps.dtype)
            setattr(layer, attr, total)
        values = values.to(total.dtype)
        if self.compacted:
            total.index_add_(0, self.index, values)
        else:  # no sample has exited: rows line up with the batch
            total.add_(values)
        return layer

    def flush(self) -> None:
        """Turn the spikes accumulated since the last flush into per-sample counts."""
        steps = self._pending_steps
        if self.index is None or steps == 0:
            return
        dtype = self.steps.dtype
        n = self.index.numel()
        self._acc_steps(float(steps))
        sources = {name: counts.to(dtype) for name, counts in self._pending.items()}
        for mod in self._neuron_mods:
            counts = sources.get(mod.name)
            if counts is None:
                continue
            layer = self._acc(mod.name, "neuron", "spikes", counts.flatten(1).sum(1, dtype=dtype))
            layer.neurons = int(counts[0].numel())
        frame = None if self._pending_input is None else self._pending_input.to(dtype)
        self.events.new_step(frame, sources)
        for node in self.synaptic:
            mod = self.modules[node.target]
            in_shape, out_shape = self._shape[node.target]
            ev = self.events.events(node.args[0])
            macs = dense_macs(mod, in_shape, out_shape)
            if ev is None:
                charged = steps
                if self._static_input and self.prefix_macs == "once" and node.name in self._static_nodes:
                    charged = 0 if self._prefix_charged else 1
                per_sample = torch.full((n,), float(macs) * charged, device=self.index.device, dtype=dtype)
                layer = self._acc(node.target, "synaptic", "macs", per_sample)
            else:
                key = (node.target, in_shape)
                fan = self._fanout.get(key)
                if fan is None:
                    fan = self._fanout[key] = fanout_map(mod, torch.Size(in_shape), ev.device).to(dtype)
                layer = self._acc(node.target, "synaptic", "sops", ev.flatten(1).to(dtype) @ fan.reshape(-1))
            layer.dense_macs = macs
        for node, operands in self.shortcuts:
            total = None
            for operand in operands:
                ev = self.events.events(operand)
                if ev is not None:
                    part = ev.flatten(1).sum(1, dtype=dtype)
                    total = part if total is None else total + part
            if total is not None:
                self._acc(f"{self.modules[node.target].name}.shortcut", "shortcut", "sops", total)
        self.events.new_step(None, {})
        self._pending = {}
        self._pending_input = None
        self._pending_steps = 0
        self._prefix_charged = True

    def pending_spikes(self) -> dict[str, float]:
        """Each neuron layer's spikes (negative ones included) since the last flush, summed over the
        batch: the spikes whose synaptic operations :meth:`attribute` returns."""
        return {name: float(c.sum(dtype=torch.float64)) for name, c in self._pending.items()}

    def attribute(self) -> dict[str, float]:
        """Synaptic operations caused by each neuron layer's spikes since the last flush, summed over
        the batch (what that layer's spikes cost downstream: its spikes times their fan-out, through
        pooling, residual and concatenation paths). Call before the counts are flushed (before
        :meth:`report` or leaving the ``with`` block)."""
        if not self._pending:
            raise RuntimeError("nothing to attribute: run the model with the counter attached first")
        dtype = self.steps.dtype
        counts = {name: c.to(dtype) for name, c in self._pending.items()}
        zeros = {name: torch.zeros_like(c) for name, c in counts.items()}
        out = {}
        for name in counts:
            self.events.new_step(None, {**zeros, name: counts[name]})
            total = 0.0
            for node in self.synaptic:
                ev = self.events.events(node.args[0])
                if ev is None:
                    continue
                mod = self.modules[node.target]
                in_shape = self._shape[node.target][0]
                fan = self._fanout.get((node.target, in_shape))
                if fan is None:
                    fan = self._fanout[(node.target, in_shape)] = fanout_map(mod, torch.Size(in_shape), ev.device).to(dtype)
                total += float(ev.flatten(1).to(dtype).sum(0) @ fan.reshape(-1))
            for _node, operands in self.shortcuts:
                for operand in operands:
                    ev = self.events.events(operand)
                    if ev is not None:
                        total += float(ev.sum(dtype=dtype))
            out[name] = total
        self.events.new_step(None, {})
        return out

    def _acc_steps(self, steps: float) -> None:
        if self.compacted:
            self.steps.index_add_(0, self.index, torch.full_like(self.index, steps, dtype=self.steps.dtype))
        else:
            self.steps.add_(steps)

    # -- results ---------------------------------------------------------------------------------
    def report(self) -> EnergyReport:
        """Per-sample averages over the last run's batch, per layer and in total."""
        if self.steps is None:
            raise RuntimeError("the counter has not seen a run yet")
        self.flush()
        return EnergyReport.build(self)


_UINT8_STEPS = 255


def _count_dtype(device: torch.device) -> torch.dtype:
    """Counts are float64 (exact integers far beyond 2**24) wherever the device has it."""
    return torch.float32 if device.type == "mps" else torch.float64


def _additive_operands(node: Any) -> list[fx.Node]:
    """The operands of a chain of additions feeding a neuron (just ``[node]`` if it is no addition)."""
    if isinstance(node, fx.Node) and (
        (node.op == "call_function" and node.target in (operator.add, torch.add))
        or (node.op == "call_method" and node.target == "add")
    ):
        out = []
        for a in node.args[:2]:
            if isinstance(a, fx.Node):
                out.extend(_additive_operands(a))
        return out
    return [node] if isinstance(node, fx.Node) else []


@dataclass
class LayerStats:
    name: str
    kind: str
    neurons: int
    spikes: float
    firing_rate: float
    sops: float
    macs: float
    ann_macs: float
    # sums over all samples (exact integers in float64): what reports of several batches merge by
    total_spikes: float = 0.0
    total_sops: float = 0.0
    total_macs: float = 0.0


@dataclass
class EnergyReport:
    """Counts per sample (averaged over the batch), per layer and in total, with energy estimates."""

    energy_model: EnergyModel
    samples: int
    mean_steps: float
    layers: list[LayerStats]
    spikes: float
    sops: float
    macs: float
    neuron_updates: float
    ann_macs: float
    per_sample: dict[str, list[float]] = field(default_factory=dict)
    total_steps: float = 0.0  # steps summed over all samples
    prefix_macs: str = "step"  # the static prefix's MACs charged every step or once per run

    @classmethod
    def build(cls, counter: SynapticCounter) -> EnergyReport:
        n = counter.batch
        steps = counter.steps
        total = lambda t: float(t.sum(dtype=torch.float64)) if t is not None else 0.0  # noqa: E731
        rows = []
        for layer in counter.layers.values():
            spikes, sops, macs = total(layer.spikes), total(layer.sops), total(layer.macs)
            rows.append(LayerStats(layer.name, layer.kind, layer.neurons, spikes / n, 0.0, sops / n, macs / n,
                                   float(layer.dense_macs), spikes, sops, macs))
        per_sample_sops = sum((layer.sops for layer in counter.layers.values() if layer.sops is not None),
                              torch.zeros(n, dtype=torch.float64, device=steps.device))
        report = cls.from_totals(counter.energy, n, total(steps), rows,
                                 {"steps": steps.tolist(), "sops": per_sample_sops.tolist()})
        report.prefix_macs = counter.prefix_macs
        return report

    @classmethod
    def from_totals(cls, energy_model: EnergyModel, samples: int, total_steps: float, layers: list[LayerStats],
                    per_sample: dict[str, list[float]]) -> EnergyReport:
        """The report of ``samples`` samples from each layer's counts summed over the samples
        (``total_*``): means and firing rates derive from the exact sums, so that reports merged
        in any order, or gathered from several processes, give the very numbers of one run."""
        n = samples
        mean_steps = total_steps / n
        for r in layers:
            r.spikes, r.sops, r.macs = r.total_spikes / n, r.total_sops / n, r.total_macs / n
            r.firing_rate = r.total_spikes / (r.neurons * total_steps) if r.neurons and total_steps else 0.0
        return cls(
            energy_model=energy_model,
            samples=n,
            mean_steps=mean_steps,
            layers=layers,
            spikes=sum(r.total_spikes for r in layers) / n,
            sops=sum(r.total_sops for r in layers) / n,
            macs=sum(r.total_macs for r in layers) / n,
            neuron_updates=sum(r.neurons for r in layers) * mean_steps,
            ann_macs=sum(r.ann_macs for r in layers if r.kind == "synaptic"),
            per_sample=per_sample,
            total_steps=total_steps,
        )

    @property
    def snn_energy(self) -> float:
        e = self.energy_model
        return self.macs * e.e_mac + self.sops * e.e_ac + self.neuron_updates * e.e_neuron

    @property
    def ann_energy(self) -> float:
        return self.ann_macs * self.energy_model.e_mac

    @property
    def saving(self) -> float:
        """1 - E_SNN / E_ANN (positive: the SNN needs less energy)."""
        return 1.0 - self.snn_energy / self.ann_energy if self.ann_energy else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(snn_energy_j=self.snn_energy, ann_energy_j=self.ann_energy, saving=self.saving)
        return d

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def to_text(self) -> str:
        head = f"{'layer':<28}{'kind':<10}{'neurons':>9}{'spikes':>12}{'rate':>8}{'SOPs':>14}{'MACs':>14}"
        lines = [head, "-" * len(head)]
        for r in self.layers:
            rate = f"{r.firing_rate:.3f}" if r.kind == "neuron" else ""
            lines.append(f"{r.name[:27]:<28}{r.kind:<10}{r.neurons or '':>9}{_fmt(r.spikes, r.kind == 'neuron'):>12}"
                         f"{rate:>8}{_fmt(r.sops, r.kind != 'neuron'):>14}{_fmt(r.macs, r.kind == 'synaptic'):>14}")
        lines.append("-" * len(head))
        e = self.energy_model
        lines += [
            f"per sample over {self.mean_steps:.2f} steps ({self.samples} samples): spikes {self.spikes:,.0f}, "
            f"SOPs {self.sops:,.0f}, MACs {self.macs:,.0f} (layers before the first neuron charged "
            f"{'once' if self.prefix_macs == 'once' else 'every step'}), neuron updates {self.neuron_updates:,.0f}",
            f"energy ({e.name}: E_MAC {e.e_mac * 1e12:.3g} pJ, E_AC {e.e_ac * 1e12:.3g} pJ): "
            f"SNN {self.snn_energy * 1e6:.4g} uJ, ANN {self.ann_energy * 1e6:.4g} uJ "
            f"({self.ann_macs:,.0f} MACs), saving {self.saving * 100:.1f} %",
        ]
        return "\n".join(lines)

    def plot(self, path: str) -> str:
        """A PNG with per-layer firing rates and SOPs."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        neurons = [r for r in self.layers if r.kind == "neuron"]
        syn = [r for r in self.layers if r.kind != "neuron"]
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        axes[0].bar(range(len(neurons)), [r.firing_rate for r in neurons], color="tab:blue")
        axes[0].set_xticks(range(len(neurons)), [r.name for r in neurons], rotation=60, ha="right", fontsize=7)
        axes[0].set_ylabel("firing rate (spikes / neuron / step)")
        axes[0].set_title("firing rate per neuron layer")
        axes[1].bar(range(len(syn)), [r.sops for r in syn], color="tab:orange", label="SOPs")
        axes[1].bar(range(len(syn)), [r.macs for r in syn], bottom=[r.sops for r in syn], color="tab:red",
                    label="MACs")
        axes[1].set_xticks(range(len(syn)), [r.name for r in syn], rotation=60, ha="right", fontsize=7)
        axes[1].set_yscale("log")
        axes[1].set_ylabel("operations per sample")
        axes[1].set_title("synaptic operations per layer")
        axes[1].legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _fmt(value: float, show: bool) -> str:
    return f"{value:,.0f}" if show else ""


def measure(snn: SpikingModel, x: Tensor, timesteps: int | None = None, energy: EnergyModel | str = "45nm",
            prefix_macs: str = "step", **run_kwargs: Any) -> tuple[Any, EnergyReport]:
    """Run ``snn`` on ``x`` with counting on; returns ``(output, report)``."""
    with SynapticCounter(snn, energy, prefix_macs) as counter:
        out = snn.run(x, timesteps, **run_kwargs)
    return out, counter.report()
