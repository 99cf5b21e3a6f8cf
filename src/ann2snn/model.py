"""The spiking model: a graph of linear ops and stateful neurons, run one timestep at a time.

Memory does not grow with T: each step overwrites the neuron states; only the running output mean
is kept (and, with ``return_all=True``, the running output after every step).

Two execution modes (:mod:`ann2snn.simulation`): step mode (the default) runs the graph once per step,
with the static prefix (the nodes before the first neuron, under direct coding) computed once per
run; time-batched mode (``run(mode="batched")``) runs it layer by layer with the steps of a chunk
folded into the batch. ``step()``, IAT early exit and runs with a counter attached use step mode.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.utils._pytree import tree_map

from .config import ConversionConfig, field_error
from .errors import ConfigError
from .neurons.modules import RunningMaxPool, SpikingNeuron, StatefulModule, unique_label
from .simulation import (
    BatchedRunner,
    NotBatchable,
    StaticPlan,
    accumulate_steps,
    chunk_steps,
    plan_key,
    plan_static_prefix,
    unfold_steps,
)

#: what ``run(mode="auto")`` picks where both modes apply. Step mode: on CPU at batch 128 the
#: time-batched mode is no faster (1.0 to 1.1 x step mode's time on the bundled VGG / ResNet /
#: MobileNetV2, docs/simulation.md): the weight layers are already large matrix products at that
#: batch, and folding time in only adds copies. It is there for devices whose kernels one step's
#: batch does not fill.
AUTO_MODE = "step"
#: batched mode: bytes of activations one chunk of steps may keep alive at once
BATCHED_MEMORY_BUDGET = 64 * 2**20


def poisson_encode(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Unbiased rate coding of analog input: ``sign(x) * Bernoulli(|x| / s) * s`` with ``s`` the
    per-sample peak ``max |x|``, so that the mean over steps tends to ``x`` for any input range."""
    scale = x.detach().abs().flatten(1).amax(dim=1).clamp(min=1e-12)
    scale = scale.reshape(-1, *([1] * (x.ndim - 1)))
    prob = (x.abs() / scale).clamp(0.0, 1.0)
    noise = torch.rand(prob.shape, generator=generator, device=generator.device if generator else x.device)
    return torch.sign(x) * (noise.to(x.device) < prob).to(x.dtype) * scale


def _unique_neuron_names(graph_module: nn.Module) -> None:
    """Give every neuron layer its own name (files written before names were made unique at conversion
    could repeat a name when one ReLU module was called twice; per-layer maps are keyed by name)."""
    taken: set[str] = set()
    for m in graph_module.modules():
        if isinstance(m, SpikingNeuron):
            m.name = unique_label(m.name, taken)


