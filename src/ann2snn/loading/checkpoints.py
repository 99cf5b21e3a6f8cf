"""Checkpoints as people have them: reading a ``state_dict`` from a file and loading it into a model.

A checkpoint file is read with ``torch.load(weights_only=True, map_location=cpu)`` (tensors saved on a
GPU come to the CPU; ``trust_pickle=True`` allows files that pickle Python objects), or with
``safetensors`` for ``.safetensors`` files. What real checkpoints hold is adapted, and said in one line:

* a wrapper dict is unwrapped: ``{"state_dict": ..., "best_prec1": ...}``, ``{"model": ...}``,
  ``{"state_dict_ema": ...}``, ``{"model_ema": ...}`` (the plain weights are preferred to the EMA ones);
* a prefix on every key is stripped: ``module.`` (DataParallel / DistributedDataParallel),
  ``_orig_mod.`` (``torch.compile``), or any other first name whose removal gives exactly the
  model's keys (a training wrapper's attribute, e.g. Lightning's ``model.``);
* what ``model.load_state_dict(strict=True)`` itself accepts is accepted: BatchNorm buffers
  ``num_batches_tracked`` that the module fills in for checkpoints of older PyTorch versions,
  half-precision tensors (copied into the model's dtype).

A real mismatch (missing or unexpected keys, a shape that differs) is refused with one line naming the
keys, as before.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import LoadError

__all__ = ["Checkpoint", "apply_state_dict", "load_checkpoint", "load_state_dict_file", "load_weights"]

log = logging.getLogger("ann2snn")

# keys under which training scripts store the weights, in the order they are preferred
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "module",
                "state_dict_ema", "model_ema", "ema")
# prefixes that wrappers add to every key: DataParallel / DDP, torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class Checkpoint:
    """A ``state_dict`` read from a file, and what was done to get it out."""

    state: dict[str, torch.Tensor]
    source: str
    notes: list[str] = field(default_factory=list)
    metadata: Mapping | None = None  # the state_dict's ``_metadata`` (module versions), when saved


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_state_dict_file(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The ``state_dict`` in a checkpoint file (unwrapped; keys as saved). See :func:`load_checkpoint`."""
    return load_checkpoint(path, trust_pickle=trust_pickle).state


def load_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> Checkpoint:
    """Read the ``state_dict`` in a checkpoint file: a ``torch.save`` file or a ``.safetensors`` file.

    Tensors come to the CPU whatever device they were saved from. A wrapper dict
    (``{"state_dict": ..., "epoch": ...}``) is unwrapped. ``torch.load`` runs with
    ``weights_only=True`` unless ``trust_pickle`` (unpickling can run code from the file).
    """
    p = Path(path)
    if not p.exists():
        raise LoadError(f"checkpoint not found: {p}")
    if not p.is_file():
        raise LoadError(f"checkpoint {p} is not a file")
    notes: list[str] = []
    if p.suffix.lower() == ".safetensors" or (_looks_like_safetensors(p) and not _is_zip(p)):
        obj = _read_safetensors(p)
    else:
        devices: Counter[str] = Counter()

        def to_cpu(storage, location):
            devices[str(location)] += 1
            return storage

        try:
            obj = torch.load(p, map_location=to_cpu, weights_only=not trust_pickle)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds for bad files
            if _holds_objects(exc):
                raise LoadError(
                    f"checkpoint {p} is not a plain state_dict (it holds pickled Python objects); save "
                    f"model.state_dict() instead, or pass --trust-pickle (trust_pickle=True) if you trust the file"
                ) from exc
            raise LoadError(f"cannot read checkpoint {p}: corrupt or not a PyTorch file ({_torch_error(exc)})") \
                from exc
        moved = sorted(d for d in devices if not d.startswith("cpu"))
        if moved:
            notes.append(f"mapped tensors saved on {', '.join(moved)} to the CPU")
    obj, path_taken = _unwrap(obj, trust_pickle)
    if path_taken:
        notes.insert(0, "unwrapped " + " -> ".join(repr(k) for k in path_taken))
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        raise LoadError(f"checkpoint {p} does not hold a state_dict (a mapping of parameter names to tensors)"
                        + _what_it_holds(obj))
    return Checkpoint(dict(obj), str(p), notes, getattr(obj, "_metadata", None))


