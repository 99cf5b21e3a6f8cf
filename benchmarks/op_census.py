"""Which ATen ops do real models produce under ``torch.export``? A census over timm and torchvision.

For every timm architecture whose modules are ReLU family, and every torchvision classification,
segmentation and video model: random weights, eval mode, the smallest input it runs on (batch 2),
``torch.export.export`` with a dynamic batch dimension (static where that fails), and the
call_function targets of the graph. Writes benchmarks/results/op_census.json and docs/op_census.md.

    make reach-venv && OMP_NUM_THREADS=1 .venv-reach/bin/python benchmarks/op_census.py

Resumable: models already in the JSON are not run again. Runs outside CI.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

MAX_PARAMS = 150_000_000
MAX_CREATE_S = 20.0


def handle(job: dict) -> dict:
    import reach_models as rm
    import torch

    torch.set_num_threads(1)
    fam, kind, name = job["family"], job["kind"], job["name"]
    rec: dict = {"family": fam, "kind": kind, "name": name}
    if job["cmd"] == "classify":
        t = time.perf_counter()
        meta = rm.create_meta(fam, kind, name)
        rec["meta"] = meta is not None
        model = meta
        if model is None:
            model = rm.create(fam, kind, name)
            rec["create_s"] = round(time.perf_counter() - t, 2)
        rec["params"] = rm.n_params(model)
        rec["relu_modules"], rec["other_modules"] = rm.module_nonlinearities(model)
        return rec
    # export
    t = time.perf_counter()
    torch.manual_seed(0)
    model = rm.create(fam, kind, name).eval()
    rec["create_s"] = round(time.perf_counter() - t, 2)
    if rec["create_s"] > MAX_CREATE_S:
        rec["skipped"] = f"creation took {rec['create_s']} s (> {MAX_CREATE_S:.0f} s)"
        return rec
    x, errs = rm.find_input(fam, kind, name, model)
    rec["input"] = list(x.shape)
    if errs:
        rec["smaller_inputs_failed"] = errs[-1]
    t = time.perf_counter()
    try:
        ep, mode, dyn_err = rm.export_model(model, x)
    except Exception as e:  # noqa: BLE001
        rec["export"] = "failed"
        rec["error"] = f"{type(e).__name__}: {rm.short(e)}"
        return rec
    rec["export_s"] = round(time.perf_counter() - t, 2)
    rec["export"] = mode
    if dyn_err:
        rec["dynamic_error"] = dyn_err
    rec["ops"] = rm.graph_ops(ep)
    rec["nonrelu_ops"] = rm.nonrelu_ops(rec["ops"])
    return rec


def key(fam: str, name: str) -> str:
    return f"{fam}:{name}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "op_census.json"))
    ap.add_argument("--family", choices=["timm", "torchvision"], action="append")
    ap.add_argument("--filter", default=None, help="substring of the model name")
    ap.add_argument("--limit", type=int, default=None, help="at most this many exports this run")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per export")
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import reach_models as rm

        rm.worker_loop(handle)
        return
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.exists() else {"classify": {}, "models": {}}
    if not args.render_only:
        run(args, data, out)
    render(data, ROOT / "docs" / "op_census.md")


def save(data: dict, out: Path) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(out)


def run(args, data: dict, out: Path) -> None:
    import reach_models as rm

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    worker = rm.Worker(str(Path(__file__).resolve()), sys.executable, str(out.with_suffix(".log")), env)
    families = args.family or ["torchvision", "timm"]
    cat = [c for f in families for c in rm.list_catalogue(f)]
    if args.filter:
        cat = [c for c in cat if args.filter in c[2]]
    data["provenance"] = provenance()
    # phase 1: classify by modules (meta device: cheap)
    for fam, kind, name in cat:
        k = key(fam, name)
        if k in data["classify"]:
            continue
        res = worker.call({"cmd": "classify", "family": fam, "kind": kind, "name": name}, 60)
        data["classify"][k] = res
        if len(data["classify"]) % 50 == 0:
            save(data, out)
    save(data, out)

    def relu_by_modules(k):
        c = data["classify"].get(k, {})
        return "error" not in c and not c.get("other_modules") and bool(c.get("relu_modules"))

    # phase 2: export, ReLU-family first, then the rest of torchvision
    # first one model of each timm module (the smallest), then the second of each, ...: the distinct
    # ops show up early
    todo = [c for c in cat if c[0] == "torchvision" or relu_by_modules(key(c[0], c[2]))]
    module = timm_modules() if "timm" in families else {}
    size = {c: data["classify"].get(key(c[0], c[2]), {}).get("params", 0) for c in todo}
    rank: dict = {}
    for c in sorted(todo, key=lambda c: size[c]):
        group = module.get(c[2], c[2]) if c[0] == "timm" else c[1]
        rank[c] = sum(1 for d in rank if (module.get(d[2], d[2]) if d[0] == "timm" else d[1]) == group)
    todo.sort(key=lambda c: (not relu_by_modules(key(c[0], c[2])), rank[c], size[c]))
    done = 0
    for fam, kind, name in todo:
        k = key(fam, name)
        if k in data["models"]:
            continue
        if args.limit is not None and done >= args.limit:
            break
        c = data["classify"].get(k, {})
        if c.get("params", 0) > MAX_PARAMS:
            data["models"][k] = {"family": fam, "kind": kind, "name": name, "params": c["params"],
                                 "skipped": f"{c['params'] / 1e6:.0f} M parameters (> {MAX_PARAMS / 1e6:.0f} M)"}
            continue
        t = time.perf_counter()
        res = worker.call({"cmd": "export", "family": fam, "kind": kind, "name": name}, args.timeout)
        res.setdefault("family", fam)
        res.setdefault("kind", kind)
        res.setdefault("name", name)
        res["params"] = c.get("params")
        res["relu_by_modules"] = relu_by_modules(k)
        if res.get("timeout"):
            res["skipped"] = res.pop("error")
        data["models"][k] = res
        done += 1
        print(f"[{len(data['models'])}/{len(todo)}] {k}: {res.get('export', res.get('skipped', res.get('error')))} "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        save(data, out)
        if done % 10 == 0:
            render(data, ROOT / "docs" / "op_census.md")
    worker.stop()
    save(data, out)


def timm_modules() -> dict[str, str]:
    import timm

    return {n: m for m in timm.list_modules() for n in timm.list_models(module=m)}


def provenance() -> dict:
    import timm
    import torch
    import torchvision

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    return {"command": "OMP_NUM_THREADS=1 .venv-reach/bin/python benchmarks/op_census.py", "commit": commit,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__}


def render(data: dict, path: Path) -> None:
    models = data["models"]
    exported = {k: m for k, m in models.items() if m.get("export") in ("dynamic", "static")}
    relu = {k: m for k, m in exported.items() if not m.get("nonrelu_ops") and m.get("relu_by_modules", True)
            and not data["classify"].get(k, {}).get("other_modules")}
    p = data.get("provenance", {})
    lines = ["# torch.export op census over timm and torchvision", "",
             f"`{p.get('command')}` — commit {p.get('commit')}, {p.get('date')}, torch {p.get('torch')}, "
             f"torchvision {p.get('torchvision')}, timm {p.get('timm')}.", "",
             "Random weights, eval mode, batch 2, the smallest input the model runs on (64×64 first), "
             "`torch.export.export(model, (x,), dynamic_shapes=({0: Dim('batch')},))`, static batch where "
             "that fails. timm: only architectures whose modules are all ReLU family (ReLU, ReLU6, Hardtanh, "
             "LeakyReLU, PReLU). torchvision: every classification, segmentation and video model.", ""]
    ncls = len(data["classify"])
    nrelu_mod = sum(1 for k, c in data["classify"].items() if k.startswith("timm:") and "error" not in c
                    and not c.get("other_modules") and c.get("relu_modules"))
    ntimm = sum(1 for k in data["classify"] if k.startswith("timm:"))
    lines += [f"Classified by modules: {ncls} architectures; timm: {nrelu_mod} of {ntimm} have only "
              "ReLU-family activation modules.", ""]
    dyn = sum(1 for m in exported.values() if m["export"] == "dynamic")
    lines += [f"Attempted: {len(models)}; exported: {len(exported)} ({dyn} with dynamic batch, "
              f"{len(exported) - dyn} static only); export failed: "
              f"{sum(1 for m in models.values() if m.get('export') == 'failed' or ('error' in m and 'export' not in m))}; "
              f"skipped: {sum(1 for m in models.values() if 'skipped' in m)}.",
              f"ReLU family after export (no non-ReLU activation op in the graph): {len(relu)} models.", ""]

    def op_table(sel: dict, title: str) -> list[str]:
        counts: dict[str, list[str]] = {}
        nodes: dict[str, int] = {}
        for k, m in sorted(sel.items()):
            for op, n in m["ops"].items():
                counts.setdefault(op, []).append(k)
                nodes[op] = nodes.get(op, 0) + n
        out = [f"## {title}", "", f"{len(sel)} models, {len(counts)} distinct targets.", "",
               "| target | models | nodes | examples |", "|---|---:|---:|---|"]
        for op, ks in sorted(counts.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            ex = ", ".join(ks[:: max(1, len(ks) // 3)][:3])
            out.append(f"| `{op}` | {len(ks)} | {nodes[op]} | {ex} |")
        return out + [""]

    lines += op_table(relu, "Ops of the ReLU-family models (what the new op table must cover)")
    other = {k: m for k, m in exported.items() if k not in relu}
    lines += op_table(other, "Ops of the other exported models (a non-ReLU activation in the graph or its modules)")
    lines += ["## Non-ReLU activations found in exported graphs", "", "| model | activation ops | by modules |",
              "|---|---|---|"]
    for k, m in sorted(other.items()):
        lines.append(f"| {k} | {', '.join(m.get('nonrelu_ops', [])) or '—'} | "
                     f"{', '.join(data['classify'].get(k, {}).get('other_modules', [])) or '—'} |")
    lines += ["", "## Dynamic batch failed, static export used", "", "| model | error of the dynamic export |",
              "|---|---|"]
    for k, m in sorted(exported.items()):
        if m["export"] == "static":
            lines.append(f"| {k} | {m.get('dynamic_error', '').replace('|', '/')[:300]} |")
    lines += ["", "## Export failures", "", "| model | input | error |", "|---|---|---|"]
    for k, m in sorted(models.items()):
        if m.get("export") == "failed" or ("error" in m and "export" not in m and "skipped" not in m):
            lines.append(f"| {k} | {m.get('input', '')} | {m.get('error', '').replace('|', '/')[:300]} |")
    lines += ["", "## Skipped", "", "| model | reason |", "|---|---|"]
    for k, m in sorted(models.items()):
        if "skipped" in m:
            lines.append(f"| {k} | {m['skipped']} |")
    cerr = {k: c for k, c in data["classify"].items() if "error" in c}
    if cerr:
        lines += ["", "## Could not be built for classification", "", "| model | error |", "|---|---|"]
        lines += [f"| {k} | {c['error'].replace('|', '/')[:200]} |" for k, c in sorted(cerr.items())]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
