"""The spiking model: a graph of linear ops and stateful neurons, run one timestep at a time.

Memory does not grow with T: each step overwrites the neuron states; only the running output mean
is kept (and, with ``return_all=True``, the running output after every step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.utils._pytree import tree_map

from .config import ConversionConfig
from .errors import ConfigError
from .neurons.modules import RunningMaxPool, SpikingNeuron, StatefulModule, unique_label


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
        self.last_input = x
        out = self.graph_module(x)
        for hook in self.step_hooks:
            hook(self)
        return out

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
        """
        timesteps, t0, encoding = self._check_run_args(x, timesteps, t0, encoding, sequence)
        x = x.to(self.device)
        if encoding == "poisson" and generator is None:
            generator = torch.Generator(device=x.device).manual_seed(self.config.seed)
        self.reset()
        for c in self.counters:
            c.begin(x.shape[1] if sequence else x.shape[0], x.device)
        total = None
        history = [] if return_all else None
        count = 0
        for t in range(timesteps):
            frame = x[t] if sequence else x
            if encoding == "poisson":
                frame = poisson_encode(frame, generator)
            out = self.step(frame)
            if total is None or t == t0:
                total, count = out, 1
            else:
                total = tree_map(torch.add, total, out)
                count += 1
            if return_all:
                history.append(tree_map(lambda s, c=count: s / c, total))
        self.reset()
        self.last_input = None
        mean = tree_map(lambda s: s / count, total)
        if return_all:
            return mean, _stack(history)
        return mean

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
            raise ConfigError(f"timesteps must be a positive integer, got {timesteps!r}")
        if t0 is None:  # the config's delay applies only where the run is longer than it
            t0 = self.config.t0 if self.config.t0 < timesteps else 0
        if isinstance(t0, bool) or not isinstance(t0, int) or t0 < 0 or t0 >= timesteps:
            raise ConfigError(f"t0 must be an integer in [0, timesteps), got t0={t0!r}, timesteps={timesteps}")
        encoding = encoding or self.config.encoding
        if encoding not in ("direct", "poisson"):
            raise ConfigError(f"unknown encoding {encoding!r}; choose direct or poisson")
        return timesteps, t0, encoding

    # -- analog reference ----------------------------------------------------------------------
    @torch.no_grad()
    def analog(self, x: Tensor, mode: str = "relu", timesteps: int | None = None) -> Any:
        """Run the network as an ANN: ``relu`` (the original network, BN folded), ``clip`` (ReLUs
        clipped at the thresholds) or ``quant`` (the quantisation ceiling at ``timesteps``)."""
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
