"""The pipeline in three verbs, like torch's FX quantization: prepare -> calibrate -> to_snn.

    snn = ann2snn.convert(model, calibration_data)            # all three in one call
    prepared = ann2snn.prepare(model, config=config)         # trace, normalise, insert observers
    ann2snn.calibrate(prepared, data)                         # thresholds from data
    snn = ann2snn.to_snn(prepared)                            # observers become neurons

The user's model is never modified: tracing works on a deep copy.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, fx, nn

from . import distributed as D
from .adaptation import adapt
from .adaptation.thresholds import choose_thresholds
from .calibration.observers import ThresholdObserver
from .config import ConversionConfig, resolve_config
from .errors import CalibrationError, ConversionError
from .model import SpikingModel
from .neurons.modules import RunningMaxPool, SpikingNeuron, unique_label
from .passes import normalize as P
from .passes.patterns import Kind, classify, function_name
from .tracing import source_of, trace
from .utils import device_of, iter_inputs, progress

META_KEY = "ann2snn"


def prepare(model: nn.Module, config: ConversionConfig | dict | None = None, *, example_input: Tensor | None = None,
            **overrides: Any) -> fx.GraphModule:
    """Capture ``model`` and normalise its graph; put a threshold observer where each ReLU was.

    With ``example_input`` (a batch like the calibration data; :func:`convert` takes the first
    calibration batch) the model is captured with ``torch.export`` (:mod:`ann2snn.capture`), which
    reads real model code: shape assertions, ``if`` on the input size, fused BN + activation layers.
    Without it, ``torch.fx`` symbolic tracing is used, which needs code free of such Python.

    Raises :class:`~ann2snn.errors.UnsupportedOperationError` listing every node that cannot convert.
    """
    cfg = resolve_config(config, **overrides)
    start = time.perf_counter()
    if example_input is not None:
        from .capture import capture

        gm = capture(model, example_input)
    else:
        gm = trace(model)
    P.check_supported(gm)
    stats = {"nodes_traced": _count(gm), "capture": gm.meta.get("capture", {}).get("method", "torch.fx")}
    stats["removed"] = P.remove_passthrough(gm)
    stats["inplace_rewritten"] = P.canonicalize_inplace(gm)
    stats["leaky_split"] = P.split_leaky(gm)
    stats["bn_folded"], stats["bn_affine"] = P.fold_batchnorm(gm)
    stats["maxpool_moved"] = P.move_maxpool_before_neuron(gm)
    stats["neurons"] = insert_observers(gm, cfg)
    if cfg.spike_linear:
        stats["bipolar_neurons"] = insert_bipolar_observers(gm, cfg)
    stats["nodes_final"] = _count(gm)
    gm.meta[META_KEY] = {"config": cfg, "passes": stats, "calibrated": False,
                         "stage_times": {"prepare": round(time.perf_counter() - start, 3)}}
    return gm


def _count(gm: fx.GraphModule) -> int:
    return sum(1 for n in gm.graph.nodes if n.op not in ("placeholder", "output"))


def _observer(cfg: ConversionConfig, label: str, clip: float | None, seed: int, signed: bool = False
              ) -> ThresholdObserver:
    return ThresholdObserver(
        label, cfg.threshold, cfg.granularity == "channel", clip,
        percentile=cfg.percentile, timesteps=cfg.timesteps, v0=cfg.v0,
        burst_cap=cfg.burst_cap if cfg.neuron == "adafire" and cfg.mse_levels == "Tm" else 1,
        ltb_lr=cfg.ltb_lr, ltb_forward=cfg.ltb_forward, sample_size=cfg.sample_size, seed=seed, signed=signed,
    )


def insert_observers(gm: fx.GraphModule, cfg: ConversionConfig) -> int:
    """Replace every ReLU-like node by a call to a :class:`ThresholdObserver`. Returns their number."""
    modules = P.modules_of(gm)
    count = 0
    labels: set[str] = set()
    for node in list(gm.graph.nodes):
        c = classify(node, modules)
        if c.kind is not Kind.NEURON:
            continue
        name = f"neuron_{count}_{node.name}"
        # A ReLU module called at several places (torchvision's BasicBlock calls self.relu twice) gives
        # one neuron layer per call, each with its own state, thresholds and counts: name the later
        # calls "<module>.call<k>" so that every layer has its own name.
        origin = node.meta.get("ann2snn_path") or (node.target if node.op == "call_module" else node.name)
        label = unique_label(str(origin), labels)
        obs = _observer(cfg, label, c.cap, cfg.seed + count)
        obs.source = source_of(node)
        gm.add_submodule(name, obs)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        count += 1
    P._finish(gm)
    return count


def _origins(gm: fx.GraphModule, modules: dict[str, nn.Module]) -> dict[fx.Node, str]:
    """What each node carries: ``input`` (the network's input, constants), ``spikes`` (neuron outputs
    and linear maps of them) or ``analog`` (weight-layer outputs and everything mixed with them)."""
    origin: dict[fx.Node, str] = {}
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            origin[node] = "input"
            continue
        if node.op == "output":
            continue
        if node.op == "call_module" and isinstance(modules[node.target], ThresholdObserver):
            origin[node] = "spikes"
            continue
        kind = classify(node, modules).kind
        inputs = {origin[a] for a in node.all_input_nodes if a in origin}
        if kind is Kind.WEIGHTED or (kind is Kind.MAXPOOL and inputs != {"input"}):
            origin[node] = "analog"  # a running max-pool sends increments of a maximum, not spike counts
        elif inputs in ({"spikes"}, {"input"}):
            origin[node] = inputs.pop()
        elif not inputs:
            origin[node] = "input"
        else:
            origin[node] = "analog"
    return origin


def insert_bipolar_observers(gm: fx.GraphModule, cfg: ConversionConfig) -> int:
    """``spike_linear``: put a bipolar neuron's observer on every analog value (not the network's
    input) that reaches a weight layer, so that each weight layer is driven by spikes. The value's
    other users (a residual sum, a concatenation) take the spiking version too; outputs stay analog.
    Returns their number."""
    count = 0
    labels = {m.name for m in gm.modules() if isinstance(m, ThresholdObserver)}
    while True:
        modules = P.modules_of(gm)
        origin = _origins(gm, modules)
        src = next((n.args[0] for n in gm.graph.nodes if isinstance(n.args[0] if n.args else None, fx.Node)
                    and classify(n, modules).kind is Kind.WEIGHTED and origin.get(n.args[0]) == "analog"), None)
        if src is None:
            break
        name = f"bipolar_{count}_{src.name}"
        label = unique_label(f"{src.target if src.op == 'call_module' else src.name}.out", labels)
        obs = _observer(cfg, label, None, cfg.seed + 1000 + count, signed=True)
        obs.source = source_of(src)
        gm.add_submodule(name, obs)
        with gm.graph.inserting_after(src):
            new = gm.graph.call_module(name, (src,))
        def takes_spikes(user: fx.Node, new: fx.Node = new, modules: dict = modules) -> bool:
            # outputs stay analog, and a ReLU site on the same value integrates the value itself
            return user is not new and user.op != "output" and not (
                user.op == "call_module" and isinstance(modules.get(user.target), ThresholdObserver))

        src.replace_all_uses_with(new, delete_user_cb=takes_spikes)
        count += 1
    P._finish(gm)
    return count


def observers(gm: fx.GraphModule) -> dict[str, ThresholdObserver]:
    """The observers of a prepared graph, in graph order, keyed by submodule name."""
    return {n.target: gm.get_submodule(n.target) for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(gm.get_submodule(n.target), ThresholdObserver)}


# -- data ----------------------------------------------------------------------------------------

def _checked(x: Tensor, index: int) -> Tensor:
    if x.numel() == 0:
        raise CalibrationError(f"calibration batch {index} is empty")
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise CalibrationError(f"calibration batch {index} contains NaN or inf values")
    return x if x.is_floating_point() else x.float()


def calibrate(prepared: fx.GraphModule, data: Any, *, progress_bar: bool | None = None) -> fx.GraphModule:
    """Run calibration data through the prepared graph and fix every observer's clipping value.

    ``data`` is a tensor, or any iterable of tensors or ``(input, target)`` pairs (a DataLoader).
    LTB cycles through the data until it has done ``ltb_iters`` iterations.

    Under ``torch.distributed`` (e.g. ``torchrun``) give every rank the same data: each rank keeps
    and runs its own slice of every batch and the observers all-reduce what they measure, so all
    ranks end with the thresholds one process computes (:mod:`ann2snn.distributed`).
    """
    meta = prepared.meta.get(META_KEY)
    if meta is None:
        raise ConversionError("calibrate() needs a graph returned by ann2snn.prepare()")
    cfg: ConversionConfig = meta["config"]
    start = time.perf_counter()
    obs = observers(prepared)
    device = device_of(prepared)
    cached: list[Tensor] = []
    sizes: list[int] = []  # whole-batch sizes: distributed, ``cached`` holds this rank's slices
    ghosts: set[int] = set()  # batches too small to give this rank a row (it still joins the reductions)
    limit = cfg.calib_batches
    for i, x in enumerate(iter_inputs(data)):
        if limit is not None and i >= limit:
            break
        x = _checked(x, i)
        sizes.append(int(x.shape[0]))
        part = D.local_slice(x)
        if part.shape[0] == 0:
            ghosts.add(i)
            part = x[:1]
        cached.append(part)
    D.check_same(sizes, "the calibration batch sizes")
    if not cached:
        raise CalibrationError("calibration data is empty: give at least one batch")
    steps = {"ltb": cfg.ltb_iters, "auto": max(cfg.ltb_iters, len(cached))}.get(cfg.threshold, len(cached))
    if progress_bar is None:
        progress_bar = cfg.progress
    for o in obs.values():
        o.collecting = True
    prepared.eval()
    with torch.no_grad():
        for k in progress(range(steps), steps, f"calibrating ({cfg.threshold})", progress_bar):
            x = cached[k % len(cached)].to(device)
            for o in obs.values():
                o.ghost = k % len(cached) in ghosts
                o.ltb_active, o.sample_active = k < cfg.ltb_iters, k < len(cached)  # ``auto``: both methods
            try:
                prepared(x)
            except (RuntimeError, ValueError, IndexError) as exc:
                first = str(exc).splitlines()[0]
                raise CalibrationError(
                    f"calibration batch of shape {tuple(x.shape)} does not fit the model: {first}") from exc
    for o in obs.values():
        o.ghost, o.ltb_active, o.sample_active = False, True, True
        o.finalize()
    meta["calibrated"] = True
    meta["calibration"] = {"batches": len(cached), "iterations": steps, "samples": sum(sizes)}
    meta["example_shape"] = tuple(cached[0].shape[1:])
    meta["adapt_sample"] = _leading_samples(cached, sizes, ghosts, cfg.adapt_samples)
    meta.setdefault("stage_times", {})["calibrate"] = round(time.perf_counter() - start, 3)
    return prepared


def _leading_samples(batches: list[Tensor], sizes: list[int], ghosts: set[int], n: int) -> Tensor:
    """The first ``n`` samples of the data; distributed, gathered from the ranks' slices (every rank
    gets them all, like the calibration data itself)."""
    out, seen = [], 0  # seen: samples of the whole data before the current batch
    for i, (b, size) in enumerate(zip(batches, sizes, strict=True)):
        if D.is_distributed():
            b = D.all_gather_cat(b[:0] if i in ghosts else b)
        out.append(b[: n - seen])
        seen += size
        if seen >= n:
            break
    return torch.cat(out)


def to_snn(prepared: fx.GraphModule, caps: dict[str, int] | None = None, *, with_adapt: bool = True,
           progress_bar: bool | None = None) -> SpikingModel:
    """Build the spiking model: each observer becomes a :class:`SpikingNeuron` with threshold
    ``lambda / cap``; each max-pool becomes a :class:`RunningMaxPool`. ``prepared`` is not modified.

    With ``with_adapt`` (default), the steps that need the spiking model run next on the calibration
    samples kept by :func:`calibrate`: AdaFire burst-cap allocation and bias / potential correction,
    as the config asks (see :func:`adapt`). ``caps`` fixes burst caps by layer name instead.
    """
    meta = prepared.meta.get(META_KEY)
    if meta is None or not meta.get("calibrated"):
        raise ConversionError("to_snn() needs a prepared graph that has been calibrated (ann2snn.calibrate)")
    cfg: ConversionConfig = meta["config"]
    start = time.perf_counter()
    caps = caps or {}
    graph = copy.deepcopy(prepared.graph)
    modules: dict[str, nn.Module] = {}
    layers = []
    candidates: dict[str, dict[str, Tensor]] = {}  # threshold="auto": each method's thresholds per layer
    orig = dict(prepared.named_modules())
    for node in graph.nodes:
        if node.op == "get_attr":
            modules[node.target] = copy.deepcopy(_get_attr(prepared, node.target))
        if node.op != "call_module":
            continue
        mod = orig[node.target]
        if isinstance(mod, ThresholdObserver):
            cap = int(caps.get(mod.name, cfg.burst_cap if cfg.neuron == "adafire" else 1))
            theta = mod.result / cap
            if mod.candidates:
                candidates[mod.name] = {method: lam / cap for method, lam in mod.candidates.items()}
            if cfg.neuron == "if" and cfg.step_cap > 1:  # IF thresholds, bursts of whole thresholds
                cap = cfg.step_cap
            neuron = SpikingNeuron(theta, cap=cap, v0=cfg.v0, clip=mod.clip, name=mod.name,
                                   spread_steps=cfg.timesteps if cfg.v0_mode == "spread" else 0,
                                   signed=cfg.signed, bipolar=mod.signed)
            modules[node.target] = neuron
            layers.append({"name": mod.name, "channels": int(mod.result.numel()), "cap": cap,
                           "clip_value_mean": float(mod.result.mean()), "clip_value_max": float(mod.result.max()),
                           "observed_max_mean": float(mod.max.mean()), "source": getattr(mod, "source", None)})
        elif classify(node, orig).kind is Kind.MAXPOOL:
            modules[node.target] = RunningMaxPool(pool=copy.deepcopy(mod))
        else:
            modules[node.target] = copy.deepcopy(mod)
    for node in list(graph.nodes):
        if node.op == "call_function" and classify(node, orig).kind is Kind.MAXPOOL:
            target = f"maxpool_{node.name}"
            modules[target] = RunningMaxPool(function=function_name(node.target))
            with graph.inserting_after(node):
                new = graph.call_module(target, node.args, node.kwargs)
            node.replace_all_uses_with(new)
            graph.erase_node(node)
    gm = fx.GraphModule(modules, graph, class_name="SpikingGraph")
    gm.eval()
    info = {"passes": dict(meta["passes"]), "calibration": dict(meta.get("calibration", {})),
            "layers": layers, "example_shape": list(meta.get("example_shape", ())),
            "stage_times": dict(meta.get("stage_times", {}))}
    snn = SpikingModel(gm, cfg, info)
    if candidates and "adapt_sample" in meta:  # the thresholds made for this T, checked on the spiking model
        choose_thresholds(snn, meta["adapt_sample"], candidates)
    snn.info["stage_times"]["thresholds"] = round(time.perf_counter() - start, 3)
    if with_adapt and not caps and "adapt_sample" in meta:
        adapt(snn, meta["adapt_sample"], progress_bar=progress_bar)
    return snn


def _get_attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def convert(model: nn.Module, calibration_data: Any, config: ConversionConfig | dict | None = None,
            **overrides: Any) -> SpikingModel:
    """Convert a pretrained ReLU network into a :class:`SpikingModel` without training.

    Args:
        model: the ANN (never modified).
        calibration_data: a tensor, or an iterable of tensors or ``(input, target)`` pairs.
        config: a :class:`ConversionConfig` or dict; ``overrides`` change single fields,
            e.g. ``convert(model, loader, threshold="mse", timesteps=16)``.
    """
    cfg = resolve_config(config, **overrides)
    if isinstance(calibration_data, Iterator):  # read once: the first batch is also the capture example
        calibration_data = list(itertools.islice(calibration_data, cfg.calib_batches))
    example = next(iter_inputs(calibration_data), None)
    if example is None:
        raise CalibrationError("calibration data is empty: give at least one batch")
    prepared = prepare(model, cfg, example_input=_checked(example, 0))
    calibrate(prepared, calibration_data)
    return to_snn(prepared)
