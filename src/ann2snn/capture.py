"""Model capture with ``torch.export``: the user's ``forward`` becomes a graph of ATen ops, which is then
lifted into a graph of layers (``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.ReLU``, ...) and plain tensor
functions that the conversion passes, the simulator, the energy counter and the exporters read.

``torch.export`` runs the model's Python on an example input, so real model code converts as it is
written: shape assertions (``torch._assert``), ``if`` on the input size, functional batch norm inside
fused BN + activation layers and every spelling of an op (``F.relu``, ``x.relu_()``, ``nn.ReLU``) all
become a small, stable set of ATen ops. Shapes are specialised on the example, except the batch
dimension, which stays dynamic so that any batch size runs afterwards.

:data:`ATEN_OPS` is the one table of what each ATen op becomes. An op that is not in it is kept in the
graph as it is and classified as unsupported by :mod:`ann2snn.passes.patterns`, so it is reported
(never skipped) by :func:`ann2snn.passes.normalize.check_supported`.
"""

from __future__ import annotations

import operator
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .errors import CalibrationError, ConversionError, OffendingNode, UnsupportedOperationError
from .tracing import eval_copy, user_frame

aten = torch.ops.aten

__all__ = ["ATEN_OPS", "capture", "example_batch"]


def example_batch(example: Tensor) -> Tensor:
    """An example input with at least two samples: ``torch.export`` specialises a batch of one."""
    if not isinstance(example, Tensor):
        raise ConversionError(f"the example input must be a tensor, got {type(example).__name__}")
    if example.ndim == 0:
        raise ConversionError("the example input must have a batch dimension")
    if example.shape[0] >= 2:
        return example[:2]
    if example.shape[0] == 0:
        raise ConversionError("the example input is an empty batch")
    return torch.cat([example, example])


def _export(work: nn.Module, x: Tensor) -> tuple[Any, bool]:
    """``torch.export`` with a dynamic batch dimension; a static one if the model pins the batch."""
    from torch.export import Dim, export

    try:
        return export(work, (x,), dynamic_shapes=({0: Dim("batch")},)), True
    except Exception as dynamic_exc:  # noqa: BLE001 - export raises many kinds
        try:
            ep = export(work, (x,))
        except Exception:  # noqa: BLE001
            raise dynamic_exc from None
        warnings.warn(f"the model fixes its batch size while it runs ({str(dynamic_exc).splitlines()[0][:200]}); "
                      f"the converted model runs only on batches of {x.shape[0]}", stacklevel=3)
        return ep, False


def capture(model: nn.Module, example: Tensor) -> fx.GraphModule:
    """Capture a copy of ``model`` (in eval mode) on ``example`` and lift it into a layer graph.

    The model itself is not touched. Raises :class:`UnsupportedOperationError` naming the user's
    source line when the model cannot be captured at all (e.g. ``if`` on the values of a tensor).
    """
    work = eval_copy(model)
    x = example_batch(example)
    try:
        x = x.to(next(iter(work.parameters())).device)
    except StopIteration:
        pass
    try:  # a batch that does not fit the model is a data error, not a capture error
        with torch.no_grad():
            work(x)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CalibrationError(f"calibration batch of shape {tuple(example.shape)} does not fit the model: {first}") from exc
    try:
        with torch.no_grad():
            ep, dynamic = _export(work, x)
    except Exception as exc:  # noqa: BLE001 - torch.export raises many kinds
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "data-dependent" in str(exc) or "control flow" in str(exc) or "GuardOnDataDependent" in type(exc).__name__:
            reason = f"data-dependent Python control flow cannot be captured ({message[:300]})"
        else:
            reason = f"torch.export could not capture the model: {message[:300]}"
        raise UnsupportedOperationError(
            [OffendingNode(node=type(model).__name__ + ".forward", op="capture", reason=reason,
                           source=user_frame(exc))],
            hint="ann2snn captures forward() with torch.export on an example input: make the computation "
            "independent of the data values (no `if` / loops over tensor contents), or move such logic "
            "out of the model.",
        ) from exc
    gm = _Lifter(ep.module(), type(model).__name__).lift()
    gm.meta["capture"] = {"method": "torch.export", "dynamic_batch": dynamic,
                          "example_shape": list(x.shape[1:])}
    return gm


