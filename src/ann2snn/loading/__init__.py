"""Loading models, checkpoints and datasets from names and paths (what the ``ann2snn`` CLI accepts).

A MODEL is one of

* a zoo name (``vgg_digits``): the registered architecture with its bundled checkpoint, or with
  ``weights`` a ``state_dict`` file of your own;
* ``timm:NAME`` / ``torchvision:NAME``: the architecture from timm / torchvision (when installed),
  built with ``pretrained=False`` / ``weights=None`` (nothing is downloaded): random weights unless
  ``weights`` is given (:mod:`.named`);
* ``package.module:factory``: your code is imported and ``factory()`` builds the model;
* an ONNX file (``model.onnx``, from PyTorch or Keras): read by :mod:`.onnx` (needs the ``onnx``
  package);
* a file holding a whole pickled ``nn.Module`` (``torch.save(model, path)``). Unpickling runs code
  from the file, so it is refused unless ``trust_pickle=True``.

``weights`` is a checkpoint file as people have them (:mod:`.checkpoints`): a ``state_dict`` saved with
``torch.save`` (read with ``weights_only=True`` onto the CPU), possibly wrapped (``{"state_dict": ...}``)
or prefixed (``module.``, ``_orig_mod.``), or a ``.safetensors`` file; it must then match the model as
``load_state_dict(strict=True)`` requires.

DATA is a bundled dataset name (``digits``, ``mnist``, ``fashion-mnist``), a ``.npz`` file with
``x``/``y`` arrays, or a folder with one sub-folder of images per class (see
:func:`ann2snn.data.get_dataset`).

Every failure raises :class:`LoadError` (a :class:`~ann2snn.errors.ConversionError`) with a one-line
message that names the file and says what to do.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import LoadError
from .checkpoints import (
    adaptation_line,
    apply_state_dict,
    load_checkpoint,
    load_state_dict_file,
    load_weights,
)

__all__ = ["LoadError", "LoadedModel", "bundled_input_shape", "check_data_fits", "load_checkpoint", "load_data",
           "load_model", "load_state_dict_file", "load_weights"]

log = logging.getLogger("ann2snn")


@dataclass
class LoadedModel:
    """A model ready for conversion and how it was obtained.

    ``notes``: what was done on the way, one line each (a checkpoint's adaptations, random weights,
    a dropped final Softmax); the CLI prints them on stderr.
    """

    module: nn.Module
    name: str
    kind: str  # "zoo" | "factory" | "timm" | "torchvision" | "pickle" | "onnx"
    weights: str | None = None
    input_shape: tuple[int, ...] | None = None
    dataset: str | None = None
    num_classes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """What goes into ``snn.info["source"]``."""
        out = {"model": self.name, "model_kind": self.kind, "weights": self.weights,
               "model_dataset": self.dataset, "input_shape": list(self.input_shape) if self.input_shape else None,
               "task": self.task}
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- models ----------------------------------------------------------------------------------------

def load_model(spec: str, weights: str | os.PathLike | None = None, *, trust_pickle: bool = False,
               allow_untrained: bool = False) -> LoadedModel:
    """Build the model named by ``spec`` and load ``weights`` into it.

    ``spec``: a zoo name, ``timm:NAME`` / ``torchvision:NAME`` (random weights unless ``weights``),
    ``package.module:factory``, an ``.onnx`` file, or a pickled-module file (with ``trust_pickle``).
    ``weights``: a checkpoint file (``torch.save`` or ``.safetensors``), adapted as
    :mod:`ann2snn.loading.checkpoints` describes; ``trust_pickle`` also lets it hold pickled objects.
    What was adapted is logged on the ``ann2snn`` logger and kept in ``LoadedModel.notes``.
    ``allow_untrained``: a zoo model without a checkpoint comes with its initial weights (enough to
    inspect its graph) instead of raising.
    """
    from .. import zoo
    from .named import parse_named

    spec = str(spec).strip()
    if not spec:
        raise LoadError("empty model name")
    if spec in zoo.ZOO:
        loaded = _zoo_model(spec, weights, allow_untrained, trust_pickle)
    elif parse_named(spec) is not None:
        loaded = _named_model(spec, weights, trust_pickle)
    else:
        path = Path(spec).expanduser()
        looks_like_file = path.suffix.lower() in (".pt", ".pth", ".pkl", ".ckpt", ".bin") or os.sep in spec
        if path.suffix.lower() == ".onnx":
            loaded = _onnx_model(path, weights)
        elif ":" in spec and not path.exists() and not looks_like_file:
            loaded = _factory_model(spec, weights, trust_pickle)
        elif path.exists() or looks_like_file:
            loaded = _pickled_model(path, weights, trust_pickle)
        else:
            raise LoadError(
                f"unknown model {spec!r}: give a zoo name ({', '.join(sorted(zoo.ZOO)) or 'none registered'}), "
                f"'timm:NAME', 'torchvision:NAME', 'package.module:factory', an .onnx file, or a pickled model "
                f"file with --trust-pickle"
            )
    for note in loaded.notes:
        log.info("%s: %s", loaded.name, note)
    return loaded


def _weights_into(model: nn.Module, weights: str | os.PathLike, name: str, trust_pickle: bool) -> list[str]:
    """Load a checkpoint file into ``model``; the one adaptation line as a list (empty if none)."""
    ckpt = load_checkpoint(weights, trust_pickle=trust_pickle)
    line = adaptation_line(apply_state_dict(model, ckpt, str(weights), name))
    return [line] if line else []


def _zoo_model(name: str, weights: str | os.PathLike | None, allow_untrained: bool = False,
               trust_pickle: bool = False) -> LoadedModel:
    from .. import zoo

    entry = zoo.get_entry(name)
    notes: list[str] = []
    if weights is not None:
        model = entry.factory()
        notes = _weights_into(model, weights, name, trust_pickle)
        used = str(weights)
    elif allow_untrained and not entry.has_checkpoint:
        model, used = entry.factory(), None
        notes = ["no checkpoint: the model has its initial (random) weights"]
    else:
        if not entry.has_checkpoint:
            where = entry.checkpoint_path or "(none registered)"
            raise LoadError(
                f"zoo model {name!r} has no pretrained checkpoint (expected {where}); train it with "
                f"'python benchmarks/train_zoo.py --models {name}' or pass --weights FILE"
            )
        model = entry.factory()
        apply_state_dict(model, load_checkpoint(entry.checkpoint_path), str(entry.checkpoint_path), name)
        used = f"zoo:{entry.checkpoint}"
    model.eval()
    return LoadedModel(model, name, "zoo", used, tuple(entry.input_shape), entry.dataset, entry.num_classes,
                       task=entry.task, notes=notes)


def _named_model(spec: str, weights: str | os.PathLike | None, trust_pickle: bool) -> LoadedModel:
    """``timm:NAME`` / ``torchvision:NAME``: the architecture (never downloaded), then ``weights``."""
    from .named import build_named

    model = build_named(spec)
    if weights is not None:
        notes = _weights_into(model, weights, spec, trust_pickle)
    else:
        notes = ["no --weights given: the model has random weights (nothing is downloaded; give a local "
                 "state_dict or .safetensors file with --weights)"]
    model.eval()
    return LoadedModel(model, spec, spec.split(":", 1)[0], str(weights) if weights is not None else None,
                       notes=notes)


def _onnx_model(path: Path, weights: str | os.PathLike | None) -> LoadedModel:
    """An ONNX file, read by ann2snn's own ONNX reader (needs the ``onnx`` package)."""
    from .onnx import load_onnx

    if weights is not None:
        raise LoadError(f"{path} is an ONNX model, which holds its weights: drop --weights")
    module, shape, notes = load_onnx(path)
    return LoadedModel(module, str(path), "onnx", None, shape, extra={"notes": notes} if notes else {},
                       notes=list(notes))


