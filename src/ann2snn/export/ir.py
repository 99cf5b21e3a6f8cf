"""A flat, framework-neutral description of a converted SNN: the layer list both exporters write.

:func:`lower` walks a :class:`~ann2snn.model.SpikingModel`'s graph once and returns :class:`Op` s in
execution order, each with per-sample shapes (no batch dimension), plain attributes and its tensors.
:func:`build` turns such a list back into a SpikingModel that computes bit-identical outputs: every
op is rebuilt as the same torch operation it came from. The NIR writer (:mod:`.nir`) and the
portable format (:mod:`.portable`) are thin translations of this list.

Op kinds and their attributes (``inputs`` name earlier ops; shapes exclude the batch):

* ``input`` -- the data fed every step (direct coding).
* ``conv`` -- ``dims`` (1/2/3), ``transposed``, ``stride``, ``padding``, ``dilation``, ``groups``,
  ``output_padding``; tensors ``weight``, ``bias`` (zeros where the layer had none).
* ``linear`` -- tensors ``weight`` [out, in], ``bias``.
* ``avg_pool`` -- ``dims``, ``kernel_size``, ``stride``, ``padding``, ``ceil_mode``,
  ``count_include_pad``, ``divisor_override``; ``adaptive_avg_pool`` -- ``dims``, ``output_size``.
* ``max_pool`` -- a running max-pool (pools the running sum of its input, emits the increment):
  ``dims``, ``kernel_size``, ``stride``, ``padding``, ``dilation``, ``ceil_mode``; or ``adaptive``
  with ``output_size``.
* ``reshape`` -- to ``shape``; ``add`` -- the sum of its inputs, left to right; ``concat`` -- along
  sample dimension ``dim``.
* ``channel_affine`` -- ``x * scale + shift`` per channel (a BatchNorm after a neuron).
* ``neuron`` -- integrate-and-fire with reset by subtraction, up to ``cap`` spikes a step: tensors
  ``threshold`` (per channel, or one value), ``v0_offset``, ``bias_shift``; attributes ``cap``,
  ``v0``, ``clip``. Each step ``v += x + bias_shift``; ``s = min(floor(v / theta), cap)`` where
  ``v >= theta`` (else 0); ``v -= s * theta``; output ``s * theta``. ``v`` starts at
  ``v0 * theta + v0_offset``; a channel with threshold 0 never fires.
* ``output`` -- the network's analog output of this step (its mean over the steps is the result).
"""

from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..config import ConversionConfig
from ..errors import ConversionError, OffendingNode
from ..model import SpikingModel
from ..neurons.modules import Affine, RunningMaxPool, SpikingNeuron
from ..tracing import source_of

__all__ = ["ExportError", "Op", "build", "lower", "record_shapes"]

KINDS = ("input", "conv", "linear", "avg_pool", "adaptive_avg_pool", "max_pool", "reshape", "add", "concat",
         "channel_affine", "neuron", "output")


class ExportError(ConversionError):
    """The spiking model holds operations the target format cannot express (all listed at once)."""

    def __init__(self, target: str, offenders: list[OffendingNode], hint: str = "", verb: str = "export"):
        self.target = target
        self.offenders = list(offenders)
        lines = [f"cannot {verb} {len(self.offenders)} operation(s) {'to' if verb == 'export' else 'from'} {target}"]
        lines += [f"  - {o.describe()}" for o in self.offenders]
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


@dataclass
class Op:
    """One layer of the exported network (see the module docstring for the kinds)."""

    name: str
    kind: str
    inputs: list[str]
    shape: tuple[int, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, Tensor] = field(default_factory=dict)


# -- shapes ----------------------------------------------------------------------------------------

class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.shapes: dict[str, tuple[int, ...] | None] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.shapes[n.name] = tuple(out.shape) if isinstance(out, Tensor) else None
        return out


@torch.no_grad()
def record_shapes(snn: SpikingModel, example_shape: tuple[int, ...] | None = None) -> dict[str, tuple | None]:
    """Each graph node's output shape (with a batch of 1) from one analog pass on zeros."""
    shape = tuple(example_shape or snn.info.get("example_shape") or ())
    if not shape:
        raise ConversionError("the model does not record its input shape; pass example_shape=(C, H, W)")
    stateful = [m for m in snn.graph_module.modules() if isinstance(m, (SpikingNeuron, RunningMaxPool))]
    snn.reset()
    try:
        for m in stateful:
            m.analog = "relu" if isinstance(m, SpikingNeuron) else "pool"
        rec = _ShapeRecorder(snn.graph_module)
        rec.run(torch.zeros((1, *shape), device=snn.device))
    finally:
        for m in stateful:
            m.analog = None
        snn.reset()
    return rec.shapes