# -- lifting ---------------------------------------------------------------------------------------

_Handler = Callable[["_Lifter", fx.Node, tuple, dict], Any]
ATEN_OPS: dict[Any, _Handler] = {}
_SKIP = set()  # guards and assertions: no value, no effect on the result
_IDENTITY = set()  # ops that return their input at inference


def _op(*packets: Any) -> Callable[[_Handler], _Handler]:
    def register(fn: _Handler) -> _Handler:
        for p in packets:
            ATEN_OPS[p] = fn
        return fn
    return register


def _packet(target: Any) -> Any:
    return getattr(target, "overloadpacket", target)


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _tuple(v: Any, n: int) -> tuple:
    if isinstance(v, (list, tuple)):
        v = tuple(v)
        return v * n if len(v) == 1 else v
    return (v,) * n


def _ndim(node: Any) -> int | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val.dim() if isinstance(val, Tensor) else None


class _Lifter:
    """Builds the layer graph from an exported module's ATen graph, node by node."""

    def __init__(self, src: fx.GraphModule, class_name: str) -> None:
        self.src = src
        self.class_name = class_name
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.env: dict[fx.Node, Any] = {}
        self.names: set[str] = set()
        self.node: fx.Node | None = None  # the source node being lifted

    # - values -
    def value(self, a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: self.env[n])

    def const(self, a: Any) -> Any:
        """A parameter or buffer fed to an op (a ``get_attr`` of the exported module, or a value computed
        from them at capture time) as a tensor."""
        if isinstance(a, fx.Node) and isinstance(self.env.get(a), _Attr) and self.env[a].value is not None:
            return self.env[a].value
        if isinstance(a, fx.Node) and a.op == "get_attr":
            obj: Any = self.src
            for part in a.target.split("."):
                obj = getattr(obj, part)
            return obj.detach()
        if a is None or isinstance(a, Tensor):
            return a
        raise _NotLiftable("a weight that is computed, not stored")

    def module_path(self) -> tuple[str, type | None]:
        stack = self.node.meta.get("nn_module_stack") or {}
        if not stack:
            return "", None
        path, cls = list(stack.values())[-1]
        return str(path), cls if isinstance(cls, type) else None

    def fresh(self, base: str) -> str:
        base = base.replace(".", "_").replace("[", "_").replace("]", "").strip("_") or "layer"
        name, k = base, 1
        while name in self.names or hasattr(self.root, name):
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def _finish(self, new: fx.Node, label: str | None = None) -> fx.Node:
        new.meta["stack_trace"] = self.node.meta.get("stack_trace")
        path, _ = self.module_path()
        new.meta["ann2snn_path"] = label or path or self.node.name
        return new

    def module(self, mod: nn.Module, x: Any, kind: str, extra: tuple = ()) -> fx.Node:
        """``mod(x)`` as a call_module node, named after the module path that made it."""
        path, _ = self.module_path()
        name = self.fresh(path or f"{kind}")
        mod.eval()
        self.root.add_module(name, mod)
        return self._finish(self.graph.call_module(name, self.materialise((x, *extra))))

    def function(self, fn: Any, args: tuple, kwargs: dict | None = None) -> fx.Node:
        return self._finish(self.graph.call_function(fn, self.materialise(args), self.materialise(kwargs or {})))

    def method(self, name: str, args: tuple) -> fx.Node:
        return self._finish(self.graph.call_method(name, self.materialise(args)))

    # - driver -
    def lift(self) -> fx.GraphModule:
        for node in self.src.graph.nodes:
            self.node = node
            if node.op == "placeholder":
                self.env[node] = self._finish(self.graph.placeholder(node.name))
            elif node.op == "get_attr":
                self.env[node] = _Attr(node)  # materialised only where a constant is used as a value
            elif node.op == "output":
                self.graph.output(self.outputs(self.materialise(self.value(node.args[0]))))
            elif node.op == "call_module":  # torch.export's shape guards
                continue
            elif node.op == "call_function":
                self.env[node] = self.call(node)
            else:
                raise ConversionError(f"unexpected node {node.op} in the captured graph")
        gm = fx.GraphModule(self.root, self.graph, class_name=self.class_name)
        gm.graph.eliminate_dead_code()
        gm.recompile()
        gm.eval()
        return gm

    def outputs(self, flat: Any) -> Any:
        """The model's own output structure (a tensor, a tuple, a dict) from the flat exported outputs."""
        info = getattr(getattr(self.src.graph, "_codegen", None), "pytree_info", None)
        spec = getattr(info, "out_spec", None)
        if spec is None:
            return flat
        from torch.utils import _pytree

        return _pytree.tree_unflatten(list(flat), spec)

    def materialise(self, v: Any) -> Any:
        """Turn stored constants that reach an op as values into ``get_attr`` nodes."""
        def one(a: Any) -> Any:
            if isinstance(a, _Attr):
                name = self.fresh(str(a.node.target) if a.node.op == "get_attr" else f"{a.node.name}_const")
                t = a.value if a.value is not None else self.const(a.node)
                self.root.register_buffer(name, t.clone())
                return self.graph.get_attr(name)
            return a
        if isinstance(v, dict):
            return {k: self.materialise(a) for k, a in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(self.materialise(a) for a in v)
        return one(v)

    def fold(self, node: fx.Node) -> _Attr | None:
        """Compute at capture time an op whose tensor inputs are all stored tensors: weight
        standardisation, re-parameterised kernels, scales computed from parameters. Its result is a
        constant of the converted model, like any weight."""
        inputs = node.all_input_nodes
        if not inputs or not all(isinstance(self.env.get(a), _Attr) for a in inputs):
            return None
        if not isinstance(node.meta.get("val"), Tensor):
            return None
        real = fx.node.map_arg((node.args, node.kwargs), lambda n: self.const(n))
        with torch.no_grad():
            value = node.target(*real[0], **real[1])
        return _Attr(node, value.detach()) if isinstance(value, Tensor) else None

    def call(self, node: fx.Node) -> Any:
        target = node.target
        if target in _SKIP or _packet(target) in _SKIP:
            return None
        folded = self.fold(node)
        if folded is not None:
            return folded
        handler = ATEN_OPS.get(target) or ATEN_OPS.get(_packet(target))
        args = tuple(self.value(a) for a in node.args)
        kwargs = {k: self.value(v) for k, v in node.kwargs.items()}
        if handler is not None:
            try:
                return handler(self, node, args, kwargs)
            except _NotLiftable:
                pass
        if target in _IDENTITY or _packet(target) in _IDENTITY:
            return args[0]
        if target is operator.getitem and isinstance(args[0], (tuple, list)):  # a tuple a handler made
            return args[0][args[1]]
        # Python operators on sizes and getitem, or an op that does not convert: kept as it is (the
        # latter to be classified and reported)
        return self.function(target, args, kwargs)


class _NotLiftable(Exception):
    """This call of an op has no layer form (e.g. a weight computed at run time): keep it as it is."""


class _Attr:
    """A stored tensor (a ``get_attr`` of the exported module) or one computed from stored tensors alone
    (``value``), not yet placed in the new graph."""

    def __init__(self, node: fx.Node, value: Tensor | None = None) -> None:
        self.node = node
        self.value = value


def _weight(L: _Lifter, node: fx.Node, i: int, name: str) -> Tensor | None:
    raw = node.args[i] if len(node.args) > i else node.kwargs.get(name)
    return L.const(raw)


# -- weight layers -

def _set_params(mod: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    mod.weight = nn.Parameter(weight.clone(), requires_grad=False)
    if bias is None:
        mod.bias = None
    else:
        mod.bias = nn.Parameter(bias.clone(), requires_grad=False)
    return mod


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONVT = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def _conv_module(w: Tensor, b: Tensor | None, stride: Any, padding: Any, dilation: Any, groups: int,
                 transposed: bool = False, output_padding: Any = 0) -> nn.Module:
    n = w.ndim - 2
    if transposed:
        cin, cout = w.shape[0], w.shape[1] * groups
        mod = _CONVT[n](cin, cout, tuple(w.shape[2:]), _tuple(stride, n), _tuple(padding, n),
                        _tuple(output_padding, n), groups, b is not None, _tuple(dilation, n))
    else:
        cout, cin = w.shape[0], w.shape[1] * groups
        pad = padding if isinstance(padding, str) else _tuple(padding, n)
        mod = _CONV[n](cin, cout, tuple(w.shape[2:]), _tuple(stride, n), pad, _tuple(dilation, n), groups,
                       b is not None)
    return _set_params(mod, w, b)


@_op(aten.conv1d, aten.conv2d, aten.conv3d)
def _conv(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    w, b = _weight(L, node, 1, "weight"), _weight(L, node, 2, "bias")
    mod = _conv_module(w, b, _arg(args, kwargs, 3, "stride", 1), _arg(args, kwargs, 4, "padding", 0),
                       _arg(args, kwargs, 5, "dilation", 1), _arg(args, kwargs, 6, "groups", 1))
    return L.module(mod, args[0], "conv")


@_op(aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d)
def _conv_t(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    w, b = _weight(L, node, 1, "weight"), _weight(L, node, 2, "bias")
    mod = _conv_module(w, b, _arg(args, kwargs, 3, "stride", 1), _arg(args, kwargs, 4, "padding", 0),
                       _arg(args, kwargs, 7, "dilation", 1), _arg(args, kwargs, 6, "groups", 1), True,
                       _arg(args, kwargs, 5, "output_padding", 0))
    return L.module(mod, args[0], "conv_transpose")


@_op(aten.convolution, aten._convolution)
def _convolution(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    w, b = _weight(L, node, 1, "weight"), _weight(L, node, 2, "bias")
    mod = _conv_module(w, b, args[3], args[4], args[5], args[8], bool(args[6]), args[7])
    return L.module(mod, args[0], "conv")


@_op(aten.linear)
def _linear(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    w, b = _weight(L, node, 1, "weight"), _weight(L, node, 2, "bias")
    mod = _set_params(nn.Linear(w.shape[1], w.shape[0], bias=b is not None), w, b)
    return L.module(mod, args[0], "linear")


@_op(aten.addmm)
def _addmm(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    # bias + x @ weight.T (F.linear on older paths): only with stored weights, beta = alpha = 1
    if kwargs.get("beta", 1) != 1 or kwargs.get("alpha", 1) != 1:
        raise _NotLiftable("scaled addmm")
    b, wt = L.const(node.args[0]), _transposed_weight(L, node.args[2])
    mod = _set_params(nn.Linear(wt.shape[1], wt.shape[0]), wt, b)
    return L.module(mod, args[1], "linear")


@_op(aten.mm, aten.matmul)
def _mm(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    wt = _transposed_weight(L, node.args[1])
    if wt.ndim != 2:
        raise _NotLiftable("matmul with a batched weight")
    mod = _set_params(nn.Linear(wt.shape[1], wt.shape[0], bias=False), wt, None)
    return L.module(mod, args[0], "linear")


def _transposed_weight(L: _Lifter, raw: Any) -> Tensor:
    """``W`` for an ``x @ M`` whose ``M`` is a stored tensor or the transpose of one."""
    if isinstance(raw, fx.Node) and raw.op == "call_function" and _packet(raw.target) in (aten.t, aten.permute,
                                                                                           aten.transpose):
        inner = L.const(raw.args[0])
        if inner.ndim == 2:
            return inner
    m = L.const(raw)
    if m.ndim != 2:
        raise _NotLiftable("matmul weight")
    return m.t().contiguous()


# -- batch norm -

_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def _bn_module(L: _Lifter, node: fx.Node, x: Any, w: Any, b: Any, mean: Any, var: Any, eps: float) -> Any:
    weight, bias = L.const(w), L.const(b)
    rm, rv = L.const(mean), L.const(var)
    if rm is None or rv is None:
        raise _NotLiftable("batch norm without running statistics (batch statistics at inference)")
    ndim = _ndim(node.args[0]) or 4
    mod = _BN[ndim](rm.numel(), eps=float(eps), affine=weight is not None or bias is not None)
    with torch.no_grad():
        mod.running_mean.copy_(rm)
        mod.running_var.copy_(rv)
        if mod.affine:
            mod.weight.copy_(weight if weight is not None else torch.ones_like(rm))
            mod.bias.copy_(bias if bias is not None else torch.zeros_like(rm))
    return L.module(mod, x, "bn")


@_op(aten.batch_norm)
def _batch_norm(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    training = _arg(args, kwargs, 5, "training", False)
    if training:
        raise _NotLiftable("batch norm in training mode")
    return _bn_module(L, node, args[0], node.args[1], node.args[2], node.args[3], node.args[4],
                      _arg(args, kwargs, 7, "eps", 1e-5))


@_op(aten._native_batch_norm_legit_no_training)
def _bn_no_training(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    out = _bn_module(L, node, args[0], node.args[1], node.args[2], node.args[3], node.args[4],
                     _arg(args, kwargs, 6, "eps", 1e-5))
    return (out, None, None)


# -- activations -

@_op(aten.relu, aten.relu_)
def _relu(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    return L.module(nn.ReLU(), args[0], "relu")


@_op(aten.relu6)
def _relu6(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    return L.module(nn.ReLU6(), args[0], "relu6")


@_op(aten.hardtanh, aten.hardtanh_)
def _hardtanh(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    low, high = _arg(args, kwargs, 1, "min_val", -1.0), _arg(args, kwargs, 2, "max_val", 1.0)
    mod = nn.ReLU6() if (low, high) == (0, 6) else nn.Hardtanh(float(low), float(high))
    return L.module(mod, args[0], "hardtanh")


@_op(aten.clamp, aten.clamp_, aten.clip, aten.clip_)
def _clamp(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    low, high = _arg(args, kwargs, 1, "min"), _arg(args, kwargs, 2, "max")
    if isinstance(low, fx.Node) or isinstance(high, fx.Node):
        raise _NotLiftable("clamp with tensor bounds")
    return L.function(torch.clamp, (args[0], low, high))


@_op(aten.clamp_min, aten.clamp_min_)
def _clamp_min(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    if isinstance(args[1], fx.Node):
        raise _NotLiftable("clamp with tensor bounds")
    return L.function(torch.clamp_min, (args[0], args[1]))


@_op(aten.threshold, aten.threshold_)
def _threshold(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    if args[1] == 0 and args[2] == 0:
        return L.module(nn.ReLU(), args[0], "relu")
    raise _NotLiftable("threshold other than ReLU")


@_op(aten.leaky_relu, aten.leaky_relu_)
def _leaky(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    return L.module(nn.LeakyReLU(float(_arg(args, kwargs, 1, "negative_slope", 0.01))), args[0], "leaky_relu")


@_op(aten.prelu, aten._prelu_kernel)
def _prelu(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    w = L.const(node.args[1])
    mod = nn.PReLU(w.numel())
    with torch.no_grad():
        mod.weight.copy_(w.reshape(-1))
    return L.module(mod, args[0], "prelu")


# -- pooling -

_MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVGPOOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_AMAX = {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d}
_AAVG = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


def _pool_dims(name: str) -> int:
    return 3 if "3d" in name else 1 if "1d" in name else 2


_MAXPOOL_OPS = {aten.max_pool1d.default, aten.max_pool2d.default, aten.max_pool3d.default,
                aten.max_pool2d_with_indices.default, aten.max_pool3d_with_indices.default}


def _pool_params(node: fx.Node) -> tuple[int, tuple, tuple, tuple, tuple, bool]:
    """(dims, kernel, stride, padding, dilation, ceil_mode) of an ATen max-pool node."""
    args, kwargs = node.args, node.kwargs
    n = _pool_dims(str(node.target))
    k = _tuple(args[1], n)
    stride = _tuple(_arg(args, kwargs, 2, "stride", []) or k, n)
    return (n, k, stride, _tuple(_arg(args, kwargs, 3, "padding", 0), n), _tuple(_arg(args, kwargs, 4, "dilation", 1), n),
            bool(_arg(args, kwargs, 5, "ceil_mode", False)))


def _pool_out(size: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """Output length of a max-pool along one dimension, as PyTorch computes it."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + p:  # the last window must start inside the input or the left padding
        out -= 1
    return out


def _absorbed_padding(pool: fx.Node) -> tuple[tuple, bool] | None:
    """For a max-pool that reads a constant ``-inf`` padding (TensorFlow-style "same" pooling, as in
    timm's ``MaxPool2dSame``): the (padding, ceil_mode) with which the pool alone takes exactly the
    same windows (PyTorch pads max-pools with ``-inf``), or None when no such pair exists."""
    pad = pool.args[0] if pool.target in _MAXPOOL_OPS else None
    if not isinstance(pad, fx.Node):
        return None
    if pad.target == aten.constant_pad_nd.default:
        value = _arg(pad.args, pad.kwargs, 2, "value", 0.0)
    elif pad.target == aten.pad.default and _arg(pad.args, pad.kwargs, 2, "mode", "constant") == "constant":
        value = _arg(pad.args, pad.kwargs, 3, "value", None)
    else:
        return None
    if not (isinstance(value, float) and value == float("-inf")):
        return None
    val = pad.args[0].meta.get("val") if isinstance(pad.args[0], fx.Node) else None
    n, k, s, p0, d, c0 = _pool_params(pool)
    widths = list(pad.args[1])
    if not isinstance(val, Tensor) or len(widths) > 2 * n or any(not isinstance(w, int) or w < 0 for w in widths):
        return None
    widths += [0] * (2 * n - len(widths))
    sizes = [int(v) for v in val.shape[-n:]]
    for ceil in (False, True):
        padding = []
        for i in range(n):  # F.pad lists the last dimension first
            left, right = widths[2 * (n - 1 - i)], widths[2 * (n - 1 - i) + 1]
            want = _pool_out(sizes[i] + left + right, k[i], s[i], p0[i], d[i], c0)
            new = left + p0[i]
            if 2 * new > d[i] * (k[i] - 1) + 1 or _pool_out(sizes[i], k[i], s[i], new, d[i], ceil) != want:
                break
            padding.append(new)
        else:
            return tuple(padding), ceil
    return None


@_op(aten.max_pool1d, aten.max_pool2d, aten.max_pool3d)
def _max_pool(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    n, k, stride, padding, dilation, ceil = _pool_params(node)
    x = args[0]
    absorbed = _absorbed_padding(node)
    if absorbed is not None:  # pool the unpadded input with the pool's own -inf padding instead
        padding, ceil = absorbed
        x = L.env[node.args[0].args[0]]
    mod = _MAXPOOL[n](k, stride, padding, dilation, ceil_mode=ceil)
    return L.module(mod, x, "max_pool")


def _indices_used(node: fx.Node) -> bool:
    return any(u.target is operator.getitem and u.args[1] == 1 and u.users for u in node.users)


@_op(aten.max_pool2d_with_indices, aten.max_pool3d_with_indices)
def _max_pool_indices(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    if _indices_used(node):
        raise _NotLiftable("max-pool indices are used")
    return (_max_pool(L, node, args, kwargs), None)


@_op(aten.avg_pool1d, aten.avg_pool2d, aten.avg_pool3d)
def _avg_pool(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    n = _pool_dims(str(node.target))
    k = _tuple(args[1], n)
    stride = _arg(args, kwargs, 2, "stride", []) or k
    ceil, include = bool(_arg(args, kwargs, 4, "ceil_mode", False)), bool(_arg(args, kwargs, 5, "count_include_pad", True))
    extra: dict[str, Any] = {}
    if n > 1:
        extra["divisor_override"] = _arg(args, kwargs, 6, "divisor_override", None)
    mod = _AVGPOOL[n](k, _tuple(stride, n), _tuple(_arg(args, kwargs, 3, "padding", 0), n), ceil, include, **extra)
    return L.module(mod, args[0], "avg_pool")


@_op(aten.adaptive_avg_pool1d, aten.adaptive_avg_pool2d, aten.adaptive_avg_pool3d, aten._adaptive_avg_pool2d,
     aten._adaptive_avg_pool3d)
def _adaptive_avg(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    n = _pool_dims(str(node.target))
    return L.module(_AAVG[n](tuple(args[1]) if n > 1 else args[1][0]), args[0], "adaptive_avg_pool")


@_op(aten.adaptive_max_pool1d, aten.adaptive_max_pool2d, aten.adaptive_max_pool3d)
def _adaptive_max(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    if _indices_used(node):
        raise _NotLiftable("max-pool indices are used")
    n = _pool_dims(str(node.target))
    return (L.module(_AMAX[n](tuple(args[1]) if n > 1 else args[1][0]), args[0], "adaptive_max_pool"), None)


# -- linear maps and shapes -

def _fn(fn: Any) -> _Handler:
    def handler(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        return L.function(fn, args, kwargs)
    return handler


for _p, _f in ((aten.cat, torch.cat), (aten.concat, torch.cat), (aten.stack, torch.stack),
               (aten.flatten, torch.flatten), (aten.permute, torch.permute), (aten.transpose, torch.transpose),
               (aten.unsqueeze, torch.unsqueeze), (aten.squeeze, torch.squeeze), (aten.split, torch.split),
               (aten.split_with_sizes, torch.split), (aten.chunk, torch.chunk), (aten.sum, torch.sum),
               (aten.pixel_shuffle, F.pixel_shuffle), (aten.neg, operator.neg)):
    ATEN_OPS[_p] = _fn(_f)


@_op(aten.mean)
def _mean(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    if kwargs.get("dtype") is not None:
        raise _NotLiftable("mean with a dtype")
    return L.function(torch.mean, args, {})


def _static_shape(node: fx.Node, shape: Any, infer: bool = True) -> list:
    """``shape`` with sizes computed at run time replaced by numbers from the captured output's shape,
    and the one dynamic size (the batch) by -1 (``infer``: a reshape infers it), so that no size query
    stays in the graph. Without ``infer`` (expand, where -1 keeps the input's size) the dynamic size
    stays the size query it was."""
    out = node.meta.get("val")
    if not isinstance(out, Tensor) or len(out.shape) != len(shape):
        return list(shape)
    dims = list(out.shape)
    dynamic = [i for i, d in enumerate(dims) if not isinstance(d, int)]
    if len(dynamic) > 1:
        return list(shape)
    return [(-1 if infer else shape[i]) if i in dynamic else int(d) for i, d in enumerate(dims)]


@_op(aten.view, aten.reshape, aten._unsafe_view)
def _reshape(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    return L.function(torch.reshape, (args[0], _static_shape(node, args[1])))


@_op(aten.expand)
def _expand(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    return L.method("expand", (args[0], *_static_shape(node, args[1], infer=False)))


@_op(aten.t)
def _t(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    return L.method("t", (args[0],))


@_op(aten.sym_size)
def _size(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    return L.method("size", (args[0], args[1]))


@_op(aten.slice)
def _slice(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    dim = _arg(args, kwargs, 1, "dim", 0)
    start, end, step = _arg(args, kwargs, 2, "start"), _arg(args, kwargs, 3, "end"), _arg(args, kwargs, 4, "step", 1)
    if isinstance(end, int) and end >= sys.maxsize:
        end = None
    if start == 0:
        start = None
    if start is None and end is None and step == 1:
        return args[0]
    return _index(L, node, args[0], dim, slice(start, end, step if step != 1 else None))


@_op(aten.select)
def _select(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    return _index(L, node, args[0], args[1], args[2])


def _index(L: _Lifter, node: fx.Node, x: Any, dim: int, item: Any) -> Any:
    ndim = _ndim(node.args[0])
    if dim < 0:
        if ndim is None:
            raise _NotLiftable("negative dimension of unknown rank")
        dim += ndim
    return L.function(operator.getitem, (x, (*([slice(None)] * dim), item)))


@_op(aten.constant_pad_nd)
def _pad(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    if node.users and all(_absorbed_padding(u) is not None for u in node.users):
        return args[0]  # each max-pool reading it takes the padding over (_max_pool)
    return L.function(F.pad, (args[0], list(args[1])), {"value": float(_arg(args, kwargs, 2, "value", 0.0))})


@_op(aten.pad)
def _pad2(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    if node.users and all(_absorbed_padding(u) is not None for u in node.users):
        return args[0]  # each max-pool reading it takes the padding over (_max_pool)
    mode, value = _arg(args, kwargs, 2, "mode", "constant"), _arg(args, kwargs, 3, "value", None)
    return L.function(F.pad, (args[0], list(args[1])), {"mode": mode, "value": value})


@_op(aten.upsample_nearest1d, aten.upsample_nearest2d, aten.upsample_nearest3d)
def _up_nearest(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    return _interpolate(L, node, args[0], "nearest", None)


@_op(aten.upsample_bilinear2d, aten.upsample_linear1d, aten.upsample_trilinear3d, aten.upsample_bicubic2d)
def _up_linear(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    name = str(node.target)
    mode = "bilinear" if "bilinear" in name else "bicubic" if "bicubic" in name else \
        "trilinear" if "trilinear" in name else "linear"
    return _interpolate(L, node, args[0], mode, bool(args[2]))


def _interpolate(L: _Lifter, node: fx.Node, x: Any, mode: str, align: bool | None) -> Any:
    out = node.meta.get("val")
    if not isinstance(out, Tensor):
        raise _NotLiftable("upsampling of unknown size")
    size = tuple(int(s) for s in out.shape[2:])
    return L.module(nn.Upsample(size=size, mode=mode, align_corners=align), x, "upsample")


# -- arithmetic -

def _binary(fn: Any) -> _Handler:
    def handler(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        a, b = args[:2]
        alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
        if alpha != 1:
            b = L.function(operator.mul, (b, alpha))
        return L.function(fn, (a, b))
    return handler


for _p, _f in ((aten.add, operator.add), (aten.add_, operator.add), (aten.sub, operator.sub),
               (aten.sub_, operator.sub), (aten.mul, operator.mul), (aten.mul_, operator.mul),
               (aten.div, operator.truediv), (aten.div_, operator.truediv)):
    ATEN_OPS[_p] = _binary(_f)


@_op(aten.rsub)
def _rsub(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a, b = args[:2]
    return L.function(operator.sub, (b, a))


@_op(aten.dropout, aten.dropout_, aten.feature_dropout, aten.alpha_dropout, aten.feature_alpha_dropout)
def _dropout(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    # kept as a layer so that the passes remove it and say so (inspect lists it as removed)
    return L.module(nn.Dropout(float(_arg(args, kwargs, 1, "p", 0.5))), args[0], "dropout")


_IDENTITY.update({aten.clone, aten.contiguous, aten.alias, aten.detach, aten.lift_fresh_copy,
                  aten.lift_fresh})
_SKIP.update({aten._assert_scalar, aten._assert_async, aten.sym_constrain_range_for_size,
              aten.sym_constrain_range, aten._assert_tensor_metadata, aten._assert_tensor_metadata.default})


@_op(aten._to_copy, aten.to)
def _to(L: _Lifter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    dtype = kwargs.get("dtype")
    src, out = node.args[0].meta.get("val"), node.meta.get("val")
    if isinstance(src, Tensor) and isinstance(out, Tensor) and src.dtype != out.dtype and dtype is not None:
        raise _NotLiftable("a change of dtype")
    return args[0]


# Readable names of ops that have no spiking form, for errors (activations first).
ACTIVATIONS = {
    "silu": "SiLU", "gelu": "GELU", "sigmoid": "Sigmoid", "tanh": "Tanh", "hardswish": "Hardswish",
    "hardsigmoid": "Hardsigmoid", "mish": "Mish", "elu": "ELU", "selu": "SELU", "celu": "CELU",
    "softplus": "Softplus", "softmax": "Softmax", "_softmax": "Softmax", "log_softmax": "LogSoftmax",
    "_log_softmax": "LogSoftmax", "glu": "GLU", "softsign": "Softsign", "logsigmoid": "LogSigmoid",
    "exp": "exp", "log": "log", "sqrt": "sqrt", "rsqrt": "rsqrt", "pow": "pow", "abs": "abs",
    "erf": "erf", "sin": "sin", "cos": "cos", "rrelu": "RReLU", "rrelu_with_noise": "RReLU",
}
NORMS = {"layer_norm": "LayerNorm", "group_norm": "GroupNorm", "instance_norm": "InstanceNorm",
         "native_layer_norm": "LayerNorm", "native_group_norm": "GroupNorm", "rms_norm": "RMSNorm",
         "batch_norm": "BatchNorm with batch statistics", "local_response_norm": "LocalResponseNorm"}


def op_label(target: Any) -> tuple[str, int]:
    """A readable name for an op the graph keeps unconverted, and its rank (activations first)."""
    name = str(getattr(_packet(target), "__name__", target)).removeprefix("aten.").rstrip("_")
    base = name.split(".")[0]
    if base in ACTIVATIONS or base + "_" in ACTIVATIONS:
        return ACTIVATIONS.get(base, ACTIVATIONS.get(base + "_", base)), 0
    if base in NORMS:
        return NORMS[base], 1
    return base, 2