def _is_zip(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _looks_like_safetensors(p: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
    with open(p, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= p.stat().st_size - 8


def _read_safetensors(p: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise LoadError(f"reading {p} needs the 'safetensors' package: pip install safetensors") from None
    try:
        return load_file(str(p), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises SafetensorError and others
        raise LoadError(f"cannot read checkpoint {p}: corrupt safetensors file ({_first_line(exc)})") from exc


def _unwrap(obj, trusted: bool) -> tuple[object, list[str]]:
    taken: list[str] = []
    for _ in range(3):
        if isinstance(obj, nn.Module) and trusted:  # a pickled model (only readable when trusted)
            return obj.state_dict(), [*taken, "(module).state_dict()"]
        if not isinstance(obj, Mapping) or _is_state_dict(obj):
            break
        key = next((k for k in WRAPPER_KEYS if k in obj and (
            isinstance(obj[k], Mapping) or (trusted and isinstance(obj[k], nn.Module)))), None)
        if key is None:
            break
        obj = obj[key]
        taken.append(key)
    return obj, taken


def _what_it_holds(obj) -> str:
    if isinstance(obj, Mapping) and obj:
        keys = [str(k) for k in list(obj)[:6]]
        return f"; it holds keys {', '.join(keys)}{', ...' if len(obj) > 6 else ''}"
    return f"; it holds a {type(obj).__name__}"


def _holds_objects(exc: BaseException) -> bool:
    """A weights-only load refused a file because it pickles classes (e.g. a whole nn.Module)."""
    return "Unsupported global" in str(exc)


def _torch_error(exc: BaseException) -> str:
    """The informative line of a torch.load error (its first lines are generic advice)."""
    text = str(exc)
    for line in text.splitlines():
        if "WeightsUnpickler error:" in line and line.split("WeightsUnpickler error:", 1)[1].strip():
            return line.split("WeightsUnpickler error:", 1)[1].strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "Weights only load failed" in text and len(lines) > 2:
        tail = [ln for ln in lines if not ln.startswith(("Weights only", "Please file", "Check the doc", "In PyTorch"))]
        if tail:
            return tail[0]
    return lines[0] if lines else type(exc).__name__


def _is_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


# -- matching a state_dict to a model --------------------------------------------------------------

def _strip(state: dict, metadata: Mapping | None, prefix: str) -> tuple[dict, Mapping | None]:
    n = len(prefix)
    out = {k[n:]: v for k, v in state.items()}
    if metadata is not None:  # module versions, which decide what load_state_dict fills in
        meta = type(metadata)()
        for k, v in metadata.items():
            if k.startswith(prefix):
                meta[k[n:]] = v
            elif k + "." == prefix:
                meta[""] = v
            elif k and not k.startswith(prefix):
                meta[k] = v
        metadata = meta
    return out, metadata


def _fillable(model: nn.Module) -> set[str]:
    """Buffers a module may fill in itself when a checkpoint lacks them (BatchNorm's step counter)."""
    return {k for k in model.state_dict() if k.rsplit(".", 1)[-1] == "num_batches_tracked"}


def _adapt_keys(state: dict, metadata: Mapping | None, model: nn.Module) -> tuple[dict, Mapping | None, list[str]]:
    own = set(model.state_dict())
    notes: list[str] = []
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state) and not all(k.startswith(prefix) for k in own):
                state, metadata = _strip(state, metadata, prefix)
                notes.append(f"stripped {prefix!r} from {len(state)} keys")
                changed = True
    if state and set(state) != own:
        heads = {k.split(".", 1)[0] for k in state}
        if len(heads) == 1 and all("." in k for k in state):
            prefix = heads.pop() + "."
            stripped = {k[len(prefix):] for k in state}
            if stripped <= own and own - stripped <= _fillable(model):
                state, metadata = _strip(state, metadata, prefix)
                notes.append(f"stripped {prefix!r} from {len(state)} keys")
    return state, metadata, notes


def apply_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor] | Checkpoint, source: str | None = None,
                     model_name: str = "the model") -> list[str]:
    """Load ``state`` into ``model`` as ``load_state_dict(strict=True)`` would, after adapting its keys.

    Returns what was adapted (one phrase each; empty when the checkpoint matched as it was). Missing or
    unexpected keys and shape mismatches raise :class:`LoadError` naming them.
    """
    if isinstance(state, Checkpoint):
        notes, metadata, source = list(state.notes), state.metadata, source or state.source
        state = state.state
    else:
        notes, metadata = [], getattr(state, "_metadata", None)
    source = source or "state_dict"
    state, metadata, key_notes = _adapt_keys(dict(state), metadata, model)
    notes += key_notes
    own = model.state_dict()
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    trial: dict = {k: v for k, v in state.items() if k not in shapes}
    if metadata is not None:
        trial = _with_metadata(trial, metadata)
    try:  # non-strict: the module hooks fill in what they may; what is still missing is a mismatch
        result = model.load_state_dict(trial, strict=False)
    except RuntimeError as exc:
        raise LoadError(f"checkpoint {source} does not match model {model_name}: {_first_line(exc)}") from exc
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) ({_few(unexpected)})")
        if shapes:
            shown = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shapes]
            parts.append(f"{len(shapes)} shape mismatch(es) ({_few(shown)}; checkpoint vs model)")
        after = f" (after {', '.join(key_notes)})" if key_notes else ""
        raise LoadError(f"checkpoint {source} does not match model {model_name}: {'; '.join(parts)}{after}")
    filled = [k for k in own if k not in state]
    if filled:
        names = sorted({k.rsplit(".", 1)[-1] for k in filled})
        notes.append(f"filled {len(filled)} missing {'/'.join(repr(n) for n in names)} buffer(s) as load_state_dict does")
    casts = Counter(f"{state[k].dtype} -> {own[k].dtype}".replace("torch.", "") for k in own
                    if k in state and state[k].dtype != own[k].dtype and state[k].is_floating_point())
    for what, n in casts.items():
        notes.append(f"cast {n} tensor(s) {what}")
    return notes


class _MetaDict(dict):
    """A dict that carries a ``_metadata`` attribute, as ``state_dict()`` returns."""


def _with_metadata(state: dict, metadata: Mapping) -> dict:
    out = _MetaDict(state)
    out._metadata = metadata  # type: ignore[attr-defined]
    return out


def _few(items: list[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... {len(items) - n} more" if len(items) > n else "")


def adaptation_line(notes: list[str]) -> str | None:
    """``weights: unwrapped 'state_dict', stripped 'module.' from 120 keys`` (None when nothing was adapted)."""
    return "weights: " + ", ".join(notes) if notes else None


def load_weights(model: nn.Module, path: str | os.PathLike, *, trust_pickle: bool = False,
                 model_name: str | None = None) -> str | None:
    """Load the checkpoint file ``path`` into ``model`` (a ``state_dict`` as people have them).

    Returns the one line that says what was adapted (also logged on the ``ann2snn`` logger), or
    None when the file matched as it was. Raises :class:`LoadError` for a real mismatch.
    """
    ckpt = load_checkpoint(path, trust_pickle=trust_pickle)
    line = adaptation_line(apply_state_dict(model, ckpt, str(path), model_name or type(model).__name__))
    if line:
        log.info("%s", line)
    return line
