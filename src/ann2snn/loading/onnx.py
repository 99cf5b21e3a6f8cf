"""Reading ReLU CNNs from ONNX files into torch (``ann2snn convert --model model.onnx``).

A small reader of its own (only the ``onnx`` package is needed, to parse the protobuf): it builds a
``torch.fx.GraphModule`` of ordinary torch modules, which then converts like any other model. It
reads what PyTorch's and Keras' (tf2onnx) exporters write for ReLU CNNs. :data:`OPS` is the op table:
each ONNX op it converts, with its handler and what it becomes (docs/onnx.md lists it, from
:func:`op_table_markdown`). Any other op is refused, all of them listed at once.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from ..errors import LoadError

__all__ = ["OPS", "OnnxImportError", "OnnxOp", "load_onnx", "op_table_markdown"]


class OnnxImportError(LoadError):
    """The ONNX file cannot be read into a convertible torch model."""


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:  # pragma: no cover - depends on the environment
        raise OnnxImportError("reading .onnx models needs the 'onnx' package: pip install 'ann2snn[onnx]'") from None
    return onnx, numpy_helper


def _attrs(node: Any) -> dict[str, Any]:
    onnx, numpy_helper = _onnx()
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif a.type == onnx.AttributeProto.TENSOR:
            v = numpy_helper.to_array(v)
        elif isinstance(v, list):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


def _symmetric(pads: list[int], dims: int, where: str) -> tuple[list[int], list[int] | None]:
    """ONNX pads ``[b1, b2, ..., e1, e2, ...]`` as torch padding, or a ZeroPad for asymmetric ones."""
    pads = list(pads) if pads else [0] * (2 * dims)
    begin, end = pads[:dims], pads[dims:]
    if begin == end:
        return begin, None
    # torch's ZeroPad2d takes (left, right, top, bottom): last dimension first
    zp = []
    for d in reversed(range(dims)):
        zp += [begin[d], end[d]]
    return [0] * dims, zp


class _Builder:
    def __init__(self, model: Any, path: Path):
        _, numpy_helper = _onnx()
        self.path = path
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.values: dict[str, fx.Node] = {}
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.users: dict[str, int] = {}
        for node in model.graph.node:
            for i in node.input:
                self.users[i] = self.users.get(i, 0) + 1
        self.shapevals: dict[str, list] = {}  # shape arithmetic (x.view(x.size(0), -1)): "B" is the batch
        try:
            import onnx

            inferred = onnx.shape_inference.infer_shapes(model).graph
            infos = list(inferred.value_info) + list(inferred.input) + list(inferred.output)
        except Exception:  # noqa: BLE001 - shape inference is a help, not a requirement
            infos = []
        self.ranks = {v.name: [d.dim_value if d.HasField("dim_value") else None
                               for d in v.type.tensor_type.shape.dim] for v in infos}
        self.bias_free: dict[str, nn.Linear] = {}  # MatMul outputs whose Add may become the bias
        self.problems: list[str] = []

    def module(self, name: str, mod: nn.Module, x: fx.Node) -> fx.Node:
        safe = "".join(c if c.isalnum() else "_" for c in name).strip("_") or "layer"
        safe = f"m_{safe}" if safe[0].isdigit() else safe
        base, i = safe, 1
        while hasattr(self.root, safe):
            safe, i = f"{base}_{i}", i + 1
        self.root.add_module(safe, mod)
        return self.graph.call_module(safe, (x,))

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name)

    def value(self, name: str) -> fx.Node:
        if name not in self.values:
            raise OnnxImportError(f"{self.path}: value {name!r} is used before it is computed (or is a constant "
                                  "where an activation is expected)")
        return self.values[name]


def _param(a: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(np.array(a, dtype=np.float32, copy=True)), requires_grad=False)


@dataclass
class _Node:
    """One ONNX node as the op handlers see it."""

    op: str
    a: dict[str, Any]  # attributes
    ins: list[str]
    out: str
    name: str
    label: str
    is_last: bool


@dataclass(frozen=True)
class OnnxOp:
    """An ONNX op the reader converts: the handler and, in words, what it becomes."""

    handler: Callable[[_Builder, _Node], fx.Node | None]
    becomes: str


OPS: dict[str, OnnxOp] = {}  # the op table: every ONNX op the reader converts, and nothing else


def _op(*names: str, becomes: str):
    def register(fn):
        for name in names:
            OPS[name] = OnnxOp(fn, becomes)
        return fn
    return register


@_op("Constant", becomes="a constant (weights, shapes, pads), folded while reading")
def _constant(b: _Builder, n: _Node) -> None:
    b.consts[n.out] = np.asarray(n.a.get("value"))


@_op("Shape", becomes="shape arithmetic on the batch size (`x.view(x.size(0), -1)`), resolved while reading")
def _shape(b: _Builder, n: _Node) -> None:
    if n.ins[0] not in b.ranks:
        raise OnnxImportError(f"{n.label}: the shape of {n.ins[0]!r} is unknown (run ONNX shape inference)")
    b.shapevals[n.out] = ["B", *b.ranks[n.ins[0]][1:]]


@_op("Gather", "Squeeze", becomes="only on a shape (`x.size(...)` arithmetic), resolved while reading")
@_op("Unsqueeze", "Cast", becomes="only on a shape or a scalar constant (shape arithmetic), resolved while reading")
def _shape_arithmetic(b: _Builder, n: _Node) -> None:
    if n.ins[0] in b.shapevals:
        vals = b.shapevals[n.ins[0]]
        if n.op == "Gather":
            idx = b.const(n.ins[1])
            if idx is None:
                raise OnnxImportError(f"{n.label}: indexing a shape with a computed index")
            vals = [vals[int(i)] for i in np.atleast_1d(idx)]
        b.shapevals[n.out] = list(vals)
        return
    if n.op in ("Unsqueeze", "Cast") and n.ins[0] in b.consts and (n.op == "Cast" or b.const(n.ins[0]).ndim == 0):
        b.consts[n.out] = np.atleast_1d(b.consts[n.ins[0]])  # a scalar made a 1-D shape entry
        return
    raise OnnxImportError(f"{n.label}: {n.op} on an activation does not convert (only on shapes and constants)")


@_op("Dropout", "Identity", becomes="removed (identity at inference)")
def _identity(b: _Builder, n: _Node) -> fx.Node | None:
    if n.ins[0] in b.consts:  # exporters alias shared initializers through Identity
        b.consts[n.out] = b.consts[n.ins[0]]
        return None
    return b.value(n.ins[0])


@_op("Relu", becomes="`nn.ReLU`")
def _relu(b: _Builder, n: _Node) -> fx.Node:
    return b.module(n.name or "relu", nn.ReLU(), b.value(n.ins[0]))


@_op("Clip", becomes="`nn.ReLU`, `nn.ReLU6` or `nn.Hardtanh(0, a)`: the lower bound must be 0")
def _clip(b: _Builder, n: _Node) -> fx.Node:
    ins, a = n.ins, n.a
    low = b.const(ins[1]) if len(ins) > 1 and ins[1] else a.get("min")
    high = b.const(ins[2]) if len(ins) > 2 and ins[2] else a.get("max")
    low = None if low is None else float(np.asarray(low))
    high = None if high is None else float(np.asarray(high))
    if low != 0.0:
        raise OnnxImportError(f"{n.label}: Clip with min={low} is not a ReLU")
    mod = nn.ReLU() if high is None else (nn.ReLU6() if high == 6.0 else nn.Hardtanh(0.0, high))
    return b.module(n.name or "clip", mod, b.value(ins[0]))


@_op("Conv", becomes="`nn.Conv1d` / `nn.Conv2d` / `nn.Conv3d` with constant weights (groups, dilation; "
                     "asymmetric \"same\" padding as a `ZeroPad` in front)")
def _conv(b: _Builder, n: _Node) -> fx.Node:
    ins, a = n.ins, n.a
    w = b.const(ins[1])
    if w is None:
        raise OnnxImportError(f"{n.label}: the weights must be constants")
    dims = w.ndim - 2
    if dims not in (1, 2, 3):
        raise OnnxImportError(f"{n.label}: {dims}-D convolution")
    auto = a.get("auto_pad", "NOTSET")
    if auto not in ("NOTSET", "VALID"):
        raise OnnxImportError(f"{n.label}: auto_pad={auto} (export with explicit pads)")
    padding, zero_pad = _symmetric(a.get("pads", []), dims, n.label)
    group = int(a.get("group", 1))
    mod = getattr(nn, f"Conv{dims}d")(w.shape[1] * group, w.shape[0], tuple(w.shape[2:]),
                                      stride=tuple(a.get("strides", [1] * dims)), padding=tuple(padding),
                                      dilation=tuple(a.get("dilations", [1] * dims)), groups=group,
                                      bias=len(ins) > 2 and bool(ins[2]))
    mod.weight = _param(w)
    if mod.bias is not None:
        mod.bias = _param(b.const(ins[2]))
    x = b.value(ins[0])
    if zero_pad is not None:
        x = b.module(f"{n.name or 'conv'}_pad", getattr(nn, f"ZeroPad{dims}d")(tuple(zero_pad)), x)
    return b.module(n.name or "conv", mod, x)


@_op("Gemm", becomes="`nn.Linear` (constant weights, `transA=0`; `alpha`, `beta` folded in)")
def _gemm(b: _Builder, n: _Node) -> fx.Node:
    ins, a = n.ins, n.a
    w = b.const(ins[1])
    if w is None or a.get("transA", 0):
        raise OnnxImportError(f"{n.label}: needs constant weights and transA=0")
    w = (w if a.get("transB", 0) else w.T) * float(a.get("alpha", 1.0))
    has_bias = len(ins) > 2 and bool(ins[2])
    mod = nn.Linear(w.shape[1], w.shape[0], bias=has_bias)
    mod.weight = _param(w)
    if has_bias:
        mod.bias = _param(np.broadcast_to(b.const(ins[2]) * float(a.get("beta", 1.0)), (w.shape[0],)))
    return b.module(n.name or "gemm", mod, b.value(ins[0]))


@_op("MatMul", becomes="`nn.Linear` for a product with a constant matrix; an `Add` of a constant right after "
                       "becomes its bias (Keras' Dense)")
def _matmul(b: _Builder, n: _Node) -> fx.Node:
    w = b.const(n.ins[1])
    if w is None or w.ndim != 2:
        raise OnnxImportError(f"{n.label}: only a product with a constant matrix (a dense layer) converts")
    mod = nn.Linear(w.shape[0], w.shape[1], bias=False)
    mod.weight = _param(w.T)
    out = b.module(n.name or "matmul", mod, b.value(n.ins[0]))
    if b.users.get(n.out, 0) == 1:
        b.bias_free[n.out] = mod
    return out


@_op("Add", "Sum", becomes="residual addition of activations (a constant only as the bias of a `MatMul`)")
def _add(b: _Builder, n: _Node) -> fx.Node:
    consts = [i for i in n.ins if i in b.consts]
    acts = [i for i in n.ins if i not in b.consts]
    if n.op == "Add" and len(acts) == 1 and len(consts) == 1 and acts[0] in b.bias_free:
        lin = b.bias_free.pop(acts[0])
        bias = np.broadcast_to(b.consts[consts[0]], (lin.out_features,))
        lin.bias = _param(bias)  # the bias of a Keras Dense layer exported as MatMul + Add
        return b.value(acts[0])
    if consts:
        raise OnnxImportError(f"{n.label}: adding a constant to an activation does not convert")
    acc = b.value(acts[0])
    for other in acts[1:]:
        acc = b.graph.call_function(operator.add, (acc, b.value(other)))
    return acc


@_op("Concat", becomes="`torch.cat` of activations (or shape arithmetic, resolved while reading)")
def _concat(b: _Builder, n: _Node) -> fx.Node | None:
    if any(i in b.shapevals for i in n.ins):
        vals = []
        for i in n.ins:
            vals += b.shapevals[i] if i in b.shapevals else [int(v) for v in np.atleast_1d(b.const(i))]
        b.shapevals[n.out] = vals
        return None
    return b.graph.call_function(torch.cat, ([b.value(i) for i in n.ins],), {"dim": int(n.a.get("axis", 1))})


@_op("Flatten", becomes="`nn.Flatten` (`axis=1`)")
def _flatten(b: _Builder, n: _Node) -> fx.Node:
    axis = int(n.a.get("axis", 1))
    if axis != 1:
        raise OnnxImportError(f"{n.label}: Flatten(axis={axis}) would mix the batch")
    return b.module(n.name or "flatten", nn.Flatten(1, -1), b.value(n.ins[0]))


@_op("Reshape", becomes="flatten or reshape that keeps the batch (a constant shape, or one computed from "
                        "`x.size(0)`)")
def _reshape(b: _Builder, n: _Node) -> fx.Node:
    shape = b.const(n.ins[1])
    if shape is None and n.ins[1] in b.shapevals and None not in b.shapevals[n.ins[1]]:
        shape = [0 if v == "B" else v for v in b.shapevals[n.ins[1]]]
    if shape is None:
        raise OnnxImportError(f"{n.label}: the target shape must be a constant")
    shape = [int(s) for s in shape]
    x = b.value(n.ins[0])
    if len(shape) == 2 and (shape[0] in (0, -1) or shape[1] == -1):
        return b.graph.call_function(torch.flatten, (x, 1))
    batch = b.graph.call_method("size", (x, 0))
    return b.graph.call_method("reshape", (x, batch, *shape[1:]))


@_op("Transpose", becomes="`permute` that keeps the batch dimension first (NHWC inputs)")
def _transpose(b: _Builder, n: _Node) -> fx.Node:
    perm = [int(p) for p in n.a.get("perm", [])]
    if not perm or perm[0] != 0:
        raise OnnxImportError(f"{n.label}: a transpose that moves the batch dimension")
    return b.graph.call_method("permute", (b.value(n.ins[0]), *perm))


@_op("MaxPool", becomes="`nn.MaxPool1d` / `2d` / `3d` (symmetric padding, `ceil_mode`, dilation)")
@_op("AveragePool", becomes="`nn.AvgPool1d` / `2d` / `3d` (symmetric padding, `ceil_mode`, `count_include_pad`)")
def _pool(b: _Builder, n: _Node) -> fx.Node:
    a = n.a
    k = [int(v) for v in a["kernel_shape"]]
    dims = len(k)
    padding, zero_pad = _symmetric(a.get("pads", []), dims, n.label)
    if zero_pad is not None or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise OnnxImportError(f"{n.label}: asymmetric or automatic padding")
    stride = tuple(a.get("strides", [1] * dims))
    ceil = bool(a.get("ceil_mode", 0))
    if n.op == "MaxPool":
        mod = getattr(nn, f"MaxPool{dims}d")(tuple(k), stride, tuple(padding),
                                             dilation=tuple(a.get("dilations", [1] * dims)), ceil_mode=ceil)
    else:
        mod = getattr(nn, f"AvgPool{dims}d")(tuple(k), stride, tuple(padding), ceil_mode=ceil,
                                             count_include_pad=bool(a.get("count_include_pad", 0)))
    return b.module(n.name or n.op.lower(), mod, b.value(n.ins[0]))


@_op("GlobalAveragePool", becomes="`nn.AdaptiveAvgPool2d(1)`")
def _global_pool(b: _Builder, n: _Node) -> fx.Node:
    return b.module(n.name or "gap", nn.AdaptiveAvgPool2d(1), b.value(n.ins[0]))


@_op("BatchNormalization", becomes="`nn.BatchNorm2d` with the stored statistics (folded into the layer before "
                                   "it, or kept as a per-channel affine map, when converting)")
def _batchnorm(b: _Builder, n: _Node) -> fx.Node:
    scale, bias, mean, var = (b.const(i) for i in n.ins[1:5])
    if any(v is None for v in (scale, bias, mean, var)):
        raise OnnxImportError(f"{n.label}: the statistics must be constants")
    bn = nn.BatchNorm2d(len(scale), eps=float(n.a.get("epsilon", 1e-5)))
    bn.weight, bn.bias = _param(scale), _param(bias)
    bn.running_mean.copy_(torch.tensor(np.asarray(mean, np.float32)))
    bn.running_var.copy_(torch.tensor(np.asarray(var, np.float32)))
    return b.module(n.name or "bn", bn.eval(), b.value(n.ins[0]))


@_op("Pad", becomes="zero padding (`constant` mode, value 0)")
def _pad(b: _Builder, n: _Node) -> fx.Node:
    ins, a = n.ins, n.a
    pads = b.const(ins[1]) if len(ins) > 1 else a.get("pads")
    mode = a.get("mode", "constant")
    value = b.const(ins[2]) if len(ins) > 2 and ins[2] else a.get("value", 0.0)
    if pads is None or mode != "constant" or float(np.asarray(value)) != 0.0:
        raise OnnxImportError(f"{n.label}: only constant zero padding converts")
    pads = [int(p) for p in pads]
    half = len(pads) // 2
    torch_pads = []
    for d in reversed(range(half)):
        torch_pads += [pads[d], pads[d + half]]
    return b.graph.call_function(torch.nn.functional.pad, (b.value(ins[0]), tuple(torch_pads)))


@_op("Softmax", becomes="dropped when it is the model's last op (the SNN outputs the logits, whose argmax is "
                        "the same); refused anywhere else")
def _softmax(b: _Builder, n: _Node) -> fx.Node:
    if not n.is_last:
        raise OnnxImportError(f"{n.label}: a Softmax inside the network has no spiking equivalent")
    return b.value(n.ins[0])


def _convert_node(b: _Builder, node: Any, is_last: bool) -> fx.Node | None:
    label = f"{node.op_type} node {node.name or node.output[0]!r}"
    entry = OPS.get(node.op_type)
    if entry is None:
        raise OnnxImportError(f"{label}: ONNX op {node.op_type} has no spiking equivalent in ann2snn's reader")
    n = _Node(node.op_type, _attrs(node), list(node.input), node.output[0], node.name, label, is_last)
    return entry.handler(b, n)


def op_table_markdown() -> str:
    """The op table as a Markdown table (docs/onnx.md holds this text)."""
    rows = ["| ONNX op | becomes |", "|---|---|"]
    rows += [f"| {name} | {op.becomes} |" for name, op in sorted(OPS.items())]
    return "\n".join(rows) + "\n"


def load_onnx(path: str | os.PathLike) -> tuple[fx.GraphModule, tuple[int, ...] | None, list[str]]:
    """Read an ONNX model: returns ``(module, input_shape without batch or None, notes)``."""
    onnx, _ = _onnx()
    path = Path(path)
    if not path.is_file():
        raise OnnxImportError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others
        raise OnnxImportError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    b = _Builder(model, path)
    inputs = [i for i in model.graph.input if i.name not in b.consts]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise OnnxImportError(f"{path}: the model must have one input and one output "
                              f"(has {len(inputs)} and {len(model.graph.output)})")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    shape = tuple(dims[1:]) if dims and all(d for d in dims[1:]) else None
    b.values[inputs[0].name] = b.graph.placeholder("x")
    notes, problems = [], []
    nodes = list(model.graph.node)
    final = model.graph.output[0].name
    for node in nodes:
        is_last = node.output and node.output[0] == final
        try:
            out = _convert_node(b, node, bool(is_last))
        except (OnnxImportError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            text = str(exc) if isinstance(exc, OnnxImportError) else f"{node.op_type} node {node.name!r}: {exc}"
            problems.append(text.replace(f"{path}: ", ""))
            if node.input and node.input[0] in b.values:  # carry on, so that later nodes report their own problems
                b.values[node.output[0]] = b.values[node.input[0]]
            continue
        if out is not None:
            b.values[node.output[0]] = out
        if node.op_type == "Softmax" and is_last:
            notes.append("dropped the final Softmax: the spiking network outputs the logits (same argmax)")
    if problems:
        more = f"; ... {len(problems) - 5} more" if len(problems) > 5 else ""
        raise OnnxImportError(f"cannot read {path}: " + "; ".join(problems[:5]) + more)
    if final not in b.values:
        raise OnnxImportError(f"{path}: the output {final!r} is never computed")
    b.graph.output(b.values[final])
    gm = fx.GraphModule(b.root, b.graph, class_name="OnnxModel")
    gm.graph.eliminate_dead_code()
    gm.recompile()
    gm.eval()
    return gm, shape, notes
