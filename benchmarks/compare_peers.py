"""ann2snn side by side with SpikingJelly's ANN-to-SNN converter on the same checkpoints and data.

    pip install --no-deps spikingjelly==2.0.0 && pip install tqdm loguru requests   # the peer (once)
    OMP_WAIT_POLICY=PASSIVE python benchmarks/compare_peers.py            # every phase, every model

Nothing is installed by this script; without SpikingJelly it runs ann2snn's side only and says how to
install the peer. Phases (``--phases``, in this order; results are saved after every run to
``benchmarks/results/peers.json`` and a rerun skips what is already there):

* ``screen``: every SpikingJelly 2.0 mode that applies to a ReLU CNN (``RateCodingRecipe`` with
  ``mode`` = max / 99.9 % / 99.99 % / a fraction of the max, layer-wise and channel-wise, the latter with
  and without ``half_threshold`` and, where a ReLU is followed by a max-pool, ``pre_spike_maxpool``;
  ``LocalThresholdBalancingRecipe``) on ``--screen-samples`` test images, one simulation to T = 128 read
  at every T.
* ``peer``: the SpikingJelly modes that were best at some T in the screen, on the full test subset.
* ``ours``: ann2snn IF+LTB (one run to T = 128), IF+MSE+light (converted for each T), and the best
  configuration, AdaFire+MSE+advanced (converted for each T <= 16; results already in
  ``benchmarks/results/adafire*.json`` for the same checkpoint and test subset are reused, the rest is
  run when ``--adafire`` is given).
* ``coverage``: which architectures each tool converts without hand edits (the zoo, plus
  torchvision-style ResNet-18 / MobileNetV2 / VGG-11-BN / FCN with random weights, see peer_models.py),
  with the error where it fails.
* ``measures``: wall time per sample and peak memory of an evaluation (batch 100, T = 32, no counting),
  each in a fresh process, as ratios to ann2snn IF+LTB.
* ``plots``: accuracy against T and SOPs against accuracy, into docs/img/.
* ``tables``: print the full markdown tables of the results (every mode and T; docs/results.md shows
  the best of each tool, written by ``benchmarks/make_tables.py``).

SOPs are counted the same way on both sides (ALGORITHMS.md §7): every spike that reaches a synaptic
layer costs one accumulate per outgoing synapse (the layer's fan-out map, ann2snn.energy.fanout_map),
traced through scaling, pooling (average pooling as sum pooling), reshapes and residual additions;
spikes through an identity shortcut cost one accumulate; layers fed by analog values (the first layer,
a layer after a max-pool of currents) cost their dense MACs every step. For SpikingJelly a forward hook
records every IF node's spikes each step and the same event tracer as ann2snn's SynapticCounter walks
its graph (:class:`PeerCounter`).

Hand edits, only where SpikingJelly cannot convert the zoo model as it is (stated in the results):
the zoo ResNet applies its ReLUs functionally (``F.relu``, ``torch.relu``), which SpikingJelly rejects,
so it gets the same network with each functional ReLU turned into an ``nn.ReLU`` module (identical
function); the zoo MobileNet uses ReLU6, which SpikingJelly cannot convert at all, so it gets the
network with ReLU6 replaced by ReLU (a different function: its own ANN accuracy is reported).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # SpikingJelly's calibration progress bars

import torch
import torch.nn.functional as F
from common import RESULTS, ROOT, provenance, setup_classifier
from torch import fx, nn

import ann2snn
from ann2snn.energy import _additive_operands, _EventTracer, dense_macs, fanout_map
from ann2snn.evaluation import evaluate_classifier
from ann2snn.passes.patterns import WEIGHTED_MODULES

INSTALL = "pip install --no-deps spikingjelly==2.0.0 && pip install tqdm loguru requests"
TS = [2, 4, 8, 16, 32, 64, 128]
MODELS = ["vgg_fmnist", "resnet_fmnist", "mobilenet_fmnist"]
OUT = RESULTS / "peers.json"
IMG = ROOT / "docs" / "img"


def have_spikingjelly() -> bool:
    try:
        import spikingjelly.activation_based.ann2snn  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------- SpikingJelly modes

def sj_modes(has_relu_maxpool: bool) -> dict[str, dict]:
    """Every RateCodingRecipe / LocalThresholdBalancingRecipe setting that applies to a ReLU CNN."""
    # LTB: the calibration images cycled 8 times (64 batches of 128 from 1,024 images, the budget of
    # ann2snn's LTB, ltb_iters=64); one pass over them (8 batches) is screened too
    modes: dict[str, dict] = {"ltb": {"recipe": "ltb", "passes": 8}, "ltb 1 pass": {"recipe": "ltb", "passes": 1}}
    for mode, tag in (("Max", "max"), ("99.9%", "p99.9"), ("99.99%", "p99.99"), (0.8, "0.8max")):
        modes[f"rate {tag} layer"] = {"recipe": "rate", "mode": mode}
        for half in (False, True):
            for pre in ((False, True) if has_relu_maxpool else (False,)):
                name = f"rate {tag} channel" + (" +half" if half else "") + (" +prepool" if pre else "")
                modes[name] = {"recipe": "rate", "mode": mode, "channel_wise": True, "half_threshold": half,
                               "pre_spike_maxpool": pre}
    return modes


def sj_convert(model: nn.Module, calib: list[torch.Tensor], spec: dict) -> nn.Module:
    from spikingjelly.activation_based.ann2snn import (
        FXConverter,
        LocalThresholdBalancingRecipe,
        RateCodingRecipe,
    )
    if spec["recipe"] == "ltb":
        recipe = LocalThresholdBalancingRecipe(list(calib) * spec.get("passes", 1))
    else:
        recipe = RateCodingRecipe(calib, mode=spec["mode"], channel_wise=spec.get("channel_wise", False),
                                  pre_spike_maxpool=spec.get("pre_spike_maxpool", False),
                                  half_threshold=spec.get("half_threshold", False))
    from spikingjelly.logger import logger
    logger.remove()  # its per-conversion info line would drown the benchmark's output
    snn = FXConverter(recipe).convert(copy.deepcopy(model))
    return snn.eval()  # new modules (dropout wrappers) are created in training mode


def _functional_relus_to_modules(model: nn.Module) -> fx.GraphModule:
    """The same network with every functional ReLU (F.relu, torch.relu, Tensor.relu) as an nn.ReLU module."""
    gm = fx.symbolic_trace(copy.deepcopy(model))
    i = 0
    for node in list(gm.graph.nodes):
        is_fn = node.op == "call_function" and node.target in (F.relu, torch.relu, torch.relu_)
        is_method = node.op == "call_method" and node.target in ("relu", "relu_")
        if is_fn or is_method:
            name = f"relu_module_{i}"
            i += 1
            gm.add_submodule(name, nn.ReLU())
            with gm.graph.inserting_after(node):
                new = gm.graph.call_module(name, (node.args[0],))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm


def _relu6_to_relu(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, nn.ReLU(inplace=True))
    return model


def peer_input_model(name: str, model: nn.Module) -> tuple[nn.Module, str | None]:
    """The model SpikingJelly is given for the accuracy comparison, and the hand edit it needed (or None)."""
    if any(isinstance(m, nn.ReLU6) for m in model.modules()):
        return _relu6_to_relu(model), "ReLU6 -> ReLU (SpikingJelly cannot convert ReLU6; a different function)"
    gm = fx.symbolic_trace(copy.deepcopy(model))
    functional = [n for n in gm.graph.nodes if (n.op == "call_function" and n.target in (F.relu, torch.relu))
                  or (n.op == "call_method" and n.target in ("relu", "relu_"))]
    if functional:
        return _functional_relus_to_modules(model), (f"{len(functional)} functional ReLUs -> nn.ReLU modules "
                                                     "(SpikingJelly only converts nn.ReLU modules; same function)")
    return model, None


def has_relu_then_maxpool(model: nn.Module) -> bool:
    gm = fx.symbolic_trace(copy.deepcopy(model))
    mods = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op == "call_module" and type(mods[node.target]) is nn.ReLU:
            users = list(node.users)
            if len(users) == 1 and users[0].op == "call_module" and isinstance(mods[users[0].target], nn.MaxPool2d):
                return True
    return False


# ------------------------------------------------------------------------------------- peer counting

class _PeerTracer(_EventTracer):
    """ann2snn's event tracer, taught SpikingJelly's spiking nodes and voltage scalers."""

    def _events(self, node: fx.Node):
        if node.op == "call_module":
            from spikingjelly.activation_based.ann2snn.modules import ChannelVoltageScaler, VoltageScaler
            from spikingjelly.activation_based.neuron import BaseNode
            mod = self.modules[node.target]
            if isinstance(mod, BaseNode):
                return self.sources.get(node.target)
            if isinstance(mod, (VoltageScaler, ChannelVoltageScaler)):  # scaling keeps the event count
                return self.events(node.args[0])
        return super()._events(node)


class PeerCounter:
    """Spikes, SOPs and MACs of a SpikingJelly-converted GraphModule run step by step (single-step mode).

    Forward hooks record each IF node's spikes during a step; :meth:`step` then traces them to every
    synaptic layer and multiplies by its fan-out map, like ann2snn's SynapticCounter. Totals are summed
    over the batch, in float64.
    """

    def __init__(self, gm: fx.GraphModule):
        from spikingjelly.activation_based.ann2snn.modules import ChannelVoltageScaler, VoltageScaler
        from spikingjelly.activation_based.neuron import BaseNode
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.tracer = _PeerTracer(gm, poisson_input=False)
        self.synaptic = [n for n in gm.graph.nodes
                         if n.op == "call_module" and isinstance(self.modules[n.target], WEIGHTED_MODULES)]
        self.neurons = [n for n in gm.graph.nodes
                        if n.op == "call_module" and isinstance(self.modules[n.target], BaseNode)]
        self.shortcuts: list[list[fx.Node]] = []
        for n in self.neurons:
            src = n.args[0]
            while (isinstance(src, fx.Node) and src.op == "call_module"
                   and isinstance(self.modules[src.target], (VoltageScaler, ChannelVoltageScaler))):
                src = src.args[0]
            operands = _additive_operands(src)
            if len(operands) > 1:
                self.shortcuts.append(operands)
        self.spikes: dict[str, torch.Tensor] = {}
        self.shapes: dict[str, tuple] = {}
        self.fan: dict[str, torch.Tensor] = {}
        self.handles = []
        for n in self.neurons:
            self.handles.append(self.modules[n.target].register_forward_hook(self._neuron_hook(n.target)))
        for n in self.synaptic:
            self.handles.append(self.modules[n.target].register_forward_hook(self._shape_hook(n.target)))
        self.sops = self.macs = self.spike_total = 0.0

    def _neuron_hook(self, name: str):
        def hook(_m, _inp, out):
            self.spikes[name] = out.detach()
        return hook

    def _shape_hook(self, name: str):
        def hook(_m, inp, out):
            self.shapes[name] = (tuple(inp[0].shape[1:]), tuple(out.shape[1:]))
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def step(self) -> None:
        """Count the step that just ran (call after every forward)."""
        sources = {k: v.to(torch.float64) for k, v in self.spikes.items()}
        self.tracer.new_step(None, sources)
        for node in self.synaptic:
            mod = self.modules[node.target]
            in_shape, out_shape = self.shapes[node.target]
            ev = self.tracer.events(node.args[0])
            if ev is None:
                batch = next(iter(sources.values())).shape[0] if sources else 1
                self.macs += float(dense_macs(mod, in_shape, out_shape)) * batch
            else:
                fan = self.fan.get(node.target)
                if fan is None:
                    fan = self.fan[node.target] = fanout_map(mod, torch.Size(in_shape), ev.device).to(torch.float64)
                self.sops += float((ev.flatten(1) @ fan.reshape(-1)).sum())
        for operands in self.shortcuts:
            for operand in operands:
                ev = self.tracer.events(operand)
                if ev is not None:
                    self.sops += float(ev.sum())
        self.spike_total += float(sum(float(v.sum()) for v in sources.values()))
        self.tracer.new_step(None, {})
        self.spikes = {}


def run_peer(snn: nn.Module, x: torch.Tensor, y: torch.Tensor, tmax: int, batch_size: int = 250,
             count: bool = True) -> dict:
    """Accuracy after every t = 1..tmax (mean output so far) and cumulative SOPs / MACs per sample."""
    from spikingjelly.activation_based import functional
    correct = torch.zeros(tmax, dtype=torch.long)
    sops = torch.zeros(tmax, dtype=torch.float64)
    macs = torch.zeros(tmax, dtype=torch.float64)
    spikes = 0.0
    counter = PeerCounter(snn) if count else None
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
                functional.reset_net(snn)
                total = None
                if counter is not None:
                    counter.sops = counter.macs = counter.spike_total = 0.0
                for t in range(tmax):
                    out = snn(xb)
                    total = out.clone() if total is None else total.add_(out)
                    correct[t] += int((total.argmax(1) == yb).sum())
                    if counter is not None:
                        counter.step()
                        sops[t] += counter.sops
                        macs[t] += counter.macs
                if counter is not None:
                    spikes += counter.spike_total
    finally:
        if counter is not None:
            counter.close()
    n = len(y)
    return {"accuracy_per_t": (correct.double() / n).tolist(), "sops_per_t": (sops / n).tolist(),
            "macs_per_t": (macs / n).tolist(), "spikes": spikes / n, "seconds": time.perf_counter() - start,
            "samples": n}


def _at(run: dict, ts: list[int]) -> dict:
    rows = {}
    for t in ts:
        if t <= len(run["accuracy_per_t"]):
            rows[str(t)] = {"accuracy": run["accuracy_per_t"][t - 1],
                            "sops": run["sops_per_t"][t - 1] if run.get("sops_per_t") else None,
                            "macs": run["macs_per_t"][t - 1] if run.get("macs_per_t") else None}
    return rows


# ---------------------------------------------------------------------------------------- results IO

def load_results() -> dict:
    if OUT.exists():
        return json.loads(OUT.read_text())
    return {"models": {}, "coverage": {}, "measures": {}}


def save_results(res: dict, argv: list[str]) -> None:
    res.setdefault("provenance_runs", [])
    prov = provenance("python benchmarks/compare_peers.py " + " ".join(argv))
    res["provenance"] = prov
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=1, default=float))


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# -------------------------------------------------------------------------------------------- phases

def phase_screen(res, args, name, model, xc, xt, yt):
    entry = res["models"][name]
    peer_model, edit = peer_input_model(name, model)
    entry["peer_edit"] = edit
    if edit:
        with torch.no_grad():
            entry["peer_ann_accuracy"] = float((peer_model(xt).argmax(1) == yt).float().mean())
    n = args.screen_samples
    screen = entry.setdefault("screen", {"samples": n, "modes": {}})
    calib = list(xc.split(128))
    for mode, spec in sj_modes(has_relu_then_maxpool(peer_model)).items():
        if mode in screen["modes"]:
            continue
        try:
            t0 = time.perf_counter()
            snn = sj_convert(peer_model, calib, spec)
            conv = time.perf_counter() - t0
            run = run_peer(snn, xt[:n], yt[:n], args.tmax, count=False)
            screen["modes"][mode] = {"spec": spec, "convert_seconds": conv, "seconds": run["seconds"],
                                     "accuracy": {str(t): run["accuracy_per_t"][t - 1] for t in args.ts}}
            log(f"{name:<17} screen {mode:<32} " + " ".join(f"{run['accuracy_per_t'][t - 1] * 100:5.1f}"
                                                                for t in args.ts) + f"  ({run['seconds']:.0f}s)")
        except Exception as exc:  # a mode that fails is a result too
            screen["modes"][mode] = {"spec": spec, "error": f"{type(exc).__name__}: {exc}"}
            log(f"{name:<17} screen {mode:<32} FAILED {type(exc).__name__}: {exc}")
        save_results(res, args.argv)


def pick_peer_modes(entry: dict, ts: list[int], top: int) -> list[str]:
    modes = {k: v for k, v in entry["screen"]["modes"].items() if "accuracy" in v}
    chosen: list[str] = []
    for t in ts:
        best = max(modes, key=lambda m: modes[m]["accuracy"][str(t)])
        if best not in chosen:
            chosen.append(best)
    if len(chosen) > top:  # keep those best at the lowest T (where the comparison is hardest)
        chosen = chosen[:top]
    return chosen


def phase_peer(res, args, name, model, xc, xt, yt):
    entry = res["models"][name]
    peer_model, _ = peer_input_model(name, model)
    specs = sj_modes(has_relu_then_maxpool(peer_model))
    chosen = pick_peer_modes(entry, args.ts, args.top)
    if "ltb" not in chosen:
        chosen.append("ltb")  # SpikingJelly's newest recipe, always shown in full
    peer = entry.setdefault("peer", {})
    calib = list(xc.split(128))
    for mode in chosen:
        if mode in peer:
            continue
        t0 = time.perf_counter()
        snn = sj_convert(peer_model, calib, specs[mode])
        conv = time.perf_counter() - t0
        run = run_peer(snn, xt, yt, args.tmax, count=True)
        peer[mode] = {"spec": specs[mode], "convert_seconds": conv, "seconds": run["seconds"],
                      "seconds_per_sample_per_step": run["seconds"] / len(yt) / args.tmax,
                      "spikes_per_sample": run["spikes"], "rows": _at(run, args.ts)}
        log(f"{name:<17} SJ {mode:<32} " + " ".join(f"{run['accuracy_per_t'][t - 1] * 100:5.1f}" for t in args.ts)
            + f"  SOPs@8 {run['sops_per_t'][7] / 1e6:.1f}M ({run['seconds']:.0f}s)")
        save_results(res, args.argv)


OURS = {
    "IF+LTB": dict(threshold="ltb"),
    "IF+MSE+light": dict(threshold="mse", correction="light"),
    "AdaFire+MSE+advanced": dict(threshold="mse", neuron="adafire", correction="advanced"),
}


def _reused_adafire(name: str, test_samples: int, since: str = "") -> dict:
    """AdaFire+MSE+advanced rows from earlier result files with this model and the same test subset;
    at each T the newest file's row (the library's defaults change: the newest measures them)."""
    rows, sources, dates = {}, {}, {}
    files = [(f, json.loads(f.read_text())) for f in RESULTS.glob("adafire*.json")]
    files = [(f, d) for f, d in files if d.get("provenance", {}).get("date", "") >= since]
    for f, d in sorted(files, key=lambda fd: fd[1].get("provenance", {}).get("date", ""), reverse=True):
        e = d.get("models", {}).get(name)
        if not e or e.get("test_samples") != test_samples:
            continue
        cmd = d.get("provenance", {}).get("command", "")
        if "--calib-samples" in cmd:  # only runs with bench_adafire's default calibration (1024 images)
            continue
        for t, r in e.get("configs", {}).get("AdaFire+MSE+advanced", {}).items():
            if t not in rows:
                rows[t] = {"accuracy": r["accuracy"], "sops": r["sops"], "macs": r.get("macs"),
                           "ceiling": r.get("ceiling"), "convert_seconds": r.get("convert_seconds")}
                sources[t] = f"{f.name} (commit {d.get('provenance', {}).get('commit')})"
                dates[t] = d.get("provenance", {}).get("date", "")
    return {"rows": rows, "sources": sources, "dates": dates}


def phase_ours(res, args, name, model, xc, xt, yt):
    entry = res["models"][name]
    ours = entry.setdefault("ours", {})
    calib = xc.split(128)
    if "IF+LTB" not in ours:
        t0 = time.perf_counter()
        snn = ann2snn.convert(model, calib, **OURS["IF+LTB"], timesteps=args.tmax, progress=False)
        conv = time.perf_counter() - t0
        r = evaluate_classifier(snn, (xt, yt), args.tmax, ceiling_at=[], batch_size=250, progress=False)
        ours["IF+LTB"] = {"convert_seconds": conv, "seconds": r.seconds,
                          "seconds_per_sample_per_step": r.seconds / len(yt) / args.tmax,
                          "rows": _at({"accuracy_per_t": r.accuracy_per_t, "sops_per_t": r.sops_per_t,
                                       "macs_per_t": r.macs_per_t}, args.ts)}
        log(f"{name:<17} ours IF+LTB " + " ".join(f"{r.accuracy_per_t[t - 1] * 100:5.1f}" for t in args.ts)
            + f" ({r.seconds:.0f}s)")
        save_results(res, args.argv)
    mse = ours.setdefault("IF+MSE+light", {"rows": {}, "note": "converted for each T <= 32 (timesteps=T); "
                                           "T = 64 and 128 read from the T = 32 conversion run on"})
    for t in [t for t in args.ts if t <= 32 and (args.mse_ts is None or t in args.mse_ts)]:
        if str(t) in mse["rows"]:
            continue
        run_to = args.tmax if t == 32 else t
        t0 = time.perf_counter()
        snn = ann2snn.convert(model, calib, **OURS["IF+MSE+light"], timesteps=t, progress=False)
        conv = time.perf_counter() - t0
        r = evaluate_classifier(snn, (xt, yt), run_to, ceiling_at=[], batch_size=250, progress=False)
        got = _at({"accuracy_per_t": r.accuracy_per_t, "sops_per_t": r.sops_per_t, "macs_per_t": r.macs_per_t},
                  [t] + ([u for u in args.ts if u > 32] if t == 32 else []))
        for v in got.values():
            v["convert_seconds"] = conv
        mse["rows"].update(got)
        log(f"{name:<17} ours IF+MSE+light T={t}: " + " ".join(f"{k}:{v['accuracy'] * 100:.1f}" for k, v in got.items()))
        save_results(res, args.argv)
    ada = ours.setdefault("AdaFire+MSE+advanced", {"rows": {}, "sources": {}})
    dates = ada.setdefault("dates", {})
    if args.adafire_since:  # rows measured before the library's defaults changed are dropped
        for t in [t for t in ada["rows"] if dates.get(t, "") < args.adafire_since]:
            del ada["rows"][t]
            ada["sources"].pop(t, None)
            dates.pop(t, None)
    reused = _reused_adafire(name, len(yt), args.adafire_since or "")
    for t, row in reused["rows"].items():
        # a row reused earlier gives way to a newer file's; a row converted here is kept
        stale = t in ada["rows"] and ada["sources"].get(t, "").startswith("reused from")
        if (t not in ada["rows"] or stale) and int(t) in args.ts:
            ada["rows"][t] = row
            ada["sources"][t] = "reused from " + reused["sources"][t]
            dates[t] = reused["dates"][t]
    if args.adafire:
        for t in [t for t in args.ts if t <= args.adafire_tmax]:
            if str(t) in ada["rows"]:
                continue
            t0 = time.perf_counter()
            snn = ann2snn.convert(model, calib, **OURS["AdaFire+MSE+advanced"], timesteps=t, adapt_samples=128,
                                  progress=False)
            conv = time.perf_counter() - t0
            r = evaluate_classifier(snn, (xt, yt), t, ceiling_at=[], batch_size=250, progress=False)
            ada["rows"][str(t)] = {"accuracy": r.accuracy, "sops": r.energy.sops, "macs": r.energy.macs,
                                   "convert_seconds": conv}
            ada["sources"][str(t)] = "this run"
            dates[str(t)] = provenance("")["date"]
            log(f"{name:<17} ours AdaFire+MSE+advanced T={t}: {r.accuracy * 100:.1f} (convert {conv:.0f}s)")
            save_results(res, args.argv)
    save_results(res, args.argv)


# ------------------------------------------------------------------------------------------ coverage

def coverage_models() -> dict:
    from peer_models import TORCHVISION_STYLE

    from ann2snn.zoo import create_model, get_entry, list_models
    out = {}
    for name in list_models():
        e = get_entry(name)
        out[name] = (lambda n=name: create_model(n, pretrained=False), tuple(e.input_shape), e.description)
    from ann2snn.zoo.hed import HED
    out["hed"] = (lambda: HED(side_outputs=True), (3, 64, 64),
                  "HED edge detector (VGG-16, 5 side outputs, bilinear upsampling, dict output), random weights")
    for name, (factory, shape, desc) in TORCHVISION_STYLE.items():
        out[name] = (factory, shape, desc + ", random weights")
    return out


def _first_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return re.sub(r" at 0x[0-9a-f]+", "", f"{type(exc).__name__}: {msg[0] if msg else ''}")[:300]


def coverage_one(tool: str, factory, shape) -> dict:
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(8, *shape)
    calib = [x[:4], x[4:]]
    try:
        if tool == "ann2snn":
            snn = ann2snn.convert(model, calib, threshold="ltb", timesteps=4, progress=False)
            out = snn.run(x[:2], 4)
            neurons = len(list(snn.neurons())) if hasattr(snn, "neurons") else None
        else:
            from spikingjelly.activation_based import functional
            from spikingjelly.activation_based.neuron import BaseNode
            recipe = {"recipe": "ltb"} if tool == "spikingjelly" else {"recipe": "rate", "mode": "Max"}
            snn = sj_convert(model, calib, recipe)
            functional.reset_net(snn)
            with torch.no_grad():
                for _ in range(4):
                    out = snn(x[:2])
            neurons = sum(isinstance(m, BaseNode) for m in snn.modules())
            left = [type(m).__name__ for m in snn.modules() if isinstance(m, (nn.ReLU, nn.ReLU6, nn.Hardtanh))]
            if left:  # converted without an error, but some activations stayed analog
                return {"ok": False, "error": f"ran, but {len(left)} activations stayed analog ({', '.join(sorted(set(left)))})"}
        shape_out = {k: list(v.shape) for k, v in out.items()} if isinstance(out, dict) else list(out.shape)
        return {"ok": True, "neuron_layers": neurons, "output": shape_out}
    except Exception as exc:
        return {"ok": False, "error": _first_line(exc)}


def phase_coverage(res, args):
    cov = res.setdefault("coverage", {})
    tools = ["ann2snn"] + (["spikingjelly", "spikingjelly-rate"] if have_spikingjelly() else [])
    for name, (factory, shape, desc) in coverage_models().items():
        row = cov.setdefault(name, {"description": desc, "input_shape": list(shape)})
        for tool in tools:
            if tool in row:
                continue
            row[tool] = coverage_one(tool, factory, shape)
            r = row[tool]
            log(f"coverage {name:<18} {tool:<13} " + ("ok" if r["ok"] else "FAILS: " + r["error"]))
            save_results(res, args.argv)


# ------------------------------------------------------------------------------------------ measures

def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def measure_child(spec: dict) -> dict:
    """One evaluation in this (fresh) process: wall time per sample and peak RSS above the start."""
    torch.set_num_threads(1)
    model, xc, xt, yt, _ = setup_classifier(spec["model"], 1024, spec["samples"])
    calib = list(xc.split(128))
    T = spec["T"]
    if spec["tool"] == "ann2snn":
        snn = ann2snn.convert(model, calib, threshold="ltb", timesteps=T, progress=False)
        evaluate_classifier(snn, (xt[:2], yt[:2]), 2, energy=None, ceiling_at=[], progress=False)  # warm-up
        Path("/proc/self/clear_refs").write_text("5")
        base = _status("VmRSS")
        t0 = time.perf_counter()
        with torch.no_grad():
            out = snn.run(xt, T)
    else:
        peer_model, _ = peer_input_model(spec["model"], model)
        spec_mode = sj_modes(True).get(spec["mode"]) or sj_modes(False)[spec["mode"]]
        snn = sj_convert(peer_model, calib, spec_mode)
        run_peer(snn, xt[:2], yt[:2], 2, count=False)  # warm-up
        from spikingjelly.activation_based import functional
        Path("/proc/self/clear_refs").write_text("5")
        base = _status("VmRSS")
        t0 = time.perf_counter()
        with torch.no_grad():
            functional.reset_net(snn)
            out = sum(snn(xt) for _ in range(T)) / T
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    return {"seconds_per_sample": seconds / len(yt), "peak_rss_mb": peak / 2**20,
            "peak_above_start_mb": (peak - base) / 2**20, "accuracy": float((out.argmax(1) == yt).float().mean())}


def phase_measures(res, args):
    meas = res.setdefault("measures", {})
    for name in args.models:
        entry = res["models"].get(name, {})
        modes = [("ann2snn", "IF+LTB")]
        if have_spikingjelly():  # SpikingJelly's mode that is most accurate at T = 8 on this model
            modes.append(("spikingjelly", _best_peer_mode(entry, 8) or "ltb"))
        m = meas.setdefault(name, {"batch": args.measure_samples, "T": 32})
        for tool, mode in modes:
            key = f"{tool}:{mode}"
            if key in m:
                continue
            spec = {"model": name, "tool": tool, "mode": mode, "T": 32, "samples": args.measure_samples}
            env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
            p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                               text=True, env=env, cwd=ROOT)
            if p.returncode != 0:
                m[key] = {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"rc {p.returncode}"}
            else:
                m[key] = json.loads(p.stdout.strip().splitlines()[-1])
            log(f"measures {name:<17} {key:<40} {m[key]}")
            save_results(res, args.argv)
        ref = m.get("ann2snn:IF+LTB", {})
        for v in m.values():
            if isinstance(v, dict) and "seconds_per_sample" in v and "seconds_per_sample" in ref:
                v["time_ratio_to_ann2snn"] = v["seconds_per_sample"] / ref["seconds_per_sample"]
                v["memory_ratio_to_ann2snn"] = v["peak_above_start_mb"] / max(ref["peak_above_start_mb"], 1e-9)
        save_results(res, args.argv)


def _best_peer_mode(entry: dict, t: int) -> str | None:
    peer = entry.get("peer", {})
    if not peer:
        return None
    return max(peer, key=lambda m: peer[m]["rows"].get(str(t), {}).get("accuracy", -1))


# --------------------------------------------------------------------------------------------- plots

def phase_plots(res, args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    IMG.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.models if n in res["models"]]
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.2), squeeze=False)
    fig2, axes2 = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.2), squeeze=False)
    for ax, ax2, name in zip(axes[0], axes2[0], names, strict=True):
        e = res["models"][name]
        for label, rows, style in _series(e):
            ts = sorted(int(t) for t in rows)
            acc = [rows[str(t)]["accuracy"] * 100 for t in ts]
            ax.plot(ts, acc, style, label=label, marker="o", ms=3)
            pts = [(rows[str(t)]["sops"] / 1e6, rows[str(t)]["accuracy"] * 100) for t in ts
                   if rows[str(t)].get("sops") is not None]
            if pts:
                ax2.plot(*zip(*pts, strict=True), style, label=label, marker="o", ms=3)
        ax.axhline(e["ann_accuracy"] * 100, color="k", lw=1, ls=":", label=f"ANN {e['ann_accuracy'] * 100:.1f}")
        if e.get("peer_ann_accuracy") is not None:
            ax.axhline(e["peer_ann_accuracy"] * 100, color="gray", lw=1, ls="-.",
                       label=f"ANN given to SJ {e['peer_ann_accuracy'] * 100:.1f}")
        for a, xl in ((ax, "T (timesteps)"), (ax2, "SOPs per sample (millions)")):
            a.set_xscale("log", base=2 if a is ax else 10)
            a.set_xlabel(xl)
            a.set_ylabel("test accuracy (%)")
            a.set_title(f"{name} ({e['test_samples']} test images)")
            a.set_ylim(max(0, min(60, a.get_ylim()[0])), 100)
            a.grid(alpha=0.3)
            a.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(IMG / "peers_accuracy.png", dpi=110)
    fig2.tight_layout()
    fig2.savefig(IMG / "peers_sops.png", dpi=110)
    log(f"wrote {IMG / 'peers_accuracy.png'} and {IMG / 'peers_sops.png'}")


def _series(e: dict):
    styles = {"IF+LTB": "b-", "IF+MSE+light": "c-", "AdaFire+MSE+advanced": "g-"}
    for k, v in e.get("ours", {}).items():
        if v.get("rows"):
            yield f"ann2snn {k}", v["rows"], styles.get(k, "b-")
    for i, (k, v) in enumerate(e.get("peer", {}).items()):
        yield f"SJ {k}", v["rows"], ["r--", "m--", "y--", "k--", "C1--"][i % 5]


# -------------------------------------------------------------------------------------------- tables

def _pct(v) -> str:
    return "—" if v is None else f"{v * 100:.1f}"


def best_rows(e: dict, side: str, t: int) -> tuple[str | None, float | None, float | None]:
    """(method, accuracy, SOPs) of the most accurate method of one side at T (ties: fewer SOPs)."""
    best = (None, None, None)
    for k, v in e.get(side, {}).items():
        r = v.get("rows", {}).get(str(t))
        if r is None:
            continue
        key = (r["accuracy"], -(r.get("sops") or 0))
        if best[1] is None or key > (best[1], -(best[2] or 0)):
            best = (k, r["accuracy"], r.get("sops"))
    return best


def render_tables(res: dict, ts: list[int]) -> str:
    out = []
    for name, e in res["models"].items():
        ours, peer = e.get("ours", {}), e.get("peer", {})
        cols = [(f"ann2snn {k}", v) for k, v in ours.items()] + [(f"SJ {k}", v) for k, v in peer.items()]
        out.append(f"\n#### {name}: accuracy (%) on {e['test_samples']} test images, ANN {_pct(e['ann_accuracy'])}"
                   + (f"; the ANN given to SpikingJelly ({e['peer_edit']}): {_pct(e.get('peer_ann_accuracy'))}"
                      if e.get("peer_edit") and e.get("peer_ann_accuracy") is not None else
                      (f"; SpikingJelly given: {e['peer_edit']}" if e.get("peer_edit") else "")) + "\n")
        out.append("| T | " + " | ".join(c for c, _ in cols) + " | best ann2snn − best SJ |")
        out.append("|---" * (len(cols) + 2) + "|")
        for t in ts:
            cells = [_pct(v.get("rows", {}).get(str(t), {}).get("accuracy")) for _, v in cols]
            _, a, _ = best_rows(e, "ours", t)
            _, b, _ = best_rows(e, "peer", t)
            lead = "—" if a is None or b is None else f"{(a - b) * 100:+.1f}"
            out.append(f"| {t} | " + " | ".join(cells) + f" | {lead} |")
        out.append(f"\n{name}: SOPs per sample (millions) after T steps (the first layer's MACs not included)\n")
        out.append("| T | " + " | ".join(c for c, _ in cols) + " |")
        out.append("|---" * (len(cols) + 1) + "|")
        for t in ts:
            cells = []
            for _, v in cols:
                r = v.get("rows", {}).get(str(t), {})
                cells.append("—" if r.get("sops") is None else f"{r['sops'] / 1e6:.1f}")
            out.append(f"| {t} | " + " | ".join(cells) + " |")
        scr = e.get("screen")
        if scr:
            out.append(f"\n{name}: screen of every SpikingJelly mode, accuracy (%) on the first {scr['samples']} "
                       "of those test images\n")
            out.append("| mode | " + " | ".join(f"T={t}" for t in ts) + " |")
            out.append("|---" * (len(ts) + 1) + "|")
            for mode, v in scr["modes"].items():
                if "error" in v:
                    out.append(f"| {mode} | fails: {v['error']} |" + " |" * (len(ts) - 1))
                else:
                    out.append(f"| {mode} | " + " | ".join(_pct(v["accuracy"].get(str(t))) for t in ts) + " |")
    cov = res.get("coverage", {})
    if cov:
        out.append("\n#### Architecture coverage (conversion without hand edits, then 4 steps run)\n")
        out.append("| model | what | ann2snn | SpikingJelly 2.0 (LTB recipe) | SpikingJelly 2.0 (rate-coding recipe) |")
        out.append("|---|---|---|---|---|")
        for name, row in cov.items():
            cells = []
            for tool in ("ann2snn", "spikingjelly", "spikingjelly-rate"):
                r = row.get(tool)
                err = "" if r is None or r["ok"] else re.sub(r" at 0x[0-9a-f]+", "", r["error"])
                cells.append("not run" if r is None else ("yes" if r["ok"] else f"no: `{err}`"))
            out.append(f"| {name} | {row['description']} | " + " | ".join(cells) + " |")
        for tool in ("ann2snn", "spikingjelly", "spikingjelly-rate"):
            ok = sum(1 for row in cov.values() if row.get(tool, {}).get("ok"))
            out.append(f"\n{tool}: {ok}/{len(cov)}")
    meas = res.get("measures", {})
    if meas:
        out.append("\n#### Wall time and peak memory of an evaluation (fresh process each, batch "
                   "of 100 test images, T = 32, no counting)\n")
        out.append("| model | tool:method | s per sample | time / ann2snn | peak RSS above start (MB) | "
                   "memory / ann2snn |")
        out.append("|---|---|---|---|---|---|")
        for name, m in meas.items():
            for key, v in m.items():
                if not isinstance(v, dict):
                    continue
                if "error" in v:
                    out.append(f"| {name} | {key} | fails: {v['error']} | | | |")
                    continue
                out.append(f"| {name} | {key} | {v['seconds_per_sample']:.3f} | {v.get('time_ratio_to_ann2snn', 1):.2f} | "
                           f"{v['peak_above_start_mb']:.0f} | {v.get('memory_ratio_to_ann2snn', 1):.2f} |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--phases", nargs="+", default=["screen", "peer", "ours", "coverage", "measures", "plots", "tables"])
    p.add_argument("--ts", type=int, nargs="+", default=TS)
    p.add_argument("--test-samples", type=int, default=500)
    p.add_argument("--screen-samples", type=int, default=100)
    p.add_argument("--calib-samples", type=int, default=1024)
    p.add_argument("--measure-samples", type=int, default=100)
    p.add_argument("--top", type=int, default=3, help="SpikingJelly modes from the screen run on the full subset")
    p.add_argument("--adafire", action="store_true", help="convert AdaFire+MSE+advanced where no result is reused")
    p.add_argument("--adafire-tmax", type=int, default=16)
    p.add_argument("--adafire-since", default=None,
                   help="ISO date: drop AdaFire rows measured earlier (reused or converted) and reuse only newer "
                        "files, e.g. after a change of the library's defaults; missing T are converted with --adafire")
    p.add_argument("--mse-ts", type=int, nargs="+", help="T values converted for IF+MSE+light (default: T <= 32)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="peers", help="results file name in benchmarks/results/ (without .json)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure_child(json.loads(args.child))))
        return 0
    args.argv = argv
    global OUT
    OUT = RESULTS / f"{args.out}.json"
    args.tmax = max(args.ts)
    torch.set_num_threads(args.threads)
    res = load_results()
    peer_ok = have_spikingjelly()
    if not peer_ok:
        print(f"SpikingJelly is not installed: only ann2snn's side runs. Install the peer with:\n  {INSTALL}",
              file=sys.stderr)
    for name in args.models:
        if not ({"screen", "peer", "ours"} & set(args.phases)):
            break
        model, xc, xt, yt, ann_acc = setup_classifier(name, args.calib_samples, args.test_samples)
        entry = res["models"].setdefault(name, {})
        if entry.get("test_samples") not in (None, len(yt)):
            raise SystemExit(f"{OUT} holds {name} with {entry['test_samples']} test images; move it away first")
        entry.update(ann_accuracy=ann_acc, test_samples=len(yt), calib_samples=len(xc))
        for phase, fn in (("screen", phase_screen), ("peer", phase_peer), ("ours", phase_ours)):
            if phase in args.phases and (peer_ok or phase == "ours"):
                try:
                    fn(res, args, name, model, xc, xt, yt)
                except Exception:
                    traceback.print_exc()
                    log(f"{name}: phase {phase} failed (see above); going on")
    if "coverage" in args.phases:
        phase_coverage(res, args)
    if "measures" in args.phases:
        phase_measures(res, args)
    if "plots" in args.phases:
        phase_plots(res, args)
    if "tables" in args.phases:
        print(render_tables(res, args.ts))
    save_results(res, args.argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
