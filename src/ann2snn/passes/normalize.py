"""Graph normalisation: refuse what cannot convert, drop dropout, canonicalise in-place ops, fold
BatchNorm, and move max-pooling in front of the neuron it follows.

Every pass takes a GraphModule and returns it modified (it was built from a copy of the user's model).
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor, fx, nn

from ..errors import OffendingNode, UnsupportedOperationError
from ..neurons.modules import Affine
from ..tracing import source_of
from .patterns import INPLACE_TO_OUT, WEIGHTED_MODULES, Kind, classify


def modules_of(gm: fx.GraphModule) -> dict[str, nn.Module]:
    return dict(gm.named_modules())


_ACTIVATION_MODULES = (nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.ELU,
                       nn.SELU, nn.CELU, nn.Softplus, nn.Softmax, nn.LogSoftmax, nn.GLU, nn.Softsign)
_NORM_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
                 nn.LocalResponseNorm)


def _offender_kind(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[str, int]:
    """The op's name as the error shows it, and its rank (activations first, then normalisations)."""
    if node.op == "call_module":
        mod = modules[node.target]
        rank = 0 if isinstance(mod, _ACTIVATION_MODULES) else 1 if isinstance(mod, _NORM_MODULES) else 2
        return f"call_module {type(mod).__name__}", rank
    if isinstance(node.target, torch._ops.OpOverload):
        from ..capture import op_label

        return op_label(node.target)
    if node.op == "call_function" and node.target in (operator.mul, operator.truediv, torch.mul, torch.div):
        return f"product of two activations ({node.target.__name__})", 2
    name = getattr(node.target, "__name__", node.target)
    rank = 0 if str(name).lower() in {"sigmoid", "tanh", "gelu", "silu", "softmax", "log_softmax", "hardswish",
                                      "mish", "elu", "selu", "softplus", "exp"} else 2
    return f"{node.op} {name}", rank


def check_supported(gm: fx.GraphModule) -> None:
    """Raise :class:`UnsupportedOperationError` listing every node that cannot convert, grouped by
    kind in the message (activations first)."""
    modules = modules_of(gm)
    offenders = []
    for node in gm.graph.nodes:
        c = classify(node, modules)
        if c.kind is Kind.UNSUPPORTED:
            op, rank = _offender_kind(node, modules)
            offenders.append(OffendingNode(node.name, op, c.reason, source_of(node), rank))
    if offenders:
        raise UnsupportedOperationError(offenders)


def split_leaky(gm: fx.GraphModule) -> int:
    """``leaky_relu(z, a)`` -> ``relu(z) - a * relu(-z)`` (PReLU: ``a`` per channel).

    Each side becomes a neuron layer of its own, with channel-wise thresholds calibrated like any ReLU
    site: the negative side fires on ``-z`` and its spikes reach the next layer scaled by ``-a``, so
    the pair fires positive and negative spikes with a threshold of its own on each side. Every later
    step (AdaFire caps, corrections, SSC, synaptic-operation counts, export) sees plain ReLU sites and
    linear maps. Returns how many activations were split.
    """
    modules = modules_of(gm)
    split = 0
    for node in list(gm.graph.nodes):
        if classify(node, modules).kind is not Kind.LEAKY:
            continue
        x = node.args[0]
        if node.op == "call_module":
            mod = modules[node.target]
            slope = mod.weight.detach().reshape(-1) if isinstance(mod, nn.PReLU) else float(mod.negative_slope)
        else:
            slope = float(node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01))
        base = node.meta.get("ann2snn_path") or (node.target if node.op == "call_module" else node.name)
        scale = slope if isinstance(slope, Tensor) else torch.tensor([slope])
        with gm.graph.inserting_before(node):
            pos = _relu_module(gm, f"{node.name}_pos", x, str(base), node)
            # the sign flips and the slope are per-channel scales (a one-element scale broadcasts)
            neg_in = _affine(gm, f"{node.name}_flip", torch.tensor([-1.0]), x)
            neg = _relu_module(gm, f"{node.name}_neg", neg_in, f"{base}.neg", node)
            scaled = _affine(gm, f"{node.name}_slope", -scale.float(), neg)
            out = gm.graph.call_function(operator.add, (pos, scaled))
        for new in (neg_in, scaled, out):
            new.meta["stack_trace"] = node.meta.get("stack_trace")
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)
        split += 1
    _finish(gm)
    return split


def _affine(gm: fx.GraphModule, base: str, scale: Tensor, x: fx.Node) -> fx.Node:
    name = _free_name(gm, base)
    gm.add_submodule(name, Affine(scale, torch.zeros_like(scale)))
    return gm.graph.call_module(name, (x,))


def _free_name(gm: fx.GraphModule, base: str) -> str:
    name, k = base, 1
    while hasattr(gm, name):
        k += 1
        name = f"{base}_{k}"
    return name


