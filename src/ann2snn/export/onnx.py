"""Reading ReLU CNNs from ONNX files into torch (``ann2snn convert --model model.onnx``).

A small reader of its own (only the ``onnx`` package is needed, to parse the protobuf): it builds a
``torch.fx.GraphModule`` of ordinary torch modules, which then converts like any other model. It
reads what PyTorch's and Keras' (tf2onnx) exporters write for ReLU CNNs: Conv, Gemm, MatMul (+ Add
of a bias), Relu, Clip(0, a), MaxPool, AveragePool, GlobalAveragePool, Add / Sum, Concat, Flatten,
Reshape, Transpose, BatchNormalization, Pad (zero), Dropout, Identity, Constant; a Softmax at the
very end is dropped (the SNN outputs the logits, whose argmax is the same). Any other op is
refused, all of them listed at once.
"""

from __future__ import annotations

import operator
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from ..loading import LoadError

__all__ = ["OnnxImportError", "load_onnx"]


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


def _convert_node(b: _Builder, node: Any, is_last: bool) -> fx.Node | None:
    op, a = node.op_type, _attrs(node)
    ins = list(node.input)
    label = f"{op} node {node.name or node.output[0]!r}"
    if op == "Constant":
        b.consts[node.output[0]] = np.asarray(a.get("value"))
        return None
    if op == "Shape" and ins[0] in b.ranks:
        b.shapevals[node.output[0]] = ["B", *b.ranks[ins[0]][1:]]
        return None
    if op in ("Gather", "Unsqueeze", "Squeeze", "Cast") and ins[0] in b.shapevals:
        vals = b.shapevals[ins[0]]
        if op == "Gather":
            idx = b.const(ins[1])
            if idx is None:
                raise OnnxImportError(f"{label}: indexing a shape with a computed index")
            vals = [vals[int(i)] for i in np.atleast_1d(idx)]
        b.shapevals[node.output[0]] = list(vals)
        return None
    if op in ("Unsqueeze", "Cast") and ins[0] in b.consts and (op == "Cast" or b.const(ins[0]).ndim == 0):
        b.consts[node.output[0]] = np.atleast_1d(b.consts[ins[0]])  # a scalar made a 1-D shape entry
        return None
    if op == "Concat" and any(i in b.shapevals for i in ins):
        vals = []
        for i in ins:
            vals += b.shapevals[i] if i in b.shapevals else [int(v) for v in np.atleast_1d(b.const(i))]
        b.shapevals[node.output[0]] = vals
        return None
    if op in ("Dropout", "Identity"):
        if ins[0] in b.consts:  # exporters alias shared initializers through Identity
            b.consts[node.output[0]] = b.consts[ins[0]]
            return None
        return b.value(ins[0])
    if op == "Relu":
        return b.module(node.name or "relu", nn.ReLU(), b.value(ins[0]))
    if op == "Clip":
        low = b.const(ins[1]) if len(ins) > 1 and ins[1] else a.get("min")
        high = b.const(ins[2]) if len(ins) > 2 and ins[2] else a.get("max")
        low = None if low is None else float(np.asarray(low))
        high = None if high is None else float(np.asarray(high))
        if low != 0.0:
            raise OnnxImportError(f"{label}: Clip with min={low} is not a ReLU")
        mod = nn.ReLU() if high is None else (nn.ReLU6() if high == 6.0 else nn.Hardtanh(0.0, high))
        return b.module(node.name or "clip", mod, b.value(ins[0]))
    if op == "Conv":
        w = b.const(ins[1])
        if w is None:
            raise OnnxImportError(f"{label}: the weights must be constants")
        dims = w.ndim - 2
        if dims not in (1, 2, 3):
            raise OnnxImportError(f"{label}: {dims}-D convolution")
        auto = a.get("auto_pad", "NOTSET")
        if auto not in ("NOTSET", "VALID"):
            raise OnnxImportError(f"{label}: auto_pad={auto} (export with explicit pads)")
        padding, zero_pad = _symmetric(a.get("pads", []), dims, label)
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
            x = b.module(f"{node.name or 'conv'}_pad", getattr(nn, f"ZeroPad{dims}d")(tuple(zero_pad)), x)
        return b.module(node.name or "conv", mod, x)
    if op == "Gemm":
        w = b.const(ins[1])
        if w is None or a.get("transA", 0):
            raise OnnxImportError(f"{label}: needs constant weights and transA=0")
        w = (w if a.get("transB", 0) else w.T) * float(a.get("alpha", 1.0))
        has_bias = len(ins) > 2 and bool(ins[2])
        mod = nn.Linear(w.shape[1], w.shape[0], bias=has_bias)
        mod.weight = _param(w)
        if has_bias:
            mod.bias = _param(np.broadcast_to(b.const(ins[2]) * float(a.get("beta", 1.0)), (w.shape[0],)))
        return b.module(node.name or "gemm", mod, b.value(ins[0]))
    if op == "MatMul":
        w = b.const(ins[1])
        if w is None or w.ndim != 2:
            raise OnnxImportError(f"{label}: only a product with a constant matrix (a dense layer) converts")
        mod = nn.Linear(w.shape[0], w.shape[1], bias=False)
        mod.weight = _param(w.T)
        out = b.module(node.name or "matmul", mod, b.value(ins[0]))
        if b.users.get(node.output[0], 0) == 1:
            b.bias_free[node.output[0]] = mod
        return out
    if op in ("Add", "Sum"):
        consts = [i for i in ins if i in b.consts]
        acts = [i for i in ins if i not in b.consts]
        if op == "Add" and len(acts) == 1 and len(consts) == 1 and acts[0] in b.bias_free:
            lin = b.bias_free.pop(acts[0])
            bias = np.broadcast_to(b.consts[consts[0]], (lin.out_features,))
            lin.bias = _param(bias)  # the bias of a Keras Dense layer exported as MatMul + Add
            return b.value(acts[0])
        if consts:
            raise OnnxImportError(f"{label}: adding a constant to an activation does not convert")
        acc = b.value(acts[0])
        for other in acts[1:]:
            acc = b.graph.call_function(operator.add, (acc, b.value(other)))
        return acc
    if op == "Concat":
        return b.graph.call_function(torch.cat, ([b.value(i) for i in ins],), {"dim": int(a.get("axis", 1))})
    if op == "Flatten":
        axis = int(a.get("axis", 1))
        if axis != 1:
            raise OnnxImportError(f"{label}: Flatten(axis={axis}) would mix the batch")
        return b.module(node.name or "flatten", nn.Flatten(1, -1), b.value(ins[0]))
    if op == "Reshape":
        shape = b.const(ins[1])
        if shape is None and ins[1] in b.shapevals and None not in b.shapevals[ins[1]]:
            shape = [0 if v == "B" else v for v in b.shapevals[ins[1]]]
        if shape is None:
            raise OnnxImportError(f"{label}: the target shape must be a constant")
        shape = [int(s) for s in shape]
        x = b.value(ins[0])
        if len(shape) == 2 and (shape[0] in (0, -1) or shape[1] == -1):
            return b.graph.call_function(torch.flatten, (x, 1))
        batch = b.graph.call_method("size", (x, 0))
        return b.graph.call_method("reshape", (x, batch, *shape[1:]))
    if op == "Transpose":
        perm = [int(p) for p in a.get("perm", [])]
        if not perm or perm[0] != 0:
            raise OnnxImportError(f"{label}: a transpose that moves the batch dimension")
        return b.graph.call_method("permute", (b.value(ins[0]), *perm))
    if op in ("MaxPool", "AveragePool"):
        k = [int(v) for v in a["kernel_shape"]]
        dims = len(k)
        padding, zero_pad = _symmetric(a.get("pads", []), dims, label)
        if zero_pad is not None or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise OnnxImportError(f"{label}: asymmetric or automatic padding")
        stride = tuple(a.get("strides", [1] * dims))
        ceil = bool(a.get("ceil_mode", 0))
        if op == "MaxPool":
            mod = getattr(nn, f"MaxPool{dims}d")(tuple(k), stride, tuple(padding),
                                                 dilation=tuple(a.get("dilations", [1] * dims)), ceil_mode=ceil)
        else:
            mod = getattr(nn, f"AvgPool{dims}d")(tuple(k), stride, tuple(padding), ceil_mode=ceil,
                                                 count_include_pad=bool(a.get("count_include_pad", 0)))
        return b.module(node.name or op.lower(), mod, b.value(ins[0]))
    if op == "GlobalAveragePool":
        return b.module(node.name or "gap", nn.AdaptiveAvgPool2d(1), b.value(ins[0]))
    if op == "BatchNormalization":
        scale, bias, mean, var = (b.const(i) for i in ins[1:5])
        if any(v is None for v in (scale, bias, mean, var)):
            raise OnnxImportError(f"{label}: the statistics must be constants")
        bn = nn.BatchNorm2d(len(scale), eps=float(a.get("epsilon", 1e-5)))
        bn.weight, bn.bias = _param(scale), _param(bias)
        bn.running_mean.copy_(torch.tensor(np.asarray(mean, np.float32)))
        bn.running_var.copy_(torch.tensor(np.asarray(var, np.float32)))
        return b.module(node.name or "bn", bn.eval(), b.value(ins[0]))
    if op == "Pad":
        pads = b.const(ins[1]) if len(ins) > 1 else a.get("pads")
        mode = a.get("mode", "constant")
        value = b.const(ins[2]) if len(ins) > 2 and ins[2] else a.get("value", 0.0)
        if pads is None or mode != "constant" or float(np.asarray(value)) != 0.0:
            raise OnnxImportError(f"{label}: only constant zero padding converts")
        pads = [int(p) for p in pads]
        n = len(pads) // 2
        torch_pads = []
        for d in reversed(range(n)):
            torch_pads += [pads[d], pads[d + n]]
        return b.graph.call_function(torch.nn.functional.pad, (b.value(ins[0]), tuple(torch_pads)))
    if op == "Softmax" and is_last:
        return b.value(ins[0])
    raise OnnxImportError(f"{label}: ONNX op {op} has no spiking equivalent in ann2snn's reader")


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
