"""Small helpers shared by the pipeline: reading calibration batches, progress bars, devices."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from . import distributed as D
from .errors import CalibrationError


def iter_inputs(data: Any) -> Iterator[Tensor]:
    """Inputs from a tensor, or an iterable of tensors or of ``(input, target, ...)`` pairs."""
    if isinstance(data, Tensor):
        yield data
        return
    if not isinstance(data, Iterable):
        raise CalibrationError(f"calibration data must be a tensor or an iterable of batches, got {type(data).__name__}")
    for item in data:
        if isinstance(item, (tuple, list)):
            if not item:
                raise CalibrationError("a calibration batch is an empty tuple")
            item = item[0]
        elif isinstance(item, dict):
            raise CalibrationError("calibration batches that are dicts are not supported; give tensors or (x, y) pairs")
        if not isinstance(item, Tensor):
            raise CalibrationError(f"a calibration batch must be a tensor, got {type(item).__name__}")
        yield item


def device_of(module: nn.Module) -> torch.device:
    """The device of the first parameter or buffer of ``module`` (CPU when it has none)."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        return t.device
    return torch.device("cpu")


def progress(iterable: Iterable, total: int | None, desc: str, enabled: bool | None) -> Iterable:
    """A tqdm bar, shown only on a terminal unless forced on or off, and only by rank 0."""
    if not D.is_main():
        return iterable
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
