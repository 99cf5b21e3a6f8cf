"""The timm and torchvision catalogues for the reach benchmark and the op census.

Lists every architecture, builds one with random weights, finds an input it accepts, and classifies
its nonlinearities as ReLU family (ReLU, ReLU6, Hardtanh, LeakyReLU, PReLU) or not, both from its
modules and from the ATen ops of its ``torch.export`` graph. Needs timm / torchvision (``make reach``
builds a venv with them); nothing here imports ann2snn.
"""

from __future__ import annotations

import operator
import time
from typing import Any

import torch
from torch import nn

RELU_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU)
# module class names (lower case, any module whose class name contains one of these) that are not
# ReLU family; the exported graph's ops catch what is called as a function
NON_RELU_NAMES = ("silu", "swish", "gelu", "sigmoid", "hardswish", "tanh", "softmax", "mish", "elu",
                  "softplus", "softsign", "glu", "logsigmoid", "celu", "selu", "tanhshrink", "multiheadattention",
                  "groupnorm", "layernorm", "instancenorm")
# ATen op packet names of nonlinear activations outside the ReLU family
ACTIVATION_OPS = {"silu", "silu_", "gelu", "gelu_", "sigmoid", "sigmoid_", "hardswish", "hardswish_",
                  "hardsigmoid", "hardsigmoid_", "tanh", "tanh_", "softmax", "_softmax", "log_softmax",
                  "_log_softmax", "mish", "mish_", "elu", "elu_", "selu", "selu_", "celu", "celu_",
                  "softplus", "glu", "log_sigmoid", "erf", "erf_", "scaled_dot_product_attention", "softsign",
                  "group_norm", "native_group_norm", "layer_norm", "native_layer_norm", "instance_norm"}

IMAGE_SIZES = (64, 96, 128, 160, 224, 256, 299)
VIDEO_SHAPES = ((8, 64, 64), (16, 112, 112), (16, 224, 224))


def list_catalogue(family: str) -> list[tuple[str, str, str]]:
    """``(family, kind, name)`` for every architecture: timm's ``list_models()`` or torchvision's
    classification, segmentation and video models."""
    if family == "timm":
        import timm

        return [("timm", "classification", n) for n in timm.list_models()]
    if family == "torchvision":
        import torchvision.models as tvm

        out = [("torchvision", "classification", n) for n in tvm.list_models(module=tvm)]
        out += [("torchvision", "segmentation", n) for n in tvm.list_models(module=tvm.segmentation)]
        out += [("torchvision", "video", n) for n in tvm.list_models(module=tvm.video)]
        return out
    raise ValueError(f"unknown family {family!r}")


def create(family: str, kind: str, name: str) -> nn.Module:
    if family == "timm":
        import timm

        return timm.create_model(name, pretrained=False)
    import torchvision.models as tvm

    if kind == "segmentation":  # their backbones would otherwise download ImageNet weights
        return tvm.get_model(name, weights=None, weights_backbone=None)
    return tvm.get_model(name, weights=None)


def create_meta(family: str, kind: str, name: str) -> nn.Module | None:
    """The model built on the meta device (no memory, no init cost), or None where that fails."""
    try:
        with torch.device("meta"):
            return create(family, kind, name)
    except Exception:  # noqa: BLE001 - some constructors compute on tensors (.tolist() on meta fails)
        return None


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def module_nonlinearities(model: nn.Module) -> tuple[list[str], list[str]]:
    """(ReLU-family module classes, other nonlinearity module classes) by walking the modules."""
    relu, other = set(), set()
    for m in model.modules():
        cls = type(m).__name__
        if isinstance(m, RELU_MODULES):
            relu.add(cls)
        elif any(k in cls.lower() for k in NON_RELU_NAMES):
            other.add(cls)
    return sorted(relu), sorted(other)


