"""NIR (Neuromorphic Intermediate Representation, nir 1.0.x) export of converted SNNs, and import back.

One NIR integration step is one SNN timestep (dt = 1); the graph's input is the analog input, fed
every step (direct coding); its output is the last layer's analog output of that step, whose mean
over the steps is the network's answer. Nodes that meet at a destination are summed there (NIR's
rule), which is how residual additions are written. What NIR 1.0 has no node for is spelled out
with standard nodes where that is exact, and refused otherwise:

* **Neurons** (``neuron_model="exact"``, the default): each layer is a ``NIRGraph`` subgraph
  ``I -> Threshold(s) -> Scale(theta)`` with a feedback edge ``Threshold -> Scale(-theta) -> I``:
  an integrator without reset whose every spike subtracts ``theta`` -- reset by subtraction, exact
  in NIR's own (continuous-time) semantics and, with the one-step delay a discrete simulator puts
  on a cycle, in discrete time too. A burst neuron with cap ``m`` has ``m`` Threshold nodes at
  ``theta, 2 theta, ..., m theta`` (``min(floor(v / theta), m)`` spikes). The initial potential
  ``v_init`` is folded into the thresholds (the subgraph's integrator starts at 0 and fires at
  ``k theta - v_init``), taken one float32 step down so that NIR's strict ``v > threshold`` fires
  where ann2snn's ``v >= threshold`` does. The subgraph's output is ``theta * spikes``, the current
  the next layer receives.
* ``neuron_model="if"``: each layer is a standard ``IF`` node (``v_threshold = theta``, ``r = 1``,
  ``v_reset = 0``) followed by ``Scale(theta)``. Tools that map IF nodes onto hardware read this
  one, but NIR's IF resets *to* a value and starts at 0: such a tool runs reset-to-zero neurons
  that start empty, which differ from ann2snn's (the node's metadata says ``reset: subtract`` and
  gives ``v_init``; ann2snn reads it back exactly). Burst caps above 1 are refused here.
* **Max-pooling** has no NIR node: it is refused unless ``maxpool="extension"``, which writes each
  running max-pool (it sits in front of its neuron, on the input currents, pools their running sum
  and emits the increment) as a subgraph whose metadata describes it and whose body,
  ``Delay(NaN) -> SumPool2d``, no simulator can run: a tool that ignores the metadata stops there
  instead of computing something else.
* **Concatenation** along channels: each part passes a 1x1 convolution (``Linear`` for vectors)
  that places its channels in the output, and the parts are summed at the destination.
* BatchNorm kept after a neuron and neuron bias corrections: depthwise 1x1 convolutions.

Every node carries ``metadata["ann2snn_op"]`` so that :func:`from_nir` rebuilds the same model
(bit-identical outputs); graph metadata records the conversion config and the readout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConversionConfig
from ..errors import ConversionError, OffendingNode
from ..model import SpikingModel
from .ir import ExportError, Op, build, lower

__all__ = ["export_nir", "from_nir", "import_nir", "to_nir", "write_nir"]

FORMAT = "ann2snn-nir"
VERSION = 1
NEURON_MODELS = ("exact", "if")
MAXPOOL_MODES = ("refuse", "extension")
_DEAD = 1e30  # the effective threshold of a channel that never fires (as in SpikingNeuron)


def _nir():
    try:
        import nir
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConversionError("NIR export needs the 'nir' package: pip install 'ann2snn[export]' (or pip install nir)") \
            from None
    return nir


def _np(t: Any) -> np.ndarray:
    return torch.as_tensor(t).detach().cpu().to(torch.float32).numpy().copy()


def _per_channel(values: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """A per-channel vector (or one value) broadcast to a per-sample shape ``(C, ...)``."""
    v = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    if v.numel() == 1:
        return np.full(shape, float(v[0]), dtype=np.float32)
    return _np(v.reshape(-1, *([1] * (len(shape) - 1))).expand(*shape))


def _effective(theta: torch.Tensor) -> torch.Tensor:
    theta = torch.as_tensor(theta, dtype=torch.float32)
    return torch.where(theta > 0, theta, torch.full_like(theta, _DEAD))


# -- export ----------------------------------------------------------------------------------------

def to_nir(snn: SpikingModel, *, neuron_model: str = "exact", maxpool: str = "refuse",
           example_shape: tuple[int, ...] | None = None):
    """The converted network as a ``nir.NIRGraph`` (see the module docstring for the encoding).

    Args:
        snn: a converted model (not modified).
        neuron_model: ``exact`` (integrator + threshold subgraphs: subtractive reset, burst caps and
            initial potentials as ann2snn runs them) or ``if`` (standard IF nodes, differences stated
            in their metadata).
        maxpool: ``refuse`` (default) or ``extension`` (ann2snn-only max-pool subgraphs).
        example_shape: the per-sample input shape, if the model does not record it.

    Raises:
        ExportError: listing every layer NIR cannot express, each with its source line.
    """
    nir = _nir()
    if neuron_model not in NEURON_MODELS:
        raise ConversionError(f"unknown neuron_model {neuron_model!r}; choose {' or '.join(NEURON_MODELS)}")
    if maxpool not in MAXPOOL_MODES:
        raise ConversionError(f"unknown maxpool mode {maxpool!r}; choose {' or '.join(MAXPOOL_MODES)}")
    ops = lower(snn, example_shape, target="NIR")
    shapes = {op.name: op.shape for op in ops}
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    producers: dict[str, list[str]] = {}
    offenders: list[OffendingNode] = []
    hints: set[str] = set()

    def refuse(op: Op, reason: str, hint: str = "") -> None:
        offenders.append(OffendingNode(op.name, op.kind, reason))
        if hint:
            hints.add(hint)

    def connect(op: Op, dest: str, inputs: list[str] | None = None) -> None:
        for i in inputs if inputs is not None else op.inputs:
            for p in producers.get(i, []):
                if (p, dest) in edges:
                    refuse(op, f"adds {p!r} to itself (NIR sums distinct edges only)")
                    return
                edges.append((p, dest))

    for op in ops:
        a, t = op.attrs, op.tensors
        in_shape = shapes[op.inputs[0]] if op.inputs else ()
        meta = {"ann2snn_op": op.kind}
        if op.kind == "input":
            nodes[op.name] = nir.Input(input_type={"input": np.array(op.shape)})
            producers[op.name] = [op.name]
            continue
        if op.kind == "output":
            nodes[op.name] = nir.Output(output_type={"output": np.array(op.shape)})
            connect(op, op.name)
            continue
        if op.kind == "add":
            producers[op.name] = [p for i in op.inputs for p in producers.get(i, [])]
            continue
        node = None
        if op.kind == "conv":
            if a["transposed"] or a["dims"] not in (1, 2):
                refuse(op, f"{'transposed ' if a['transposed'] else ''}{a['dims']}-D convolution "
                           "(NIR 1.0 has Conv1d and Conv2d only)")
                continue
            meta["has_bias"] = bool(a["has_bias"])
            node = _conv(nir, a["dims"], in_shape, _np(t["weight"]), _np(t["bias"]), a["stride"], a["padding"],
                         a["dilation"], a["groups"], meta)
        elif op.kind == "linear":
            if len(in_shape) != 1:
                refuse(op, f"a linear layer on a {len(in_shape)}-D sample (NIR's Affine maps vectors)")
                continue
            meta["has_bias"] = bool(a["has_bias"])
            node = nir.Affine(weight=_np(t["weight"]), bias=_np(t["bias"]), metadata=meta)
        elif op.kind in ("avg_pool", "adaptive_avg_pool"):
            node = _avg_pool(nir, op, in_shape, meta, refuse)
            if node is None:
                continue
        elif op.kind == "max_pool":
            if maxpool == "refuse":
                refuse(op, "max-pooling has no NIR node (ann2snn runs it on the running sum of the input currents)",
                       "Pass maxpool='extension' (CLI: --maxpool extension) to write ann2snn-only max-pool subgraphs "
                       "that ann2snn reads back (other tools cannot run them: their body is a placeholder, a Delay of NaN steps), "
                       "or use average pooling in the ANN.")
                continue
            node = _maxpool_extension(nir, op, in_shape, meta, refuse)
            if node is None:
                continue
        elif op.kind == "reshape":
            if len(op.shape) != 1:
                refuse(op, f"reshape to {tuple(op.shape)} (NIR's Flatten only flattens a sample to a vector)")
                continue
            node = nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1, metadata=meta)
        elif op.kind == "concat":
            parts = _concat_parts(nir, op, shapes, refuse)
            if parts is None:
                continue
            producers[op.name] = []
            for i, (pname, pnode) in enumerate(parts):
                nodes[pname] = pnode
                connect(op, pname, [op.inputs[i]])
                producers[op.name].append(pname)
            continue
        elif op.kind == "channel_affine":
            node = _channelwise(nir, in_shape, _np(t["scale"]), _np(t["shift"]), meta)
            if node is None:
                refuse(op, f"a per-channel affine map on a {len(in_shape)}-D sample")
                continue
        elif op.kind == "neuron":
            _neuron(nir, op, in_shape, neuron_model, nodes, edges, producers, connect, refuse)
            continue
        else:  # pragma: no cover - lower() only makes the kinds above
            refuse(op, "no NIR equivalent")
            continue
        nodes[op.name] = node
        connect(op, op.name)
        producers[op.name] = [op.name]
    if offenders:
        raise ExportError("NIR", offenders, " ".join(sorted(hints)))
    cfg = snn.config
    meta = {"ann2snn_format": FORMAT, "ann2snn_version": VERSION, "neuron_model": neuron_model,
            "timestep": "one NIR integration step is one SNN timestep (dt = 1)",
            "input_coding": "the analog input is fed as input current every step" if cfg.encoding == "direct"
            else "the input is rate coded (Poisson) before it enters the graph",
            "readout": f"the output node's values averaged over the steps t >= t0 (t0 = {cfg.t0})",
            "timesteps": int(cfg.timesteps), "config": json.dumps(cfg.to_dict()),
            "info": json.dumps(snn.info, default=str)}  # calibration results, IAT schedule, where it came from
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def _conv(nir, dims, in_shape, weight, bias, stride, padding, dilation, groups, meta):
    if groups > 1:
        # nir 1.0's type checker takes weight.shape[1] as the input channels, so a grouped
        # convolution is written as the equivalent dense one (zeros outside the groups);
        # metadata["groups"] lets ann2snn restore the grouped layer exactly.
        meta["groups"] = int(groups)
        weight = _dense(weight, groups)
        groups = 1
    if dims == 1:
        return nir.Conv1d(input_shape=int(in_shape[1]), weight=weight, stride=int(stride[0]), padding=int(padding[0]),
                          dilation=int(dilation[0]), groups=int(groups), bias=bias, metadata=meta)
    return nir.Conv2d(input_shape=tuple(int(s) for s in in_shape[1:]), weight=weight, stride=tuple(stride),
                      padding=tuple(padding), dilation=tuple(dilation), groups=int(groups), bias=bias, metadata=meta)


def _dense(weight: np.ndarray, groups: int) -> np.ndarray:
    cout, cin_g = weight.shape[:2]
    per = cout // groups
    dense = np.zeros((cout, cin_g * groups, *weight.shape[2:]), dtype=np.float32)
    for g in range(groups):
        dense[g * per:(g + 1) * per, g * cin_g:(g + 1) * cin_g] = weight[g * per:(g + 1) * per]
    return dense


def _grouped(dense: torch.Tensor, groups: int) -> torch.Tensor:
    cout, cin = dense.shape[:2]
    per, cin_g = cout // groups, cin // groups
    return torch.cat([dense[g * per:(g + 1) * per, g * cin_g:(g + 1) * cin_g] for g in range(groups)])


def _channelwise(nir, shape, scale, shift, meta):
    """``x * scale + shift`` per channel: a depthwise 1x1 convolution, or a diagonal Affine for vectors."""
    c = shape[0]
    scale = np.broadcast_to(scale.reshape(-1), (c,)).astype(np.float32)
    shift = np.broadcast_to(shift.reshape(-1), (c,)).astype(np.float32)
    if len(shape) == 1:
        return nir.Affine(weight=np.diag(scale).astype(np.float32), bias=shift.copy(), metadata=meta)
    if len(shape) in (2, 3):
        dims = len(shape) - 1
        w = scale.reshape(c, 1, *([1] * dims)).copy()
        return _conv(nir, dims, shape, w, shift.copy(), [1] * dims, [0] * dims, [1] * dims, c, meta)
    return None


def _avg_pool(nir, op, in_shape, meta, refuse):
    a = op.attrs
    if a["dims"] != 2:
        refuse(op, f"{a['dims']}-D average pooling (NIR 1.0 has AvgPool2d only)")
        return None
    if op.kind == "adaptive_avg_pool":
        (h, w), (oh, ow) = in_shape[1:], a["output_size"]
        if h % oh or w % ow:
            refuse(op, f"adaptive average pooling from {h}x{w} to {oh}x{ow} (windows of unequal size)")
            return None
        meta["output_size"] = list(a["output_size"])
        k = [h // oh, w // ow]
        return nir.AvgPool2d(kernel_size=np.array(k), stride=np.array(k), padding=np.array([0, 0]), metadata=meta)
    if a["ceil_mode"] or a.get("divisor_override") or (not a["count_include_pad"] and any(a["padding"])):
        refuse(op, "average pooling with ceil_mode, divisor_override or count_include_pad=False")
        return None
    return nir.AvgPool2d(kernel_size=np.array(a["kernel_size"]), stride=np.array(a["stride"]),
                         padding=np.array(a["padding"]), metadata=meta)


def _maxpool_extension(nir, op, in_shape, meta, refuse):
    a = op.attrs
    if a["dims"] != 2 or a["adaptive"] or a["ceil_mode"] or any(d != 1 for d in a["dilation"]):
        refuse(op, "max-pooling other than 2-D with fixed windows, no dilation, no ceil_mode")
        return None
    meta.update({"kernel_size": list(a["kernel_size"]), "stride": list(a["stride"]), "padding": list(a["padding"]),
                 "semantics": "running max-pool before the neuron: out_t = maxpool(S_t) - maxpool(S_{t-1}), "
                              "S_t the sum of the inputs of steps 1..t; ann2snn extension, the body is a "
                              "placeholder (a Delay of NaN steps) that no simulator can run"})
    body = {"input": nir.Input(input_type={"input": np.array(in_shape)}),
            "placeholder": nir.Delay(delay=np.full(in_shape, np.nan, dtype=np.float32)),
            "window": nir.SumPool2d(kernel_size=np.array(a["kernel_size"]), stride=np.array(a["stride"]),
                                    padding=np.array(a["padding"])),
            "output": nir.Output(output_type={"output": np.array(op.shape)})}
    return nir.NIRGraph(nodes=body, edges=[("input", "placeholder"), ("placeholder", "window"),
                                           ("window", "output")], metadata=meta)


def _concat_parts(nir, op, shapes, refuse):
    dim = op.attrs["dim"]
    in_shapes = [shapes[i] for i in op.inputs]
    if dim != 0 or len(op.shape) > 3:
        refuse(op, "concatenation along a non-channel dimension")
        return None
    total, offset, parts = op.shape[0], 0, []
    for i, s in enumerate(in_shapes):
        emb = np.zeros((total, s[0]), dtype=np.float32)
        emb[offset:offset + s[0]] = np.eye(s[0], dtype=np.float32)
        meta = {"ann2snn_op": "concat_part", "concat": op.name, "index": i}
        if len(s) == 1:
            node = nir.Linear(weight=emb, metadata=meta)
        else:
            dims = len(s) - 1
            node = _conv(nir, dims, s, emb.reshape(total, s[0], *([1] * dims)), np.zeros(total, np.float32),
                         [1] * dims, [0] * dims, [1] * dims, 1, meta)
        parts.append((f"{op.name}_part{i}", node))
        offset += s[0]
    return parts


def _neuron(nir, op, in_shape, neuron_model, nodes, edges, producers, connect, refuse) -> bool:
    a, t = op.attrs, op.tensors
    cap = int(a["cap"])
    if neuron_model == "if" and cap > 1:
        refuse(op, f"burst neuron (up to {cap} spikes a step): an IF node emits one",
               "Export with neuron_model='exact' (CLI: --neuron-model exact) to keep burst caps.")
        return False
    shape = tuple(op.shape)
    theta = _effective(t["threshold"])
    theta_full = _per_channel(theta, shape)
    v_init_c = theta * float(a["v0"]) + torch.as_tensor(t["v0_offset"], dtype=torch.float32)
    v_init = _per_channel(v_init_c, shape)
    meta = {"ann2snn_op": "neuron", "layer": str(a.get("layer") or op.name), "reset": "subtract",
            "burst_cap": cap, "compare": ">=", "v0": float(a["v0"]),
            "threshold": _np(t["threshold"]), "v0_offset": _np(t["v0_offset"]),
            "initial_potential": _np(v_init_c),
            "semantics": "v += x; s = min(floor(v / theta), burst_cap) where v >= theta else 0; v -= s * theta; "
                         "output s * theta; v starts at initial_potential"}
    if a.get("clip") is not None:
        meta["clip"] = float(a["clip"])
    inputs = op.inputs
    bias = torch.as_tensor(t["bias_shift"], dtype=torch.float32)
    if bool(bias.any()):
        bname = f"{op.name}_bias"
        channels = shape[0] if len(shape) else 1
        node = _channelwise(nir, shape, np.ones(channels, np.float32), _np(bias), {"ann2snn_op": "neuron_bias",
                                                                                   "neuron": op.name})
        if node is None:
            refuse(op, f"bias correction on a {len(shape)}-D sample")
            return False
        nodes[bname] = node
        connect(op, bname)
        producers[bname] = [bname]
        inputs = [bname]
    if neuron_model == "if":
        meta["note"] = ("NIR's IF resets to v_reset and starts at 0; ann2snn's neuron resets by subtraction and "
                        "starts at initial_potential (a reader that ignores this metadata runs a different network)")
        nodes[op.name] = nir.IF(r=np.ones(shape, np.float32), v_threshold=theta_full,
                                v_reset=np.zeros(shape, np.float32), metadata=meta)
        connect(op, op.name, inputs)
        nodes[f"{op.name}_value"] = nir.Scale(scale=theta_full, metadata={"ann2snn_op": "neuron_value",
                                                                          "neuron": op.name})
        edges.append((op.name, f"{op.name}_value"))
        producers[op.name] = [f"{op.name}_value"]
        return True
    body = {"input": nir.Input(input_type={"input": np.array(shape)}),
            "integrator": nir.I(r=np.ones(shape, np.float32))}
    body_edges = [("input", "integrator")]
    for k in range(1, cap + 1):
        level = np.nextafter((k * theta_full - v_init).astype(np.float32), np.float32(-np.inf))
        body[f"threshold_{k}"] = nir.Threshold(threshold=level.astype(np.float32))
        body_edges += [("integrator", f"threshold_{k}"), (f"threshold_{k}", "reset"), (f"threshold_{k}", "value")]
    body["reset"] = nir.Scale(scale=-theta_full)
    body["value"] = nir.Scale(scale=theta_full.copy())
    body["output"] = nir.Output(output_type={"output": np.array(shape)})
    body_edges += [("reset", "integrator"), ("value", "output")]
    nodes[op.name] = nir.NIRGraph(nodes=body, edges=body_edges, metadata=meta)
    connect(op, op.name, inputs)
    producers[op.name] = [op.name]
    return True


def export_nir(snn: SpikingModel, path: str | os.PathLike, **options: Any) -> Path:
    """Write ``snn`` as a NIR file (HDF5, readable with ``nir.read``); ``options`` as for :func:`to_nir`."""
    return write_nir(to_nir(snn, **options), path)


def write_nir(graph: Any, path: str | os.PathLike) -> Path:
    """Write a NIR graph to ``path`` (atomically: a failed write leaves no file)."""
    path = Path(path)
    if not (path.parent if str(path.parent) else Path(".")).is_dir():
        raise ConversionError(f"cannot write {path}: folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _nir().write(tmp, graph)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# -- import ----------------------------------------------------------------------------------------

def _meta(node: Any) -> dict[str, Any]:
    m = getattr(node, "metadata", None)
    return m if isinstance(m, dict) else {}


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _topological(nodes: dict[str, Any], edges: list[tuple[str, str]]) -> list[str]:
    incoming = {n: 0 for n in nodes}
    for _, d in edges:
        incoming[d] += 1
    ready = [n for n in nodes if incoming[n] == 0]
    order = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for s, d in edges:
            if s == n:
                incoming[d] -= 1
                if incoming[d] == 0:
                    ready.append(d)
    if len(order) != len(nodes):
        raise ConversionError("the NIR graph has a cycle outside a neuron subgraph; ann2snn runs feed-forward graphs")
    return order


def import_nir(graph: Any) -> SpikingModel:
    """Rebuild a :class:`SpikingModel` from a NIR graph written by :func:`to_nir` / :func:`export_nir`
    (a ``nir.NIRGraph``, or a path to read with ``nir.read``). Outputs are identical to the exported
    model's. Plain Conv / Affine / Linear / AvgPool2d / Flatten nodes from other tools are read too;
    neurons must carry ann2snn's metadata, since ann2snn runs subtractive-reset neurons only."""
    nir = _nir()
    if isinstance(graph, (str, os.PathLike)):
        path = Path(graph)
        if not path.is_file():
            raise ConversionError(f"no such file: {path}")
        try:
            graph = nir.read(path)
        except Exception as exc:  # noqa: BLE001 - h5py / nir raise many kinds for a bad file
            raise ConversionError(f"{path} is not a readable NIR file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(graph, nir.NIRGraph):
        raise ConversionError(f"import_nir takes a NIRGraph or a file path, got {type(graph).__name__}")
    nodes, edges = graph.nodes, [(_s(a), _s(b)) for a, b in graph.edges]
    ops: list[Op] = []
    value: dict[str, str] = {}  # NIR node -> the op whose output it carries
    concat_parts: dict[str, tuple[str, int, str]] = {}  # part node -> (concat, index, source value)
    bias_of: dict[str, torch.Tensor] = {}
    made: dict[tuple, str] = {}
    offenders: list[OffendingNode] = []

    def sources(name: str) -> list[str]:
        return [s for s, d in edges if d == name]

    def resolve(name: str) -> str:
        """The op carrying the sum of everything that flows into NIR node ``name``."""
        terms: list[str] = []
        groups: dict[str, dict[int, str]] = {}
        for s in sources(name):
            if s in concat_parts:
                cname, index, src = concat_parts[s]
                if cname not in groups:
                    groups[cname] = {}
                    terms.append(f"concat:{cname}")
                groups[cname][index] = src
            else:
                terms.append(value[s])
        resolved = []
        for term in terms:
            if term.startswith("concat:"):
                cname = term[len("concat:"):]
                parts = [groups[cname][i] for i in sorted(groups[cname])]
                key = ("concat", cname, *parts)
                if key not in made:
                    made[key] = cname
                    shape = (sum(_shape_of(ops, p)[0] for p in parts), *_shape_of(ops, parts[0])[1:])
                    ops.append(Op(cname, "concat", parts, shape, {"dim": 0}))
                resolved.append(made[key])
            else:
                resolved.append(term)
        if not resolved:
            raise ConversionError(f"NIR node {name!r} has no input")
        if len(resolved) == 1:
            return resolved[0]
        key = ("add", *resolved)
        if key not in made:
            made[key] = f"{name}_sum"
            ops.append(Op(made[key], "add", resolved, _shape_of(ops, resolved[0])))
        return made[key]

    for name in _topological(nodes, edges):
        node = nodes[name]
        meta = _meta(node)
        kind = _s(meta.get("ann2snn_op", ""))
        if isinstance(node, nir.Input):
            ops.append(Op(name, "input", [], tuple(int(s) for s in node.input_type["input"])))
            value[name] = name
            continue
        src = resolve(name)
        if isinstance(node, nir.Output):
            ops.append(Op("output", "output", [src], _shape_of(ops, src)))
            continue
        try:
            op = _import_node(nir, name, node, kind, meta, src, ops, bias_of, concat_parts, value)
        except _Refused as exc:
            offenders.append(OffendingNode(name, type(node).__name__, str(exc)))
            value[name] = src
            continue
        if op is not None:
            ops.append(op)
            value[name] = op.name
    if offenders:
        raise ExportError("NIR", offenders, verb="import")
    gmeta = graph.metadata if isinstance(graph.metadata, dict) else {}
    config = ConversionConfig.from_dict(json.loads(_s(gmeta["config"]))) if "config" in gmeta else None
    info = json.loads(_s(gmeta["info"])) if "info" in gmeta else {}
    info.setdefault("source", {"model": "NIR graph", "model_kind": "nir"})
    return build(ops, config, info)


class _Refused(Exception):
    pass


def _shape_of(ops: list[Op], name: str) -> tuple[int, ...]:
    for op in ops:
        if op.name == name:
            return tuple(op.shape)
    raise ConversionError(f"unknown layer {name!r}")


def _t(a: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


def _import_node(nir, name, node, kind, meta, src, ops, bias_of, concat_parts, value) -> Op | None:
    in_shape = _shape_of(ops, src)
    if kind == "concat_part":
        concat_parts[name] = (_s(meta["concat"]), int(meta["index"]), src)
        return None
    if kind == "neuron_bias":
        bias_of[_s(meta["neuron"])] = _t(node.bias)
        value[name] = src
        return None
    if kind == "neuron_value":
        value[name] = src  # the Scale(theta) after an IF node: part of the neuron
        return None
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        w = _t(node.weight)
        dims = w.ndim - 2
        groups = int(meta.get("groups", 1))
        if groups > 1:
            w = _grouped(w, groups)
        elif int(node.groups) > 1:
            groups = int(node.groups)
        if kind == "channel_affine":
            return Op(name, "channel_affine", [src], in_shape, {}, {"scale": w.reshape(-1), "shift": _t(node.bias)})
        if isinstance(node.padding, str):
            raise _Refused(f"padding={node.padding!r}")
        stride = [int(s) for s in np.atleast_1d(node.stride)] * (1 if np.ndim(node.stride) else dims)
        padding = [int(s) for s in np.atleast_1d(node.padding)] * (1 if np.ndim(node.padding) else dims)
        dilation = [int(s) for s in np.atleast_1d(node.dilation)] * (1 if np.ndim(node.dilation) else dims)
        conv = torch.nn.functional.conv1d if dims == 1 else torch.nn.functional.conv2d
        out = conv(torch.zeros(1, *in_shape), w, None, stride, padding, dilation, groups)
        return Op(name, "conv", [src], tuple(out.shape[1:]),
                  {"dims": dims, "transposed": False, "stride": stride, "padding": padding, "dilation": dilation,
                   "groups": groups, "output_padding": [0] * dims,
                   "has_bias": bool(meta.get("has_bias", True))}, {"weight": w, "bias": _t(node.bias)})
    if isinstance(node, (nir.Affine, nir.Linear)):
        w = _t(node.weight)
        bias = _t(node.bias) if isinstance(node, nir.Affine) else torch.zeros(w.shape[0])
        if kind == "channel_affine":
            return Op(name, "channel_affine", [src], in_shape, {}, {"scale": torch.diagonal(w).clone(), "shift": bias})
        return Op(name, "linear", [src], (w.shape[0],),
                  {"has_bias": bool(meta.get("has_bias", isinstance(node, nir.Affine)))}, {"weight": w, "bias": bias})
    if isinstance(node, nir.AvgPool2d):
        k = [int(v) for v in np.atleast_1d(node.kernel_size)]
        k = k * 2 if len(k) == 1 else k
        s = [int(v) for v in np.atleast_1d(node.stride)]
        s = s * 2 if len(s) == 1 else s
        p = [int(v) for v in np.atleast_1d(node.padding)]
        p = p * 2 if len(p) == 1 else p
        if kind == "adaptive_avg_pool":
            size = [int(v) for v in np.atleast_1d(meta["output_size"])]
            return Op(name, "adaptive_avg_pool", [src], (in_shape[0], *size), {"dims": 2, "output_size": size})
        out = torch.nn.functional.avg_pool2d(torch.zeros(1, *in_shape), k, s, p)
        return Op(name, "avg_pool", [src], tuple(out.shape[1:]),
                  {"dims": 2, "kernel_size": k, "stride": s, "padding": p, "ceil_mode": False,
                   "count_include_pad": True, "divisor_override": None})
    if isinstance(node, nir.Flatten):
        return Op(name, "reshape", [src], (int(np.prod(in_shape)),), {"shape": [int(np.prod(in_shape))]})
    if isinstance(node, nir.NIRGraph) and kind == "max_pool":
        k, s, p = ([int(v) for v in np.atleast_1d(meta[key])] for key in ("kernel_size", "stride", "padding"))
        out = torch.nn.functional.max_pool2d(torch.zeros(1, *in_shape), k, s, p)
        return Op(name, "max_pool", [src], tuple(out.shape[1:]),
                  {"dims": 2, "adaptive": False, "kernel_size": k, "stride": s, "padding": p, "dilation": [1, 1],
                   "ceil_mode": False})
    if kind == "neuron" and isinstance(node, (nir.NIRGraph, nir.IF)):
        threshold = _t(meta["threshold"])
        scale = node.nodes["value"].scale if isinstance(node, nir.NIRGraph) else node.v_threshold
        if not np.array_equal(_per_channel(_effective(threshold), in_shape), np.asarray(scale, np.float32)):
            raise _Refused("the neuron's thresholds in the graph differ from its ann2snn metadata (edited file?)")
        clip = meta.get("clip")
        return Op(name, "neuron", [src], in_shape,
                  {"cap": int(meta["burst_cap"]), "v0": float(meta["v0"]), "clip": None if clip is None else float(clip),
                   "layer": _s(meta.get("layer", name))},
                  {"threshold": threshold, "v0_offset": _t(meta["v0_offset"]),
                   "bias_shift": bias_of.get(name, torch.zeros_like(threshold))})
    if isinstance(node, (nir.IF, nir.LIF, nir.CubaLIF, nir.I, nir.LI, nir.CubaLI, nir.Threshold)):
        raise _Refused("a neuron without ann2snn metadata: ann2snn runs integrate-and-fire neurons with reset by "
                       "subtraction only")
    raise _Refused(f"no ann2snn equivalent of NIR {type(node).__name__}")


from_nir = import_nir
