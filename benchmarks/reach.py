"""Reach: which timm and torchvision architectures does ann2snn convert, and does the SNN converge?

Every architecture in ``timm.list_models()`` and every torchvision classification, segmentation and
video model is built with random weights (BatchNorm running statistics and affine parameters
randomised, so that BN folding is exercised), put in eval mode and given the smallest input it runs
on (batch 2, 64x64 first). Each is classified by its nonlinearities, from its modules and from the ATen
ops of its ``torch.export`` graph: ReLU family (ReLU, ReLU6, Hardtanh, LeakyReLU, PReLU) or not. Then

    snn = ann2snn.convert(model, calib, threshold="max", timesteps=256, neuron="if", correction="none")

with 8 random calibration samples that include the test sample, and one 256-step run of the test
sample gives the SNN output at T = 16 and T = 256. Outcome per model:

- ``converges``: a ReLU-family model converts and ||snn - ann|| / ||ann|| at T = 256 is below 0.15 and
  below half the T = 16 error;
- ``slow``: it misses that criterion, but the error at T = 2048 is below 0.15 and below the T = 256
  error (the same SNN converges, more slowly); the run with signed neurons is recorded too;
- ``refused``: a model outside the ReLU family is refused with ``UnsupportedOperationError`` whose first
  named op is one of its real blocking activations;
- ``broken``: anything else (with the reason); ``skipped``: too large (> 150 M parameters) or past the
  per-model time limit.

Each model runs in a child process with a time limit; results are kept in
benchmarks/results/reach_<family>.json and a rerun resumes from them. ``--render`` writes docs/reach.md.

    make reach REACH_ARGS="--family torchvision"
    OMP_NUM_THREADS=1 PYTHONPATH=src .venv-reach/bin/python benchmarks/reach.py --family timm --sample 40
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DOC = ROOT / "docs" / "reach.md"
sys.path.insert(0, str(HERE))

MAX_PARAMS = 150_000_000
T_LONG, T_SHORT = 256, 16
T_EXTRA = 2048  # the longer run of a model that misses the T_LONG criterion
TOL = 0.15
CALIB = 8

# canonical names of the activations outside the ReLU family, and how they are spelled in module class
# names, ATen ops and error messages (matched after a non-letter, so "relu" never matches "elu")
ACTIVATIONS = {
    "silu": ("silu", "swish"), "gelu": ("gelu",), "sigmoid": ("sigmoid",), "hardswish": ("hard_?swish",),
    "hardsigmoid": ("hard_?sigmoid",), "tanh": ("tanh",), "softmax": ("softmax", "_softmax"),
    "mish": ("mish",), "elu": ("elu",), "selu": ("selu",), "celu": ("celu",), "softplus": ("softplus",),
    "glu": ("glu",), "logsigmoid": ("log_?sigmoid",), "erf": ("erf",),
    "attention": ("scaled_dot_product", "multiheadattention"),
    # per-sample normalisation divides by statistics of the sample itself: no spiking equivalent
    "groupnorm": ("group_?norm",), "layernorm": ("layer_?norm",), "instancenorm": ("instance_?norm",),
}
_PATTERNS = {k: [re.compile(rf"(?<![a-z]){p}") for p in v] for k, v in ACTIVATIONS.items()}


def activations_in(text: str) -> set[str]:
    t = text.lower()
    return {k for k, ps in _PATTERNS.items() if any(p.search(t) for p in ps)}


def randomise_batchnorm(model, seed: int = 0) -> int:
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            c = m.running_mean.numel()
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.1)
            n += 1
    return n


def flat(out):
    import torch
    from torch.utils._pytree import tree_leaves

    return torch.cat([t.detach().float().reshape(t.shape[0], -1) for t in tree_leaves(out)
                      if isinstance(t, torch.Tensor)], 1)


def handle(job: dict) -> dict:
    import reach_models as rm
    import torch

    torch.set_num_threads(1)
    fam, kind, name = job["family"], job["kind"], job["name"]
    rec: dict = {}
    if job["cmd"] == "classify":
        meta = rm.create_meta(fam, kind, name)
        model = meta if meta is not None else rm.create(fam, kind, name)
        rec["params"] = rm.n_params(model)
        rec["relu_modules"], rec["other_modules"] = rm.module_nonlinearities(model)
        return rec
    import ann2snn

    t0 = time.perf_counter()
    meta = rm.create_meta(fam, kind, name)  # the size first, without building a giant
    if meta is not None and rm.n_params(meta) > MAX_PARAMS:
        return {"params": rm.n_params(meta), "outcome": "skipped", "reason": f"{rm.n_params(meta) / 1e6:.0f} M parameters"}
    del meta
    torch.manual_seed(0)
    model = rm.create(fam, kind, name).eval()
    rec["params"] = rm.n_params(model)
    if rec["params"] > MAX_PARAMS:
        return {**rec, "outcome": "skipped", "reason": f"{rec['params'] / 1e6:.0f} M parameters"}
    rec["relu_modules"], rec["other_modules"] = rm.module_nonlinearities(model)
    rec["bn_randomised"] = randomise_batchnorm(model)
    x, _ = rm.find_input(fam, kind, name, model)
    rec["input"] = list(x.shape)
    # classification by the exported graph's ops (modules alone miss functional activations)
    try:
        ep, mode, _ = rm.export_model(model, x)
        rec["nonrelu_ops"] = rm.nonrelu_ops(rm.graph_ops(ep))
        rec["export"] = mode
        del ep
    except Exception as e:  # noqa: BLE001
        rec["export"] = f"failed: {type(e).__name__}: {rm.short(e, 200)}"
        rec["nonrelu_ops"] = []
    blocking = set().union(*(activations_in(c) for c in rec["other_modules"]),
                           *(activations_in(o) for o in rec["nonrelu_ops"]))
    rec["blocking"] = sorted(blocking)
    rec["relu_family"] = not blocking and not rec["other_modules"]
    g = torch.Generator().manual_seed(1)
    calib = torch.cat([x, torch.randn(CALIB - x.shape[0], *x.shape[1:], generator=g)])
    x = x[:1]  # the simulated sample (the batch of 2 was for the dynamic-batch export)
    with torch.no_grad():
        ann = flat(model(x))
    rec["setup_s"] = round(time.perf_counter() - t0, 1)
    t1 = time.perf_counter()
    try:
        snn = ann2snn.convert(model, calib, threshold="max", timesteps=T_LONG, neuron="if", correction="none",
                              progress=False)
    except ann2snn.UnsupportedOperationError as e:
        rec["convert_s"] = round(time.perf_counter() - t1, 1)
        offenders = getattr(e, "offenders", None) or []
        rec["offenders"] = len(offenders)
        if offenders:
            first_op, first_text = offenders[0].op, f"{offenders[0].op} {offenders[0].reason}"
            rec["first_offender"] = offenders[0].describe()[:300]
        else:  # no structured list: the message's first lines
            first_text = " ".join(str(e).splitlines()[:2])
            first_op = rec["first_offender"] = first_text[:200]
        rec["first_op"] = first_op
        if not rec["relu_family"] and activations_in(first_text) & blocking:
            return {**rec, "outcome": "refused", "reason": f"refused: {first_op}"}
        return {**rec, "outcome": "broken", "reason": f"refused, first named: {first_text}"[:300]}
    except Exception as e:  # noqa: BLE001
        return {**rec, "outcome": "broken", "reason": f"convert raised {type(e).__name__}: {rm.short(e, 250)}"}
    rec["convert_s"] = round(time.perf_counter() - t1, 1)
    rec["neurons"] = len(snn.neurons())
    if not rec["relu_family"]:
        return {**rec, "outcome": "broken",
                "reason": f"converted although it has {', '.join(rec['blocking'] or rec['other_modules'])}"}
    t2 = time.perf_counter()
    try:
        with torch.no_grad():
            analog = flat(snn.analog(x, "relu"))
            _, hist = snn.run(x, T_LONG, return_all=True)
    except Exception as e:  # noqa: BLE001
        return {**rec, "outcome": "broken", "reason": f"SNN run raised {type(e).__name__}: {rm.short(e, 250)}"}
    rec["run_s"] = round(time.perf_counter() - t2, 1)
    norm = float(ann.norm())
    if not (norm > 0 and torch.isfinite(ann).all()):
        return {**rec, "outcome": "broken", "reason": f"ANN output degenerate (norm {norm})"}
    from torch.utils._pytree import tree_leaves

    leaves = [t for t in tree_leaves(hist) if isinstance(t, torch.Tensor)]
    at = [torch.cat([t[s - 1].float().reshape(t.shape[1], -1) for t in leaves], 1) for s in (T_SHORT, T_LONG)]
    rec["err_analog"] = float((analog - ann).norm()) / norm
    rec["err16"] = float((at[0] - ann).norm()) / norm
    rec["err256"] = float((at[1] - ann).norm()) / norm
    if rec["err256"] < TOL and rec["err256"] < rec["err16"] / 2:
        return {**rec, "outcome": "converges", "reason": ""}
    if rec["err_analog"] > 1e-3:
        return {**rec, "outcome": "broken",
                "reason": f"folded ANN differs: error {rec['err16']:.3f} at T=16, {rec['err256']:.3f} at T=256 "
                          f"(folded ANN {rec['err_analog']:.1e})"}
    # The folded ANN is right but T = 256 is not enough: is it slow convergence (the error keeps
    # falling with T) or a wrong conversion (it stalls)? Run longer, and with signed neurons.
    t3 = time.perf_counter()
    with torch.no_grad():
        rec["err_extra"] = float((flat(snn.run(x, T_EXTRA)) - ann).norm()) / norm
        signed = ann2snn.convert(model, calib, threshold="max", timesteps=T_LONG, neuron="if", correction="none",
                                 signed=True, progress=False)
        rec["err256_signed"] = float((flat(signed.run(x, T_LONG)) - ann).norm()) / norm
    rec["extra_s"] = round(time.perf_counter() - t3, 1)
    errs = (f"error {rec['err16']:.3f} at T=16, {rec['err256']:.3f} at T=256, {rec['err_extra']:.3f} at "
            f"T={T_EXTRA}; signed neurons {rec['err256_signed']:.3f} at T=256")
    if rec["err_extra"] < TOL and rec["err_extra"] < rec["err256"]:
        return {**rec, "outcome": "slow", "reason": f"converges by T={T_EXTRA}: {errs}"}
    return {**rec, "outcome": "broken", "reason": f"no convergence: {errs} (folded ANN {rec['err_analog']:.1e})"}


def provenance(command: str) -> dict:
    import timm
    import torch
    import torchvision

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    return {"command": command, "commit": commit,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__}


def save(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def relu_by_modules(c: dict) -> bool:
    return "error" not in c and not c.get("other_modules")


def run_family(fam: str, args, command: str) -> None:
    import reach_models as rm

    path = RESULTS / f"reach_{fam}.json"
    data = json.loads(path.read_text()) if path.exists() else {"classify": {}, "models": {}}
    data["provenance"] = provenance(command)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    worker = rm.Worker(str(Path(__file__).resolve()), sys.executable, str(RESULTS / f"reach_{fam}.log"), env)
    cat = rm.list_catalogue(fam)
    if args.filter:
        cat = [c for c in cat if re.search(args.filter, c[2])]
    need_classes = args.relu_only or args.sample
    if need_classes:  # module classes on the meta device, cached
        for _, kind, name in cat:
            if name not in data["classify"]:
                data["classify"][name] = worker.call({"cmd": "classify", "family": fam, "kind": kind,
                                                      "name": name}, 60)
        save(data, path)
        todo = [c for c in cat if relu_by_modules(data["classify"][c[2]])] if args.relu_only else cat
        if args.sample:
            todo = [c for c in todo if relu_by_modules(data["classify"][c[2]])]
            todo = sorted(random.Random(args.seed).sample(todo, min(args.sample, len(todo))))
    else:
        todo = cat
    done = 0
    for _, kind, name in todo:
        if name in data["models"] and not (args.retry_broken and data["models"][name]["outcome"] == "broken"):
            continue
        if args.limit is not None and done >= args.limit:
            break
        t = time.perf_counter()
        res = worker.call({"cmd": "reach", "family": fam, "kind": kind, "name": name}, args.timeout)
        if "outcome" not in res:  # the job itself failed (model creation, no input) or timed out
            outcome = "skipped" if res.get("timeout") else "broken"
            res = {**res, "outcome": outcome, "reason": res.pop("error", "")}
        res["kind"] = kind
        res["wall_s"] = round(time.perf_counter() - t, 1)
        data["models"][name] = res
        done += 1
        print(f"{fam}:{name}: {res['outcome']} {res.get('reason', '')[:120]} ({res['wall_s']} s)", flush=True)
        save(data, path)
    worker.stop()
    save(data, path)


# -- the docs page --------------------------------------------------------------------------------------
def reason_group(m: dict) -> str:
    r = m.get("reason", "")
    if r.startswith("refused, first named:"):
        return f"refused, first named: {m.get('first_op', '')[:80]}"
    if r.startswith(("no convergence", "folded ANN differs")):
        return r.split(":")[0]
    return re.sub(r"\d+", "N", r[:90])


# What the results above do not say by themselves (each statement checked against the results files).
NOTES = [
    "The ReLU-family column counts models by their activation modules. Some of them still cannot spike, "
    "and are refused naming the real blocker: attention softmax (BoTNet, HaloNet, LambdaNet, NextViT, "
    "MobileNetV4 hybrids) and per-sample normalisation (GroupNorm: `resnet50_gn`, `resnetv2_50d_gn`; "
    "FRN's `rsqrt`: `resnetv2_50d_frn`); StarNet multiplies two activations (not linear in the spikes). "
    "NASNet and PNASNet pad with -inf before their max-pools, which the pool takes over. "
    "timm's MobileNetV2 and EfficientNet-Lite (ReLU6, depthwise, 35 to 61 neuron layers, random weights) "
    "miss the T = 256 criterion with IF neurons and max thresholds although the folded ANN matches to 2e-5: "
    "their error keeps falling with T (mobilenetv2_100: 0.318 at T = 16, 0.192 at 256, 0.045 at 2048), "
    "counted in the 'converges by T = 2048' column; the deepest (efficientnet_lite4, mobilenetv2_110d / 120d, "
    "tf_efficientnet_lite4) still fall but stay above half their T = 256 error at 2048 (e.g. 0.251 -> 0.132). "
    "Signed neurons cut the T = 256 error by a third to a half. torchvision's MobileNetV2 and MNASNet "
    "converge at 256.",
]


def render() -> None:
    lines = ["# Reach: timm and torchvision architectures", "",
             "Every architecture of timm (`timm.list_models()`) and torchvision's classification, "
             "segmentation and video models, with random weights (BatchNorm statistics randomised), "
             "converted by `ann2snn.convert(model, calib, threshold=\"max\", timesteps=256, neuron=\"if\")` "
             f"on {CALIB} random samples (64×64 or the smallest input the model accepts), then "
             f"simulated for {T_LONG} steps on one of them. **Converges**: a ReLU-family model (ReLU, ReLU6, "
             f"Hardtanh, LeakyReLU, PReLU) whose SNN output is within relative error {TOL} of the ANN's at "
             f"T = {T_LONG} and at most half its T = {T_SHORT} error. **Converges by T = {T_EXTRA}**: it misses "
             f"that, but its error at T = {T_EXTRA} is within {TOL} and below its T = {T_LONG} error "
             "(the row gives the errors, and the T = 256 error with signed neurons). **Refused**: a model with another "
             "activation, refused with `UnsupportedOperationError` naming that activation first. "
             "**Broken**: anything else. The classification uses the model's modules and the ATen ops "
             "of its `torch.export` graph. Runs outside CI (`make reach`, its own venv with torch 2.14.1, "
             "torchvision 0.29.1, timm).", ""]
    fams, rows = [], []
    for fam in ("torchvision", "timm"):
        path = RESULTS / f"reach_{fam}.json"
        if path.exists():
            fams.append((fam, json.loads(path.read_text())))
            rows.append((f"{fam}, torch.export capture", fams[-1][1]))
        before = RESULTS / f"reach_{fam}_fx.json"  # the same benchmark with torch.fx symbolic tracing
        if before.exists():
            rows.append((f"{fam}, torch.fx symbolic tracing (the fallback front end)", json.loads(before.read_text())))
    lines += [f"| family, capture | run | ReLU family | converges | converges by T = {T_EXTRA} | broken (ReLU) | "
              "other | refused right | broken (other) | skipped |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for fam, data in rows:
        ms = data["models"].values()
        relu = [m for m in ms if m.get("relu_family") and m["outcome"] != "skipped"]
        other = [m for m in ms if m.get("relu_family") is False and m["outcome"] != "skipped"]
        unk = [m for m in ms if "relu_family" not in m and m["outcome"] == "broken"]
        skipped = [m for m in ms if m["outcome"] == "skipped"]
        conv = sum(m["outcome"] == "converges" for m in relu)
        slow = sum(m["outcome"] == "slow" for m in relu)
        lines.append(f"| {fam} | {len(ms)} | {len(relu)} | {conv} ({100 * conv / max(1, len(relu)):.0f} %) | {slow} | "
                     f"{len(relu) - conv - slow} | {len(other)} | {sum(m['outcome'] == 'refused' for m in other)} | "
                     f"{sum(m['outcome'] == 'broken' for m in other) + len(unk)} | {len(skipped)} |")
    lines += ["", "Models that failed before classification (creation, no input accepted) count as broken "
              "(other).", "", *NOTES, ""]
    for fam, data in fams:
        p = data.get("provenance", {})
        ms = data["models"]
        lines += [f"## {fam}", "", f"`{p.get('command')}` — commit {p.get('commit')}, {p.get('date')}, "
                  f"torch {p.get('torch')}, torchvision {p.get('torchvision')}, timm {p.get('timm')}. "
                  f"{len(ms)} of {len(data['classify']) or len(ms)} listed architectures run.", ""]
        groups: dict[str, int] = {}
        for m in ms.values():
            if m["outcome"] == "broken":
                groups[reason_group(m)] = groups.get(reason_group(m), 0) + 1
        if groups:
            lines += ["| broken because | models |", "|---|---:|"]
            lines += [f"| {g.replace('|', '/')} | {n} |" for g, n in sorted(groups.items(), key=lambda kv: -kv[1])]
            lines += [""]
        lines += ["| model | class | outcome | reason / errors at T=16, T=256 |", "|---|---|---|---|"]
        for name, m in sorted(ms.items()):
            cls = {True: "ReLU", False: ", ".join(m.get("blocking") or m.get("other_modules", []))}.get(
                m.get("relu_family"), "?")
            if m["outcome"] == "converges":
                detail = f"{m['err16']:.3f}, {m['err256']:.3f}"
            else:
                detail = m.get("reason", "")
            if m["outcome"] in ("broken", "skipped", "slow", "converges"):
                lines.append(f"| {name} | {cls} | {m['outcome']} | {detail.replace('|', '/')[:200]} |")
        refused = sorted(n for n, m in ms.items() if m["outcome"] == "refused")
        if refused:
            lines += ["", f"Refused with the right reason: {', '.join(refused)}."]
        lines += [""]
    DOC.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=["timm", "torchvision"], action="append",
                    help="default: both (torchvision first)")
    ap.add_argument("--filter", default=None, help="regular expression on the model name")
    ap.add_argument("--limit", type=int, default=None, help="run at most this many new models")
    ap.add_argument("--relu-only", action="store_true", help="only models whose modules are ReLU family")
    ap.add_argument("--sample", type=int, default=None, help="a random sample of this many ReLU-family models")
    ap.add_argument("--seed", type=int, default=0, help="seed of --sample")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per model")
    ap.add_argument("--retry-broken", action="store_true", help="run again the models recorded as broken")
    ap.add_argument("--render", action="store_true", help="only write docs/reach.md from the results")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import reach_models as rm

        rm.worker_loop(handle)
        return
    if not args.render:
        command = "OMP_NUM_THREADS=1 PYTHONPATH=src .venv-reach/bin/python benchmarks/reach.py " + " ".join(sys.argv[1:])
        for fam in args.family or ["torchvision", "timm"]:
            run_family(fam, args, command.strip())
    render()


if __name__ == "__main__":
    main()