def candidate_inputs(family: str, kind: str, name: str, model: nn.Module, batch: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if kind == "video":
        return [torch.randn(batch, 3, *s, generator=g) for s in VIDEO_SHAPES]
    sizes = list(IMAGE_SIZES)
    chans = 3
    if family == "timm":
        cfg = getattr(model, "pretrained_cfg", None) or {}
        size = cfg.get("input_size")
        if size:
            chans = size[0]
            if size[1] not in sizes:
                sizes.append(size[1])
        if cfg.get("fixed_input_size") and size:
            sizes = [size[1]]
    return [torch.randn(batch, chans, s, s, generator=g) for s in sizes]


def find_input(family: str, kind: str, name: str, model: nn.Module, batch: int = 2) -> tuple[torch.Tensor, list[str]]:
    """The smallest candidate input the eval-mode model runs on, and the errors of the smaller ones."""
    errors = []
    for x in candidate_inputs(family, kind, name, model, batch):
        try:
            with torch.no_grad():
                model(x)
            return x, errors
        except Exception as e:  # noqa: BLE001 - any refusal means: try a larger input
            errors.append(f"{tuple(x.shape)}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
    raise RuntimeError("no candidate input runs: " + " | ".join(errors[-2:]))


def target_name(target: Any) -> str:
    """A stable name for a call_function target: ``aten.conv2d.default``, ``operator.getitem``."""
    if isinstance(target, torch._ops.OpOverload | torch._ops.OpOverloadPacket | torch._ops.HigherOrderOperator):
        return str(target)
    mod = getattr(target, "__module__", None)
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)
    if target in vars(operator).values() or mod in ("_operator", "operator"):
        mod = "operator"
    return f"{mod}.{name}" if mod else str(name)


def packet_name(target_str: str) -> str:
    """``aten.relu_.default`` -> ``relu_``."""
    parts = target_str.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "aten" else target_str


def export_model(model: nn.Module, x: torch.Tensor) -> tuple[Any, str, str | None]:
    """``torch.export`` with a dynamic batch dimension, else a static one: (program, mode, first error)."""
    first_error = None
    try:
        ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        return ep, "dynamic", None
    except Exception as e:  # noqa: BLE001
        first_error = f"{type(e).__name__}: {short(e)}"
    ep = torch.export.export(model, (x,))
    return ep, "static", first_error


def short(e: BaseException, n: int = 400) -> str:
    s = str(e).strip()
    line = next((ln for ln in s.splitlines() if ln.strip()), "")
    return line[:n]


def graph_ops(ep: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in ep.graph.nodes:
        if node.op == "call_function":
            k = target_name(node.target)
            counts[k] = counts.get(k, 0) + 1
    return counts


def nonrelu_ops(ops: dict[str, int]) -> list[str]:
    """The nonlinear activation ops outside the ReLU family in an exported graph."""
    return sorted({packet_name(k) for k in ops if packet_name(k) in ACTIVATION_OPS})


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


class Worker:
    """A child process running ``script --worker`` that answers one JSON job per line; a job that
    runs past its timeout or crashes the child gets an error record and a fresh child."""

    def __init__(self, script: str, python: str, log_path: str, env: dict | None = None):
        self.script, self.python, self.log_path, self.env = script, python, log_path, env
        self.proc = None

    def _start(self):
        import subprocess

        log = open(self.log_path, "a")  # noqa: SIM115 - kept open for the child's life
        self.proc = subprocess.Popen([self.python, self.script, "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1, env=self.env)

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def call(self, job: dict, timeout: float) -> dict:
        import json
        import select

        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.stop()
            return {"error": f"timeout after {timeout:.0f} s", "timeout": True}
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            self.proc = None
            return {"error": f"worker died (exit code {rc})", "crash": True}
        return json.loads(line)


def worker_loop(handle) -> None:
    """Read JSON jobs from stdin, write one JSON result per line to the real stdout (the job's own
    prints go to stderr)."""
    import json
    import os
    import sys
    import traceback

    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        job = json.loads(line)
        try:
            res = handle(job)
        except Exception as e:  # noqa: BLE001 - every failure is a record
            res = {"error": f"{type(e).__name__}: {short(e)}", "traceback": traceback.format_exc()[-2000:]}
        out.write(json.dumps(res, default=str) + "\n")
