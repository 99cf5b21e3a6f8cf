"""Loading models, checkpoints and datasets from names and paths (what the ``ann2snn`` CLI accepts).

A MODEL is one of

* a zoo name (``vgg_digits``): the registered architecture with its bundled checkpoint, or with
  ``weights`` a ``state_dict`` file of your own;
* ``package.module:factory``: your code is imported and ``factory()`` builds the model; ``weights``
  (a ``state_dict`` file) is loaded into it with ``torch.load(weights_only=True)`` and strict key
  matching;
* an ONNX file (``model.onnx``, from PyTorch or Keras): read by :mod:`ann2snn.export.onnx` (needs the
  ``onnx`` package);
* a file holding a whole pickled ``nn.Module`` (``torch.save(model, path)``). Unpickling runs code
  from the file, so it is refused unless ``trust_pickle=True``.

DATA is a bundled dataset name (``digits``, ``mnist``, ``fashion-mnist``), a ``.npz`` file with
``x``/``y`` arrays, or a folder with one sub-folder of images per class (see
:func:`ann2snn.data.get_dataset`).

Every failure raises :class:`LoadError` (a :class:`~ann2snn.errors.ConversionError`) with a one-line
message that names the file and says what to do.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConversionError

__all__ = ["LoadError", "LoadedModel", "bundled_input_shape", "check_data_fits", "load_data", "load_model", "load_state_dict_file"]

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


class LoadError(ConversionError):
    """A model, checkpoint or dataset could not be loaded (missing, corrupt or not matching)."""


@dataclass
class LoadedModel:
    """A model ready for conversion and how it was obtained."""

    module: nn.Module
    name: str
    kind: str  # "zoo" | "factory" | "pickle" | "onnx"
    weights: str | None = None
    input_shape: tuple[int, ...] | None = None
    dataset: str | None = None
    num_classes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"

    def describe(self) -> dict[str, Any]:
        """What goes into ``snn.info["source"]``."""
        return {"model": self.name, "model_kind": self.kind, "weights": self.weights,
                "model_dataset": self.dataset, "input_shape": list(self.input_shape) if self.input_shape else None,
                "task": self.task}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- checkpoints -----------------------------------------------------------------------------------

def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``state_dict`` with ``torch.load(weights_only=True)``; unwraps ``{"state_dict": ...}``."""
    p = Path(path)
    if not p.exists():
        raise LoadError(f"checkpoint not found: {p}")
    if not p.is_file():
        raise LoadError(f"checkpoint {p} is not a file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for bad files
        if _holds_objects(exc):
            raise LoadError(
                f"checkpoint {p} is not a plain state_dict (it holds pickled Python objects); save "
                f"model.state_dict() instead, or pass the file as MODEL with --trust-pickle if you trust it"
            ) from exc
        raise LoadError(f"cannot read checkpoint {p}: corrupt or not a PyTorch file ({_torch_error(exc)})") from exc
    for _ in range(2):
        if isinstance(obj, Mapping) and not _is_state_dict(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is not None:
                obj = inner
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        raise LoadError(f"checkpoint {p} does not hold a state_dict (a mapping of parameter names to tensors)")
    return dict(obj)


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


def apply_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, model_name: str) -> None:
    """Strict ``load_state_dict`` with a one-line account of every mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) ({_few(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) ({_few(shapes)}; checkpoint vs model)")
        raise LoadError(f"checkpoint {source} does not match model {model_name}: {'; '.join(parts)}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LoadError(f"checkpoint {source} does not match model {model_name}: {_first_line(exc)}") from exc


def _few(items: list[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... {len(items) - n} more" if len(items) > n else "")


# -- models ----------------------------------------------------------------------------------------

def load_model(spec: str, weights: str | os.PathLike | None = None, *, trust_pickle: bool = False,
               allow_untrained: bool = False) -> LoadedModel:
    """Build the model named by ``spec`` (zoo name, ``module:factory`` or pickled-module file).

    ``allow_untrained``: a zoo model without a checkpoint comes with its initial weights (enough to
    inspect its graph) instead of raising.
    """
    from . import zoo

    spec = str(spec).strip()
    if not spec:
        raise LoadError("empty model name")
    if spec in zoo.ZOO:
        return _zoo_model(spec, weights, allow_untrained)
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".onnx":
        return _onnx_model(path, weights)
    looks_like_file = path.suffix.lower() in (".pt", ".pth", ".pkl", ".ckpt", ".bin") or os.sep in spec
    if ":" in spec and not path.exists() and not looks_like_file:
        return _factory_model(spec, weights)
    if path.exists() or looks_like_file:
        return _pickled_model(path, weights, trust_pickle)
    raise LoadError(
        f"unknown model {spec!r}: give a zoo name ({', '.join(sorted(zoo.ZOO)) or 'none registered'}), "
        f"'package.module:factory', or a pickled model file with --trust-pickle"
    )


def _zoo_model(name: str, weights: str | os.PathLike | None, allow_untrained: bool = False) -> LoadedModel:
    from . import zoo

    entry = zoo.get_entry(name)
    if weights is not None:
        model = entry.factory()
        apply_state_dict(model, load_state_dict_file(weights), str(weights), name)
        used = str(weights)
    elif allow_untrained and not entry.has_checkpoint:
        model, used = entry.factory(), None
    else:
        if not entry.has_checkpoint:
            where = entry.checkpoint_path or "(none registered)"
            raise LoadError(
                f"zoo model {name!r} has no pretrained checkpoint (expected {where}); train it with "
                f"'python benchmarks/train_zoo.py --models {name}' or pass --weights FILE"
            )
        model = entry.factory()
        apply_state_dict(model, load_state_dict_file(entry.checkpoint_path), str(entry.checkpoint_path), name)
        used = f"zoo:{entry.checkpoint}"
    model.eval()
    return LoadedModel(model, name, "zoo", used, tuple(entry.input_shape), entry.dataset, entry.num_classes,
                       task=entry.task)


def _onnx_model(path: Path, weights: str | os.PathLike | None) -> LoadedModel:
    """An ONNX file, read by ann2snn's own ONNX reader (needs the ``onnx`` package)."""
    from .export.onnx import load_onnx

    if weights is not None:
        raise LoadError(f"{path} is an ONNX model, which holds its weights: drop --weights")
    module, shape, notes = load_onnx(path)
    return LoadedModel(module, str(path), "onnx", None, shape, extra={"notes": notes} if notes else {})


def _factory_model(spec: str, weights: str | os.PathLike | None) -> LoadedModel:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise LoadError(f"model {spec!r}: expected 'package.module:factory'")
    cwd = os.getcwd()
    if cwd not in sys.path:  # let `ann2snn convert --model mymodels:build` find ./mymodels.py
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LoadError(f"cannot import module {module_name!r} for model {spec!r}: {_first_line(exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - user code may raise anything at import
        raise LoadError(f"importing {module_name!r} failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise LoadError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        model = obj
    elif callable(obj):
        try:
            model = obj()
        except Exception as exc:  # noqa: BLE001
            raise LoadError(f"{spec}() failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    else:
        raise LoadError(f"{spec} is neither a model nor a callable that builds one")
    if not isinstance(model, nn.Module):
        raise LoadError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        apply_state_dict(model, load_state_dict_file(weights), str(weights), spec)
    model.eval()
    return LoadedModel(model, spec, "factory", str(weights) if weights is not None else None)


def _pickled_model(path: Path, weights: str | os.PathLike | None, trust_pickle: bool) -> LoadedModel:
    if not path.is_file():
        raise LoadError(f"model file not found: {path}")
    if not trust_pickle:
        try:  # a weights-only read is safe: say what the file is if it is a plain checkpoint
            probe = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001
            probe = None
        if isinstance(probe, Mapping):
            raise LoadError(
                f"{path} is a state_dict (weights only), not a model: give the architecture as MODEL "
                f"(a zoo name or 'package.module:factory') and this file as --weights")
        raise LoadError(
            f"{path} would be unpickled, which can run arbitrary code: pass --trust-pickle if you trust "
            f"the file, or give 'package.module:factory' with --weights STATE_DICT"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise LoadError(f"cannot read model file {path}: {type(exc).__name__}: {_first_line(exc)}") from exc
    if not isinstance(obj, nn.Module):
        hint = " (it looks like a state_dict: give the architecture as MODEL and this file as --weights)" \
            if isinstance(obj, Mapping) else ""
        raise LoadError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module{hint}")
    if weights is not None:
        apply_state_dict(obj, load_state_dict_file(weights), str(weights), str(path))
    obj.eval()
    return LoadedModel(obj, str(path), "pickle", str(weights) if weights is not None else None)


# -- data ------------------------------------------------------------------------------------------

def bundled_input_shape(spec: str) -> tuple[int, ...] | None:
    """The input shape of a bundled dataset name (without loading it), else None."""
    from .data import DATASETS

    key = {"fmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}.get(
        str(spec).lower(), str(spec).lower())
    info = DATASETS.get(key)
    return tuple(info.input_shape) if info is not None else None


def load_data(spec: str, split: str, *, input_shape: tuple[int, ...] | None = None,
              mean: float | list[float] | None = None, std: float | list[float] | None = None):
    """A dataset (an :class:`~ann2snn.data.ArrayDataset`) from a bundled name, a ``.npz`` or a folder.

    For image folders, ``input_shape`` (C, H, W) resizes the images and picks grayscale or RGB.
    ``mean`` / ``std`` normalise ``.npz`` and folder data (bundled datasets come normalised).
    Raises :class:`LoadError` for missing, corrupt, empty or non-finite data.
    """
    from .data import DATASETS, get_dataset

    spec = str(spec)
    kwargs: dict[str, Any] = {}
    bundled = spec.lower() in DATASETS or spec.lower() in ("fmnist", "fashion_mnist", "fashionmnist")
    path = Path(spec).expanduser()
    if not bundled:
        if not path.exists():
            if path.suffix.lower() == ".npz" or os.sep in spec:
                raise LoadError(f"data not found: {path}")
            raise LoadError(
                f"unknown dataset {spec!r}: give one of {', '.join(sorted(DATASETS))}, a .npz file with x/y "
                f"arrays, or a folder of images per class")
        if mean is not None or std is not None:
            if mean is None or std is None:
                raise LoadError("give both --mean and --std, or neither")
            kwargs.update(mean=mean, std=std)
        if path.is_dir() and input_shape is not None and len(input_shape) == 3:
            kwargs.update(size=(int(input_shape[1]), int(input_shape[2])), grayscale=int(input_shape[0]) == 1)
    try:
        ds = get_dataset(spec, split=split, **kwargs)
    except LoadError:
        raise
    except FileNotFoundError as exc:  # includes DatasetNotFoundError, whose message says how to install
        raise LoadError(_first_line(exc)) from exc
    except (ValueError, OSError, ImportError, KeyError, EOFError) as exc:
        raise LoadError(f"cannot load data {spec!r}: {_first_line(exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - numpy / zipfile raise odd kinds for damaged files
        raise LoadError(f"cannot load data {spec!r}: {type(exc).__name__}: {_first_line(exc)}") from exc
    if len(ds) == 0:
        raise LoadError(f"data {spec!r} ({split} split) is empty")
    x = ds.tensors[0]
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise LoadError(f"data {spec!r} ({split} split) contains NaN or inf values")
    return ds


def check_data_fits(model: nn.Module, dataset, *, model_name: str, data_name: str,
                    input_shape: tuple[int, ...] | None = None, task: str = "classification") -> int:
    """One forward pass of two samples: the data must fit the model and the labels its outputs.

    Returns the number of model outputs (classes); for a ``task`` other than classification (dense
    outputs: maps, boxes) only that the data fits, and 0.
    """
    x, y = dataset.tensors[0], dataset.tensors[1]
    shape = tuple(x.shape[1:])
    if input_shape is not None and tuple(input_shape) != shape:
        raise LoadError(f"data {data_name!r} has input shape {shape} but model {model_name} expects "
                        f"{tuple(input_shape)}")
    try:
        with torch.no_grad():
            out = model(x[:2].float())
    except Exception as exc:  # noqa: BLE001 - shape errors come as RuntimeError, ValueError, ...
        raise LoadError(f"data {data_name!r} of input shape {shape} does not fit model {model_name}: "
                        f"{_first_line(exc)}") from exc
    if task != "classification":
        return 0
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise LoadError(f"model {model_name} must output class scores [batch, classes] for classification, got {got}")
    classes = int(out.shape[1])
    top = int(y.max()) if len(y) else -1
    if top >= classes:
        raise LoadError(f"data {data_name!r} has class labels up to {top} but model {model_name} outputs "
                        f"only {classes} classes")
    return classes