# -- lowering --------------------------------------------------------------------------------------

def _tuple(v: Any, n: int) -> list[int]:
    if isinstance(v, (tuple, list)):
        return [int(x) for x in v]
    return [int(v)] * n


_AVG_PARAMS = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_MAX_PARAMS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_ADAPTIVE_PARAMS = ("input", "output_size", "return_indices")


def _bind(fn: Any, node: fx.Node, fn_name: str = "") -> dict[str, Any]:
    """The call's arguments by parameter name (functional pools)."""
    # builtins and boolean-dispatch wrappers have no usable Python signature: name the arguments here
    names = None
    if fn in _AVG_FUNCS:
        names = _AVG_PARAMS
    elif "adaptive_max_pool" in fn_name:
        names = _ADAPTIVE_PARAMS
    elif "max_pool" in fn_name:
        names = _MAX_PARAMS
    if names is not None:
        args = dict(zip(names, node.args, strict=False))
        args.update(node.kwargs)
        return args
    sig = inspect.signature(fn)
    bound = sig.bind(*node.args, **node.kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


_AVG_FUNCS = {F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3, torch.avg_pool1d: 1}
_ADAPTIVE_AVG_FUNCS = {F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3,
                       torch.adaptive_avg_pool1d: 1}
_ADD_FUNCS = {operator.add, torch.add}
_CAT_FUNCS = {torch.cat, torch.concat, torch.concatenate}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "contiguous", "view_as", "reshape_as"}


def _avg_attrs(dims: int, k: Any, s: Any, p: Any, ceil: bool, include: bool, divisor: Any) -> dict[str, Any]:
    return {"dims": dims, "kernel_size": _tuple(k, dims), "stride": _tuple(s if s not in (None, []) else k, dims),
            "padding": _tuple(p, dims), "ceil_mode": bool(ceil), "count_include_pad": bool(include),
            "divisor_override": None if divisor is None else int(divisor)}


def _maxpool_attrs(pool: nn.Module | None, fn_name: str | None, node: fx.Node) -> dict[str, Any]:
    if pool is not None:
        dims = int(type(pool).__name__[-2])
        if type(pool).__name__.startswith("Adaptive"):
            return {"dims": dims, "adaptive": True, "output_size": _tuple(pool.output_size, dims)}
        return {"dims": dims, "adaptive": False, "kernel_size": _tuple(pool.kernel_size, dims),
                "stride": _tuple(pool.stride if pool.stride is not None else pool.kernel_size, dims),
                "padding": _tuple(pool.padding, dims), "dilation": _tuple(pool.dilation, dims),
                "ceil_mode": bool(pool.ceil_mode)}
    from ..passes.patterns import resolve_function

    fn = resolve_function(fn_name)
    dims = int(fn_name[-2])
    args = _bind(fn, node, fn_name)
    if "adaptive" in fn_name:
        return {"dims": dims, "adaptive": True, "output_size": _tuple(args["output_size"], dims)}
    k = args["kernel_size"]
    s = args.get("stride")
    return {"dims": dims, "adaptive": False, "kernel_size": _tuple(k, dims),
            "stride": _tuple(s if s not in (None, [], ()) else k, dims), "padding": _tuple(args.get("padding", 0), dims),
            "dilation": _tuple(args.get("dilation", 1), dims), "ceil_mode": bool(args.get("ceil_mode", False))}


