"""Graph normalisation: refuse what cannot convert, drop dropout, canonicalise in-place ops, fold
BatchNorm, and move max-pooling in front of the neuron it follows.

Every pass takes a GraphModule and returns it modified (it was built from a copy of the user's model).
"""

from __future__ import annotations

import torch
from torch import fx, nn

from ..errors import OffendingNode, UnsupportedOperationError
from ..neurons.modules import Affine
from ..tracing import source_of
from .patterns import INPLACE_TO_OUT, WEIGHTED_MODULES, Kind, classify


def modules_of(gm: fx.GraphModule) -> dict[str, nn.Module]:
    return dict(gm.named_modules())


def check_supported(gm: fx.GraphModule) -> None:
    """Raise :class:`UnsupportedOperationError` listing every node that cannot convert."""
    modules = modules_of(gm)
    offenders = []
    for node in gm.graph.nodes:
        c = classify(node, modules)
        if c.kind is Kind.UNSUPPORTED:
            op = node.op if node.op != "call_module" else f"call_module {type(modules[node.target]).__name__}"
            if node.op in ("call_function", "call_method"):
                op = f"{node.op} {getattr(node.target, '__name__', node.target)}"
            offenders.append(OffendingNode(node.name, op, c.reason, source_of(node)))
    if offenders:
        raise UnsupportedOperationError(offenders)


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

