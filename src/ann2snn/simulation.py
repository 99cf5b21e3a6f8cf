"""Execution plans for :class:`~ann2snn.model.SpikingModel`: the static prefix and the time-batched mode.

**Static prefix.** Under direct coding the input is the same tensor at every step, so every node whose
inputs derive only from that input and from constants (the first convolution and its BN, pooling or
padding of the input, ...) computes the same value at every step. :func:`plan_static_prefix` splits
the graph into a *prefix* (those nodes, evaluated once per run) and a *suffix* (the rest, evaluated
every step on the prefix's cached outputs). The split is found on the graph alone: a node is static
when it is no stateful module (neuron, running max-pool), draws no random numbers and all its inputs
are static or constants. Nodes the prefix computes are the same ops on the same tensors, so the
outputs are bit-identical to computing them every step.

**Time-batched mode.** :func:`run_batched` runs the graph node by node with the T steps of a chunk
folded into the batch: every stateless op (convolution, linear, pooling, addition, ...) sees
``[t * B, ...]``; stateful modules (neurons, running max-pools) unfold the chunk and loop over its
steps, carrying their state from chunk to chunk. Each op sees the very tensors it would see step by
step, so outputs equal step mode's up to the order of floating-point reductions inside batched
kernels (convolutions may pick another algorithm for a larger batch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.utils._pytree import tree_flatten, tree_map

from .neurons.modules import StatefulModule

_RANDOM_NAMES = ("rand", "dropout", "bernoulli", "normal", "poisson", "multinomial")


def _draws_random(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        mod = modules[node.target]
        return isinstance(mod, nn.modules.dropout._DropoutNd) and mod.training
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return any(r in name.lower() for r in _RANDOM_NAMES)


@dataclass
class StaticPlan:
    """The graph split at the static prefix: ``suffix(*prefix(x))`` equals ``graph_module(x)``."""

    prefix: fx.GraphModule  # x -> tuple of the static values the rest of the graph reads
    suffix: fx.GraphModule  # those values -> the model's output
    static_nodes: frozenset[str]  # names of the nodes the prefix computes (placeholder excluded)

    def __call__(self, x: Tensor) -> tuple:
        return tuple(self.prefix(x))


def static_node_names(gm: fx.GraphModule) -> frozenset[str]:
    """Names of the call nodes whose value is the same at every step when the input is (direct coding)."""
    return _static(gm)[0]


def _static(gm: fx.GraphModule) -> tuple[frozenset[str], set[fx.Node], set[fx.Node]]:
    modules = dict(gm.named_modules())
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    const = {n for n in gm.graph.nodes if n.op == "get_attr"}
    static: set[fx.Node] = set(placeholders) if len(placeholders) == 1 else set()
    if not static:
        return frozenset(), static, const
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        if node.op == "call_module" and isinstance(modules[node.target], StatefulModule):
            continue
        if _draws_random(node, modules):
            continue
        inputs = node.all_input_nodes
        if inputs and all(a in static or a in const for a in inputs):
            static.add(node)
    names = frozenset(n.name for n in static if n.op != "placeholder")
    return names, static, const


def plan_static_prefix(gm: fx.GraphModule) -> StaticPlan | None:
    """Split ``gm`` at its static prefix; None when no call node is static (nothing to save)."""
    names, static, const = _static(gm)
    if not names:
        return None
    order = list(gm.graph.nodes)
    boundary = [n for n in order if n in static and any(u not in static for u in n.users)]
    prefix_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in order:
        if node in static or node in const:
            env[node] = prefix_graph.node_copy(node, lambda n: env[n])
    prefix_graph.output(tuple(env[b] for b in boundary))
    suffix_graph = fx.Graph()
    env = {b: suffix_graph.placeholder(f"static_{i}") for i, b in enumerate(boundary)}
    for node in order:
        if node not in static:
            env[node] = suffix_graph.node_copy(node, lambda n: env[n])
    parts = []
    for graph in (prefix_graph, suffix_graph):
        part = fx.GraphModule(gm, graph)
        for node in reversed(list(graph.nodes)):  # constants only the other part reads
            if node.op == "get_attr" and not node.users:
                graph.erase_node(node)
        part.recompile()
        parts.append(part)
    return StaticPlan(parts[0], parts[1], names)


def plan_key(gm: fx.GraphModule) -> tuple:
    """Changes whenever the graph is recompiled or a module, parameter or buffer is swapped for another."""
    return (gm.code, tuple(id(m) for m in gm.modules()), tuple(id(t) for t in gm.parameters()),
            tuple(id(t) for t in gm.buffers()))


# -- time-batched execution ------------------------------------------------------------------------

def _fold(value: Any) -> Any:
    """``[t, B, ...]`` -> ``[t * B, ...]`` for every tensor in ``value``."""
    return tree_map(lambda v: v.flatten(0, 1) if isinstance(v, Tensor) else v, value)


class _Folded:
    """A value of a chunk of ``t`` steps: tensors held as ``[t * B, ...]`` (``folded``), or one value
    that is the same at every step, computed once and not repeated in memory: ``static`` (it derives
    from the input, with its batch dimension) or ``const`` (parameters and what derives from them only)."""

    __slots__ = ("value", "kind")

    def __init__(self, value: Any, kind: str):
        self.value = value
        self.kind = kind

    @property
    def static(self) -> bool:
        return self.kind != "folded"


def _expand(value: Any, steps: int) -> Any:
    """A static value as ``[steps * B, ...]`` (a repeat: weight layers need it materialised)."""
    return tree_map(lambda v: v.unsqueeze(0).expand(steps, *v.shape).flatten(0, 1)
                    if isinstance(v, Tensor) else v, value)


def unfold_steps(value: Any, steps: int) -> list[Any]:
    """``[steps * B, ...]`` -> the ``steps`` per-step values."""
    if isinstance(value, Tensor):
        return list(value.unflatten(0, (steps, -1)).unbind(0))
    if isinstance(value, (tuple, list)):
        parts = [unfold_steps(v, steps) for v in value]
        return [type(value)(p[t] for p in parts) for t in range(steps)]
    if isinstance(value, dict):
        parts = {k: unfold_steps(v, steps) for k, v in value.items()}
        return [{k: p[t] for k, p in parts.items()} for t in range(steps)]
    return [value] * steps


def _stack_steps(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, Tensor):
        return torch.cat(values, 0)
    if isinstance(first, (tuple, list)):
        return type(first)(_stack_steps([v[i] for v in values]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _stack_steps([v[k] for v in values]) for k in first}
    return first


class BatchedRunner:
    """Runs a graph over chunks of steps with time folded into the batch (see the module docstring).

    ``static`` names the nodes computed once per run (the static prefix under direct coding); their
    values are kept from the first chunk. Per-step hooks cannot run in this mode: the caller checks.
    """

    def __init__(self, gm: fx.GraphModule, static: frozenset[str]):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.nodes = list(gm.graph.nodes)
        self.static = static
        self.cache: dict[str, Any] = {}
        self.peak_bytes = 0  # the most bytes of non-static values alive at once in the last chunk
        self.batch = 0

    def run_chunk(self, x: Any, steps: int, x_static: bool) -> Any:
        """One chunk: ``x`` is ``[steps * B, ...]`` (or ``[B, ...]`` with ``x_static``). Returns the
        output as ``[steps * B, ...]``."""
        env: dict[fx.Node, _Folded] = {}
        last_use = {}
        for i, node in enumerate(self.nodes):
            for a in node.all_input_nodes:
                last_use[a] = i
        out = None
        live = 0
        self.peak_bytes = 0
        for i, node in enumerate(self.nodes):
            if node.op == "placeholder":
                env[node] = _Folded(x, "static" if x_static else "folded")
            elif node.op == "get_attr":
                env[node] = _Folded(_get_attr(self.gm, node.target), "const")
            elif node.op == "output":
                out = fx.node.map_arg(node.args[0], lambda n: _value(env[n], steps))
            else:
                env[node] = self._call(node, env, steps, x_static)
                if not env[node].static:
                    live += _nbytes(env[node].value)
            self.peak_bytes = max(self.peak_bytes, live)
            for a in node.all_input_nodes:
                if last_use.get(a) == i:
                    gone = env.pop(a)
                    if not gone.static and a.op != "placeholder":
                        live -= _nbytes(gone.value)
        return out

    def _call(self, node: fx.Node, env: dict, steps: int, x_static: bool) -> _Folded:
        if x_static and node.name in self.cache:
            return _Folded(self.cache[node.name], "static")
        inputs = [env[a] for a in node.all_input_nodes]
        all_static = all(v.static for v in inputs)
        stateful = node.op == "call_module" and isinstance(self.modules[node.target], StatefulModule)
        if all_static and not stateful and not _draws_random(node, self.modules):
            kind = "static" if any(v.kind == "static" for v in inputs) else "const"
            value = _Folded(self._apply(node, lambda n: env[n].value), kind)
            if x_static and node.name in self.static:
                self.cache[node.name] = value.value
            return value
        if stateful:  # the recurrence: one call per step of the chunk
            per_step = {a: ([env[a].value] * steps if env[a].static else unfold_steps(env[a].value, steps))
                        for a in node.all_input_nodes}
            outs = [self._apply(node, lambda n, t=t: per_step[n][t]) for t in range(steps)]
            return _Folded(_stack_steps(outs), "folded")
        value = self._apply(node, lambda n: _value(env[n], steps))
        _check_batch(value, steps * self.batch, node)
        return _Folded(value, "folded")

    def _apply(self, node: fx.Node, lookup) -> Any:
        return call_node(self.modules, node, lookup)


def call_node(modules: dict, node: fx.Node, lookup: Callable[[fx.Node], Any]) -> Any:
    """Run one call node of a graph, its inputs read through ``lookup``."""
    args = fx.node.map_arg(node.args, lookup)
    kwargs = fx.node.map_arg(node.kwargs, lookup)
    if node.op == "call_module":
        return modules[node.target](*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    obj, *rest = args
    return getattr(obj, node.target)(*rest, **kwargs)


def _value(folded: _Folded, steps: int) -> Any:
    return _expand(folded.value, steps) if folded.kind == "static" else folded.value


def _get_attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


#: what a chunk really holds at its peak, over the values the runner tracks: a neuron layer's outputs
#: are stacked (a second copy), a static input is repeated for its weight layer, kernels take workspace
PEAK_FACTOR = 3


def chunk_steps(per_step_bytes: int, timesteps: int, budget_bytes: int) -> int:
    """How many steps fit in one chunk: the budget over what one step keeps alive at its peak."""
    return max(1, min(timesteps, budget_bytes // max(1, PEAK_FACTOR * per_step_bytes)))


def accumulate_steps(outputs: Iterable[Any], t0: int) -> Iterator[tuple[Any, int]]:
    """After each step, the sum of the outputs of steps ``t >= t0`` and their count: the one order in
    which every run sums its steps (bit-identical averages between the simulator and its shortcuts)."""
    total, count = None, 0
    for t, out in enumerate(outputs):
        if total is None or t == t0:
            total, count = out, 1
        else:
            total = tree_map(torch.add, total, out)
            count += 1
        yield total, count


def _nbytes(value: Any) -> int:
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


class NotBatchable(RuntimeError):
    """An op of the graph mixes the batch dimension with others (a reshape over the batch, a reduction
    or concatenation along it): it cannot see time folded into the batch."""


def _check_batch(value: Any, rows: int, node: fx.Node) -> None:
    for v in tree_flatten(value)[0]:
        if isinstance(v, Tensor) and (v.ndim == 0 or v.shape[0] != rows):
            raise NotBatchable(f"{node.format_node()} does not keep the batch dimension")
