"""AdaFire burst-cap allocation by sensitivity analysis under a spike budget (ALGORITHMS.md §2).

For each neuron layer l and each candidate cap m: set l's cap to m and every other layer's to the
initial cap, simulate, and record the divergence S_l(m) of the SNN's output from the ANN's and the
layer's spike count N_l(m). Then choose one cap per layer minimising sum S subject to
sum N <= rho * B (B: all layers at the target cap), exactly, by dynamic programming over a
discretised budget (a multiple-choice knapsack).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from .. import distributed as D
from ..model import SpikingModel
from . import incremental
from .incremental import IncrementalRunner


def divergence_sum(snn_out: Tensor, ann_out: Tensor, metric: str) -> tuple[float, int]:
    """(sum, count) whose ratio is :func:`output_divergence`: sums over samples add up across ranks."""
    if metric == "mse":
        return float((snn_out.double() - ann_out.double()).pow(2).sum()), snn_out.numel()
    p = torch.log_softmax(snn_out.flatten(1).double(), dim=1)
    q = torch.log_softmax(ann_out.flatten(1).double(), dim=1)
    kl_pq = (p.exp() * (p - q)).sum(1)
    kl_qp = (q.exp() * (q - p)).sum(1)
    return float((kl_pq + kl_qp).sum()), int(p.shape[0])


def output_divergence(snn_out: Tensor, ann_out: Tensor, metric: str) -> float:
    """Symmetric KL between softmax outputs (``kl``) or the mean squared error (``mse``)."""
    total, count = divergence_sum(snn_out, ann_out, metric)
    return total / max(count, 1)


def reduce_means(sums: list[float], counts: list[float]) -> list[float]:
    """``sums[i] / counts[i]`` with both summed over all ranks first (one all-reduce)."""
    totals = D.sum_floats(list(sums) + list(counts))
    n = len(sums)
    return [s / max(c, 1.0) for s, c in zip(totals[:n], totals[n:], strict=True)]


def resolve_metric(metric: str, ann_out: Any) -> str:
    if metric != "auto":
        return metric
    return "kl" if isinstance(ann_out, Tensor) and ann_out.ndim == 2 else "mse"


def _first_tensor(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    return torch.cat([_first_tensor(o).flatten(1) for o in out], dim=1)


class _SpikeTally:
    """A step hook that sums each neuron layer's spikes over a run."""

    def __init__(self, snn: SpikingModel):
        self.neurons = snn.neurons()
        self.totals = {name: 0.0 for name in self.neurons}

    def __call__(self, snn: SpikingModel) -> None:
        for name, mod in self.neurons.items():
            self.totals[name] += mod.spike_total()  # exact past 2**24


def priced_run(snn: SpikingModel, x: Tensor, timesteps: int
               ) -> tuple[Any, dict[str, float], dict[str, float], dict[str, float], float]:
    """A counted run: its output, each layer's spikes, the SOPs each layer's spikes caused and the
    spikes of the same steps (both since the counter's last flush), and the SOPs of the whole run
    summed over the batch. Prices are :func:`prices` of the middle two, after any reduction."""
    from ..energy import SynapticCounter

    with SynapticCounter(snn) as counter:
        out, tally = simulate_with_tally(snn, x, timesteps)
        caused, window = counter.attribute(), counter.pending_spikes()
        sops = counter.report().sops * x.shape[0]
    return out, tally, caused, window, sops


def prices(caused: Sequence[float], window: Sequence[float]) -> list[float]:
    """SOPs per spike, layer by layer (0 for a layer that did not fire)."""
    return [c / b if b > 0 else 0.0 for c, b in zip(caused, window, strict=True)]


def simulate_with_tally(snn: SpikingModel, x: Tensor, timesteps: int) -> tuple[Any, dict[str, float]]:
    tally = _SpikeTally(snn)
    snn.step_hooks.append(tally)
    try:
        out = snn.run(x, timesteps)
    finally:
        snn.step_hooks.remove(tally)
    return out, tally.totals


