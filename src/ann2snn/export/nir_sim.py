"""A small reference simulator of NIR graphs in discrete time (dt = 1), independent of ann2snn's neurons.

It runs the graph as NIR states it, node by node, and ignores every ``ann2snn`` metadata entry, so
it checks that an exported graph *itself* computes what the converted model computes:

* a node's input is the sum of what its incoming edges carry;
* an edge that closes a cycle carries its source's output of the previous step (zeros at first):
  the one-step delay a discrete simulator puts on recurrence;
* ``I``: ``v += r * x``, output ``v``; ``Threshold``: ``x > threshold``; ``IF``: ``v += r * x``,
  a spike where ``v > v_threshold``, then ``v = v_reset`` there; ``Scale``, ``Affine``, ``Linear``,
  ``Conv1d/2d``, ``AvgPool2d``, ``SumPool2d``, ``Flatten`` (per sample) as their definitions say;
* ``NIRGraph`` nodes run recursively with their own state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["NIRSimulator"]


def _t(a: Any) -> Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


def _pair(v: Any) -> tuple[int, int]:
    v = [int(x) for x in np.atleast_1d(v)]
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


class NIRSimulator:
    """Run a ``nir.NIRGraph`` step by step on batches: ``sim.reset(); y = sim.step(x)``."""

    def __init__(self, graph: Any):
        import nir

        self.nir = nir
        self.graph = graph
        self.edges = [(str(a), str(b)) for a, b in graph.edges]
        self.order, self.delayed = self._schedule()
        self.children = {n: NIRSimulator(node) for n, node in graph.nodes.items() if isinstance(node, nir.NIRGraph)}
        self.state: dict[str, Tensor] = {}
        self.out: dict[str, Tensor] = {}
        self.prev: dict[str, Tensor] = {}

    def _schedule(self) -> tuple[list[str], set[tuple[str, str]]]:
        names = list(self.graph.nodes)
        done: list[str] = []
        delayed: set[tuple[str, str]] = set()
        while len(done) < len(names):
            ready = [n for n in names if n not in done
                     and all(s in done for s, d in self.edges if d == n)]
            if not ready:  # a cycle: run the first node that has some input, delay the rest
                n = next(n for n in names if n not in done and any(s in done for s, d in self.edges if d == n))
                delayed |= {(s, d) for s, d in self.edges if d == n and s not in done}
                ready = [n]
            done.append(ready[0])
        return done, delayed

    def reset(self) -> None:
        self.state, self.out, self.prev = {}, {}, {}
        for child in self.children.values():
            child.reset()

    def step(self, x: Tensor) -> Tensor:
        """One step; ``x`` is the batch fed to the graph's (single) Input node."""
        nir = self.nir
        self.prev, self.out = self.out, {}
        result = None
        for name in self.order:
            node = self.graph.nodes[name]
            if isinstance(node, nir.Input):
                self.out[name] = x
                continue
            terms = []
            for s, d in self.edges:
                if d != name:
                    continue
                if (s, d) in self.delayed:
                    if s in self.prev:
                        terms.append(self.prev[s])
                else:
                    terms.append(self.out[s])
            inp = terms[0]
            for t in terms[1:]:
                inp = inp + t
            self.out[name] = y = self._node(name, node, inp)
            if isinstance(node, nir.Output):
                result = y
        return result

    def _node(self, name: str, node: Any, x: Tensor) -> Tensor:
        nir = self.nir
        if isinstance(node, nir.Output):
            return x
        if isinstance(node, nir.NIRGraph):
            return self.children[name].step(x)
        if isinstance(node, nir.Scale):
            return x * _t(node.scale)
        if isinstance(node, nir.I):
            v = self.state.get(name, torch.zeros_like(x)) + _t(node.r) * x
            self.state[name] = v
            return v
        if isinstance(node, nir.Threshold):
            return (x > _t(node.threshold)).to(x.dtype)
        if isinstance(node, nir.IF):
            v = self.state.get(name, torch.zeros_like(x)) + _t(node.r) * x
            z = v > _t(node.v_threshold)
            self.state[name] = torch.where(z, _t(node.v_reset).expand_as(v), v)
            return z.to(x.dtype)
        if isinstance(node, nir.Affine):
            return F.linear(x, _t(node.weight), _t(node.bias))
        if isinstance(node, nir.Linear):
            return F.linear(x, _t(node.weight))
        if isinstance(node, nir.Conv2d):
            return F.conv2d(x, _t(node.weight), _t(node.bias), _pair(node.stride), _pair(node.padding),
                            _pair(node.dilation), int(node.groups))
        if isinstance(node, nir.Conv1d):
            return F.conv1d(x, _t(node.weight), _t(node.bias), int(node.stride), int(node.padding),
                            int(node.dilation), int(node.groups))
        if isinstance(node, nir.AvgPool2d):
            return F.avg_pool2d(x, _pair(node.kernel_size), _pair(node.stride), _pair(node.padding))
        if isinstance(node, nir.SumPool2d):
            k = _pair(node.kernel_size)
            return F.avg_pool2d(x, k, _pair(node.stride), _pair(node.padding), divisor_override=1)
        if isinstance(node, nir.Flatten):
            return x.flatten(1)
        raise NotImplementedError(f"the reference simulator has no {type(node).__name__} node")

    @torch.no_grad()
    def run(self, x: Tensor, timesteps: int) -> Tensor:
        """The output averaged over ``timesteps`` steps of constant input ``x``."""
        self.reset()
        total = None
        for _ in range(timesteps):
            y = self.step(x)
            total = y.clone() if total is None else total + y
        self.reset()
        return total / timesteps
