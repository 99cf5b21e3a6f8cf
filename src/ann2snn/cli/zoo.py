"""``ann2snn zoo``: the bundled models and datasets, and whether they are available here."""

from __future__ import annotations

import argparse
import json
from typing import Any

HELP = "list the bundled models (with checkpoints) and datasets (with availability)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("zoo", help=HELP, description=HELP)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)
    return p


def models() -> list[dict[str, Any]]:
    from ..zoo import ZOO, load_metadata

    meta = load_metadata()
    rows = []
    for name in sorted(ZOO):
        e = ZOO[name]
        m = meta.get(name, {})
        rows.append({"name": name, "dataset": e.dataset, "input_shape": list(e.input_shape),
                     "classes": e.num_classes, "pretrained": e.has_checkpoint,
                     "test_accuracy": m.get("test_accuracy", m.get("test_metric")) if e.has_checkpoint else None,
                     "task": e.task, "metric": m.get("metric", "accuracy"),
                     "description": e.description})
    return rows


def datasets() -> list[dict[str, Any]]:
    from ..data import DATASETS

    rows = []
    for name, info in DATASETS.items():
        try:
            ds = info.load("test")
            available, note = True, f"{len(ds)} test samples"
        except Exception as exc:  # noqa: BLE001 - missing files, missing scikit-learn, corrupt files
            available, note = False, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        rows.append({"name": name, "input_shape": list(info.input_shape), "classes": info.num_classes,
                     "available": available, "note": note, "install": info.install,
                     "description": info.description})
    return rows


def run(args: argparse.Namespace) -> int:
    ms, ds = models(), datasets()
    if args.json:
        print(json.dumps({"models": ms, "datasets": ds}, indent=2))
        return 0
    print("models (ann2snn convert --model NAME):")
    print(f"  {'name':<18}{'dataset':<17}{'input':<11}{'checkpoint':<12}{'ANN':>8}  description")
    for r in ms:
        shape = "x".join(str(s) for s in r["input_shape"])
        acc = f"{r['test_accuracy'] * 100:.2f}%" if r["test_accuracy"] is not None else "-"
        ck = "yes" if r["pretrained"] else "missing"
        metric = "" if r["metric"] == "accuracy" else f" ({r['metric']})"
        print(f"  {r['name']:<18}{r['dataset']:<17}{shape:<11}{ck:<12}{acc:>8}  {r['description']}{metric}")
    print("\ndatasets (--data NAME, or a .npz with x/y, or a folder of images per class):")
    print(f"  {'name':<17}{'input':<11}{'available':<11}notes")
    for r in ds:
        shape = "x".join(str(s) for s in r["input_shape"])
        status = "yes" if r["available"] else "no"
        note = r["note"] if r["available"] else f"install with: {r['install']}"
        print(f"  {r['name']:<17}{shape:<11}{status:<11}{note}")
    return 0
