"""Pattern tables: which graph nodes become neurons, which are linear and pass through, which are refused.

A node is classified into one :class:`Kind`. Everything not in these tables is unsupported, so
nothing is ever skipped silently.
"""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn


class Kind(enum.Enum):
    NEURON = "neuron"  # a ReLU spelling (cap: None) or ReLU6 / Hardtanh(0, x) (cap: the clip value)
    LEAKY = "leaky"  # LeakyReLU / PReLU: split into ReLU(x) - a * ReLU(-x) before neurons are placed
    MAXPOOL = "maxpool"
    BATCHNORM = "batchnorm"
    WEIGHTED = "weighted"  # conv / linear / transposed conv: the synaptic layers
    LINEAR = "linear"  # other ops that are linear (or affine) in their activation input
    REMOVE = "remove"  # dropout, identity: replaced by their input
    STRUCTURAL = "structural"  # shape queries and indexing: no arithmetic on activations
    IO = "io"  # placeholders, outputs, attribute fetches
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Classified:
    kind: Kind
    cap: float | None = None
    reason: str = ""


WEIGHTED_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                    nn.ConvTranspose3d, nn.Linear)
BATCHNORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
MAXPOOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                   nn.AdaptiveMaxPool3d)
REMOVE_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)
LINEAR_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                  nn.AdaptiveAvgPool3d, nn.Flatten, nn.Unflatten, nn.Upsample, nn.UpsamplingNearest2d,
                  nn.UpsamplingBilinear2d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.PixelShuffle,
                  nn.PixelUnshuffle, nn.ChannelShuffle)

# Functions by qualified name, so that saved graphs name them as text and load without pickle.
_FUNCTIONS: dict[str, Any] = {
    "operator.add": operator.add, "operator.iadd": operator.iadd, "operator.sub": operator.sub,
    "operator.isub": operator.isub, "operator.mul": operator.mul, "operator.imul": operator.imul,
    "operator.truediv": operator.truediv, "operator.neg": operator.neg, "operator.getitem": operator.getitem,
    "operator.floordiv": operator.floordiv,
    "torch.add": torch.add, "torch.sub": torch.sub, "torch.cat": torch.cat, "torch.concat": torch.concat,
    "torch.concatenate": torch.concatenate, "torch.stack": torch.stack, "torch.flatten": torch.flatten,
    "torch.reshape": torch.reshape, "torch.squeeze": torch.squeeze, "torch.unsqueeze": torch.unsqueeze,
    "torch.permute": torch.permute, "torch.transpose": torch.transpose, "torch.mean": torch.mean,
    "torch.sum": torch.sum, "torch.chunk": torch.chunk, "torch.split": torch.split,
    "torch.relu": torch.relu, "torch.relu_": torch.relu_, "torch.clamp": torch.clamp, "torch.clip": torch.clip,
    "torch.clamp_min": torch.clamp_min, "torch.max_pool1d": torch.max_pool1d, "torch.max_pool2d": torch.max_pool2d,
    "torch.max_pool3d": torch.max_pool3d, "torch.avg_pool1d": torch.avg_pool1d,
    "torch.adaptive_avg_pool1d": torch.adaptive_avg_pool1d,
    "torch.nn.functional.relu": F.relu, "torch.nn.functional.relu_": F.relu_, "torch.nn.functional.relu6": F.relu6,
    "torch.nn.functional.hardtanh": F.hardtanh, "torch.nn.functional.max_pool1d": F.max_pool1d,
    "torch.nn.functional.max_pool2d": F.max_pool2d, "torch.nn.functional.max_pool3d": F.max_pool3d,
    "torch.nn.functional.adaptive_max_pool1d": F.adaptive_max_pool1d,
    "torch.nn.functional.adaptive_max_pool2d": F.adaptive_max_pool2d,
    "torch.nn.functional.adaptive_max_pool3d": F.adaptive_max_pool3d,
    "torch.nn.functional.avg_pool1d": F.avg_pool1d, "torch.nn.functional.avg_pool2d": F.avg_pool2d,
    "torch.nn.functional.avg_pool3d": F.avg_pool3d,
    "torch.nn.functional.adaptive_avg_pool1d": F.adaptive_avg_pool1d,
    "torch.nn.functional.adaptive_avg_pool2d": F.adaptive_avg_pool2d,
    "torch.nn.functional.adaptive_avg_pool3d": F.adaptive_avg_pool3d,
    "torch.nn.functional.dropout": F.dropout, "torch.nn.functional.dropout1d": F.dropout1d,
    "torch.nn.functional.dropout2d": F.dropout2d, "torch.nn.functional.dropout3d": F.dropout3d,
    "torch.nn.functional.interpolate": F.interpolate, "torch.nn.functional.pad": F.pad,
    "torch.nn.functional.linear": F.linear, "torch.nn.functional.conv1d": F.conv1d,
    "torch.nn.functional.conv2d": F.conv2d, "torch.nn.functional.conv3d": F.conv3d,
    "torch.nn.functional.pixel_shuffle": F.pixel_shuffle, "torch.nn.functional.leaky_relu": F.leaky_relu,
    "torch.nn.functional.pixel_unshuffle": F.pixel_unshuffle,
    "getattr": getattr,
}
_NAME_OF = {id(fn): name for name, fn in _FUNCTIONS.items()}

