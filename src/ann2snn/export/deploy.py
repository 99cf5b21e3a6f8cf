"""Hardware-ready export: NIR graphs that other SNN libraries' own NIR importers load and run.

The toolchains that read NIR (snnTorch, sinabs for SynSense Speck, Norse, Rockpool for Xylo) run
integrate-and-fire neurons with **one threshold per layer**, and each reads only some NIR nodes.
ann2snn's neurons have a threshold per channel, so the export first applies the classic **weight
normalisation** (:func:`fold_thresholds`), an exact rewrite of the network:

* a neuron layer with thresholds ``theta_c`` becomes one with threshold 1: the layer that feeds it
  has its output channel ``c`` (weights and bias) divided by ``theta_c``, the membrane, its initial
  value and the bias correction too, so the membrane is ``v / theta_c`` and the same spikes fire;
* the spikes leave as counts (``s``, not ``s * theta_c``): every layer that reads them has its input
  channel ``c`` multiplied by ``theta_c``;
* where values meet (a residual addition) their scales must agree: a branch whose scale differs gets
  a per-channel scale (a depthwise 1x1 convolution); concatenations keep each part's scale; pooling
  and reshapes carry the scale through (max-pooling commutes with a positive per-channel scale);
* a channel that never fires (threshold 0) gets zero input weights;
* the network's output keeps scale 1: the folded network computes the same numbers.

:func:`normalize` returns the folded network as a :class:`~ann2snn.model.SpikingModel`, so the
rewrite can be checked against the original (``tests/test_deploy.py``). :func:`deploy_ops` then
shapes the folded layers to what a target reads (:data:`TARGETS`), and :func:`to_deploy_nir` writes
them as standard NIR nodes. :func:`run_reader` loads such a file with the target library's own NIR
import and runs it (the library must be installed; see docs/export.md).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConversionError, OffendingNode
from ..model import SpikingModel
from .ir import ExportError, Op, build, lower

__all__ = ["TARGETS", "TARGET_LIMITS", "avgpool_model", "deploy_ops", "export_deploy", "fold_thresholds",
           "normalize", "quantize_ops", "run_reader", "to_deploy_nir"]

TARGETS = ("snntorch", "sinabs", "norse", "rockpool", "nir-exact")

#: What each target reads: the pooling node, whether it takes burst neurons, how the initial
#: membrane is set after the import (``state``: through the library's own state API).
TARGET_LIMITS: dict[str, dict[str, Any]] = {
    "snntorch": {"pool": "avg", "burst": False, "library": "snntorch"},
    "sinabs": {"pool": "sum", "burst": True, "library": "sinabs"},
    "norse": {"pool": "sum", "burst": False, "library": "norse", "neuron": "cubalif"},
    "rockpool": {"pool": None, "burst": False, "library": "rockpool", "neuron": "lif", "dense": True},
    "nir-exact": {"pool": "avg", "burst": True, "library": None},
}


# -- exact weight normalisation ---------------------------------------------------------------------

def _per_channel_value(m: Tensor, what: str, name: str) -> Tensor:
    """``m`` (a per-element multiplier of a ``(C, ...)`` sample) as one value per channel."""
    if m.ndim <= 1:
        return m.reshape(-1)
    flat = m.reshape(m.shape[0], -1)
    if not bool((flat == flat[:, :1]).all()):
        raise ExportError("a hardware target", [OffendingNode(name, what, "its input's scale varies within a "
                                                                          "channel (it cannot be folded into weights)")])
    return flat[:, 0].clone()


def _broadcast(c: Tensor, shape: tuple[int, ...]) -> Tensor:
    if len(shape) == 0:
        return c.reshape(())
    return c.reshape(-1, *([1] * (len(shape) - 1))).expand(*shape).clone()


def _neuron_multiplier(op: Op) -> tuple[Tensor, Tensor, Tensor]:
    """(input multiplier 1/theta, 0 where dead; output scale theta, 1 where dead; live mask), per channel."""
    theta = torch.as_tensor(op.tensors["threshold"], dtype=torch.float64).reshape(-1)
    channels = op.shape[0] if len(op.shape) else 1
    if theta.numel() == 1 and channels > 1:
        theta = theta.expand(channels).clone()
    live = theta > 0
    m_in = torch.where(live, 1.0 / torch.where(live, theta, torch.ones_like(theta)), torch.zeros_like(theta))
    out_scale = torch.where(live, theta, torch.ones_like(theta))
    return m_in, out_scale, live


def fold_thresholds(ops: list[Op]) -> list[Op]:
    """The layer list with every neuron's thresholds folded into the weights (all thresholds 1).

    Exact: the folded network fires the same spikes (as counts) and returns the same output, up to
    float32 rounding of the rescaled weights (none when thresholds are powers of two).
    A value carries a multiplier ``m`` (folded = m * original), chosen so that each neuron receives
    ``m = 1 / theta``; convolutions, linear layers and per-channel affine maps absorb any change of
    multiplier, additions get a per-channel rescale on a branch whose multiplier differs.
    """
    by_name = {op.name: op for op in ops}
    consumers: dict[str, list[Op]] = {op.name: [] for op in ops}
    for op in ops:
        for i in op.inputs:
            consumers[i].append(op)

    # 1. what each value's consumers want its multiplier to be (back to front)
    want: dict[str, Tensor | None] = {}

    def wish(name: str, m: Tensor) -> None:
        prev = want.get(name, "unset")
        if isinstance(prev, str):
            want[name] = m
        elif prev is not None and not torch.equal(prev, m):
            want[name] = None  # consumers disagree: the producer keeps scale 1, consumers rescale

    for op in reversed(ops):
        out_want = want.get(op.name)
        out_want = None if isinstance(out_want, str) else out_want
        if op.kind == "neuron":
            m_in, _, _ = _neuron_multiplier(op)
            wish(op.inputs[0], _broadcast(m_in, op.shape))
        elif op.kind == "output":
            wish(op.inputs[0], torch.ones(op.shape, dtype=torch.float64))
        elif out_want is None:
            continue
        elif op.kind == "add":
            for i in op.inputs:
                wish(i, out_want)
        elif op.kind in ("avg_pool", "adaptive_avg_pool", "max_pool"):
            flat = out_want.reshape(out_want.shape[0], -1)
            if bool((flat == flat[:, :1]).all()):
                wish(op.inputs[0], _broadcast(flat[:, 0], by_name[op.inputs[0]].shape))
        elif op.kind == "reshape":
            wish(op.inputs[0], out_want.reshape(by_name[op.inputs[0]].shape))
        elif op.kind == "concat":
            sizes = [by_name[i].shape[op.attrs["dim"]] for i in op.inputs]
            for i, part in zip(op.inputs, torch.split(out_want, sizes, dim=op.attrs["dim"]), strict=True):
                wish(i, part.clone())

    def wanted(name: str, shape: tuple[int, ...]) -> Tensor:
        w = want.get(name)
        if isinstance(w, Tensor):
            return w
        return torch.ones(shape, dtype=torch.float64)

    # 2. front to back: the actual multipliers, the rescaled tensors, rescales where needed
    out: list[Op] = []
    mult: dict[str, Tensor] = {}
    rename: dict[str, str] = {}

    def rescale(source: str, shape: tuple[int, ...], have: Tensor, need: Tensor, tag: str) -> str:
        """A per-channel rescale from multiplier ``have`` to ``need`` (returns the value to read)."""
        if torch.equal(have, need):
            return source
        h = _per_channel_value(have, "rescale", source)
        n = _per_channel_value(need, "rescale", source)
        if bool(((h == 0) & (n != 0)).any()):
            raise ExportError("a hardware target", [OffendingNode(source, "rescale", "a value scaled by 0 is read "
                                                                                    "elsewhere at another scale")])
        ratio = torch.where(h != 0, n / torch.where(h != 0, h, torch.ones_like(h)), torch.zeros_like(h))
        name = f"{source}_rescale_{tag}"
        out.append(Op(name, "channel_affine", [source], shape, {"rescale": True},
                      {"scale": ratio.float(), "shift": torch.zeros(ratio.numel())}))
        mult[name] = need
        return name

    def m_channels(name: str, what: str) -> Tensor:
        return _per_channel_value(mult[name], what, name)

    for op in ops:
        op = copy.copy(op)
        op.attrs, op.tensors = dict(op.attrs), dict(op.tensors)
        op.inputs = [rename.get(i, i) for i in op.inputs]
        k = op.kind
        if k == "input":
            mult[op.name] = torch.ones(op.shape, dtype=torch.float64)
        elif k == "output":
            op.inputs = [rescale(op.inputs[0], op.shape, mult[op.inputs[0]],
                                 torch.ones(op.shape, dtype=torch.float64), "out")]
        elif k in ("conv", "linear", "channel_affine"):
            src = op.inputs[0]
            m_out = wanted(op.name, op.shape)
            if k == "conv" or len(op.shape) > 1:
                m_out = _broadcast(_per_channel_value(m_out, k, op.name), op.shape)
            c_out = m_out.reshape(-1) if k == "linear" else _per_channel_value(m_out, k, op.name)
            c_in = mult[src].reshape(-1) if k == "linear" else m_channels(src, k)
            if bool((c_in == 0).any()):
                raise ExportError("a hardware target", [OffendingNode(op.name, k, "reads a value scaled by 0")])
            if k == "channel_affine":
                op.tensors["scale"] = (op.tensors["scale"].double().reshape(-1) * c_out / c_in).float()
                op.tensors["shift"] = (op.tensors["shift"].double().reshape(-1) * c_out).float()
            else:
                w = op.tensors["weight"].double()
                if k == "conv" and op.attrs["transposed"]:
                    raise ExportError("a hardware target", [OffendingNode(op.name, "conv", "transposed convolution")])
                if k == "conv" and op.attrs["groups"] > 1:
                    g = op.attrs["groups"]
                    per, cin_g = w.shape[0] // g, w.shape[1]
                    inv = (1.0 / c_in).reshape(g, cin_g).repeat_interleave(per, dim=0)  # [out, in/groups]
                else:
                    inv = (1.0 / c_in).reshape(1, -1).expand(w.shape[0], -1)
                w = w * c_out.reshape(-1, *([1] * (w.ndim - 1))) * inv.reshape(*inv.shape, *([1] * (w.ndim - 2)))
                op.tensors["weight"] = w.float()
                op.tensors["bias"] = (op.tensors["bias"].double().reshape(-1) * c_out).float()
                op.attrs["has_bias"] = op.attrs.get("has_bias", True) or bool(op.tensors["bias"].any())
            mult[op.name] = m_out
        elif k in ("avg_pool", "adaptive_avg_pool", "max_pool"):
            mult[op.name] = _broadcast(m_channels(op.inputs[0], k), op.shape)
        elif k == "reshape":
            mult[op.name] = mult[op.inputs[0]].reshape(op.shape)
        elif k == "concat":
            mult[op.name] = torch.cat([mult[i] for i in op.inputs], dim=op.attrs["dim"])
        elif k == "add":
            target = wanted(op.name, op.shape)
            op.inputs = [rescale(i, op.shape, mult[i], target, f"{op.name}_{j}") for j, i in enumerate(op.inputs)]
            mult[op.name] = target
        elif k == "neuron":
            m_in, out_scale, live = _neuron_multiplier(op)
            src = rescale(op.inputs[0], op.shape, mult[op.inputs[0]], _broadcast(m_in, op.shape), op.name)
            op.inputs = [src]
            channels = m_in.numel()

            def per(t: Any, channels: int = channels) -> Tensor:
                t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
                return t.expand(channels).clone() if t.numel() == 1 else t

            v0 = float(op.attrs["v0"])
            offset = per(op.tensors["v0_offset"]) * m_in
            # a silent channel gets no input; it must also start below its threshold of 1
            offset = torch.where(live, offset, torch.full_like(offset, min(0.0, 0.5 - v0)))
            op.tensors = {"threshold": torch.ones(channels), "v0_offset": offset.float(),
                          "bias_shift": (per(op.tensors["bias_shift"]) * m_in).float()}
            op.attrs["clip"] = None  # the analog stand-in (ReLU6's 6) has no single value per layer any more
            op.attrs["folded_scale"] = out_scale.float()
            mult[op.name] = _broadcast(1.0 / out_scale, op.shape)
        out.append(op)
    return out


@torch.no_grad()
def normalize(snn: SpikingModel, example_shape: tuple[int, ...] | None = None) -> SpikingModel:
    """The network with every layer's thresholds folded into the weights (threshold 1 everywhere):
    same spikes, same output. ``snn`` is not modified."""
    ops = fold_thresholds(lower(snn, example_shape, target="weight normalisation"))
    return build(ops, snn.config, dict(snn.info))


# -- shaping the folded network for a target --------------------------------------------------------

def _absorb_biases(ops: list[Op]) -> list[Op]:
    """Each neuron's constant per-step input (bias correction, spread start) moved into the bias of
    the layer that feeds it where that layer feeds nothing else, else into a per-channel affine."""
    consumers: dict[str, int] = {}
    for op in ops:
        for i in op.inputs:
            consumers[i] = consumers.get(i, 0) + 1
    by_name = {op.name: op for op in ops}
    out: list[Op] = []
    for op in ops:
        if op.kind == "neuron" and bool(op.tensors["bias_shift"].any()):
            shift = op.tensors["bias_shift"].reshape(-1)
            src = by_name[op.inputs[0]]
            if src.kind in ("conv", "linear", "channel_affine") and consumers[src.name] == 1:
                key = "shift" if src.kind == "channel_affine" else "bias"
                src.tensors[key] = src.tensors[key] + shift
                src.attrs["has_bias"] = True
            else:
                name = f"{op.name}_bias"
                out.append(Op(name, "channel_affine", [op.inputs[0]], op.shape, {},
                              {"scale": torch.ones(shift.numel()), "shift": shift.clone()}))
                op.inputs = [name]
            op.tensors = {**op.tensors, "bias_shift": torch.zeros_like(shift)}
        out.append(op)
    return out


def _as_convs(ops: list[Op]) -> list[Op]:
    """Flatten + Linear as one convolution whose kernel covers the whole map, and every later vector
    layer as a 1x1 convolution: the network stays in ``(C, H, W)`` samples (no Flatten node, which
    readers disagree on: some flatten the batch dimension too)."""
    shape_of: dict[str, tuple[int, ...]] = {}
    alias: dict[str, str] = {}
    out: list[Op] = []
    for op in ops:
        op.inputs = [alias.get(i, i) for i in op.inputs]
        ins = [shape_of[i] for i in op.inputs]
        if op.kind == "reshape":
            readers = [o for o in ops if op.name in o.inputs]
            if len(op.shape) != 1 or any(o.kind != "linear" for o in readers):
                raise ExportError("a hardware target", [OffendingNode(op.name, "reshape",
                                                                      f"reshape to {tuple(op.shape)}")])
            alias[op.name] = op.inputs[0]  # the next linear layer reads the map directly
            shape_of[op.name] = ins[0]
            continue
        if op.kind == "linear":
            src = ins[0]
            w = op.tensors["weight"]
            if len(src) == 1:
                src = (src[0], 1, 1)
            kernel = w.reshape(w.shape[0], *src)
            op = Op(op.name, "conv", op.inputs, (w.shape[0], 1, 1),
                    {"dims": 2, "transposed": False, "stride": [1, 1], "padding": [0, 0], "dilation": [1, 1],
                     "groups": 1, "output_padding": [0, 0], "has_bias": True},
                    {"weight": kernel.contiguous(), "bias": op.tensors["bias"]})
        elif op.kind == "input" and len(op.shape) == 1:
            raise ExportError("a hardware target", [OffendingNode(op.name, "input", "vector inputs: give the input "
                                                                                  "as (C, H, W)")])
        elif op.kind in ("neuron", "channel_affine", "add", "output", "concat") and ins and len(ins[0]) == 3 \
                and len(op.shape) == 1:
            op.shape = ins[0]
        shape_of[op.name] = tuple(op.shape)
        out.append(op)
    return out


def _pools(ops: list[Op], pool: str) -> list[Op]:
    """Average pooling as the target's pooling node, with fixed windows (an adaptive pool with equal
    windows becomes a plain one). ``sum``: a sum pool followed by a per-channel scale 1/k^2, which
    the next layer absorbs (:func:`_merge_affines`)."""
    shape_of = {op.name: tuple(op.shape) for op in ops}
    out: list[Op] = []
    renamed: dict[str, str] = {}
    for op in ops:
        op.inputs = [renamed.get(i, i) for i in op.inputs]
        if op.kind not in ("avg_pool", "adaptive_avg_pool"):
            out.append(op)
            continue
        in_shape = shape_of[op.inputs[0]]
        if op.kind == "adaptive_avg_pool":
            h, w = in_shape[1:]
            oh, ow = op.attrs["output_size"]
            if h % oh or w % ow:
                raise ExportError("a hardware target", [OffendingNode(op.name, "adaptive_avg_pool",
                                                                      f"from {h}x{w} to {oh}x{ow}: windows of unequal size")])
            k = s = [h // oh, w // ow]
        else:
            a = op.attrs
            if any(a["padding"]) or a["ceil_mode"] or a.get("divisor_override"):
                raise ExportError("a hardware target", [OffendingNode(op.name, "avg_pool",
                                                                      "padding, ceil_mode or divisor_override")])
            k, s = a["kernel_size"], a["stride"]
        attrs = {"dims": 2, "kernel_size": list(k), "stride": list(s), "padding": [0, 0], "ceil_mode": False,
                 "count_include_pad": True, "divisor_override": 1 if pool == "sum" else None}
        out.append(Op(op.name, "avg_pool", op.inputs, op.shape, attrs))
        if pool == "sum":
            area = float(k[0] * k[1])
            out.append(Op(f"{op.name}_mean", "channel_affine", [op.name], op.shape, {"rescale": True},
                          {"scale": torch.full((op.shape[0],), 1.0 / area), "shift": torch.zeros(op.shape[0])}))
            renamed[op.name] = f"{op.name}_mean"
    return out


def _merge_affines(ops: list[Op]) -> list[Op]:
    """A per-channel affine map folded into the convolution (or affine map) it feeds, when it feeds
    only that layer; the map must be the layer's only input."""
    consumers: dict[str, list[Op]] = {}
    for op in ops:
        for i in op.inputs:
            consumers.setdefault(i, []).append(op)
    drop: set[str] = set()
    for op in ops:
        if op.kind != "channel_affine" or len(consumers.get(op.name, [])) != 1:
            continue
        nxt = consumers[op.name][0]
        scale = op.tensors["scale"].double().reshape(-1)
        shift = op.tensors["shift"].double().reshape(-1)
        if nxt.kind == "conv" and not nxt.attrs["transposed"] and (nxt.attrs["groups"] == 1 or not shift.any()) \
                and not (shift.any() and any(nxt.attrs["padding"])):
            w = nxt.tensors["weight"].double()
            g = nxt.attrs["groups"]
            per, cin_g = w.shape[0] // g, w.shape[1]
            s = scale.reshape(g, cin_g).repeat_interleave(per, dim=0).reshape(*w.shape[:2], *([1] * (w.ndim - 2)))
            bias = nxt.tensors["bias"].double() + (w * shift.reshape(1, -1, *([1] * (w.ndim - 2)))).sum(
                dim=tuple(range(1, w.ndim))) if g == 1 else nxt.tensors["bias"].double()
            nxt.tensors["weight"] = (w * s).float()
            nxt.tensors["bias"] = bias.float()
        elif nxt.kind == "channel_affine":
            nxt.tensors["shift"] = (nxt.tensors["shift"].double() + nxt.tensors["scale"].double() * shift).float()
            nxt.tensors["scale"] = (nxt.tensors["scale"].double() * scale).float()
        else:
            continue
        nxt.inputs = [op.inputs[0] if i == op.name else i for i in nxt.inputs]
        drop.add(op.name)
    return [op for op in ops if op.name not in drop]


