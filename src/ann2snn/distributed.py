"""Data-parallel calibration and evaluation on top of :mod:`torch.distributed`.

Launch any script (or the CLI) with ``torchrun --nproc-per-node N``; ann2snn then splits the work
across the N processes and all-reduces what they measured, so that every rank ends with the same
result as one process on the same data:

* maxima -> ``all_reduce(MAX)`` (exact); sums and counts -> ``all_reduce(SUM)`` (exact for counts;
  float sums to rounding); means are reduced as sum / count;
* percentile / MSE samples are drawn with the same random keys as in one process and gathered, so
  every rank holds the very sample one process would;
* LTB takes a gradient step per global batch: each rank holds a slice of the batch and the
  gradient (a mean over rows) is reduced as sum / count before the step.

Conventions: :func:`ann2snn.calibrate` expects the *same* calibration batches on every rank (it
keeps only this rank's slice of each batch); :func:`ann2snn.evaluation.evaluate_classifier` splits
a Dataset / tensor pair by index (each rank reads only its part) and other iterables batch by
batch. Only rank 0 should write files or print (:func:`is_main`).

Outside ``torch.distributed`` (or with one process) every function here is a no-op.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "all_gather_cat", "all_gather_object", "all_reduce_max", "all_reduce_sum", "barrier", "broadcast_object",
    "check_same", "init_from_env", "is_distributed", "is_main", "local_slice", "rank", "shard_range", "shutdown",
    "sum_floats", "world_size",
]


def is_distributed() -> bool:
    """True inside an initialised process group with more than one process."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 when not distributed)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on the process that writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group described by torchrun's environment (``WORLD_SIZE``, ``RANK``, ...).

    Does nothing (returns False) without those variables, with ``WORLD_SIZE=1`` or when a group is
    already initialised. The backend is ``nccl`` where CUDA is available and ``gloo`` otherwise.
    """
    import torch.distributed as dist

    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def shutdown(sync: bool = True) -> None:
    """Leave the process group if this process is in one.

    With ``sync`` (the normal end of a run) every rank first waits for the others, so that no rank tears
    its connections down while a peer is still finishing: gloo can abort the peer (``terminate called
    without an active exception``) otherwise. Pass ``sync=False`` on an error path, where a peer may
    never arrive."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            if sync and dist.get_world_size() > 1:
                dist.barrier()
        finally:  # even when the barrier fails (a peer already gone), leave the group
            dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()


def _comm_device() -> torch.device:
    """Where collectives need their tensors: the current GPU for nccl, the CPU otherwise."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _reduce(t: Tensor, op: str) -> Tensor:
    if not is_distributed():
        return t
    import torch.distributed as dist

    buf = t.detach().to(_comm_device(), copy=True).contiguous()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return buf.to(t.device)


def all_reduce_sum(t: Tensor) -> Tensor:
    """The element-wise sum of ``t`` over all ranks (a new tensor; ``t`` itself is not changed)."""
    return _reduce(t, "sum")


def all_reduce_max(t: Tensor) -> Tensor:
    """The element-wise maximum of ``t`` over all ranks (a new tensor)."""
    return _reduce(t, "max")


def sum_floats(values: Sequence[float]) -> list[float]:
    """Python floats summed over all ranks (one float64 all-reduce)."""
    if not is_distributed():
        return list(values)
    return all_reduce_sum(torch.tensor(list(values), dtype=torch.float64)).tolist()


def all_gather_cat(t: Tensor) -> Tensor:
    """Concatenate every rank's ``t`` along dim 0 in rank order (sizes along dim 0 may differ)."""
    if not is_distributed():
        return t
    import torch.distributed as dist

    dev = _comm_device()
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    top = max(counts)
    padded = torch.zeros((top, *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[: t.shape[0]] = t.detach().to(dev)
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).to(t.device)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` when not distributed."""
    if not is_distributed():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    import torch.distributed as dist

    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard_range(n: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """The contiguous part ``[start, stop)`` of ``n`` items that belongs to a rank.

    Parts differ in size by at most one and, concatenated in rank order, give back all ``n`` in their
    order; nothing is padded or repeated (unlike ``DistributedSampler``), so sums over all ranks are
    sums over the data exactly once.
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def local_slice(x: Tensor) -> Tensor:
    """This rank's contiguous slice of a batch (dim 0); the whole batch when not distributed."""
    if not is_distributed():
        return x
    start, stop = shard_range(x.shape[0])
    return x[start:stop]


def check_same(value: Any, what: str) -> None:
    """Raise on every rank if ranks disagree about ``value`` (e.g. the number of calibration batches)."""
    if not is_distributed():
        return
    values = all_gather_object(pickle.dumps(value))
    if any(v != values[0] for v in values):
        from .errors import CalibrationError

        raise CalibrationError(f"ranks disagree about {what}: every rank must get the same data "
                               f"({[pickle.loads(v) for v in values]})")