RELU_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_}
MAXPOOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, torch.max_pool1d, torch.max_pool2d,
                     torch.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d}
DROPOUT_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d}
LINEAR_FUNCTIONS = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.neg, torch.add, torch.sub, torch.cat,
    torch.concat, torch.concatenate, torch.stack, torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze,
    torch.permute, torch.transpose, torch.mean, torch.sum, torch.chunk, torch.split, torch.avg_pool1d,
    torch.adaptive_avg_pool1d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.pixel_shuffle, F.pixel_unshuffle, F.linear, F.conv1d, F.conv2d, F.conv3d,
}
SCALING_FUNCTIONS = {operator.mul, operator.imul, operator.truediv}  # linear when the other side is a constant
STRUCTURAL_FUNCTIONS = {operator.getitem, getattr, operator.floordiv}
SHAPE_ARITHMETIC = {operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod,
                    operator.neg}

LINEAR_METHODS = {"view", "reshape", "flatten", "contiguous", "permute", "transpose", "squeeze", "unsqueeze",
                  "mean", "sum", "add", "add_", "sub", "sub_", "chunk", "split", "expand", "expand_as",
                  "view_as", "reshape_as", "unflatten", "neg", "t"}
SCALING_METHODS = {"mul", "mul_", "div", "div_"}
STRUCTURAL_METHODS = {"size", "dim", "numel", "__getitem__"}
RELU_METHODS = {"relu", "relu_"}
CLAMP_METHODS = {"clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_"}
INPLACE_TO_OUT = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                  torch.relu_: torch.relu, F.relu_: F.relu}


def function_name(fn: Any) -> str:
    """The qualified name under which a supported function is saved."""
    try:
        return _NAME_OF[id(fn)]
    except KeyError as exc:
        raise KeyError(f"function {fn!r} is not in ann2snn's table of supported functions") from exc


def resolve_function(name: str) -> Any:
    """The function saved under ``name``; only names of the supported table resolve."""
    try:
        return _FUNCTIONS[name]
    except KeyError as exc:
        raise KeyError(f"unknown function {name!r} in a saved graph") from exc


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _clamp_kind(low: Any, high: Any) -> Classified:
    if low is None or not _is_number(low) or low != 0:
        return Classified(Kind.UNSUPPORTED, reason=f"clamp with min={low!r} is not a ReLU (only min=0 converts)")
    if high is None:
        return Classified(Kind.NEURON)
    if not _is_number(high) or high <= 0:
        return Classified(Kind.UNSUPPORTED, reason=f"clamp with max={high!r} (needs a positive constant)")
    return Classified(Kind.NEURON, cap=float(high))


def is_shape_value(node: Any) -> bool:
    """A size of a tensor, or arithmetic on sizes and numbers (``x.size(0) * 4``): no activation."""
    if not isinstance(node, fx.Node):
        return _is_number(node)
    if node.op == "call_method" and node.target in STRUCTURAL_METHODS - {"__getitem__"}:
        return True
    if node.op == "call_function" and node.target is getattr:
        return True
    if node.op == "call_function" and node.target in SHAPE_ARITHMETIC:
        return all(is_shape_value(a) for a in node.args)
    return False


def _scaling_kind(node: fx.Node) -> Classified:
    # constants: stored tensors (get_attr) and sizes scale an activation linearly
    operands = [a for a in node.args[:2] if isinstance(a, fx.Node) and a.op != "get_attr" and not is_shape_value(a)]
    if len(operands) <= 1:
        return Classified(Kind.LINEAR)
    return Classified(Kind.UNSUPPORTED, reason="product or quotient of two activations is not linear")


def classify(node: fx.Node, modules: dict[str, nn.Module]) -> Classified:
    """Decide what a node becomes in the spiking network."""
    if node.op in ("placeholder", "output", "get_attr"):
        return Classified(Kind.IO)
    if node.op == "call_module":
        return _classify_module(modules[node.target])
    if node.op == "call_function":
        return _classify_function(node)
    if node.op == "call_method":
        return _classify_method(node)
    return Classified(Kind.UNSUPPORTED, reason=f"unknown node kind {node.op}")