def _factory_model(spec: str, weights: str | os.PathLike | None, trust_pickle: bool = False) -> LoadedModel:
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
        model = copy.deepcopy(obj)  # the module's own instance stays as it is
    elif callable(obj):
        try:
            model = obj()
        except Exception as exc:  # noqa: BLE001
            raise LoadError(f"{spec}() failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    else:
        raise LoadError(f"{spec} is neither a model nor a callable that builds one")
    if not isinstance(model, nn.Module):
        raise LoadError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    notes = _weights_into(model, weights, spec, trust_pickle) if weights is not None else []
    model.eval()
    return LoadedModel(model, spec, "factory", str(weights) if weights is not None else None, notes=notes)


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
                f"(a zoo name, 'timm:NAME', 'torchvision:NAME' or 'package.module:factory') and this file as "
                f"--weights")
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
    notes = _weights_into(obj, weights, str(path), trust_pickle) if weights is not None else []
    obj.eval()
    return LoadedModel(obj, str(path), "pickle", str(weights) if weights is not None else None, notes=notes)


# -- data ------------------------------------------------------------------------------------------

def bundled_input_shape(spec: str) -> tuple[int, ...] | None:
    """The input shape of a bundled dataset name (without loading it), else None."""
    from ..data import DATASETS

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
    from ..data import DATASETS, get_dataset

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
