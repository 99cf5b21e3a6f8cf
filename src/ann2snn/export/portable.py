"""A save format for converted SNNs that other tools read without ann2snn: JSON + safetensors.

``save_portable(snn, folder)`` writes two files:

* ``graph.json`` -- ``{"format": "ann2snn-portable", "version": 1, "input_shape", "timesteps", "t0",
  "encoding", "readout", "neuron", "layers": [...], "config"}``. Each layer is
  ``{"name", "op", "inputs", "shape", "attrs", "tensors"}`` in execution order: ``op`` is one of the
  kinds of :mod:`ann2snn.export.ir` (``input``, ``conv``, ``linear``, ``avg_pool``,
  ``adaptive_avg_pool``, ``max_pool``, ``reshape``, ``add``, ``concat``, ``channel_affine``,
  ``neuron``, ``output``), ``shape`` excludes the batch, and ``tensors`` maps a role (``weight``,
  ``threshold``, ...) to a tensor name in the safetensors file.
* ``weights.safetensors`` -- every tensor, float32, in the standard safetensors layout (an 8-byte
  little-endian header length, a JSON header, raw little-endian data), written here without the
  ``safetensors`` package; ``safetensors.numpy.load_file`` reads it.

The format is documented in docs/export.md with a reader in plain numpy. ``load_portable`` rebuilds
the model with bit-identical outputs.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConversionConfig
from ..errors import ConfigError, SerializationError
from ..model import SpikingModel
from .ir import KINDS, Op, build, lower

__all__ = ["load_portable", "read_safetensors", "save_portable", "write_safetensors"]

FORMAT = "ann2snn-portable"
VERSION = 1
GRAPH_FILE = "graph.json"
WEIGHTS_FILE = "weights.safetensors"
NEURON = ("integrate-and-fire with reset by subtraction: each step v += x + bias_shift; "
          "s = min(floor(v / theta), cap) where v >= theta, else 0; v -= s * theta; the output is s * theta. "
          "v starts at v0 * theta + v0_offset. theta is per channel (dimension 0 of a sample); "
          "a channel with theta = 0 never fires.")
_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}


# -- safetensors -----------------------------------------------------------------------------------

def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> float32 array) in the safetensors layout."""
    header: dict[str, Any] = {}
    blobs, offset = [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(np.asarray(tensors[name], dtype="<f4"))
        data = arr.tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a safetensors file into numpy arrays (F32 / F64 / I32 / I64)."""
    raw = Path(path).read_bytes()
    if len(raw) < 8:
        raise SerializationError(f"{path} is not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise SerializationError(f"{path} is not a safetensors file (header length {n} past the end)")
    try:
        header = json.loads(raw[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SerializationError(f"{path} is not a safetensors file (bad header: {exc})") from exc
    data = raw[8 + n:]
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(spec.get("dtype"))
        start, end = spec["data_offsets"]
        if dtype is None or not 0 <= start <= end <= len(data):
            raise SerializationError(f"{path}: tensor {name!r} has an unsupported dtype or bad offsets")
        arr = np.frombuffer(data[start:end], dtype=np.dtype(dtype).newbyteorder("<"))
        out[name] = arr.reshape(spec["shape"]).copy()
    return out


# -- save / load -----------------------------------------------------------------------------------

def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    return v


def save_portable(snn: SpikingModel, folder: str | os.PathLike, example_shape: tuple[int, ...] | None = None) -> Path:
    """Write ``snn`` as ``folder/graph.json`` + ``folder/weights.safetensors`` (the folder is created).

    Raises :class:`~ann2snn.export.ir.ExportError` for layers the format has no op for.
    """
    ops = lower(snn, example_shape, target="the portable format")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SerializationError(f"{folder} exists and is not a folder")
    if not folder.parent.is_dir():
        raise SerializationError(f"cannot write {folder}: folder {folder.parent} does not exist")
    tensors: dict[str, np.ndarray] = {}
    layers = []
    for op in ops:
        names = {}
        for role, t in op.tensors.items():
            key = f"{op.name}.{role}"
            tensors[key] = torch.as_tensor(t).detach().cpu().to(torch.float32).numpy()
            names[role] = key
        layers.append({"name": op.name, "op": op.kind, "inputs": list(op.inputs), "shape": list(op.shape),
                       "attrs": {k: _jsonable(v) for k, v in op.attrs.items()}, "tensors": names})
    cfg = snn.config
    desc = {"format": FORMAT, "version": VERSION, "input_shape": list(ops[0].shape), "timesteps": cfg.timesteps,
            "t0": cfg.t0, "encoding": cfg.encoding,
            "readout": "run the layers once per timestep on the same input; the result is the mean of the "
                       "output over the steps t >= t0",
            "neuron": NEURON, "layers": layers, "config": cfg.to_dict(),
            "info": json.loads(json.dumps(snn.info, default=str))}  # calibration results, IAT schedule, source
    folder.mkdir(exist_ok=True)
    # write to temporary names first, so that a failure never leaves half a model behind
    fd, tmp_w = tempfile.mkstemp(prefix=".weights.", dir=folder)
    os.close(fd)
    fd, tmp_g = tempfile.mkstemp(prefix=".graph.", dir=folder)
    os.close(fd)
    try:
        write_safetensors(tmp_w, tensors, {"format": FORMAT})
        Path(tmp_g).write_text(json.dumps(desc, indent=1, default=str))
        os.replace(tmp_w, folder / WEIGHTS_FILE)
        os.replace(tmp_g, folder / GRAPH_FILE)
    finally:
        Path(tmp_w).unlink(missing_ok=True)
        Path(tmp_g).unlink(missing_ok=True)
    return folder


def load_portable(folder: str | os.PathLike) -> SpikingModel:
    """Rebuild a model written by :func:`save_portable` (identical outputs)."""
    folder = Path(folder)
    gpath, wpath = folder / GRAPH_FILE, folder / WEIGHTS_FILE
    if not gpath.is_file() or not wpath.is_file():
        raise SerializationError(f"{folder} is not a portable ann2snn model (needs {GRAPH_FILE} and {WEIGHTS_FILE})")
    try:
        desc = json.loads(gpath.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SerializationError(f"{gpath} is not valid JSON: {exc}") from exc
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        raise SerializationError(f"{gpath} is not an ann2snn portable graph")
    if desc.get("version") != VERSION:
        raise SerializationError(f"unsupported portable format version {desc.get('version')!r} (this reads {VERSION})")
    weights = read_safetensors(wpath)
    ops = []
    try:
        for layer in desc["layers"]:
            if layer["op"] not in KINDS:
                raise SerializationError(f"unknown op {layer['op']!r} in {gpath}")
            tensors = {role: torch.from_numpy(weights[key]) for role, key in layer.get("tensors", {}).items()}
            ops.append(Op(layer["name"], layer["op"], list(layer["inputs"]), tuple(layer["shape"]),
                          dict(layer.get("attrs", {})), tensors))
        config = ConversionConfig.from_dict(desc["config"]) if "config" in desc else None
    except KeyError as exc:
        raise SerializationError(f"{folder}: missing entry {exc}") from exc
    except ConfigError as exc:
        raise SerializationError(f"{gpath}: bad config ({exc})") from exc
    info = desc.get("info") if isinstance(desc.get("info"), dict) else {}
    info.setdefault("source", {"model": str(folder), "model_kind": "portable"})
    return build(ops, config, info)