def _classify_module(mod: nn.Module) -> Classified:
    if type(mod) is nn.ReLU:
        return Classified(Kind.NEURON)
    if type(mod) is nn.ReLU6:
        return Classified(Kind.NEURON, cap=6.0)
    if type(mod) in (nn.LeakyReLU, nn.PReLU):
        return Classified(Kind.LEAKY)
    if type(mod) is nn.Hardtanh:
        if mod.min_val == 0 and mod.max_val > 0:
            return Classified(Kind.NEURON, cap=float(mod.max_val))
        return Classified(Kind.UNSUPPORTED, reason=f"Hardtanh({mod.min_val}, {mod.max_val}) has a negative range")
    if isinstance(mod, WEIGHTED_MODULES):
        if isinstance(mod, nn.modules.conv._ConvNd) and mod.padding_mode != "zeros":
            return Classified(Kind.UNSUPPORTED, reason=f"padding_mode={mod.padding_mode!r} (only 'zeros' converts)")
        return Classified(Kind.WEIGHTED)
    if isinstance(mod, BATCHNORM_MODULES):
        return Classified(Kind.BATCHNORM)
    if isinstance(mod, MAXPOOL_MODULES):
        if getattr(mod, "return_indices", False):
            return Classified(Kind.UNSUPPORTED, reason="max-pooling with return_indices=True")
        return Classified(Kind.MAXPOOL)
    if isinstance(mod, REMOVE_MODULES):
        return Classified(Kind.REMOVE)
    if isinstance(mod, LINEAR_MODULES):
        return Classified(Kind.LINEAR)
    return Classified(Kind.UNSUPPORTED, reason=f"module {type(mod).__name__} has no spiking equivalent")


def _classify_function(node: fx.Node) -> Classified:
    fn = node.target
    if fn in SHAPE_ARITHMETIC and is_shape_value(node):
        return Classified(Kind.STRUCTURAL)
    if fn is F.leaky_relu:
        return Classified(Kind.LEAKY)
    if isinstance(fn, torch._ops.OpOverload):  # an ATen op the capture has no layer form for
        from ..capture import op_label

        label, _ = op_label(fn)
        return Classified(Kind.UNSUPPORTED, reason=f"{label} has no spiking equivalent")
    if fn in RELU_FUNCTIONS:
        return Classified(Kind.NEURON)
    if fn is F.relu6:
        return Classified(Kind.NEURON, cap=6.0)
    if fn is F.hardtanh:
        return _clamp_kind(_arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0))
    if fn in (torch.clamp, torch.clip):
        return _clamp_kind(_arg(node, 1, "min"), _arg(node, 2, "max"))
    if fn is torch.clamp_min:
        return _clamp_kind(_arg(node, 1, "min"), None)
    if fn in MAXPOOL_FUNCTIONS:
        if _arg(node, 6, "return_indices", False):
            return Classified(Kind.UNSUPPORTED, reason="max-pooling with return_indices=True")
        return Classified(Kind.MAXPOOL)
    if fn in DROPOUT_FUNCTIONS:
        return Classified(Kind.REMOVE)
    if fn is F.interpolate:
        return Classified(Kind.LINEAR)  # nearest, (bi/tri)linear and bicubic are all linear maps
    if fn is F.pad:
        mode = _arg(node, 2, "mode", "constant")
        value = _arg(node, 3, "value", None)
        if mode == "constant" and (value is None or value == 0):
            return Classified(Kind.LINEAR)
        if mode in ("reflect", "replicate", "circular"):  # copies of entries: linear in the activations
            return Classified(Kind.LINEAR)
        return Classified(Kind.UNSUPPORTED, reason=f"padding mode={mode!r} value={value!r} (zero, reflect, "
                          "replicate or circular padding converts)")
    if fn in LINEAR_FUNCTIONS:
        return Classified(Kind.LINEAR)
    if fn in SCALING_FUNCTIONS:
        return _scaling_kind(node)
    if fn in STRUCTURAL_FUNCTIONS:
        return Classified(Kind.STRUCTURAL)
    name = getattr(fn, "__name__", repr(fn))
    return Classified(Kind.UNSUPPORTED, reason=f"function {name} has no spiking equivalent")


def _classify_method(node: fx.Node) -> Classified:
    name = node.target
    if name in RELU_METHODS:
        return Classified(Kind.NEURON)
    if name in CLAMP_METHODS:
        if name.startswith("clamp_min"):
            return _clamp_kind(_arg(node, 1, "min"), None)
        return _clamp_kind(_arg(node, 1, "min"), _arg(node, 2, "max"))
    if name in LINEAR_METHODS:
        return Classified(Kind.LINEAR)
    if name in SCALING_METHODS:
        return _scaling_kind(node)
    if name in STRUCTURAL_METHODS:
        return Classified(Kind.STRUCTURAL)
    return Classified(Kind.UNSUPPORTED, reason=f"method .{name}() has no spiking equivalent")