def runner_tally(runner: IncrementalRunner, name: str, commit: bool = True) -> tuple[Any, float]:
    """An incremental run: its output and layer ``name``'s spikes, summed as :func:`simulate_with_tally`
    sums them."""
    neuron = runner.neurons[runner.neuron_node(name)]
    total = [0.0]

    def count(_t: int) -> None:
        total[0] += neuron.spike_total()

    out = runner.run(evaluate=[name], commit=commit, on_step=count)
    return out, total[0]


@dataclass
class SensitivityTable:
    """S_l(m) and N_l(m) for every layer l and candidate cap m, and the budget reference B."""

    layers: list[str]
    caps: list[int]
    sensitivity: list[list[float]]
    spikes: list[list[float]]
    target_cap: int
    initial_cap: int
    baseline_spikes: float
    metric: str
    timesteps: int
    samples: int
    baseline_layer_spikes: list[float] | None = None  # per layer, every cap at the target
    sops_per_spike: list[float] | None = None  # per layer: synaptic operations one of its spikes costs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SensitivityTable:
        return cls(**d)


@torch.no_grad()
def sensitivity_table(
    snn: SpikingModel,
    x: Tensor,
    timesteps: int,
    caps: Sequence[int],
    initial_cap: int,
    target_cap: int,
    metric: str = "auto",
    progress: bool | None = None,
) -> SensitivityTable:
    """Measure every layer's sensitivity to its burst cap (the others held at ``initial_cap``)."""
    from ..utils import progress as bar

    neurons = snn.neurons()
    saved = {name: n.cap for name, n in neurons.items()}
    ann = _first_tensor(snn.analog(x, "relu"))
    metric = resolve_metric(metric, ann)
    try:
        for n in neurons.values():
            n.set_cap(target_cap)
        _, base, caused, window, _ = priced_run(snn, x, timesteps)  # the baseline also prices spikes
        jobs = [(name, m) for name in neurons for m in caps]
        div_sums, div_counts, job_spikes = [], [], []
        # each job changes one layer's cap: only the part of the network downstream of it runs again
        runner = IncrementalRunner(snn, x, timesteps) if incremental.applies(snn, x) else None
        for name, m in bar(jobs, len(jobs), "burst sensitivity", progress):
            for other, n in neurons.items():
                n.set_cap(m if other == name else initial_cap)
            if runner is None:
                out, tally = simulate_with_tally(snn, x, timesteps)
                spikes = tally[name]
            else:
                out, spikes = runner_tally(runner, name)
            total, count = divergence_sum(_first_tensor(out), ann, metric)
            div_sums.append(total)
            div_counts.append(count)
            job_spikes.append(spikes)
    finally:
        for name, n in neurons.items():
            n.set_cap(saved[name])
    return _reduced_table(list(neurons), caps, reduce_means(div_sums, div_counts), job_spikes, base, caused, window,
                          x.shape[0], target_cap, initial_cap, metric, timesteps)


def _reduced_table(names: list[str], caps: Sequence[int], divs: list[float], job_spikes: list[float],
                   base: dict[str, float], caused: dict[str, float], window: dict[str, float], samples: int,
                   target_cap: int, initial_cap: int, metric: str, timesteps: int) -> SensitivityTable:
    """The table from per-job divergences (already reduced) and this rank's spike and SOP sums, job by
    job layer-major: spike counts and the SOPs they cause are sums over samples, reduced over the
    ranks' shares in one call (a no-op in one process)."""
    k, L = len(caps), len(names)
    totals = D.sum_floats([*job_spikes, *(base[n] for n in names), *(caused[n] for n in names),
                           *(window[n] for n in names), samples])
    job_spikes, base_layers = totals[:k * L], totals[k * L:k * L + L]
    caused_layers, window_layers = totals[k * L + L:k * L + 2 * L], totals[k * L + 2 * L:-1]
    per_spike = prices(caused_layers, window_layers)
    sens = [divs[i * k:(i + 1) * k] for i in range(L)]
    spikes = [job_spikes[i * k:(i + 1) * k] for i in range(L)]
    return SensitivityTable(names, list(caps), sens, spikes, target_cap, initial_cap, sum(base_layers), metric,
                            timesteps, int(totals[-1]), base_layers, per_spike)