def lower(snn: SpikingModel, example_shape: tuple[int, ...] | None = None, target: str = "an exchange format") -> list[Op]:
    """The spiking model as a list of :class:`Op` in execution order.

    Raises :class:`ExportError` listing every node that has no op kind (for instance upsampling,
    subtraction, products with constants, several outputs).
    """
    gm = snn.graph_module
    shapes = record_shapes(snn, example_shape)
    modules = dict(gm.named_modules())
    ops: list[Op] = []
    alias: dict[str, str] = {}  # fx node name -> op name (ops that compute nothing)
    offenders: list[OffendingNode] = []

    def refuse(node: fx.Node, op: str, reason: str) -> None:
        offenders.append(OffendingNode(node.name, op, reason, source_of(node)))

    def src(a: Any) -> str:
        return alias.get(a.name, a.name)

    def sample(node: fx.Node) -> tuple[int, ...]:
        s = shapes.get(node.name)
        return tuple(s[1:]) if s else ()

    for node in gm.graph.nodes:
        name = node.name
        if node.op == "placeholder":
            ops.append(Op(name, "input", [], sample(node)))
            continue
        if node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node) or shapes.get(out.name) is None:
                refuse(node, "output", "the network must return one tensor (tuples and dicts cannot be exported)")
                continue
            ops.append(Op("output", "output", [src(out)], sample(out)))
            continue
        if shapes.get(name) is None:  # size queries and other non-tensor values: only shape arguments
            continue
        tensor_args = [a for a in node.args if isinstance(a, fx.Node) and shapes.get(a.name) is not None]
        if node.op == "call_module":
            mod = modules[node.target]
            label = f"call_module {type(mod).__name__}"
            if isinstance(mod, SpikingNeuron) and mod.bipolar:
                refuse(node, label, "bipolar neurons (spikes of either sign, from spike_linear=True) cannot be "
                                    "exported; convert with spike_linear=False")
                continue
            if isinstance(mod, SpikingNeuron) and mod.signed:
                refuse(node, label, "signed neurons (negative spikes, convert with signed=False) cannot be exported")
                continue
            if isinstance(mod, SpikingNeuron):
                v0, shift = mod.v0, mod.bias_shift.detach().cpu().clone()
                if mod.spread_steps:  # v0_mode="spread" is a start at 0 plus a constant per-step current
                    v0, shift = 0.0, shift + mod.threshold.detach().cpu() * (mod.v0 / mod.spread_steps)
                ops.append(Op(name, "neuron", [src(node.args[0])], sample(node),
                              {"cap": mod.cap, "v0": v0, "clip": mod.clip, "layer": mod.name},
                              {"threshold": mod.threshold.detach().cpu().clone(),
                               "v0_offset": mod.v0_offset.detach().cpu().clone(),
                               "bias_shift": shift}))
            elif isinstance(mod, RunningMaxPool):
                ops.append(Op(name, "max_pool", [src(node.args[0])], sample(node),
                              _maxpool_attrs(mod.pool, mod.function, node)))
            elif isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                                  nn.ConvTranspose3d)):
                dims = mod.weight.ndim - 2
                transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
                if isinstance(mod.padding, str):
                    refuse(node, label, f"padding={mod.padding!r}: give the padding as numbers")
                    continue
                bias = mod.bias if mod.bias is not None else torch.zeros(mod.out_channels)
                ops.append(Op(name, "conv", [src(node.args[0])], sample(node),
                              {"dims": dims, "transposed": transposed, "stride": _tuple(mod.stride, dims),
                               "padding": _tuple(mod.padding, dims), "dilation": _tuple(mod.dilation, dims),
                               "groups": int(mod.groups), "output_padding": _tuple(mod.output_padding, dims),
                               "has_bias": mod.bias is not None},
                              {"weight": mod.weight.detach().cpu().clone(), "bias": bias.detach().cpu().clone()}))
            elif isinstance(mod, nn.Linear):
                bias = mod.bias if mod.bias is not None else torch.zeros(mod.out_features)
                ops.append(Op(name, "linear", [src(node.args[0])], sample(node), {"has_bias": mod.bias is not None},
                              {"weight": mod.weight.detach().cpu().clone(), "bias": bias.detach().cpu().clone()}))
            elif isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
                dims = int(type(mod).__name__[-2])
                ops.append(Op(name, "avg_pool", [src(node.args[0])], sample(node),
                              _avg_attrs(dims, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode,
                                         mod.count_include_pad, getattr(mod, "divisor_override", None))))
            elif isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
                dims = int(type(mod).__name__[-2])
                ops.append(Op(name, "adaptive_avg_pool", [src(node.args[0])], sample(node),
                              {"dims": dims, "output_size": _tuple(mod.output_size, dims)}))
            elif isinstance(mod, nn.Flatten):
                _reshape(ops, alias, node, src(node.args[0]), sample(node.args[0]), sample(node))
            elif isinstance(mod, Affine):
                ops.append(Op(name, "channel_affine", [src(node.args[0])], sample(node), {},
                              {"scale": mod.scale.detach().cpu().clone(), "shift": mod.shift.detach().cpu().clone()}))
            else:
                refuse(node, label, "no exported equivalent")
            continue
        if node.op == "call_function":
            fn = node.target
            label = f"call_function {getattr(fn, '__name__', fn)}"
            if fn in _ADD_FUNCS:
                if len(tensor_args) != 2 or len(node.args) != 2 or node.kwargs:
                    refuse(node, label, "only the sum of two activations exports (no constants, no alpha)")
                    continue
                ops.append(Op(name, "add", [src(a) for a in tensor_args], sample(node)))
            elif fn in _CAT_FUNCS:
                parts = node.args[0]
                dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
                ndim = len(shapes[name])
                dim = dim + ndim if dim < 0 else dim
                if dim == 0 or not all(isinstance(p, fx.Node) for p in parts):
                    refuse(node, label, "concatenation must be of activations along a non-batch dimension")
                    continue
                ops.append(Op(name, "concat", [src(p) for p in parts], sample(node), {"dim": dim - 1}))
            elif fn in (torch.flatten, torch.reshape):
                _reshape(ops, alias, node, src(node.args[0]), sample(node.args[0]), sample(node))
            elif fn in _AVG_FUNCS:
                dims = _AVG_FUNCS[fn]
                a = _bind(fn, node)
                ops.append(Op(name, "avg_pool", [src(node.args[0])], sample(node),
                              _avg_attrs(dims, a["kernel_size"], a.get("stride"), a.get("padding", 0),
                                         a.get("ceil_mode", False), a.get("count_include_pad", True),
                                         a.get("divisor_override"))))
            elif fn in _ADAPTIVE_AVG_FUNCS:
                dims = _ADAPTIVE_AVG_FUNCS[fn]
                ops.append(Op(name, "adaptive_avg_pool", [src(node.args[0])], sample(node),
                              {"dims": dims, "output_size": _tuple(_bind(fn, node)["output_size"], dims)}))
            else:
                refuse(node, label, "no exported equivalent")
            continue
        if node.op == "call_method":
            label = f"call_method {node.target}"
            if node.target in _RESHAPE_METHODS:
                _reshape(ops, alias, node, src(node.args[0]), sample(node.args[0]), sample(node))
            elif node.target == "add" and len(tensor_args) == 2 and len(node.args) == 2 and not node.kwargs:
                ops.append(Op(name, "add", [src(a) for a in tensor_args], sample(node)))
            else:
                refuse(node, label, "no exported equivalent")
            continue
        refuse(node, node.op, "no exported equivalent")
    if offenders:
        raise ExportError(target, offenders)
    return ops


