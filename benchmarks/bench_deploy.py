"""Hardware-ready NIR exports run by the target libraries' own NIR import, against ann2snn's SNN.

Three steps, because the libraries live in separate environments (sinabs pins nir<=1.0.4):

    python benchmarks/bench_deploy.py prepare --models vgg_fmnist resnet_fmnist mobilenet_fmnist mlp_digits \
        --test-samples 500
    /work/venvs/deploy/bin/python benchmarks/bench_deploy.py run --targets snntorch norse rockpool \
        --models vgg_fmnist resnet_fmnist mobilenet_fmnist mlp_digits
    /work/venvs/sinabs/bin/python benchmarks/bench_deploy.py run --targets sinabs \
        --models vgg_fmnist resnet_fmnist mobilenet_fmnist mlp_digits
    python benchmarks/bench_deploy.py table

``prepare`` converts each bundled model (IF neurons, LTB thresholds; VGG with its max-pools replaced
by average pools, :func:`ann2snn.export.deploy.avgpool_model`), runs ann2snn's SNN on the test
images and stores the model, the images and its outputs (``--cache``). It also measures what the
deploy rewrites cost where a target needs them: max-pool -> average pool (ANN and SNN accuracy) and
the half-threshold start given up (membrane starting at 0) or spread over the steps.
``run`` (results in ``benchmarks/results/deploy_<targets>.json``) exports each model for each target, loads it with the library's own import
(:func:`ann2snn.export.deploy.run_reader`), runs it at the same T and records the agreement of the
predictions with ann2snn's SNN, as imported and with the documented fixes.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import torch
from common import RESULTS, provenance, setup_classifier

import ann2snn
from ann2snn.export.deploy import avgpool_model, deploy_ops, export_deploy, quantize_ops, run_reader
from ann2snn.export.ir import build


def out_file(targets) -> Path:
    return RESULTS / f"deploy_{'_'.join(targets)}.json"


def acc(out, y):
    return float((out.argmax(1) == y).float().mean())


def prepare(args) -> None:
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        t0 = time.perf_counter()
        model, xc, xt, yt, ann_acc = setup_classifier(name, args.calib_samples, args.test_samples)
        info = {"model": name, "ann_acc": ann_acc, "T": args.timesteps, "test_samples": len(xt)}
        if any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()):
            swapped = avgpool_model(model)
            with torch.no_grad():
                info["ann_acc_maxpool"] = ann_acc
                info["ann_acc"] = ann_acc = acc(swapped(xt), yt)
            snn_max = ann2snn.convert(model, xc.split(128), timesteps=args.timesteps, progress=False)
            info["snn_acc_maxpool"] = acc(snn_max.run(xt, args.timesteps), yt)
            model = swapped
        snn = ann2snn.convert(model, xc.split(128), timesteps=args.timesteps, progress=False)
        ref = snn.run(xt, args.timesteps)
        info["snn_acc"] = acc(ref, yt)
        for label, change in (("v0_zero", {"v0": 0.0}), ("v0_spread", {"spread_steps": args.timesteps})):
            other = copy.deepcopy(snn)
            for n in other.neurons().values():
                for k, v in change.items():
                    setattr(n, k, v)
            info[f"snn_acc_{label}"] = acc(other.run(xt, args.timesteps), yt)
        info["prepare_s"] = round(time.perf_counter() - t0, 1)
        ann2snn.save(snn, cache / f"{name}.pt")
        torch.save({"x": xt, "y": yt, "ref": ref, "info": info}, cache / f"{name}_data.pt")
        print(info, flush=True)


def _versions(target: str) -> dict:
    import importlib.metadata as md

    names = {"snntorch": ["snntorch", "nirtorch"], "norse": ["norse", "nirtorch"], "sinabs": ["sinabs", "nirtorch"],
             "rockpool": ["rockpool", "nirtorch"]}
    out = {"nir": md.version("nir"), "torch": torch.__version__}
    for n in names.get(target, []):
        out[n] = md.version(n)
    return out


def run(args) -> None:
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    cache = Path(args.cache)
    out_path = out_file(args.targets)
    results = json.loads(out_path.read_text()) if out_path.exists() else {"rows": []}
    for name in args.models:
        snn = ann2snn.load(cache / f"{name}.pt")
        data = torch.load(cache / f"{name}_data.pt")
        x, y, ref, info = data["x"], data["y"], data["ref"], data["info"]
        results.setdefault("models", {})[name] = info
        for target in args.targets:
            variants = {"snntorch": [("fixed", {}), ("as imported", {"fix": False})],
                        "sinabs": [("fixed", {}), ("as imported", {"fix": False})],
                        "rockpool": [("fixed", {}), ("as imported", {"fix": False})],
                        "norse": [("nir_to_torch", {"executor": "nir_to_torch"}),
                                  ("from_nir", {"executor": "library"})]}[target]
            try:
                path = export_deploy(snn, cache / f"{name}_{target}.nir", target)
            except Exception as exc:  # noqa: BLE001 - what a target cannot express is a result here
                variants, refused = [], f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                row = {"model": name, "target": target, "variant": "export", "T": args.timesteps,
                       "test_samples": len(x), "versions": _versions(target), "error": refused}
                print(row, flush=True)
                results["rows"] = [r for r in results["rows"] if (r["model"], r["target"], r["variant"])
                                   != (name, target, "export")] + [row]
            if target == "sinabs":  # Speck's integer formats, run by ann2snn (sinabs' DynapCNN backend needs samna)
                row = {"model": name, "target": "speck formats", "variant": "8-bit weights, 16-bit state (ann2snn)",
                       "T": args.timesteps, "test_samples": len(x), "versions": {}}
                try:
                    q = build(quantize_ops(deploy_ops(snn, "sinabs")), snn.config, dict(snn.info))
                    out = torch.cat([q.run(x[i:i + args.batch], args.timesteps).reshape(len(x[i:i + args.batch]), -1)
                                     for i in range(0, len(x), args.batch)])
                    diff = (out - ref).abs().amax(1)
                    row.update(agree=acc(out, ref.argmax(1)), acc=acc(out, y), snn_acc=acc(ref, y),
                               max_abs_diff=float(diff.max()), same_to_1e4=float((diff < 1e-4).float().mean()))
                except Exception as exc:  # noqa: BLE001
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                print(row, flush=True)
                results["rows"] = [r for r in results["rows"] if (r["model"], r["target"], r["variant"])
                                   != (name, row["target"], row["variant"])] + [row]
            for label, kw in variants:
                row = {"model": name, "target": target, "variant": label, "T": args.timesteps,
                       "test_samples": len(x), "versions": _versions(target)}
                t0 = time.perf_counter()
                try:
                    outs = [run_reader(target, path, x[i:i + args.batch], args.timesteps, **kw)
                            for i in range(0, len(x), args.batch)]
                    out = torch.cat(outs)
                    diff = (out - ref).abs().amax(1)
                    row.update(agree=acc(out, ref.argmax(1)), acc=acc(out, y), snn_acc=acc(ref, y),
                               max_abs_diff=float(diff.max()), same_to_1e4=float((diff < 1e-4).float().mean()))
                except Exception as exc:  # noqa: BLE001 - a reader's failure is a result here
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                row["run_s"] = round(time.perf_counter() - t0, 1)
                print(row, flush=True)
                results["rows"] = [r for r in results["rows"] if (r["model"], r["target"], r["variant"])
                                   != (name, target, label)] + [row]
    command = "python benchmarks/bench_deploy.py " + " ".join(sys.argv[1:])
    results.setdefault("provenance", {})[",".join(args.targets)] = provenance(command)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=1, default=float))
    print(out_path)


def table(_args) -> None:
    d = {"provenance": {}, "rows": [], "models": {}}
    for f in sorted(RESULTS.glob("deploy_*.json")):  # one file per environment's run
        part = json.loads(f.read_text())
        d["provenance"].update(part.get("provenance", {}))
        d["rows"] += part["rows"]
        d["models"].update(part.get("models", {}))
    lines = []
    for targets, p in d["provenance"].items():
        lines.append(f"- {targets}: `{p['command']}` — commit `{p['commit']}`, {p['date']}, {p['machine']}")
    lines += ["", "| model | target | run | agreement with ann2snn % | reader acc % | ann2snn SNN acc % | "
              "max abs diff | outputs equal to 1e-4 % | versions |", "|---|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        v = ", ".join(f"{k} {val}" for k, val in r["versions"].items() if k not in ("torch",))
        if "error" in r:
            lines.append(f"| {r['model']} | {r['target']} | {r['variant']} | fails: {r['error']} | — | — | — | — "
                         f"| {v} |")
            continue
        lines.append(f"| {r['model']} | {r['target']} | {r['variant']} | {r['agree'] * 100:.1f} | {r['acc'] * 100:.1f}"
                     f" | {r['snn_acc'] * 100:.1f} | {r['max_abs_diff']:.2g} | {r['same_to_1e4'] * 100:.1f} | {v} |")
    lines += ["", "| model | ANN acc % | SNN acc % (v0 = θ/2) | membrane starting at 0 | v0 spread over T | "
              "with max-pool: ANN / SNN acc % |", "|---|---|---|---|---|---|"]
    for name, i in d.get("models", {}).items():
        mp = (f"{i['ann_acc_maxpool'] * 100:.1f} / {i['snn_acc_maxpool'] * 100:.1f}" if "ann_acc_maxpool" in i
              else "—")
        lines.append(f"| {name} | {i['ann_acc'] * 100:.1f} | {i['snn_acc'] * 100:.1f} | "
                     f"{i['snn_acc_v0_zero'] * 100:.1f} | {i['snn_acc_v0_spread'] * 100:.1f} | {mp} |")
    print("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=("prepare", "run", "table"))
    p.add_argument("--models", nargs="+", default=["vgg_fmnist", "resnet_fmnist", "mobilenet_fmnist"])
    p.add_argument("--targets", nargs="+", default=["snntorch", "norse"])
    p.add_argument("--timesteps", type=int, default=32)
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--calib-samples", type=int, default=512)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--cache", default="/tmp/ann2snn_deploy_bench", help="converted models and inputs between steps")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    {"prepare": prepare, "run": run, "table": table}[args.step](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
