"""Re-running one spiking model on one input, recomputing only what changed.

The calibration steps that simulate the network (burst sensitivity, bias / potential correction,
SSC) run it again and again on the same adaptation samples, each time with one neuron layer
changed: another burst cap, a scaled threshold, a corrected initial potential. Under direct coding
a node's value at step ``t`` depends only on the input and on the neuron layers upstream of it, so
after a change to layer ``l`` every node that is not downstream of ``l`` computes exactly what it
computed before. :class:`IncrementalRunner` keeps the per-step values of the nodes where the changed
part of the graph reads the unchanged part (the inputs of each neuron layer's downstream region) and,
on each run, evaluates only the nodes whose value is not kept for the current neuron states; it
replays the kept ones. Every evaluated node runs the same op on the same tensors as a full run, so
outputs, spike counts and neuron outputs are bit for bit those of :meth:`SpikingModel.run`.

What is kept is checked, not assumed: every kept value carries the version of each neuron layer
upstream of it (its threshold, initial-potential offset, bias shift, cap, ...); a value whose layers
have changed since is recomputed, so a caller may change any layers between runs.

``ENABLED`` switches the calibration steps between this runner and full runs of the model (the
straightforward computation the tests pin it to).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, fx
from torch.utils._pytree import tree_map

from ..neurons.modules import SpikingNeuron, StatefulModule
from ..simulation import _draws_random, _get_attr, _nbytes, _static, accumulate_steps, call_node

#: the calibration steps use :class:`IncrementalRunner` where it applies (False: a full run every time)
ENABLED = True
#: bytes of per-step values a runner may keep; past it, the values least recently read (those of layers
#: that changed since first) make room, and what still does not fit is recomputed when needed
MEMORY_BUDGET = 4096 * 2**20


def applies(snn: Any, x: Tensor) -> bool:
    """Whether :class:`IncrementalRunner` can stand in for full runs of ``snn`` on ``x``: direct
    coding, one input, no step hooks or counters attached, no random ops, every stateful module
    called at one place."""
    if not ENABLED or snn.config.encoding != "direct" or snn.step_hooks or snn.counters:
        return False
    if not isinstance(x, Tensor):
        return False
    gm = snn.graph_module
    modules = dict(gm.named_modules())
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return False
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op in ("call_module", "call_function", "call_method") and _draws_random(node, modules):
            return False
        if node.op == "call_module" and isinstance(modules[node.target], StatefulModule):
            calls[node.target] = calls.get(node.target, 0) + 1
    return all(c == 1 for c in calls.values())


def _signature(m: SpikingNeuron) -> tuple:
    return (m.cap, m.v0, m.spread_steps, m.clip, m.signed, m.bipolar, m.threshold.clone(), m.v0_offset.clone(),
            m.bias_shift.clone())


def _same(a: tuple, b: tuple) -> bool:
    return all(torch.equal(u, v) if isinstance(u, Tensor) else u == v for u, v in zip(a, b, strict=True))


class IncrementalRunner:
    """Runs ``snn`` for ``timesteps`` steps on ``x`` (direct coding) again and again, evaluating only
    the nodes whose kept per-step values are missing or stale (see the module docstring).

    Use only where :func:`applies`. The graph, its modules' weights and ``x`` must not change while
    the runner is used; neuron layers may.
    """

    def __init__(self, snn: Any, x: Tensor, timesteps: int, memory_budget: int | None = None):
        self.snn = snn
        self.timesteps = timesteps
        self.t0 = snn._check_run_args(x, timesteps, None, None, False)[1]
        gm = snn.graph_module
        self.gm = gm
        self.nodes = list(gm.graph.nodes)
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.modules = dict(gm.named_modules())
        self.output = next(n for n in self.nodes if n.op == "output")
        self.budget = MEMORY_BUDGET if memory_budget is None else memory_budget
        x = x.to(snn.device)
        _, static, const = _static(gm)
        # values that are the same at every step and in every run: the input, constants and the static
        # prefix (computed once, as SpikingModel.run computes it once per run)
        self.fixed: dict[fx.Node, Any] = {}
        with torch.no_grad():
            for node in self.nodes:
                if node.op == "placeholder":
                    self.fixed[node] = x
                elif node in const:
                    self.fixed[node] = _get_attr(gm, node.target)
                elif node in static:
                    self.fixed[node] = self._call(node, self.fixed.__getitem__)
        self.neurons = {n: self.modules[n.target] for n in self.nodes
                        if n.op == "call_module" and isinstance(self.modules[n.target], SpikingNeuron)}
        self.by_name = {m.name: n for n, m in self.neurons.items()}
        self.stateful = {n: self.modules[n.target] for n in self.nodes
                         if n.op == "call_module" and isinstance(self.modules[n.target], StatefulModule)}
        # the neuron layers upstream of each node (itself included), in graph order
        upstream: dict[fx.Node, frozenset[fx.Node]] = {}
        for node in self.nodes:
            ups = frozenset().union(*(upstream.get(a, frozenset()) for a in node.all_input_nodes))
            upstream[node] = ups | {node} if node in self.neurons else ups
        self.upstream = {n: tuple(sorted(u, key=self.index.__getitem__)) for n, u in upstream.items()}
        self.keep = self._boundary()
        # per node: its values at each step and the versions of the layers upstream they were computed with
        # (None: being replaced)
        self.kept: dict[fx.Node, tuple[list[Any], tuple[int, ...] | None]] = {}
        self.kept_bytes = 0
        self.sizes: dict[fx.Node, int] = {}  # bytes of each kept node's values
        self.last_read: dict[fx.Node, int] = {}  # the run that last read or wrote each kept node
        self.runs = 0
        self.versions: dict[fx.Node, list[tuple]] = {n: [] for n in self.neurons}

    # -- structure -----------------------------------------------------------------------------
    def _boundary(self) -> set[fx.Node]:
        """The nodes worth keeping: for each neuron layer, the values its downstream region reads from
        outside it; and the output's operands."""
        users: dict[fx.Node, list[fx.Node]] = {n: list(n.users) for n in self.nodes}
        keep: set[fx.Node] = set()
        for neuron in self.neurons:
            region, stack = set(), [neuron]
            while stack:
                n = stack.pop()
                if n in region or n.op == "output":
                    continue
                region.add(n)
                stack.extend(users[n])
            for n in region:
                keep.update(a for a in n.all_input_nodes if a not in region and a not in self.fixed)
        keep.update(a for a in self.output.all_input_nodes if a not in self.fixed)
        return keep

    def neuron_node(self, name: str) -> fx.Node:
        return self.by_name[name]

    # -- versions --------------------------------------------------------------------------------
    def _current(self) -> dict[fx.Node, int]:
        """Each neuron layer's version: the index of its present state among the states seen."""
        out = {}
        for node, mod in self.neurons.items():
            sig = _signature(mod)
            seen = self.versions[node]
            for i, s in enumerate(seen):
                if _same(s, sig):
                    out[node] = i
                    break
            else:
                seen.append(sig)
                out[node] = len(seen) - 1
        return out

    # -- running ---------------------------------------------------------------------------------
    def _call(self, node: fx.Node, lookup: Callable[[fx.Node], Any]) -> Any:
        return call_node(self.modules, node, lookup)

    @torch.no_grad()
    def run(self, evaluate: Sequence[str] = (), output: bool = True, commit: bool = True,
            on_step: Callable[[int], None] | None = None) -> Any:
        """One run of ``timesteps`` steps with the neuron states as they are now.

        Args:
            evaluate: names of neuron layers that must run (their ``last_spikes`` are then valid in
                ``on_step``), even where their kept values are current.
            output: compute the output (returned, averaged over the steps as ``SpikingModel.run``
                averages it); False returns None.
            commit: keep the values this run computes (for the nodes worth keeping), replacing those
                kept before. False leaves what is kept as it was: runs that try a change and undo it.
            on_step: called with the step index after each step.
        """
        versions = self._current()
        self.runs += 1

        def current(node: fx.Node) -> bool:
            kept = self.kept.get(node)
            return kept is not None and kept[1] == tuple(versions[u] for u in self.upstream[node])

        forced = {self.by_name[name] for name in evaluate}
        need: set[fx.Node] = set()
        stack = list(forced) + (list(self.output.all_input_nodes) if output else [])
        while stack:
            node = stack.pop()
            if node in need or node in self.fixed or (node not in forced and current(node)):
                continue
            need.add(node)
            stack.extend(node.all_input_nodes)
        order = sorted(need, key=self.index.__getitem__)
        outputs = self._steps(order, output, commit, on_step, versions)
        if output:
            ((total, count),) = deque(accumulate_steps(outputs, self.t0), maxlen=1)  # the last step's sum
            result = tree_map(lambda v: v / count, total)
        else:
            for _ in outputs:
                pass
            result = None
        self.snn.reset()
        self.snn.last_input = None
        return result

    def _steps(self, order: list[fx.Node], output: bool, commit: bool, on_step: Callable[[int], None] | None,
               versions: dict[fx.Node, int]):
        store = [n for n in order if n in self.keep] if commit else []
        fresh: dict[fx.Node, list[Any]] = {n: [] for n in store}
        for node in store:  # values this run replaces: not read by it (it computes them), freed now
            if node in self.kept:
                self.kept[node] = ([], None)
        last_use: dict[fx.Node, int] = {}
        for i, node in enumerate(order):
            for a in node.all_input_nodes:
                last_use[a] = i
        held = set(self.output.all_input_nodes) if output else set()
        for node in order:
            mod = self.stateful.get(node)
            if mod is not None:
                mod.reset()
        for t in range(self.timesteps):
            env: dict[fx.Node, Any] = {}

            def lookup(n: fx.Node, env: dict = env, t: int = t) -> Any:
                if n in env:
                    return env[n]
                if n in self.fixed:
                    return self.fixed[n]
                self.last_read[n] = self.runs
                return self.kept[n][0][t]

            for i, node in enumerate(order):
                value = self._call(node, lookup)
                env[node] = value
                if node in fresh:
                    fresh[node].append(value)
                for a in node.all_input_nodes:
                    if last_use.get(a) == i and a in env and a not in held:
                        del env[a]
            if on_step is not None:
                on_step(t)
            yield fx.node.map_arg(self.output.args[0], lookup) if output else None
            if t == 0:  # the sizes are known: keep what fits the budget
                for node in list(fresh):
                    if node in self.kept:
                        continue
                    size = _nbytes(fresh[node][0]) * self.timesteps
                    if self.kept_bytes + size > self.budget and not self._make_room(size, versions, fresh):
                        del fresh[node]
                    else:
                        self.kept_bytes += size
                        self.sizes[node] = size
        for node, values in fresh.items():
            self.kept[node] = (values, tuple(versions[u] for u in self.upstream[node]))
            self.last_read[node] = self.runs

    def _make_room(self, size: int, versions: dict[fx.Node, int], fresh: dict[fx.Node, list[Any]]) -> bool:
        """Drop kept values until ``size`` more bytes fit: first those computed with layers that have
        changed since (they would be recomputed anyway), then the least recently read; never those
        this run reads or replaces. False (nothing dropped) when even that is not enough."""
        def stale(n: fx.Node) -> bool:
            return self.kept[n][1] != tuple(versions[u] for u in self.upstream[n])

        movable = [n for n in self.kept if n not in fresh and self.last_read.get(n) != self.runs]
        movable.sort(key=lambda n: (not stale(n), self.last_read.get(n, 0)))
        free, drop = self.budget - self.kept_bytes, []
        for n in movable:
            if free >= size:
                break
            drop.append(n)
            free += self.sizes[n]
        if free < size:
            return False
        for n in drop:
            del self.kept[n]
            self.kept_bytes -= self.sizes.pop(n)
            self.last_read.pop(n, None)
        return True
