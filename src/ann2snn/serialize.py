"""Saving and loading spiking models without pickle.

A saved file is a ``torch.save`` of plain containers: the graph as JSON text (nodes, with functions
named from the supported table), one constructor spec per module, the tensors, the config and the
calibration info. ``load`` uses ``torch.load(weights_only=True)`` and rebuilds only modules and
functions that ann2snn knows, so a file cannot run arbitrary code.

Since version 2 the file carries a SHA-256 of its content (the JSON texts and every tensor's name,
dtype, shape and bytes): a damaged file (a flipped bit in a weight, a truncated copy, a hand-edited
field) is refused with :class:`SerializationError` instead of loading different numbers. A loaded
model is also run for one step on a zero input of its calibrated shape, so a file whose parts do not
fit together fails at load time, not in the middle of an evaluation.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from .config import ConversionConfig
from .errors import ConfigError, SerializationError
from .model import SpikingModel
from .neurons.modules import Affine, RunningMaxPool, SpikingNeuron
from .passes.patterns import (
    BATCHNORM_MODULES,
    LINEAR_MODULES,
    MAXPOOL_MODULES,
    WEIGHTED_MODULES,
    function_name,
    resolve_function,
)

FORMAT = "ann2snn-snn"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no checksum

_TORCH_MODULES = {cls.__name__: cls for cls in WEIGHTED_MODULES + BATCHNORM_MODULES + MAXPOOL_MODULES + LINEAR_MODULES}
_OWN_MODULES = {"SpikingNeuron": SpikingNeuron, "RunningMaxPool": RunningMaxPool, "Affine": Affine}


# -- modules ---------------------------------------------------------------------------------------

def module_spec(mod: nn.Module) -> dict[str, Any]:
    """A JSON-able description from which :func:`module_from_spec` rebuilds ``mod`` (minus tensors)."""
    name = type(mod).__name__
    if name in _OWN_MODULES and type(mod) is _OWN_MODULES[name]:
        spec = {"type": name, "init": mod.spec()}
        if isinstance(mod, RunningMaxPool) and mod.pool is not None:
            spec["pool"] = module_spec(mod.pool)
        return spec
    if name not in _TORCH_MODULES or type(mod) is not _TORCH_MODULES[name]:
        raise SerializationError(f"cannot save module of type {type(mod).__qualname__}")
    init = {}
    for pname in inspect.signature(type(mod).__init__).parameters:
        if pname in ("self", "device", "dtype") or not hasattr(mod, pname):
            continue
        value = getattr(mod, pname)
        if pname == "bias" and not isinstance(value, bool):
            value = value is not None
        init[pname] = _encode(value)
    return {"type": name, "init": init}


def module_from_spec(spec: dict[str, Any]) -> nn.Module:
    name = spec.get("type")
    init = {k: _decode(v) for k, v in spec.get("init", {}).items()}
    if name in ("SpikingNeuron", "Affine"):
        return _OWN_MODULES[name].from_spec(init)
    if name == "RunningMaxPool":
        pool = module_from_spec(spec["pool"]) if "pool" in spec else None
        return RunningMaxPool(pool=pool, function=None if pool is not None else init["function"])
    if name not in _TORCH_MODULES:
        raise SerializationError(f"unknown module type {name!r} in the file")
    return _TORCH_MODULES[name](**init)


# -- values ----------------------------------------------------------------------------------------

def _encode(value: Any) -> Any:
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, torch.Size)):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {"dict": {str(k): _encode(v) for k, v in value.items()}}
    if isinstance(value, slice):
        return {"slice": [_encode(value.start), _encode(value.stop), _encode(value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    raise SerializationError(f"cannot save a graph argument of type {type(value).__name__}")


def _decode(value: Any, nodes: dict[str, fx.Node] | None = None) -> Any:
    if isinstance(value, list):
        return [_decode(v, nodes) for v in value]
    if not isinstance(value, dict):
        return value
    if "node" in value:
        if nodes is None or value["node"] not in nodes:
            raise SerializationError(f"graph refers to unknown node {value['node']!r}")
        return nodes[value["node"]]
    if "tuple" in value:
        return tuple(_decode(v, nodes) for v in value["tuple"])
    if "dict" in value:
        return {k: _decode(v, nodes) for k, v in value["dict"].items()}
    if "slice" in value:
        return slice(*(_decode(v, nodes) for v in value["slice"]))
    if "ellipsis" in value:
        return Ellipsis
    if "dtype" in value:
        dtype = getattr(torch, str(value["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise SerializationError(f"unknown dtype {value['dtype']!r}")
        return dtype
    raise SerializationError(f"unknown value encoding {sorted(value)!r}")


# -- graph -----------------------------------------------------------------------------------------

def graph_to_json(gm: fx.GraphModule) -> dict[str, Any]:
    nodes, specs = [], {}
    for node in gm.graph.nodes:
        target: Any = node.target
        if node.op == "call_function":
            target = function_name(node.target)
        elif node.op == "call_module":
            specs[node.target] = module_spec(gm.get_submodule(node.target))
        nodes.append({"name": node.name, "op": node.op, "target": target,
                      "args": _encode(tuple(node.args)), "kwargs": _encode(dict(node.kwargs))})
    attrs = sorted({n.target for n in gm.graph.nodes if n.op == "get_attr"})
    return {"nodes": nodes, "modules": specs, "attributes": attrs}


def graph_from_json(desc: dict[str, Any], state: dict[str, torch.Tensor]) -> fx.GraphModule:
    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    modules: dict[str, Any] = {t: module_from_spec(s) for t, s in desc["modules"].items()}
    for attr in desc.get("attributes", []):
        if attr not in state:
            raise SerializationError(f"tensor {attr!r} missing from the file")
        modules[attr] = state[attr]
    for spec in desc["nodes"]:
        op, target = spec["op"], spec["target"]
        args = _decode(spec["args"], nodes)
        kwargs = _decode(spec["kwargs"], nodes)
        if op == "call_function":
            target = resolve_function(target)
        if op == "output":
            node = graph.output(args[0])
        else:
            node = graph.create_node(op, target, tuple(args), kwargs, name=spec["name"])
        nodes[spec["name"]] = node
    gm = fx.GraphModule(modules, graph, class_name="SpikingGraph")
    own = {k: v for k, v in state.items() if k not in desc.get("attributes", [])}
    missing, unexpected = gm.load_state_dict(own, strict=False)
    if missing or unexpected:
        raise SerializationError(f"tensors do not match the graph (missing {missing[:5]}, unexpected {unexpected[:5]})")
    gm.eval()
    return gm


# -- files -----------------------------------------------------------------------------------------

def to_payload(snn: SpikingModel) -> dict[str, Any]:
    gm = snn.graph_module
    desc = graph_to_json(gm)
    state = {k: v.detach().cpu().clone() for k, v in gm.state_dict().items()}
    for attr in desc["attributes"]:
        value = gm
        for part in attr.split("."):
            value = getattr(value, part)
        if not isinstance(value, torch.Tensor):
            raise SerializationError(f"cannot save graph attribute {attr!r} of type {type(value).__name__}")
        state[attr] = value.detach().cpu().clone()
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "graph": json.dumps(desc),
        "state": state,
        "config": json.dumps(snn.config.to_dict()),
        "info": json.dumps(snn.info, default=str),
    }
    payload["checksum"] = content_digest(payload)
    return payload


def content_digest(payload: dict[str, Any]) -> str:
    """SHA-256 over the JSON texts and every tensor (name, dtype, shape, bytes), in a fixed order."""
    h = hashlib.sha256()
    for key in ("graph", "config", "info"):
        text = payload.get(key)
        if not isinstance(text, str):
            raise SerializationError(f"corrupt ann2snn file: field {key!r} is not text")
        h.update(f"{key}:{len(text)}:".encode())
        h.update(text.encode("utf-8", "surrogatepass"))
    state = payload.get("state")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise SerializationError("corrupt ann2snn file: the tensors are missing or malformed")
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def from_payload(payload: Any) -> SpikingModel:
    """Rebuild a :class:`SpikingModel` from a loaded file's content; anything wrong with it raises
    :class:`SerializationError` (never an internal exception)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("format"), str) or payload["format"] != FORMAT:
        raise SerializationError("not an ann2snn spiking-model file")
    version = payload.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise SerializationError(f"unsupported file version {version!r} (this ann2snn reads "
                                 f"{', '.join(map(str, READABLE_VERSIONS))})")
    checksum = payload.get("checksum")
    if version >= 2 and (not isinstance(checksum, str) or checksum != content_digest(payload)):
        raise SerializationError("corrupt ann2snn file: its content does not match its checksum "
                                 "(the file was damaged or edited)")
    try:
        desc = json.loads(payload["graph"])
        config = ConversionConfig.from_dict(json.loads(payload["config"]))
        info = json.loads(payload.get("info", "{}"))
        if not isinstance(desc, dict) or not isinstance(info, dict):
            raise SerializationError("corrupt ann2snn file: the graph or info is not a JSON object")
        gm = graph_from_json(desc, payload["state"])
        snn = SpikingModel(gm, config, info)
    except SerializationError as exc:
        if str(exc).startswith("corrupt"):
            raise
        raise SerializationError(f"corrupt ann2snn file: {exc}") from exc
    except ConfigError as exc:
        raise SerializationError(f"corrupt ann2snn file: bad config: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - fx, json and torch raise many kinds on malformed content
        raise SerializationError(f"corrupt ann2snn file: {_first_line(exc)}") from exc
    _dry_run(snn)
    return snn


def _first_line(exc: BaseException) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _dry_run(snn: SpikingModel) -> None:
    """One step on a zero input of the calibrated shape: the stored parts must fit together."""
    shape = snn.info.get("example_shape")
    if shape is None:
        return
    if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                               for d in shape) or math.prod(shape) > 1 << 26):
        raise SerializationError(f"corrupt ann2snn file: malformed input shape {shape!r}")
    try:
        # fx prints the generated code of a failing graph to stderr: the error below says it in one line
        with contextlib.redirect_stderr(io.StringIO()):
            snn.run(torch.zeros(1, *shape), 1)
    except Exception as exc:  # noqa: BLE001 - whatever the mismatch, the file is unusable
        raise SerializationError(f"corrupt ann2snn file: the stored network does not run on its input shape "
                                 f"{tuple(shape)}: {_first_line(exc)}") from exc


def save(snn: SpikingModel, path: str | os.PathLike) -> Path:
    """Write ``snn`` to ``path`` atomically (a half-written file never replaces a good one)."""
    if not isinstance(snn, SpikingModel):
        raise SerializationError(f"save() takes a SpikingModel, got {type(snn).__name__}")
    path = Path(path)
    payload = to_payload(snn)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise SerializationError(f"cannot write {path}: folder {directory} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as exc:
        raise SerializationError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | os.PathLike, map_location: str | torch.device | None = None) -> SpikingModel:
    """Read a spiking model written by :func:`save` (``weights_only`` loading: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise SerializationError(f"no such file: {path}")
    try:
        payload = torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged file
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise SerializationError(f"{path} is not a readable ann2snn file ({first[:200]})") from exc
    return from_payload(payload)