class SpikingModel(nn.Module):
    """A converted spiking network.

    ``run(x, T)`` simulates ``T`` steps and returns the output averaged over the steps;
    ``reset()`` + ``step(x)`` drive it one step at a time.

    Attributes:
        graph_module: the torch.fx graph: linear ops, :class:`SpikingNeuron` and :class:`RunningMaxPool`.
        config: how it was made.
        info: calibration results for reports (per-layer thresholds, pass statistics, ...).
    """

    def __init__(self, graph_module: fx.GraphModule, config: ConversionConfig, info: dict[str, Any] | None = None):
        super().__init__()
        self.graph_module = graph_module
        self.config = config
        self.info = dict(info or {})
        self.step_hooks: list[Callable[[SpikingModel], None]] = []
        self.counters: list[Any] = []  # SynapticCounter objects attached to this model
        self.last_input: Tensor | None = None
        self._plan_cache: tuple | None = None
        _unique_neuron_names(graph_module)

    # -- structure -----------------------------------------------------------------------------
    def neurons(self) -> dict[str, SpikingNeuron]:
        """The neuron layers by name, in graph order."""
        return {m.name: m for m in self.graph_module.modules() if isinstance(m, SpikingNeuron)}

    def stateful_modules(self) -> list[StatefulModule]:
        return [m for m in self.graph_module.modules() if isinstance(m, StatefulModule)]

    @property
    def device(self) -> torch.device:
        for t in list(self.graph_module.parameters()) + list(self.graph_module.buffers()):
            return t.device
        return torch.device("cpu")

    # -- stepping --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every neuron's state; the next step starts from the initial potential."""
        for m in self.stateful_modules():
            m.reset()

    def select(self, index: Tensor) -> None:
        """Keep only the samples ``index`` of the batch in every state (early exit)."""
        for m in self.stateful_modules():
            m.select(index)
        for c in self.counters:
            c.select(index)

    def step(self, x: Tensor) -> Any:
        """One timestep: input current ``x`` in, this step's output (analog last layer) out."""
        return self._advance(self.graph_module, x)

    def _advance(self, forward: Callable[..., Any], x: Tensor, *args: Any) -> Any:
        self.last_input = x
        out = forward(*args) if args else forward(x)
        for hook in self.step_hooks:
            hook(self)
        return out

    def static_plan(self) -> StaticPlan | None:
        """The graph split at its static prefix (see :mod:`ann2snn.simulation`), rebuilt whenever the
        graph or its modules change; None when no node before the first neuron computes anything."""
        key = plan_key(self.graph_module)
        if self._plan_cache is None or self._plan_cache[0] != key:
            self._plan_cache = (key, plan_static_prefix(self.graph_module))
        return self._plan_cache[1]

    @torch.no_grad()
    def run(
        self,
        x: Tensor,
        timesteps: int | None = None,
        *,
        return_all: bool = False,
        t0: int | None = None,
        encoding: str | None = None,
        sequence: bool = False,
        generator: torch.Generator | None = None,
        mode: str = "auto",
        static_prefix: bool = True,
        memory_budget: int | None = None,
        fused: bool = False,
    ) -> Any:
        """Simulate ``timesteps`` steps on input ``x`` and average the output over steps ``t >= t0``.

        Args:
            x: a batch ``[B, ...]`` fed every step (direct or Poisson coding), or with
                ``sequence=True`` a sequence ``[T, B, ...]`` fed one frame per step.
            timesteps: T (default: the config's; with ``sequence=True``, the sequence length).
            return_all: also return the running averaged output after every step, stacked as
                ``[T, B, ...]``: accuracy at every T' <= T from one pass.
            t0: delayed evaluation (default: the config's).
            encoding: ``direct`` or ``poisson`` (default: the config's).
            generator: random generator for Poisson coding (default: seeded from the config).
            mode: ``step`` runs the whole graph once per step; ``batched`` runs it layer by layer with
                the steps of a chunk folded into the batch (:mod:`ann2snn.simulation`); it needs a run
                without step hooks, so without a :class:`~ann2snn.energy.SynapticCounter` attached.
                ``auto`` (default): :data:`AUTO_MODE` where it applies, step mode otherwise.
            static_prefix: under direct coding (the same input every step) compute the nodes before
                the first neuron once per run instead of every step (identical outputs). False
                computes them every step.
            memory_budget: batched mode: bytes the activations of one chunk of steps may take
                (default :data:`BATCHED_MEMORY_BUDGET`); the chunk size follows from it.
            fused: update IF and burst neurons with a ``torch.compile``'d step (one loop over memory
                instead of four passes; the same spikes bit for bit), falling back to the eager update
                where compiling is unavailable or fails. Off by default: the first run compiles
                (seconds to a minute), see docs/simulation.md for what it saves.
        """
        timesteps, t0, encoding = self._check_run_args(x, timesteps, t0, encoding, sequence)
        if mode not in ("auto", "step", "batched"):
            raise ConfigError(f"unknown mode {mode!r}; choose auto, step or batched")
        if mode == "batched" and (self.step_hooks or self.counters):
            raise ConfigError("batched mode runs layer by layer and cannot call per-step hooks: detach the "
                              "SynapticCounter / step hooks or use mode='step'")
        if memory_budget is not None and memory_budget <= 0:
            raise ConfigError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
        x = x.to(self.device)
        if encoding == "poisson" and generator is None:
            generator = torch.Generator(device=x.device).manual_seed(self.config.seed)
        static = static_prefix and encoding == "direct" and not sequence
        if mode == "auto":
            mode = "auto_batched" if AUTO_MODE == "batched" and not (self.step_hooks or self.counters) else "step"
        neurons = list(self.neurons().values())
        for n in neurons:
            n.fused = bool(fused)
        try:
            return self._run(x, timesteps, t0, encoding, sequence, generator, static, mode, return_all,
                             memory_budget)
        finally:
            for n in neurons:
                n.fused = False

    def _run(self, x, timesteps, t0, encoding, sequence, generator, static, mode, return_all, memory_budget):
        outputs = None
        if mode in ("batched", "auto_batched"):
            batched = self._run_batched(x, timesteps, encoding, sequence, generator, static,
                                        memory_budget or BATCHED_MEMORY_BUDGET)
            try:  # every node runs in the first chunk: a graph that cannot fold fails here
                first = next(batched)
            except NotBatchable as exc:
                self.reset()
                if mode == "batched":
                    raise ConfigError(f"this graph cannot run time-batched: {exc}") from exc
            else:
                outputs = itertools.chain([first], batched)
        if outputs is None:
            outputs = self._run_steps(x, timesteps, encoding, sequence, generator, static)
        total, count = None, 0
        history = [] if return_all else None
        for total, count in accumulate_steps(outputs, t0):
            if return_all:
                history.append(tree_map(lambda s, c=count: s / c, total))
        self.reset()
        self.last_input = None
        mean = tree_map(lambda s: s / count, total)
        if return_all:
            return mean, _stack(history)
        return mean

    def _run_steps(self, x, timesteps, encoding, sequence, generator, static):
        """Step mode: yields each step's output."""
        self.reset()
        for c in self.counters:
            c.begin(x.shape[1] if sequence else x.shape[0], x.device, static_input=encoding == "direct" and not sequence)
        plan = self.static_plan() if static else None
        cached = plan(x) if plan is not None else None
        for t in range(timesteps):
            frame = x[t] if sequence else x
            if encoding == "poisson":
                frame = poisson_encode(frame, generator)
            if cached is not None:
                yield self._advance(plan.suffix, frame, *cached)
            else:
                yield self._advance(self.graph_module, frame)

    def _run_batched(self, x, timesteps, encoding, sequence, generator, static, budget):
        """Time-batched mode: chunks of steps folded into the batch; yields each step's output."""
        self.reset()
        plan = self.static_plan() if static else None
        runner = BatchedRunner(self.graph_module, plan.static_nodes if plan is not None else frozenset())
        runner.batch = x.shape[1] if sequence else x.shape[0]
        # the first chunk (two steps) measures what a step keeps alive, and folds time already, so that a
        # graph that cannot fold fails before any output is given
        t, chunk = 0, 2
        while t < timesteps:
            n = min(chunk, timesteps - t)
            if sequence:
                frames = x[t:t + n]
            elif encoding == "poisson":
                frames = torch.stack([poisson_encode(x, generator) for _ in range(n)])
            else:
                frames = None
            if frames is None:
                out = runner.run_chunk(x, n, x_static=True)
            else:
                out = runner.run_chunk(frames.flatten(0, 1), n, x_static=False)
            yield from unfold_steps(out, n)
            t += n
            chunk = chunk_steps(runner.peak_bytes // n, timesteps, budget)

    def _check_run_args(self, x, timesteps, t0, encoding, sequence):
        if not isinstance(x, Tensor):
            raise ConfigError(f"input must be a tensor, got {type(x).__name__}")
        if sequence:
            if timesteps is None:
                timesteps = x.shape[0]
            elif timesteps > x.shape[0]:
                raise ConfigError(f"timesteps={timesteps} but the input sequence has only {x.shape[0]} frames")
        timesteps = self.config.timesteps if timesteps is None else timesteps
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps <= 0:
            raise field_error("timesteps", f"timesteps must be a positive integer, got {timesteps!r}")
        if t0 is None:  # the config's delay applies only where the run is longer than it
            t0 = self.config.t0 if self.config.t0 < timesteps else 0
        if isinstance(t0, bool) or not isinstance(t0, int) or t0 < 0 or t0 >= timesteps:
            raise field_error("t0", f"t0 must be an integer in [0, timesteps), got t0={t0!r}, timesteps={timesteps}")
        encoding = encoding or self.config.encoding
        if encoding not in ("direct", "poisson"):
            raise field_error("encoding", f"unknown encoding {encoding!r}; choose direct or poisson")
        return timesteps, t0, encoding

    # -- analog reference ----------------------------------------------------------------------
    @torch.no_grad()
    def analog(self, x: Tensor, mode: str = "relu", timesteps: int | None = None) -> Any:
        """Run the network as an ANN: ``relu`` (the original network, BN folded), ``clip`` (ReLUs
        clipped at the thresholds) or ``quant`` (the quantisation ceiling at ``timesteps``)."""
        return self.analog_graph(x, mode, timesteps)

    def analog_graph(self, x: Tensor, mode: str = "relu", timesteps: int | None = None) -> Any:
        """:meth:`analog` as a differentiable graph (autograd as the caller has it), e.g. for gradients
        of the output with respect to the activations."""
        if mode not in ("relu", "clip", "quant"):
            raise ConfigError(f"unknown analog mode {mode!r}; choose relu, clip or quant")
        neurons = [m for m in self.graph_module.modules() if isinstance(m, (SpikingNeuron, RunningMaxPool))]
        self.reset()
        try:
            for m in neurons:
                m.analog = mode if isinstance(m, SpikingNeuron) else "pool"
                if isinstance(m, SpikingNeuron):
                    m.quant_timesteps = timesteps or self.config.timesteps
            return self.graph_module(x.to(self.device))
        finally:
            for m in neurons:
                m.analog = None

    def forward(self, x: Tensor, timesteps: int | None = None) -> Any:
        """Same as :meth:`run` (averaged output over ``timesteps`` steps)."""
        return self.run(x, timesteps)

    def extra_repr(self) -> str:
        return f"neurons={len(self.neurons())}, timesteps={self.config.timesteps}, neuron={self.config.neuron}"


def _stack(history: list[Any]) -> Any:
    first = history[0]
    if isinstance(first, Tensor):
        return torch.stack(history)
    if isinstance(first, (tuple, list)):
        return type(first)(_stack([h[i] for h in history]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _stack([h[k] for h in history]) for k in first}
    raise TypeError(f"cannot stack outputs of type {type(first).__name__}")