def _relu_module(gm: fx.GraphModule, base: str, x: fx.Node, label: str, origin: fx.Node) -> fx.Node:
    name = _free_name(gm, base)
    gm.add_submodule(name, nn.ReLU())
    new = gm.graph.call_module(name, (x,))
    new.meta["stack_trace"] = origin.meta.get("stack_trace")
    new.meta["ann2snn_path"] = label
    return new


def remove_passthrough(gm: fx.GraphModule) -> int:
    """Drop dropout and identity nodes. Returns how many were removed."""
    modules = modules_of(gm)
    removed = 0
    for node in list(gm.graph.nodes):
        if classify(node, modules).kind is Kind.REMOVE:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            removed += 1
    _finish(gm)
    return removed


def canonicalize_inplace(gm: fx.GraphModule) -> int:
    """Rewrite in-place arithmetic (``+=``, ``add_``, ``relu_``, ...) as out-of-place.

    In a spiking network one tensor may feed several consumers on every step; an in-place update
    of a shared activation would corrupt the others.
    """
    changed = 0
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in INPLACE_TO_OUT:
            node.target = INPLACE_TO_OUT[node.target]
            changed += 1
        elif node.op == "call_method" and isinstance(node.target, str) and node.target.endswith("_") \
                and not node.target.startswith("_"):
            node.target = node.target[:-1]
            changed += 1
        if "inplace" in node.kwargs:
            node.kwargs = {**node.kwargs, "inplace": False}
    for mod in gm.modules():
        if hasattr(mod, "inplace") and isinstance(mod.inplace, bool):
            mod.inplace = False
    _finish(gm)
    return changed


def _bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    mean = bn.running_mean if bn.running_mean is not None else torch.zeros(bn.num_features)
    var = bn.running_var if bn.running_var is not None else torch.ones(bn.num_features)
    scale = torch.rsqrt(var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return scale, shift


def _fold_into(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> nn.Module:
    """A copy of ``layer`` with ``y * scale + shift`` (per output channel) folded in (computed in float64)."""
    new = _copy_module(layer)
    w = layer.weight.detach().double()
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        g = layer.groups
        cin, cout_g = w.shape[0], w.shape[1]
        w = w.reshape(g, cin // g, cout_g, *w.shape[2:]) * scale.reshape(g, 1, cout_g, *([1] * (w.ndim - 2)))
        w = w.reshape(cin, cout_g, *layer.weight.shape[2:])
    else:
        w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(scale)
    b = b * scale + shift
    dtype = layer.weight.dtype
    new.weight = nn.Parameter(w.to(dtype), requires_grad=False)
    new.bias = nn.Parameter(b.to(dtype), requires_grad=False)
    return new


def _copy_module(layer: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(layer)


def fold_batchnorm(gm: fx.GraphModule) -> tuple[int, int]:
    """Fold each BatchNorm into the conv / linear before it; turn the others into :class:`Affine` ops.

    Returns ``(folded, kept_as_affine)``.
    """
    modules = modules_of(gm)
    folded = kept = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or classify(node, modules).kind is not Kind.BATCHNORM:
            continue
        bn = modules[node.target]
        scale, shift = _bn_scale_shift(bn)
        src = node.args[0]
        producer = modules.get(src.target) if isinstance(src, fx.Node) and src.op == "call_module" else None
        if isinstance(producer, WEIGHTED_MODULES) and len(src.users) == 1 \
                and _out_channels(producer) == scale.numel():
            _set_module(gm, src.target, _fold_into(producer, scale, shift))
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            folded += 1
        else:
            _set_module(gm, node.target, Affine(scale.float(), shift.float()))
            kept += 1
        modules = modules_of(gm)
    _finish(gm)
    return folded, kept


def _out_channels(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    return layer.out_channels


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, name, module)


def move_maxpool_before_neuron(gm: fx.GraphModule) -> int:
    """``pool(relu(z))`` -> ``relu(pool(z))``: exact for the ANN (max commutes with monotone
    activations), and in the SNN what travels on after the neuron stays spikes."""
    modules = modules_of(gm)
    moved = 0
    for pool in list(gm.graph.nodes):
        if classify(pool, modules).kind is not Kind.MAXPOOL:
            continue
        act = pool.args[0]
        if not isinstance(act, fx.Node) or classify(act, modules).kind is not Kind.NEURON or len(act.users) != 1:
            continue
        pre = act.args[0]
        # pool now reads the pre-activation; the activation reads the pool; users of pool read the activation
        pool.replace_all_uses_with(act)
        pool.args = (pre, *pool.args[1:])
        act.args = (pool, *act.args[1:])
        _reorder_before(pool, act)
        moved += 1
    _finish(gm)
    return moved


def _reorder_before(first: fx.Node, second: fx.Node) -> None:
    """Ensure ``first`` is placed before ``second`` in the graph's node order."""
    second.prepend(first)


def _finish(gm: fx.GraphModule) -> None:
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()