def _reshape(ops: list[Op], alias: dict[str, str], node: fx.Node, source: str, before: tuple, after: tuple) -> None:
    if tuple(before) == tuple(after):
        alias[node.name] = source  # contiguous(), a view to the same shape: nothing to compute
        return
    ops.append(Op(node.name, "reshape", [source], tuple(after), {"shape": list(after)}))


# -- building --------------------------------------------------------------------------------------

def _as_param(t: Tensor) -> nn.Parameter:
    return nn.Parameter(torch.as_tensor(t, dtype=torch.float32).clone(), requires_grad=False)


def _module_for(op: Op) -> nn.Module | None:
    a, t = op.attrs, op.tensors
    if op.kind == "conv":
        dims, transposed = a["dims"], a["transposed"]
        w = torch.as_tensor(t["weight"])
        cls = getattr(nn, f"Conv{'Transpose' if transposed else ''}{dims}d")
        groups = a["groups"]
        cin, cout = (w.shape[0], w.shape[1] * groups) if transposed else (w.shape[1] * groups, w.shape[0])
        kw = {"output_padding": tuple(a["output_padding"])} if transposed else {}
        mod = cls(cin, cout, tuple(w.shape[2:]), stride=tuple(a["stride"]), padding=tuple(a["padding"]),
                  dilation=tuple(a["dilation"]), groups=groups, bias=a.get("has_bias", True), **kw)
        mod.weight = _as_param(w)
        if mod.bias is not None:
            mod.bias = _as_param(t["bias"])
        return mod
    if op.kind == "linear":
        w = torch.as_tensor(t["weight"])
        mod = nn.Linear(w.shape[1], w.shape[0], bias=a.get("has_bias", True))
        mod.weight = _as_param(w)
        if mod.bias is not None:
            mod.bias = _as_param(t["bias"])
        return mod
    if op.kind == "avg_pool":
        cls = getattr(nn, f"AvgPool{a['dims']}d")
        kw = {"count_include_pad": a["count_include_pad"]}
        if a["dims"] > 1:
            kw["divisor_override"] = a.get("divisor_override")
        return cls(tuple(a["kernel_size"]), tuple(a["stride"]), tuple(a["padding"]), a["ceil_mode"], **kw)
    if op.kind == "adaptive_avg_pool":
        return getattr(nn, f"AdaptiveAvgPool{a['dims']}d")(tuple(a["output_size"]))
    if op.kind == "max_pool":
        if a["adaptive"]:
            pool = getattr(nn, f"AdaptiveMaxPool{a['dims']}d")(tuple(a["output_size"]))
        else:
            pool = getattr(nn, f"MaxPool{a['dims']}d")(tuple(a["kernel_size"]), tuple(a["stride"]),
                                                      tuple(a["padding"]), tuple(a["dilation"]),
                                                      ceil_mode=a["ceil_mode"])
        return RunningMaxPool(pool=pool)
    if op.kind == "channel_affine":
        return Affine(t["scale"], t["shift"])
    if op.kind == "neuron":
        n = SpikingNeuron(torch.as_tensor(t["threshold"], dtype=torch.float32), cap=int(a["cap"]),
                          v0=float(a["v0"]), clip=a.get("clip"), name=str(a.get("layer") or op.name))
        n.v0_offset.copy_(torch.as_tensor(t["v0_offset"], dtype=torch.float32).reshape(n.v0_offset.shape))
        n.bias_shift.copy_(torch.as_tensor(t["bias_shift"], dtype=torch.float32).reshape(n.bias_shift.shape))
        return n
    return None


