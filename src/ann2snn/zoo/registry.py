"""Model registry: ``@register_model(name, ...)`` on a factory, ``create_model(name, pretrained)``."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "WEIGHTS_DIR",
    "ZOO",
    "CheckpointNotFoundError",
    "ZooEntry",
    "create_model",
    "get_entry",
    "list_models",
    "load_metadata",
    "register_model",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
METADATA_FILE = "metadata.json"


class CheckpointNotFoundError(FileNotFoundError):
    """``create_model(name, pretrained=True)`` for a model without a checkpoint on disk."""


@dataclass(frozen=True)
class ZooEntry:
    """One registered model.

    ``factory(**kwargs)`` builds it; ``dataset`` names the entry of :data:`ann2snn.data.DATASETS` it
    was trained on; ``checkpoint`` is a file name in :data:`WEIGHTS_DIR` (``None``: no checkpoint);
    ``train`` holds the :func:`~ann2snn.zoo.training.train_classifier` keyword arguments used to
    produce the checkpoint; ``task`` says what its output is (``classification``, ``segmentation``,
    ``detection``, ``events``: a classifier of event frames; see :mod:`ann2snn.tasks`) and so which
    metric evaluates it.
    """

    name: str
    factory: Callable[..., nn.Module]
    dataset: str
    input_shape: tuple[int, int, int]
    num_classes: int = 10
    checkpoint: str | None = None
    description: str = ""
    train: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"

    @property
    def checkpoint_path(self) -> Path | None:
        return WEIGHTS_DIR / self.checkpoint if self.checkpoint else None

    @property
    def has_checkpoint(self) -> bool:
        p = self.checkpoint_path
        return p is not None and p.is_file()


ZOO: dict[str, ZooEntry] = {}

_DEFAULT = object()


def register_model(
    name: str,
    *,
    dataset: str,
    input_shape: tuple[int, int, int],
    num_classes: int = 10,
    checkpoint: str | None | object = _DEFAULT,
    description: str = "",
    train: dict[str, Any] | None = None,
    task: str = "classification",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model factory under ``name``.

    ``checkpoint`` defaults to ``"<name>.pt"``; pass ``None`` for a model without weights.
    """

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in ZOO:
            raise ValueError(f"model {name!r} is already registered")
        ckpt = f"{name}.pt" if checkpoint is _DEFAULT else checkpoint
        desc = description
        if not desc and factory.__doc__:
            desc = factory.__doc__.strip().splitlines()[0]
        ZOO[name] = ZooEntry(
            name=name,
            factory=factory,
            dataset=dataset,
            input_shape=tuple(input_shape),  # type: ignore[arg-type]
            num_classes=num_classes,
            checkpoint=ckpt,  # type: ignore[arg-type]
            description=desc,
            train=dict(train or {}),
            task=task,
        )
        return factory

    return decorator


def list_models(dataset: str | None = None, pretrained: bool | None = None) -> list[str]:
    """Registered model names, optionally only those for ``dataset`` / with(out) a checkpoint."""
    names = []
    for name, e in ZOO.items():
        if dataset is not None and e.dataset != dataset:
            continue
        if pretrained is not None and e.has_checkpoint != pretrained:
            continue
        names.append(name)
    return sorted(names)


def get_entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(ZOO))}") from None


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered model; with ``pretrained=True`` load its checkpoint and return it in eval mode.

    Checkpoints are plain ``state_dict`` files loaded with ``torch.load(..., weights_only=True)``.
    ``kwargs`` go to the factory (changing the architecture makes the checkpoint fail to load).
    """
    entry = get_entry(name)
    model = entry.factory(**kwargs)
    if not pretrained:
        return model
    path = entry.checkpoint_path
    if path is None or not path.is_file():
        where = f" (expected {path})" if path is not None else ""
        raise CheckpointNotFoundError(
            f"no pretrained checkpoint for {name!r}{where}; train one with: "
            f"python benchmarks/train_zoo.py --models {name}"
        )
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict)
    return model.eval()


def load_metadata() -> dict[str, Any]:
    """Contents of ``weights/metadata.json`` (accuracy, epochs, seed, ... per model), ``{}`` if absent."""
    p = WEIGHTS_DIR / METADATA_FILE
    if not p.is_file():
        return {}
    with p.open() as f:
        return json.load(f)
