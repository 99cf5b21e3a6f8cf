"""Threshold observers: modules that sit where the ReLUs were during calibration.

Each observer sees the pre-activation ``z`` of its site, gathers what its method needs, and passes on
``relu(z)`` (or, for LTB in ``clip`` mode, ``clip(z, 0, lambda)``). ``finalize()`` returns the clipping
value lambda per channel (or one per layer); the neuron threshold is ``lambda / burst cap``.

Under ``torch.distributed`` each rank observes its slice of every batch (see :mod:`ann2snn.distributed`):
maxima are all-reduced, the LTB gradient is a mean over the whole batch (sum / count reduced over
ranks before each step), and the percentile / MSE sample is drawn with the keys one process would
draw and gathered, so every rank finalises the single-process result.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import distributed as D
from ..neurons.modules import broadcast_channel

MSE_STEPS = 95  # lambda = max * (1 - 0.01 i), i = 0..94 [Calib]


def channels_last_2d(x: Tensor, per_channel: bool) -> Tensor:
    """``[B, C, ...]`` -> ``[N, C]`` (per channel) or ``[N, 1]`` (per layer)."""
    if not per_channel or x.ndim < 2:
        return x.reshape(-1, 1)
    return x.movedim(1, -1).reshape(-1, x.shape[1])


class ThresholdObserver(nn.Module):
    """Collects activation statistics at one neuron site and computes its clipping value.

    Args:
        name: the graph node it stands for.
        method: ``max``, ``percentile``, ``mse``, ``ltb`` or ``auto`` (both LTB and the MSE search are
            computed; ``candidates`` holds each, ``result`` the LTB one until a choice is made by
            simulating the spiking network, see :mod:`ann2snn.adaptation.thresholds`).
        per_channel: one value per channel (dim 1) or one per layer.
        clip: the activation's own upper bound (ReLU6: 6.0), or ``None``.
        percentile, timesteps, burst_cap, v0, ltb_lr, ltb_forward, sample_size, seed: method parameters.
        signed: the site of a bipolar neuron (a value with no ReLU): the statistics are those of
            ``|z|`` and the forward pass is the identity.
    """

    def __init__(
        self,
        name: str,
        method: str,
        per_channel: bool = True,
        clip: float | None = None,
        *,
        percentile: float = 99.99,
        timesteps: int = 32,
        burst_cap: int = 1,
        v0: float = 0.5,
        ltb_lr: float = 1.0,
        ltb_forward: str = "relu",
        sample_size: int = 20000,
        seed: int = 0,
        signed: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        self.signed = signed
        self.method = method
        self.per_channel = per_channel
        self.clip = clip
        self.percentile = percentile
        self.timesteps = timesteps
        self.burst_cap = burst_cap
        self.v0 = v0
        self.ltb_lr = ltb_lr
        self.ltb_forward = ltb_forward
        self.sample_size = sample_size
        self.generator = torch.Generator().manual_seed(seed)
        self.collecting = True
        self.ghost = False  # distributed: this rank has no rows of the batch but joins the reductions
        self.batches = 0
        self.max: Tensor | None = None
        self.ltb: Tensor | None = None
        self.ltb_history: list[Tensor] = []
        self.sample: Tensor | None = None
        self.sample_keys: Tensor | None = None
        self.rows_seen = 0
        self.result: Tensor | None = None
        self.candidates: dict[str, Tensor] | None = None  # ``auto``: the clipping value of each method
        # ``auto`` runs as many batches as the longer of its two methods needs: the calibration loop
        # switches LTB's steps off after ``ltb_iters`` batches and the MSE sample off after one pass
        self.ltb_active = True
        self.sample_active = True

    def extra_repr(self) -> str:
        signed = ", signed" if self.signed else ""
        return f"{self.method}, per_channel={self.per_channel}, clip={self.clip}{signed}, name={self.name!r}"

    @torch.no_grad()
    def forward(self, z: Tensor) -> Tensor:
        if self.collecting:
            self._observe(z.abs() if self.signed else z)
        if self.signed:  # the value it observes has no ReLU: it passes unchanged (LTB's clip: symmetric)
            if self.collecting and self.method in ("ltb", "auto") and self.ltb_forward == "clip" and self.ltb is not None:
                bound = broadcast_channel(self.ltb, z.ndim).to(z.dtype)
                return torch.clamp(z, -bound, bound)
            return z
        out = torch.relu(z)
        if self.clip is not None:
            out = out.clamp(max=self.clip)
        if self.collecting and self.method in ("ltb", "auto") and self.ltb_forward == "clip" and self.ltb is not None:
            out = torch.minimum(out, broadcast_channel(self.ltb, z.ndim).to(z.dtype))
        return out

    def _observe(self, z: Tensor) -> None:
        rows = channels_last_2d(z.detach(), self.per_channel).float()
        if self.ghost:
            rows = rows[:0]
        if self.clip is not None:
            rows = rows.clamp(max=self.clip)
        # a rank's slice of a small batch can be empty: it still takes part in the reductions
        batch_max = rows.amax(dim=0).clamp(min=0.0) if rows.shape[0] else rows.new_zeros(rows.shape[1])
        self.max = batch_max if self.max is None else torch.maximum(self.max, batch_max)
        self.batches += 1
        if self.method == "ltb":
            self._ltb_step(rows)
        elif self.method in ("percentile", "mse"):
            self._reservoir(rows)
        elif self.method == "auto":
            if self.ltb_active:
                self._ltb_step(rows)
            if self.sample_active:
                self._reservoir(rows)

    def _ltb_step(self, rows: Tensor) -> None:
        """One step of gradient descent on ||clip(x, 0, lambda) - relu(x)||^2 with respect to lambda."""
        lam = torch.zeros(rows.shape[1], device=rows.device) if self.ltb is None else self.ltb
        excess = (rows - lam).clamp(min=0.0)  # (x - lambda) * [x > lambda]
        if D.is_distributed():  # the mean over the whole batch, whose rows are spread over the ranks
            total = D.all_reduce_sum(torch.cat([excess.sum(dim=0), excess.new_tensor([excess.shape[0]])]))
            grad = total[:-1] / total[-1]
        else:
            grad = excess.mean(dim=0)
        lam = lam + self.ltb_lr * 2.0 * grad
        self.ltb = lam
        self.ltb_history.append(lam.detach().clone())

    def _reservoir(self, rows: Tensor) -> None:
        """Keep a uniform random sample of at most ``sample_size`` rows over everything seen.

        Each row gets a random key and the rows with the smallest keys are kept. Distributed, every
        rank draws the keys of the whole batch (same generator, same seed) and takes those of its
        own rows, so the union of the ranks' samples holds the single-process sample.
        """
        if D.is_distributed():
            mine = torch.zeros(D.world_size(), dtype=torch.long)
            mine[D.rank()] = rows.shape[0]
            counts = D.all_reduce_sum(mine).tolist()
            start, total = sum(counts[:D.rank()]), sum(counts)
        else:
            start, total = 0, rows.shape[0]
        uniform = torch.rand(total, generator=self.generator)[start:start + rows.shape[0]]
        # integer keys: the 24 random bits of a float32 uniform, ties broken by the row's global
        # index, so that the kept set and its order never depend on how the rows were split
        index = torch.arange(self.rows_seen + start, self.rows_seen + start + rows.shape[0])
        keys = ((uniform * (1 << 24)).long() << 39 | index).to(rows.device)
        self.rows_seen += total
        if self.sample is not None:
            rows = torch.cat([self.sample, rows])
            keys = torch.cat([self.sample_keys, keys])
        if rows.shape[0] > self.sample_size:
            keep = torch.topk(keys, self.sample_size, largest=False).indices
            rows, keys = rows[keep], keys[keep]
        self.sample, self.sample_keys = rows, keys

    @torch.no_grad()
    def finalize(self) -> Tensor:
        """The clipping value lambda (``[C]`` or ``[1]``); observation stops."""
        if self.max is None:
            raise RuntimeError(f"observer {self.name!r} saw no data")
        if D.is_distributed():
            self.max = D.all_reduce_max(self.max)
            if self.sample is not None:
                self.sample, self.sample_keys = D.all_gather_cat(self.sample), D.all_gather_cat(self.sample_keys)
        if self.sample is not None:
            # the sample in key order: the same rows in the same order however the data was split
            order = torch.argsort(self.sample_keys)[: self.sample_size]  # keys are unique
            self.sample, self.sample_keys = self.sample[order], self.sample_keys[order]
        if self.method == "auto":
            self.candidates = {"ltb": self._bounded(self.ltb), "mse": self._bounded(self._mse_search())}
            lam = self.candidates["ltb"]
        elif self.method == "max":
            lam = self._bounded(self.max)
        elif self.method == "ltb":
            lam = self._bounded(self.ltb)
        elif self.method == "percentile":
            lam = self._bounded(self._percentile())
        else:
            lam = self._bounded(self._mse_search())
        self.result = lam.detach().clone()
        self.collecting = False
        self.sample = self.sample_keys = None
        return self.result

    def _bounded(self, lam: Tensor) -> Tensor:
        lam = torch.minimum(lam.clamp(min=0.0), self.max)  # never above anything observed
        if self.clip is not None:
            lam = lam.clamp(max=self.clip)
        return lam.detach().clone()

    def _percentile(self) -> Tensor:
        values = self.sample.clone()
        values[values <= 0] = float("nan")
        # torch's quantile refuses inputs above 2**24 elements: go through the channels in chunks
        step = max(1, (1 << 24) // max(1, values.shape[0]))
        q = torch.cat([torch.nanquantile(values[:, i:i + step], self.percentile / 100.0, dim=0)
                       for i in range(0, values.shape[1], step)])
        return torch.nan_to_num(q, nan=0.0)

    def _mse_search(self) -> Tensor:
        values = self.sample.clamp(min=0.0)
        best_err = torch.full_like(self.max, float("inf"))
        best = self.max.clone()
        m, steps = self.burst_cap, self.timesteps
        scaled = values * steps  # the first op of neurons.functional.quantize, the same for every candidate
        work = torch.empty_like(values)
        for i in range(MSE_STEPS):
            lam = self.max * (1.0 - 0.01 * i)
            theta = (lam / m).clamp(min=1e-12)
            # (quantize(values, theta, T, v0, m) - values) ** 2: its ops in its order, in place
            torch.div(scaled, theta, out=work)
            work.add_(self.v0).floor_().clamp_(0.0, float(m * steps)).mul_(theta).div_(steps)
            err = work.sub_(values).pow_(2).mean(dim=0)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, lam, best)
        return best