def build(ops: list[Op], config: ConversionConfig | None = None, info: dict[str, Any] | None = None) -> SpikingModel:
    """A :class:`SpikingModel` that runs ``ops`` (the inverse of :func:`lower`)."""
    graph = fx.Graph()
    root: dict[str, nn.Module] = {}
    values: dict[str, fx.Node] = {}
    example_shape: list[int] = []
    for op in ops:
        if op.kind not in KINDS:
            raise ConversionError(f"unknown op kind {op.kind!r} (layer {op.name!r})")
        missing = [i for i in op.inputs if i not in values]
        if missing:
            raise ConversionError(f"layer {op.name!r} reads {missing[0]!r}, which comes later or does not exist")
        args = [values[i] for i in op.inputs]
        safe = _safe_name(op.name, root)
        if op.kind == "input":
            values[op.name] = graph.placeholder(safe)
            example_shape = list(op.shape)
        elif op.kind == "output":
            graph.output(args[0])
        elif op.kind == "add":
            acc = args[0]
            for other in args[1:]:
                acc = graph.call_function(operator.add, (acc, other))
            values[op.name] = acc
        elif op.kind == "concat":
            values[op.name] = graph.call_function(torch.cat, (list(args),), {"dim": int(op.attrs["dim"]) + 1})
        elif op.kind == "reshape":
            batch = graph.call_method("size", (args[0], 0))
            values[op.name] = graph.call_method("reshape", (args[0], batch, *[int(s) for s in op.attrs["shape"]]))
        else:
            root[safe] = _module_for(op)
            values[op.name] = graph.call_module(safe, (args[0],))
    if not any(n.op == "output" for n in graph.nodes):
        raise ConversionError("the network has no output")
    gm = fx.GraphModule(root, graph, class_name="SpikingGraph")
    gm.eval()
    info = dict(info or {})
    info.setdefault("example_shape", example_shape)
    return SpikingModel(gm, config or ConversionConfig(), info)


def _safe_name(name: str, taken: dict[str, Any]) -> str:
    safe = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "layer"
    if safe[0].isdigit():
        safe = "l_" + safe
    base, i = safe, 1
    while safe in taken:
        safe, i = f"{base}_{i}", i + 1
    return safe