def deploy_ops(snn: SpikingModel, target: str, example_shape: tuple[int, ...] | None = None) -> list[Op]:
    """The folded layer list shaped for ``target`` (one of :data:`TARGETS` but ``nir-exact``).

    Raises:
        ExportError: for what the target cannot run: max-pooling (replace it by average pooling in
            the ANN with :func:`avgpool_model` and convert again), burst neurons where the target
            emits one spike a step, bipolar or signed neurons, reshapes other than a flatten.
    """
    if target not in TARGETS or target == "nir-exact":
        raise ConversionError(f"unknown deploy target {target!r}; choose one of {', '.join(TARGETS[:-1])}")
    limits = TARGET_LIMITS[target]
    ops = lower(snn, example_shape, target=target)
    offenders = []
    for op in ops:
        if op.kind == "max_pool":
            offenders.append(OffendingNode(op.name, "max_pool", "max-pooling (no reader runs ann2snn's running "
                                                                "max-pool)"))
        if op.kind == "neuron" and int(op.attrs["cap"]) > 1 and not limits["burst"]:
            offenders.append(OffendingNode(op.name, "neuron", f"burst neuron (up to {op.attrs['cap']} spikes a "
                                                              f"step): {target} emits one spike a step"))
    if offenders:
        raise ExportError(target, offenders, "Max-pooling: convert ann2snn.export.deploy.avgpool_model(model) "
                                             "instead (average pooling; its cost is in docs/export.md). Burst "
                                             "neurons: convert with neuron='if', or export to sinabs.")
    if limits.get("dense"):
        return _merge_affines(_absorb_biases(_dense_only(fold_thresholds(ops), target)))
    ops = _as_convs(fold_thresholds(ops))
    ops = _merge_affines(_absorb_biases(_pools(ops, limits["pool"])))
    return ops


