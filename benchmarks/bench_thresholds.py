"""Every threshold method on the bundled Fashion-MNIST models: accuracy at
T = 4 ... 256 from one return_all pass, with the quantisation ceiling beside each curve.

    python benchmarks/bench_thresholds.py --models vgg_fmnist resnet_fmnist --test-samples 1000
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from common import provenance, save, setup_classifier

import ann2snn
from ann2snn.evaluation import evaluate_classifier

TS = [4, 8, 16, 32, 64, 128, 256]
METHODS = {
    "ltb": dict(threshold="ltb"),
    "mse": dict(threshold="mse", timesteps=32),
    "percentile": dict(threshold="percentile", percentile=99.99),
    "max": dict(threshold="max"),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=["vgg_fmnist", "resnet_fmnist"])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--granularity", default="channel")
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--calib-samples", type=int, default=1024)
    p.add_argument("--tmax", type=int, default=256)
    p.add_argument("--out", default="thresholds")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    results = {"provenance": provenance("python benchmarks/bench_thresholds.py " + " ".join(argv or sys.argv[1:])),
               "models": {}}
    for name in args.models:
        model, xc, xt, yt, ann_acc = setup_classifier(name, args.calib_samples, args.test_samples)
        entry = {"ann_accuracy": ann_acc, "test_samples": len(yt), "methods": {}}
        for method in args.methods:
            cfg = dict(METHODS[method], granularity=args.granularity)
            t = time.perf_counter()
            snn = ann2snn.convert(model, xc.split(128), **cfg)
            conv_s = time.perf_counter() - t
            res = evaluate_classifier(snn, (xt, yt), args.tmax, energy=None, ceiling_at=TS, batch_size=250)
            row = {"config": cfg, "convert_seconds": conv_s, "eval_seconds": res.seconds,
                   "accuracy": {t: res.accuracy_at(t) for t in TS if t <= args.tmax},
                   "ceiling": {t: res.ceiling[t] for t in TS if t <= args.tmax}}
            entry["methods"][method] = row
            print(f"{name:<14}{method:<11}" + " ".join(f"{row['accuracy'][t] * 100:5.1f}" for t in row["accuracy"])
                  + "  | ceiling " + " ".join(f"{row['ceiling'][t] * 100:5.1f}" for t in row["ceiling"])
                  + f"  | ANN {ann_acc * 100:.1f}", flush=True)
        results["models"][name] = entry
        save(args.out, results)
    print("saved", save(args.out, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
