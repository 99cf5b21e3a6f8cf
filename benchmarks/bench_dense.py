#!/usr/bin/env python
"""Segmentation, detection, video and event models: the task metric of ANN and SNN across T.

    python benchmarks/bench_dense.py                                  # every model, every config
    python benchmarks/bench_dense.py --models unet_seg --configs ltb mse --test-samples 200

For each bundled model (unet_seg: mIoU, centernet_det: mAP@0.5 by pycocotools, video3d_motion and
eventcnn_events: accuracy) and each conversion config, calibrate on 256 training samples and evaluate
on a fixed test set (the deterministic synthetic generators of ann2snn.data.synthetic) at T = 8 ... 128.
The event model runs in two modes: the mean event frame as static input every step, and the stream
binned into T frames fed one frame per step (T <= 64: the stream has 64 sub-frames).
Results are merged into benchmarks/results/dense.json (one entry per model and config).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from common import RESULTS, provenance, save  # noqa: E402

import ann2snn  # noqa: E402
from ann2snn.data.synthetic import make_events, mean_event_frame, synthetic_dataset  # noqa: E402
from ann2snn.tasks import evaluate_task  # noqa: E402
from ann2snn.zoo import create_model, get_entry  # noqa: E402

MODELS = ["unet_seg", "centernet_det", "video3d_motion", "eventcnn_events"]
CONFIGS = {
    "ltb": {"threshold": "ltb"},
    "mse": {"threshold": "mse", "timesteps": 32},
    "ltb_signed": {"threshold": "ltb", "signed": True},
    "mse_signed": {"threshold": "mse", "timesteps": 32, "signed": True},
    "ltb_signed_cap4": {"threshold": "ltb", "signed": True, "step_cap": 4},
    "mse_signed_cap4": {"threshold": "mse", "timesteps": 32, "signed": True, "step_cap": 4},
}
TS = [8, 16, 32, 64, 128]


def data_for(name: str, calib: int, test: int):
    entry = get_entry(name)
    if entry.dataset == "synthetic-events":
        ev, _ = make_events(calib, "train", seed=1)
        xc = mean_event_frame(ev)
        test_data = make_events(test, "test", seed=2)
        return xc, test_data, "events"
    tr = synthetic_dataset(entry.dataset, "train", n=calib)
    te = synthetic_dataset(entry.dataset, "test", n=test)
    return tr.x, (te.x, te.y), entry.task


def table(results: dict) -> str:
    """Markdown rows: model, config, metric, ANN, SNN - ANN at each T (points)."""
    head = "| model | config | metric | ANN | " + " | ".join(f"T={t}" for t in TS) + " |"
    lines = [head, "|" + "---|" * (4 + len(TS))]
    for r in results.values():
        rows = [("", r["snn"])]
        if "mean_frame" in r.get("extra", {}):
            rows = [(" (one frame per step)", r["snn"]), (" (mean frame, static)", r["extra"]["mean_frame"])]
        for mode, values in rows:
            cells = [f"{(values[str(t)] - r['ann']) * 100:+.2f}" if str(t) in values else "-" for t in TS]
            lines.append(f"| {r['model']}{mode} | {r['config']} | {r['metric']} | {r['ann'] * 100:.2f} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--calib-samples", type=int, default=256)
    ap.add_argument("--test-samples", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table", action="store_true", help="only print the markdown table of dense.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = RESULTS / "dense.json"
    payload = json.loads(path.read_text()) if path.is_file() else {"runs": [], "results": {}}
    if args.table:
        print(table(payload["results"]))
        return 0
    prov = provenance("python benchmarks/bench_dense.py " + " ".join(sys.argv[1:] if argv is None else argv))
    payload.setdefault("runs", []).append(prov)
    for name in args.models:
        model = create_model(name, pretrained=True)
        xc, test, task = data_for(name, args.calib_samples, args.test_samples)
        for cfg_name in args.configs:
            cfg = {**CONFIGS[cfg_name], "progress": False}
            start = time.perf_counter()
            snn = ann2snn.convert(model, torch.utils.data.DataLoader(xc, batch_size=64), **cfg)
            calib_s = time.perf_counter() - start
            ts = [t for t in TS if t <= 64] if task == "events" else TS
            res = evaluate_task(snn, test, task, ts)
            entry = {"model": name, "task": task, "metric": res.metric, "config": cfg_name, "settings": CONFIGS[cfg_name],
                     "ann": res.ann, "snn": {str(t): v for t, v in res.snn.items()}, "extra": res.extra,
                     "samples": res.samples, "calib_samples": args.calib_samples,
                     "calib_seconds": round(calib_s, 1), "eval_seconds": round(res.seconds, 1),
                     "provenance": prov}
            payload["results"][f"{name}/{cfg_name}"] = entry
            gaps = "  ".join(f"T={t}: {(v - res.ann) * 100:+.2f}" for t, v in res.snn.items())
            print(f"{name} [{cfg_name}] ANN {res.metric} {res.ann * 100:.2f}  SNN-ANN {gaps}  "
                  f"({calib_s:.0f} s + {res.seconds:.0f} s)", flush=True)
            if task == "events":
                mf = "  ".join(f"T={t}: {(v - res.ann) * 100:+.2f}" for t, v in res.extra["mean_frame"].items())
                print(f"{name} [{cfg_name}] mean frame as static input: SNN-ANN {mf}", flush=True)
            save("dense", payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
