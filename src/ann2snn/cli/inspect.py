"""``ann2snn inspect``: the traced graph, node by node, and what each node becomes (before calibration).

Exit status 0 when every node converts, 1 when some cannot (they are listed with their source
lines), 2 for bad input.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

import torch
from torch import fx, nn

from ..api import prepare
from ..calibration.observers import ThresholdObserver
from ..capture import capture
from ..config import ConversionConfig
from ..errors import ConfigError, UnsupportedOperationError
from ..loading import load_model
from ..passes.patterns import classify
from ..tracing import trace
from .common import add_config_flags, add_model_options, build_config, print_notes

HELP = "show the traced graph and what each node becomes; list what cannot convert"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("inspect", help=HELP, description=HELP + " (exit status 1 if anything cannot).")
    model = add_model_options(p, positional=True)
    model.add_argument("--input-shape", metavar="C,H,W", help="the shape of one input sample, to capture the model "
                   "with torch.export as convert does (default: the bundled model's; without one, torch.fx "
                   "symbolic tracing)")
    add_config_flags(p)
    p.set_defaults(run=run)
    return p


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _op_text(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "placeholder":
        return "input"
    if node.op == "output":
        return "output"
    if node.op == "get_attr":
        return f"attribute {node.target}"
    if node.op == "call_module":
        return _module_text(modules[node.target])
    if node.op == "call_function":
        name = getattr(node.target, "__name__", str(node.target))
        module = getattr(node.target, "__module__", "") or ""
        prefix = {"torch.nn.functional": "F.", "_operator": "operator.", "torch": "torch."}.get(module, "")
        return f"{prefix}{name}()"
    return f".{node.target}()"


def _module_text(mod: nn.Module) -> str:
    name = type(mod).__name__
    if isinstance(mod, nn.modules.conv._ConvNd):
        parts = [f"{mod.in_channels}->{mod.out_channels}", "k" + "x".join(map(str, mod.kernel_size))]
        if any(s != 1 for s in mod.stride):
            parts.append("s" + "x".join(map(str, mod.stride)))
        if isinstance(mod.padding, str) or any(p != 0 for p in mod.padding):
            parts.append(f"p{mod.padding}" if isinstance(mod.padding, str) else "p" + "x".join(map(str, mod.padding)))
        if mod.groups != 1:
            parts.append(f"g{mod.groups}")
        return f"{name}({', '.join(parts)})"
    if isinstance(mod, nn.Linear):
        return f"{name}({mod.in_features}->{mod.out_features})"
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        return f"{name}({mod.num_features})"
    if hasattr(mod, "kernel_size") and hasattr(mod, "stride"):
        return f"{name}(k{mod.kernel_size}, s{mod.stride})"
    extra = mod.extra_repr().replace(" ", "")
    return f"{name}({extra})"


def _neuron_text(cap: float | None, cfg: ConversionConfig) -> str:
    kind = "IF neuron" if cfg.neuron == "if" else f"AdaFire burst neuron (cap {cfg.burst_cap})"
    clipped = f", activation capped at {cap:g}" if cap is not None else ""
    return f"{kind}, {cfg.granularity}-wise threshold ({cfg.threshold}){clipped}"


def describe_graph(model: nn.Module, cfg: ConversionConfig, example: torch.Tensor | None = None
                   ) -> tuple[list[dict[str, Any]], dict[str, Any], Exception | None]:
    """One row per captured node with what it becomes; the pass statistics; the conversion error if any.

    With ``example`` (an input batch) the model is captured with ``torch.export`` as ``convert``
    does; without it, traced with ``torch.fx``."""
    gm = capture(model, example) if example is not None else trace(model)
    modules = dict(gm.named_modules())
    rows = []
    for node in gm.graph.nodes:
        c = classify(node, modules)
        rows.append({"node": node.name, "target": str(node.target), "op": _op_text(node, modules),
                     "path": str(node.meta.get("ann2snn_path", node.target)),
                     "kind": c.kind.value, "cap": c.cap,
                     "reason": c.reason, "args": [a.name for a in node.args if isinstance(a, fx.Node)]})
    try:
        prepared = prepare(model, cfg, example_input=example)
    except UnsupportedOperationError as exc:
        for r in rows:
            r["becomes"] = f"CANNOT CONVERT: {r['reason']}" if r["kind"] == "unsupported" else ""
        return rows, {}, exc
    after = {n.name: n for n in prepared.graph.nodes}
    pmods = dict(prepared.named_modules())
    # an observer knows the node it replaced by name (node name or module path); its own name
    # is neuron_<k>_<node name>
    neurons: set[str] = set()
    for target, m in pmods.items():
        if isinstance(m, ThresholdObserver):
            neurons.update({str(getattr(m, "name", "")), re.sub(r"^neuron_\d+_", "", target)})
    folded_into: dict[str, str] = {}
    for r in rows:
        if r["kind"] == "batchnorm" and r["node"] not in after and r["args"]:
            folded_into[r["node"]] = r["args"][0]
    for r in rows:
        name, kind = r["node"], r["kind"]
        if kind == "io":
            r["becomes"] = {"input": "input current (direct coding: the analog input every step)",
                            "output": "output: the last layer's current, averaged over the steps"}.get(
                r["op"], "constant")
        elif kind == "leaky":
            found = f"{r['path']}.neg" in neurons or f"{name}.neg" in neurons
            r["becomes"] = ("two neuron layers, ReLU(x) and ReLU(-x) scaled by -slope: positive and negative "
                            "spikes, a threshold of its own on each side" if found else "removed")
        elif kind == "neuron":
            found = name in neurons or r["target"] in neurons or r["path"] in neurons
            r["becomes"] = _neuron_text(r["cap"], cfg) if found else "removed"
        elif kind == "weighted":
            bns = [bn for bn, src in folded_into.items() if src == name]
            r["becomes"] = "synaptic layer" + (f", with BN {', '.join(bns)} folded in" if bns else "")
        elif kind == "batchnorm":
            if name in folded_into:
                r["becomes"] = f"folded into {folded_into[name]}"
            else:
                r["becomes"] = "per-channel affine map of the rates (BN after a neuron, kept)"
        elif kind == "maxpool":
            node = after.get(name)
            moved = ""
            if node is not None and node.args and isinstance(node.args[0], fx.Node) \
                    and r["args"] and node.args[0].name != r["args"][0]:
                moved = f", moved before neuron {r['args'][0]}"
            r["becomes"] = "running max-pool (pools the running mean: exact for rates)" + moved
        elif kind == "remove":
            r["becomes"] = "removed (identity at inference)"
        elif kind == "linear":
            r["becomes"] = "linear op, kept" if name in after else "removed (dead code)"
        elif kind == "structural":
            r["becomes"] = "shape / indexing, kept" if name in after else "removed (dead code)"
        else:
            r["becomes"] = ""
    stats = dict(prepared.meta.get("ann2snn", {}).get("passes", {}))
    return rows, stats, None


def _catalogue_input_shape(loaded: Any) -> tuple[int, ...] | None:
    """The input size a timm model declares (``pretrained_cfg['input_size']``); 3x224x224 for torchvision."""
    cfg = getattr(loaded.module, "pretrained_cfg", None) or getattr(loaded.module, "default_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        return tuple(int(v) for v in cfg["input_size"])
    if loaded.kind == "torchvision":
        return (3, 224, 224)
    return None


def run(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    loaded = load_model(args.model, args.weights, trust_pickle=args.trust_pickle, allow_untrained=True)
    print_notes(loaded)
    shape = loaded.input_shape or _catalogue_input_shape(loaded)
    if args.input_shape:
        try:
            shape = tuple(int(v) for v in args.input_shape.replace("x", ",").split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"--input-shape {args.input_shape!r}: give integers like 3,32,32") from None
    example = torch.randn(2, *shape) if shape else None
    try:
        rows, stats, error = describe_graph(loaded.module, cfg, example)
    except UnsupportedOperationError as exc:  # tracing itself failed
        rows, stats, error = [], {}, exc
    print(f"{loaded.name} ({type(loaded.module).__name__}): {len(rows)} traced nodes")
    if rows:
        w_node = min(28, max(4, *(len(r["node"]) for r in rows)))
        w_op = min(32, max(2, *(len(r["op"]) for r in rows)))
        print(f"  {'#':>3}  {'node':<{w_node}}  {'op':<{w_op}}  becomes")
        for i, r in enumerate(rows, 1):
            print(f"  {i:>3}  {_short(r['node'], w_node):<{w_node}}  {_short(r['op'], w_op):<{w_op}}  {r['becomes']}")
    if error is not None:
        offenders = getattr(error, "offenders", [])
        print(f"\n{len(offenders)} operation(s) cannot convert, by kind:")
        for line in str(error).splitlines()[1:]:  # grouped by kind, activations first, then what helps
            print(line)
        print(f"ann2snn: {args.model}: {len(offenders)} operation(s) cannot convert", file=sys.stderr)
        return 1
    counts = {k: sum(1 for r in rows if r["kind"] == k) for k in ("neuron", "weighted", "maxpool")}
    print(f"\nconvertible: {counts['neuron']} neuron layers, {counts['weighted']} synaptic layers, "
          f"{counts['maxpool']} max-pools; BN folded {stats.get('bn_folded', 0)}, BN kept as affine "
          f"{stats.get('bn_affine', 0)}, dropout/identity removed {stats.get('removed', 0)}, in-place ops "
          f"rewritten {stats.get('inplace_rewritten', 0)}, max-pools moved before their neuron "
          f"{stats.get('maxpool_moved', 0)}; {stats.get('nodes_traced', '?')} -> {stats.get('nodes_final', '?')} nodes")
    return 0