#: random output directions per sample behind each Fisher estimate (more: less noise, one backward each)
FISHER_PROBES = 4


@torch.no_grad()
def fisher_sensitivity_table(
    snn: SpikingModel,
    x: Tensor,
    timesteps: int,
    caps: Sequence[int],
    initial_cap: int,
    target_cap: int,
    metric: str = "auto",
    progress: bool | None = None,
    probes: int = FISHER_PROBES,
) -> SensitivityTable:
    """:func:`sensitivity_table` estimated from one simulation instead of one per layer and cap.

    With every layer at ``initial_cap``, each layer's input is what it receives in every job of the
    simulated table (only that layer's cap changes, downstream of it): so each layer's rate at each
    candidate cap and its spike count N_l(m) come out exactly, from copies of the layer's neurons fed
    its input. What is estimated is how the layer's error reaches the output: the divergence is taken
    to second order, ``S_l(m) ~ E[(J_l d_l(m))^T F (J_l d_l(m))]`` with ``d_l(m)`` the layer's rate minus
    the ANN's activation, ``J_l`` the ANN's Jacobian from the layer to the output and ``F`` the Fisher
    information of the softmax output (``kl``; the identity for ``mse``), estimated by backpropagating
    ``probes`` random output directions ``u`` with ``E[u u^T] = F`` through the ANN:
    ``S_l(m) ~ mean over u of (g_u . d_l(m))^2``, ``g_u = J_l^T u``. The DP then chooses as it does from
    the simulated table. Cost: two simulations and ``probes`` backward passes of the ANN, against
    ``layers x caps`` simulations of the downstream network.
    """
    from ..utils import progress as bar

    neurons = snn.neurons()
    names = list(neurons)
    saved = {name: n.cap for name, n in neurons.items()}
    metric = resolve_metric(metric, _first_tensor(snn.analog(x[:1], "relu")))  # the output's kind only
    k = len(caps)
    sums = torch.zeros(len(names), k, dtype=torch.float64)
    counts = [[0.0] * k for _ in names]
    gen = torch.Generator(device=x.device).manual_seed(snn.config.seed)
    try:
        for n in neurons.values():
            n.set_cap(target_cap)
        _, base, caused, window, _ = priced_run(snn, x, timesteps)
        for n in neurons.values():
            n.set_cap(initial_cap)
        shadows = {}  # each layer's neurons at each candidate cap, fed the layer's input
        for name, n in neurons.items():
            shadows[name] = []
            for m in caps:
                twin = copy.deepcopy(n)
                twin.set_cap(m)
                shadows[name].append(twin)
        chunk = _fisher_chunk(snn, x, k, probes)
        for xc in bar(list(x.split(chunk)), -(-x.shape[0] // chunk), "burst sensitivity (Fisher)", progress):
            grads, acts = _output_gradients(snn, xc, metric, probes, gen)
            for twins in shadows.values():
                for twin in twins:
                    twin.reset()
            dots = {name: torch.zeros(k, probes, xc.shape[0], dtype=torch.float64, device=x.device) for name in names}

            def feed(g: Tensor | None, twins: list, acc: Tensor, row: list[float]):
                def hook(_mod, inputs, _out):
                    for j, twin in enumerate(twins):
                        out = twin(inputs[0])
                        if g is not None:  # None: the output does not depend on this layer
                            acc[j] += torch.einsum("pcn,cn->pc", g, out.flatten(1)).double()
                        row[j] += twin.spike_total()
                return hook

            handles = [n.register_forward_hook(feed(grads[name].flatten(2) if name in grads else None, shadows[name],
                                                    dots[name], counts[i]))
                       for i, (name, n) in enumerate(neurons.items())]
            try:
                snn.run(xc, timesteps, mode="step")
            finally:
                for h in handles:
                    h.remove()
            for i, name in enumerate(names):
                if name not in grads:
                    continue
                at_ann = torch.einsum("pcn,cn->pc", grads[name].flatten(2), acts[name].flatten(1)).double()
                sums[i] += (dots[name] / timesteps - at_ann).pow(2).mean(1).sum(1).cpu()
            del grads, acts, dots
    finally:
        for name, n in neurons.items():
            n.set_cap(saved[name])
    # S_l(m): the mean over all ranks' samples of the per-sample sums
    divs = reduce_means(sums.flatten().tolist(), [float(x.shape[0])] * sums.numel())
    return _reduced_table(names, caps, divs, [c for row in counts for c in row], base, caused, window, x.shape[0],
                          target_cap, initial_cap, metric, timesteps)


def _fisher_chunk(snn: SpikingModel, x: Tensor, caps: int, probes: int) -> int:
    """Samples per pass so that the gradients, activations and neuron copies of all layers fit
    :data:`incremental.MEMORY_BUDGET`."""
    sizes = []
    handles = [n.register_forward_hook(lambda _m, _i, o: sizes.append(o[0].numel() * o.element_size()))
               for n in snn.neurons().values()]
    try:
        snn.analog(x[:1], "relu")
    finally:
        for h in handles:
            h.remove()
    per_sample = sum(sizes) * (probes + 2 * caps + 2)  # gradients, activation, each copy's membrane and output
    return max(1, min(x.shape[0], int(incremental.MEMORY_BUDGET // max(per_sample, 1))))


def _output_gradients(snn: SpikingModel, x: Tensor, metric: str, probes: int, gen: torch.Generator
                      ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per neuron layer: ``J^T u`` for ``probes`` random output directions (``[probes, batch, ...]``)
    and the ANN's activation, from the folded ANN (``snn.analog``)."""
    neurons = snn.neurons()
    acts: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(_mod, _inputs, out):
            acts[name] = out
        return hook

    handles = [n.register_forward_hook(keep(name)) for name, n in neurons.items()]
    try:
        with torch.enable_grad():
            out = _first_tensor(snn.analog_graph(x.detach().requires_grad_(True), "relu"))
            if out.grad_fn is None:
                raise RuntimeError("the folded ANN's output does not depend on its input")
            layers = [name for name in neurons if name in acts and acts[name].requires_grad]
            grads: dict[str, list[Tensor]] = {name: [] for name in layers}
            flat = out.detach().flatten(1).double()
            for j in range(probes):
                if metric == "kl":  # u = onehot(y) - p with y ~ p: E[u u^T] = diag(p) - p p^T, the Fisher
                    prob = torch.softmax(flat, dim=1)
                    y = torch.multinomial(prob, 1, generator=gen).squeeze(1)
                    u = -prob
                    u[torch.arange(u.shape[0], device=u.device), y] += 1.0
                else:  # mse: E[u u^T] = I
                    u = torch.randn(flat.shape, generator=gen, device=flat.device, dtype=flat.dtype)
                u = u.to(out.dtype).reshape(out.shape)
                gs = torch.autograd.grad(out, [acts[name] for name in layers], grad_outputs=u,
                                         retain_graph=j < probes - 1, allow_unused=True)
                for name, g in zip(layers, gs, strict=True):
                    grads[name].append(torch.zeros_like(acts[name]) if g is None else g.detach())
    finally:
        for h in handles:
            h.remove()
    return ({name: torch.stack(g) for name, g in grads.items()},
            {name: acts[name].detach() for name in grads})


def multiple_choice_knapsack(costs: Sequence[Sequence[int]], values: Sequence[Sequence[float]],
                             budget: int) -> list[int] | None:
    """Pick one option per group minimising the summed value with summed (integer) cost <= budget.

    Exact dynamic programming over the budget: O(groups * options * budget). Returns the chosen
    option index per group, or None if even the cheapest choice exceeds the budget.
    """
    inf = math.inf
    best = [0.0] + [inf] * budget  # best[b]: least value with cost exactly b
    choice: list[list[int]] = []
    for group_costs, group_values in zip(costs, values, strict=True):
        new = [inf] * (budget + 1)
        pick = [-1] * (budget + 1)
        for b in range(budget + 1):
            if best[b] == inf:
                continue
            for i, (c, v) in enumerate(zip(group_costs, group_values, strict=True)):
                nb = b + c
                if nb <= budget and best[b] + v < new[nb]:
                    new[nb] = best[b] + v
                    pick[nb] = i
        best = new
        choice.append(pick)
    end = min(range(budget + 1), key=lambda b: best[b])
    if best[end] == inf:
        return None
    # walk back: recover each group's option from the stored picks
    result = [0] * len(choice)
    b = end
    for g in range(len(choice) - 1, -1, -1):
        i = choice[g][b]
        result[g] = i
        b -= costs[g][i]
    return result


def solve_budgeted(costs: Sequence[Sequence[float]], values: Sequence[Sequence[float]], budget: float,
                   resolution: int = 2000) -> list[int] | None:
    """One option per group minimising sum(values) with sum(costs) <= budget (costs >= 0, floats).

    Costs are discretised to 1/resolution of the budget (rounded down), the knapsack is solved
    exactly, and the choice is checked against the true costs; if rounding let it overspend, the
    discrete budget shrinks by one unit and the DP runs again. A returned choice always respects the
    budget; None means no choice does.
    """
    unit = max(budget, 1e-12) / resolution
    int_costs = [[int(max(c, 0.0) // unit) for c in group] for group in costs]
    steps = resolution
    while steps >= 0:
        picked = multiple_choice_knapsack(int_costs, values, steps)
        if picked is None:
            return None
        if sum(costs[g][i] for g, i in enumerate(picked)) <= budget + 1e-12 * max(1.0, abs(budget)):
            return picked
        steps -= 1
    return None


def allocate_caps(table: SensitivityTable, rho: float = 0.95, min_cap: int = 1,
                  resolution: int = 2000, cost: str = "spikes") -> dict[str, int]:
    """Caps minimising total sensitivity with total cost <= rho * B (exact DP, see solve_budgeted).

    ``cost="spikes"`` (the paper): N_l(m) is layer l's spike count, B the total spikes with every cap
    at the target. ``cost="sops"``: each layer's spikes are priced by the synaptic operations one of
    them causes downstream, so the budget is on energy and layers with a large fan-out get smaller caps.
    """
    allowed = [i for i, m in enumerate(table.caps) if m >= min_cap]
    layers = range(len(table.layers))
    if cost == "sops":
        if table.sops_per_spike is None or table.baseline_layer_spikes is None:
            raise ValueError("this sensitivity table has no per-layer prices; measure it again")
        price = table.sops_per_spike
        budget = sum(p * b for p, b in zip(price, table.baseline_layer_spikes, strict=True))
    elif cost == "spikes":
        price = [1.0] * len(table.layers)
        budget = table.baseline_spikes
    else:
        raise ValueError(f"unknown burst cost {cost!r}; choose spikes or sops")
    costs = [[table.spikes[k][i] * price[k] for i in allowed] for k in layers]
    values = [[table.sensitivity[k][i] for i in allowed] for k in layers]
    picked = solve_budgeted(costs, values, rho * budget, resolution)
    if picked is None:  # the budget cannot be met: take the cheapest cap of every layer
        picked = [min(range(len(allowed)), key=lambda i, k=k: costs[k][i]) for k in layers]
    return {name: table.caps[allowed[i]] for name, i in zip(table.layers, picked, strict=True)}


def apply_caps(snn: SpikingModel, caps: dict[str, int]) -> None:
    neurons = snn.neurons()
    for name, m in caps.items():
        neurons[name].set_cap(m)
    for layer in snn.info.get("layers", []):
        if layer["name"] in caps:
            layer["cap"] = caps[layer["name"]]


def reallocate(snn: SpikingModel, rho: float, min_cap: int | None = None, cost: str | None = None) -> dict[str, int]:
    """Choose caps again for another budget from the table stored in ``snn.info`` (no simulation)."""
    stored = snn.info.get("sensitivity")
    if not stored:
        raise ValueError("this SNN has no stored sensitivity table (convert with neuron='adafire')")
    table = SensitivityTable.from_dict(stored)
    caps = allocate_caps(table, rho, min_cap if min_cap is not None else snn.config.burst_min,
                         cost=cost or snn.config.burst_cost)
    apply_caps(snn, caps)
    snn.info["caps"] = caps
    return caps