def _dense_only(ops: list[Op], target: str) -> list[Op]:
    """A network of linear layers on vectors: the input flattened (the reader is given flat
    samples), every layer a linear map or a neuron. Anything else is refused."""
    out: list[Op] = []
    alias: dict[str, str] = {}
    offenders = []
    for op in ops:
        op.inputs = [alias.get(i, i) for i in op.inputs]
        if op.kind == "input":
            out.append(op)
            continue
        if op.kind == "reshape" and op.inputs and op.inputs[0] == ops[0].name:
            alias[op.name] = op.inputs[0]  # flattening the input: the reader receives flat samples
            out[0].shape = tuple(op.shape)
            continue
        if op.kind not in ("linear", "neuron", "output") or len(op.shape) != 1 or len(out[0].shape) != 1:
            offenders.append(OffendingNode(op.name, op.kind, f"{target} reads linear layers and neurons on vectors "
                                                              "only (no convolution, pooling or addition)"))
            continue
        out.append(op)
    if offenders:
        raise ExportError(target, offenders)
    return out


def avgpool_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.MaxPool2d`` replaced by an ``nn.AvgPool2d`` of the same
    window (for targets without max-pooling; the accuracy it costs is measured in docs/export.md)."""
    model = copy.deepcopy(model)
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.MaxPool2d):
            if mod.dilation not in (1, (1, 1)) or mod.return_indices:
                raise ConversionError(f"{name}: max-pooling with dilation or indices has no average-pool twin")
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1],
                    nn.AvgPool2d(mod.kernel_size, mod.stride, mod.padding, ceil_mode=mod.ceil_mode))
    return model


# -- NIR for a target -------------------------------------------------------------------------------

_SLOW = np.float32(2.0 ** 24)


def _fields(cls: type) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(cls)}


def _nir():
    from .nir import _nir as load

    return load()


def _np(t: Any) -> np.ndarray:
    return torch.as_tensor(t).detach().cpu().to(torch.float32).numpy().copy()


def to_deploy_nir(snn: SpikingModel, target: str, example_shape: tuple[int, ...] | None = None):
    """The network as a ``nir.NIRGraph`` that ``target``'s own NIR import reads.

    ``nir-exact`` is ann2snn's exact encoding (:func:`ann2snn.export.nir.to_nir`); the library
    targets get the folded network of :func:`deploy_ops` in standard nodes: ``Conv2d``, ``IF``
    (``v_threshold`` 1, ``r`` 1, ``v_reset`` 0), ``AvgPool2d`` or ``SumPool2d``. The graph's and
    each IF node's metadata give the reset (by subtraction) and the initial membrane, which NIR's
    IF node has no field for; :func:`run_reader` sets it through the library's state.
    """
    if target == "nir-exact":
        from .nir import to_nir

        return to_nir(snn, neuron_model="exact", example_shape=example_shape)
    nir = _nir()
    ops = deploy_ops(snn, target, example_shape)
    shapes = {op.name: tuple(op.shape) for op in ops}
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    producers: dict[str, list[str]] = {}
    initial: dict[str, list[float]] = {}
    pool = TARGET_LIMITS[target]["pool"]
    for op in ops:
        a, t = op.attrs, op.tensors
        meta = {"ann2snn_op": op.kind}
        in_shape = shapes[op.inputs[0]] if op.inputs else ()
        if op.kind == "input":
            nodes[op.name] = nir.Input(input_type={"input": np.array(op.shape)})
            producers[op.name] = [op.name]
            continue
        if op.kind == "add":
            producers[op.name] = [p for i in op.inputs for p in producers[i]]
            continue
        if op.kind in ("conv", "channel_affine"):
            if op.kind == "conv":
                w, b, groups, stride, pad, dil = (_np(t["weight"]), _np(t["bias"]), a["groups"], a["stride"],
                                                  a["padding"], a["dilation"])
            else:  # a per-channel scale: a 1x1 convolution with a diagonal kernel
                c = op.shape[0]
                w = np.zeros((c, c, 1, 1), np.float32)
                w[np.arange(c), np.arange(c), 0, 0] = _np(t["scale"]).reshape(-1)
                b, groups, stride, pad, dil = _np(t["shift"]).reshape(-1), 1, [1, 1], [0, 0], [1, 1]
            if groups > 1:  # nir 1.0's type check reads weight.shape[1] as the input channels
                from .nir import _dense

                w, groups = _dense(w, groups), 1
            node = nir.Conv2d(input_shape=tuple(int(v) for v in in_shape[1:]), weight=w, stride=tuple(stride),
                              padding=tuple(pad), dilation=tuple(dil), groups=int(groups), bias=b)
        elif op.kind == "linear":
            node = nir.Affine(weight=_np(t["weight"]), bias=_np(t["bias"]))
        elif op.kind == "avg_pool":
            k, s, p = (np.array(a[key]) for key in ("kernel_size", "stride", "padding"))
            if pool == "sum":
                node = nir.SumPool2d(kernel_size=k, stride=s, padding=p)
            else:
                node = nir.AvgPool2d(kernel_size=k, stride=s, padding=p, metadata=meta)
        elif op.kind == "neuron":
            v_init = float(a["v0"]) + t["v0_offset"].double().reshape(-1)
            initial[op.name] = [float(v) for v in v_init]
            meta.update({"reset": "subtract", "compare": ">=", "burst_cap": int(a["cap"]),
                         "initial_potential": _np(v_init.float()), "layer": str(a.get("layer") or op.name)})
            ones, zeros = np.ones(op.shape, np.float32), np.zeros(op.shape, np.float32)
            if TARGET_LIMITS[target].get("neuron") == "lif":
                # IF as a LIF with tau = r = 2^24 steps: v += x - 2^-24 v (no leak a float32 membrane sees)
                meta["encoding"] = "IF written as LIF: tau = r = 2^24 steps, read with reset by subtraction"
                node = nir.LIF(tau=ones * _SLOW, r=ones * _SLOW, v_leak=zeros.copy(), v_threshold=ones.copy(),
                               metadata=meta, **({"v_reset": zeros.copy()} if "v_reset" in _fields(nir.LIF) else {}))
            elif TARGET_LIMITS[target].get("neuron") == "cubalif":
                # IF as a CubaLIF: a synapse of one step (i_t = x_t) and a membrane time constant of
                # 2^24 steps with r = 2^24, so v += x - 2^-24 v (no leak a float32 membrane sees)
                meta["encoding"] = ("IF written as CubaLIF: tau_syn 1 step, tau_mem = r = 2^24 steps; read with "
                                    "reset by subtraction (Norse: from_nir(graph, dt=1, reset_method=reset_subtract))")
                node = nir.CubaLIF(tau_syn=ones.copy(), tau_mem=ones * _SLOW, r=ones * _SLOW, v_leak=zeros.copy(),
                                   v_threshold=ones.copy(), v_reset=zeros.copy(), w_in=ones.copy(), metadata=meta)
            else:
                kw = {"v_reset": zeros} if "v_reset" in _fields(nir.IF) else {}  # nir <= 1.0.4 has none
                node = nir.IF(r=ones, v_threshold=ones.copy(), metadata=meta, **kw)
        elif op.kind == "output":
            node = nir.Output(output_type={"output": np.array(op.shape)})
        else:  # concat and what deploy_ops does not make
            raise ExportError(target, [OffendingNode(op.name, op.kind, "no node in this target's NIR import")])
        if target == "sinabs" and op.kind != "neuron" and hasattr(node, "metadata"):
            node.metadata = {}  # sinabs 3.1 reads with nir <= 1.0.4, whose layer nodes take no metadata
        nodes[op.name] = node
        for i in op.inputs:
            edges.extend((p, op.name) for p in producers[i])
        producers[op.name] = [op.name]
    cfg = snn.config
    meta = {"ann2snn_format": "ann2snn-deploy", "target": target, "timesteps": int(cfg.timesteps),
            "neuron": "IF, threshold 1 (weights normalised), reset by subtraction, spike when v >= 1",
            "initial_potential": json.dumps(initial),
            "readout": f"the output node's values averaged over the steps t >= t0 (t0 = {cfg.t0})",
            "input_coding": "the analog input is fed as input current every step"}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def export_deploy(snn: SpikingModel, path: str | os.PathLike, target: str, **options: Any) -> Path:
    """Write ``snn`` as a NIR file for ``target`` (see :func:`to_deploy_nir`)."""
    from .nir import write_nir

    path = write_nir(to_deploy_nir(snn, target, **options), path)
    if target == "sinabs":
        _strip_for_nir_104(path)
    return path


def _strip_for_nir_104(path: Path) -> None:
    """sinabs 3.1 reads NIR with nir <= 1.0.4, which knows no ``v_reset`` on IF nodes (their reset
    is to 0 either way): the field is removed from the file so that the older reader takes it."""
    import h5py

    with h5py.File(path, "r+") as f:
        def strip(group: Any) -> None:
            for key in list(group.keys()):
                node = group[key]
                if not isinstance(node, h5py.Group):
                    continue
                kind = node["type"][()] if "type" in node else b""
                if kind in (b"IF", "IF") and "v_reset" in node:
                    del node["v_reset"]
                if "nodes" in node:
                    strip(node["nodes"])

        strip(f["node"]["nodes"])


# -- running an export in the target library ------------------------------------------------------

def _initial(graph: Any) -> dict[str, list[float]]:
    meta = graph.metadata if isinstance(graph.metadata, dict) else {}
    raw = meta.get("initial_potential", "{}")
    return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))


def _start(values: list[float], shape: tuple[int, ...], like: Tensor | None = None) -> Tensor:
    v = torch.as_tensor(values, dtype=torch.float32)
    v = v.reshape(1, -1, *([1] * (len(shape) - 2))) if v.numel() > 1 else v.reshape(())
    return (torch.zeros(shape) + v).to(like.device if like is not None else "cpu")


@torch.no_grad()
def run_reader(target: str, path: str | os.PathLike, x: Tensor, timesteps: int, *, fix: bool = True,
               initial: bool = True, executor: str = "library") -> Tensor:
    """Load the NIR file ``path`` (written for ``target``) with the target library's own NIR import,
    run it on ``x`` (the same input every step) for ``timesteps`` steps and return the output
    averaged over the steps ``[B, classes]`` -- what ann2snn's ``snn.run(x, timesteps)`` returns.

    ``initial``: set each neuron's initial membrane (from the graph's metadata) through the
    library's state before the first step; without it the neurons start at 0.
    ``fix``: repair what the importer gets wrong, as listed in docs/export.md (snnTorch 1.0 builds
    IF nodes as leaky neurons that return their membrane with the spikes; sinabs 3.1 bounds the
    membrane at -threshold and lets an IF neuron fire several spikes a step). ``fix=False`` runs
    exactly what the importer built. ``executor`` (Norse): ``library`` runs ``norse.from_nir``'s
    module; ``nir_to_torch`` runs Norse's node mapping in nirtorch's graph interpreter, which keeps
    the order of branches that meet (``from_nir``'s executor visits the graph depth first and reads
    a branch not yet computed this step from the previous step).
    """
    nir = _nir()
    graph = nir.read(str(path))
    starts = _initial(graph) if initial else {}
    shapes = {name: tuple(int(s) for s in np.asarray(node.output_type.get("output", []))) for name, node in
              graph.nodes.items() if type(node).__name__ in ("IF", "CubaLIF", "LIF")}
    batch = x.shape[0]
    if target == "snntorch":
        import snntorch as snn
        from snntorch.import_nir import import_from_nir

        net = import_from_nir(graph)
        neurons = {n: m for n, m in net.named_modules() if isinstance(m, snn.Leaky)}
        if fix:
            for m in neurons.values():
                m.beta.fill_(1.0)  # NIR's IF does not leak
                m.init_hidden = True  # return the spikes only; the membrane stays in the module
                m.reset_delay = True  # snnTorch's default: subtract at the next step what this step fired
        total = 0
        for t in range(timesteps):
            if t == 0:
                for n, m in neurons.items():
                    m.mem = _start(starts.get(n, [0.0]), (batch, *shapes[n]))
            out = net(x)
            out = out[0] if isinstance(out, tuple) else out
            total = total + out
        return (total / timesteps).reshape(batch, -1)
    if target == "norse":
        from functools import partial

        import norse.torch as norse
        from norse.torch.functional.lif_box import LIFBoxFeedForwardState
        from norse.torch.functional.reset import reset_subtract

        if executor == "library":  # norse.from_nir: nirtorch's GraphExecutor
            from nirtorch.graph_executor import GraphExecutorState

            net = norse.from_nir(graph, dt=1.0, reset_method=reset_subtract, ignore_warnings=True)
            state = GraphExecutorState()
            for n, values in starts.items():
                state.state[n] = ((None, LIFBoxFeedForwardState(v=_start(values, (batch, *shapes[n])))),)
        else:  # Norse's node mapping in nirtorch's graph interpreter (nirtorch.nir_to_torch)
            import nirtorch
            from norse.torch.utils.import_nir import _import_norse_module

            mapping = partial(_import_norse_module, dt=1.0, reset_method=reset_subtract, ignore_warnings=True)
            net = nirtorch.nir_to_torch(graph, {type(node): mapping for node in graph.nodes.values()})
            state = {n: None for n in graph.nodes}
            for n, values in starts.items():
                state[n] = (None, LIFBoxFeedForwardState(v=_start(values, (batch, *shapes[n]))))
        total = 0
        for _ in range(timesteps):
            out, state = net(x, state)
            total = total + out
        return (total / timesteps).reshape(batch, -1)
    if target == "sinabs":
        import sinabs
        import sinabs.layers as sl
        from sinabs.activation import MaxSpike, SingleSpike

        net = sinabs.from_nir(graph, batch_size=batch)
        neurons = {}
        for n, m in net.named_modules():
            if isinstance(m, sl.IAFSqueeze):
                neurons[n.split(".")[-1]] = m
        for n, m in neurons.items():
            if fix:
                m.min_v_mem = None  # ann2snn's membrane has no lower bound
                cap = int(_meta_of(graph.nodes[n]).get("burst_cap", 1))
                m.spike_fn = SingleSpike if cap == 1 else MaxSpike(cap)  # sinabs' default: no cap
            m.init_state_with_shape((batch, *shapes[n]))
            m.v_mem.copy_(_start(starts.get(n, [0.0]), (batch, *shapes[n])))
        xs = x.unsqueeze(1).expand(batch, timesteps, *x.shape[1:]).reshape(batch * timesteps, *x.shape[1:])
        out = net(xs)
        out = out[0] if isinstance(out, tuple) else out
        return out.reshape(batch, timesteps, -1).mean(1)
    if target == "rockpool":
        from rockpool.nn.modules.torch import LIFNeuronTorch
        from rockpool.nn.modules.torch.nir import from_nir

        if fix:  # rockpool 3.1 reads a LIF node's time constant as `tau_mem`; NIR 1.0 calls it `tau`
            for node in graph.nodes.values():
                if type(node).__name__ == "LIF" and not hasattr(node, "tau_mem"):
                    node.tau_mem = node.tau
        net = from_nir(graph)
        neurons = {n: m for n, m in net.named_modules() if isinstance(m, LIFNeuronTorch)}
        for n, m in neurons.items():
            if fix:
                m.max_spikes_per_dt = torch.tensor(1.0)  # an IF neuron: one spike a step
            m.vmem = torch.as_tensor(starts.get(n, [0.0]), dtype=torch.float32).expand(m.vmem.shape).clone()
        flat = x.reshape(batch, 1, -1).expand(batch, timesteps, -1)
        out = net(flat)
        out = out[0] if isinstance(out, tuple) else out
        return out.reshape(batch, timesteps, -1).mean(1)
    raise ConversionError(f"no runner for target {target!r}")


def _meta_of(node: Any) -> dict[str, Any]:
    m = getattr(node, "metadata", None)
    return m if isinstance(m, dict) else {}


# -- integer formats ------------------------------------------------------------------------------

def quantize_ops(ops: list[Op], weight_bits: int = 8, state_bits: int = 16, clip: float | None = None) -> list[Op]:
    """The deploy layer list rounded to a chip's integer formats, the way sinabs discretises a layer
    for DYNAP-CNN / Speck (8-bit weights and biases, 16-bit threshold and membrane): each
    convolution and the neuron layer it feeds share one scale ``s``, the largest that keeps
    ``round(w s)``, ``round(b s)`` within the weight bits and ``round(s)`` (the threshold) and the
    initial membrane within the state bits. The result is written back at threshold 1 (weights
    ``round(w s) / round(s)``), so ann2snn runs exactly the integer network. A convolution that
    feeds no neuron (the read-out) is rounded alone. Neurons fed by anything but one convolution
    are refused. ``clip`` (a quantile, e.g. 0.999): the scale comes from that quantile of the
    weights' and biases' magnitudes instead of their maximum, and the few values beyond it saturate
    at the largest integer (one outlier channel no longer costs the whole layer its precision)."""

    def top(t: Tensor) -> float:
        a = t.abs().flatten().double()
        if clip is None or a.numel() < 2:
            return float(a.max())
        if a.numel() > 1_000_000:  # torch.quantile's size limit: a strided sample
            a = a[:: a.numel() // 1_000_000 + 1]
        return float(torch.quantile(a, clip))

    wmax, smax = 2 ** (weight_bits - 1) - 1, 2 ** (state_bits - 1) - 1
    out = [copy.copy(op) for op in ops]
    for op in out:
        op.tensors = dict(op.tensors)
        op.attrs = dict(op.attrs)
    by_name = {op.name: op for op in out}
    fed = set()
    for op in out:
        if op.kind != "neuron":
            continue
        src = by_name[op.inputs[0]]
        if src.kind != "conv":
            raise ExportError("integer formats", [OffendingNode(op.name, "neuron", f"fed by a {src.kind}, not one "
                                                                                  "convolution")])
        fed.add(src.name)
        w, b = src.tensors["weight"].double(), src.tensors["bias"].double()
        v_init = float(op.attrs["v0"]) + op.tensors["v0_offset"].double()
        scales = [wmax / top(w), float(smax)]
        if bool(b.any()):
            scales.append(wmax / max(top(b), 1e-30))
        if bool(v_init.any()):
            scales.append(smax / float(v_init.abs().max()))
        s = min(scales)
        theta = max(round(s), 1)
        src.attrs["int_threshold"] = theta  # the layer's threshold in the integer format
        src.tensors["weight"] = (torch.round(w * s).clamp(-wmax, wmax) / theta).float()
        src.tensors["bias"] = (torch.round(b * s).clamp(-wmax, wmax) / theta).float()
        op.attrs["v0"] = 0.0
        op.tensors["v0_offset"] = (torch.round(v_init * s) / theta).float()
    for op in out:
        if op.kind == "conv" and op.name not in fed:
            w, b = op.tensors["weight"].double(), op.tensors["bias"].double()
            s = wmax / max(top(w), top(b), 1e-30)
            op.tensors["weight"] = (torch.round(w * s).clamp(-wmax, wmax) / s).float()
            op.tensors["bias"] = (torch.round(b * s).clamp(-wmax, wmax) / s).float()
            op.attrs["int_threshold"] = s  # the read-out's scale (it has no threshold)
    return out
