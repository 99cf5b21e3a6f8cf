"""A small, deterministic classifier training loop (CPU-friendly, no DataLoader workers)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = ["augment_batch", "evaluate_accuracy", "train_classifier"]

AUGMENTS = ("none", "flip", "crop", "crop+flip")


@contextlib.contextmanager
def _num_threads(n: int | None):
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _tensors(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    if isinstance(ds, TensorDataset) and len(ds.tensors) >= 2:
        return ds.tensors[0], ds.tensors[1]
    return None


def _batches(ds: Dataset, batch_size: int, shuffle: bool = False,
             generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    t = _tensors(ds)
    if t is not None:
        x, y = t
        n = x.shape[0]
        order = torch.randperm(n, generator=generator) if shuffle else None
        for i in range(0, n, batch_size):
            if order is None:
                yield x[i : i + batch_size], y[i : i + batch_size]
            else:
                idx = order[i : i + batch_size]
                yield x[idx], y[idx]
    else:
        yield from DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator)


def augment_batch(x: torch.Tensor, mode: str, generator: torch.Generator | None = None,
                  pad: int = 2, pad_value: float = 0.0) -> torch.Tensor:
    """Per-sample random horizontal flip and/or random translation by up to ``pad`` pixels.

    ``mode`` is one of ``"none"``, ``"flip"``, ``"crop"``, ``"crop+flip"``. Random numbers are drawn
    on the CPU from ``generator`` (so results do not depend on the device) and moved to ``x``.
    """
    if mode not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {mode!r}")
    if mode == "none":
        return x
    b, _, h, w = x.shape
    if "crop" in mode and pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad), value=pad_value)
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
        rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, :, None]  # B,H,1
        cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, :]  # B,1,W
        bidx = torch.arange(b, device=x.device)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[bidx, rows, cols].permute(0, 3, 1, 2)  # B,H,W,C -> B,C,H,W
    if "flip" in mode:
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    # Row-major strides even for C == 1 (otherwise convs may switch to channels-last).
    return x.clone(memory_format=torch.contiguous_format)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, ds: Dataset, batch_size: int = 512,
                      device: torch.device | str | None = None) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` in eval mode; restores the previous mode."""
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in _batches(ds, batch_size):
            x, y = x.to(device), y.to(device)
            correct += (model(x).argmax(1) == y).sum().item()
            total += y.numel()
    finally:
        model.train(was_training)
    return correct / max(total, 1)


def train_classifier(
    model: nn.Module,
    train_ds: Dataset,
    test_ds: Dataset | None = None,
    epochs: int = 10,
    lr: float | None = None,
    batch_size: int = 128,
    seed: int = 0,
    augment: str | bool = "none",
    optimizer: str = "sgd",
    schedule: str = "onecycle",
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.0,
    num_threads: int | None = None,
    channels_last: bool = False,
    device: torch.device | str | None = None,
    log: Callable[[str], None] | None = None,
) -> float:
    """Train ``model`` in place with cross-entropy and return its test accuracy (fraction).

    * ``optimizer``: ``"sgd"`` (Nesterov momentum 0.9, default lr 0.05) or ``"adam"`` (AdamW,
      default lr 3e-3).
    * ``schedule``: ``"onecycle"`` (per step), ``"cosine"`` (per step, no warm-up) or ``"constant"``.
    * ``augment``: ``"none"``, ``"flip"``, ``"crop"`` (random shifts up to 2 px), ``"crop+flip"``;
      ``True`` means ``"crop+flip"``. Crop padding uses the training set's minimum value (the
      background of normalised images).
    * Shuffling, augmentation and dropout are seeded by ``seed``; on the CPU with a fixed
      ``num_threads`` the run is reproducible.
    * ``num_threads`` sets ``torch.set_num_threads`` for the duration of the call (restored after).

    If ``test_ds`` is ``None`` the training accuracy is returned. The model is left in eval mode.
    """
    if augment is True:
        augment = "crop+flip"
    elif augment is False or augment is None:
        augment = "none"
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    optimizer = optimizer.lower()
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    if lr is None:
        lr = 0.05 if optimizer == "sgd" else 3e-3
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    with _num_threads(num_threads):
        torch.manual_seed(seed)  # dropout
        gen = torch.Generator().manual_seed(seed)  # shuffling and augmentation
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        pad_value = 0.0
        t = _tensors(train_ds)
        if "crop" in augment and t is not None:
            pad_value = float(t[0].min())

        params_decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
        params_no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
        groups = [{"params": params_decay, "weight_decay": weight_decay},
                  {"params": params_no_decay, "weight_decay": 0.0}]
        if optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
        else:
            opt = torch.optim.AdamW(groups, lr=lr)
        steps_per_epoch = math.ceil(len(train_ds) / batch_size)  # type: ignore[arg-type]
        total_steps = epochs * steps_per_epoch
        if schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps,
                                                        pct_start=0.25)
        elif schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
        elif schedule == "constant":
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        else:
            raise ValueError(f"schedule must be 'onecycle', 'cosine' or 'constant', got {schedule!r}")

        for epoch in range(epochs):
            model.train()
            t0 = time.perf_counter()
            loss_sum = 0.0
            seen = 0
            for x, y in _batches(train_ds, batch_size, shuffle=True, generator=gen):
                x = augment_batch(x, augment, gen, pad_value=pad_value)
                x = x.to(device, memory_format=memory_format)
                y = y.to(device)
                loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.item() * y.numel()
                seen += y.numel()
            if log is not None:
                msg = f"epoch {epoch + 1}/{epochs} loss {loss_sum / max(seen, 1):.4f} ({time.perf_counter() - t0:.1f}s)"
                if test_ds is not None and (epoch + 1 == epochs or len(test_ds) <= 5000):  # type: ignore[arg-type]
                    msg += f" test acc {evaluate_accuracy(model, test_ds, device=device):.4f}"
                log(msg)

        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        model.eval()
        return evaluate_accuracy(model, test_ds if test_ds is not None else train_ds, device=device)
