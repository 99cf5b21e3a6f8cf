"""AdaFire and corrections at low T, beside each configuration's quantisation
ceiling, with synaptic operations.

    python benchmarks/bench_adafire.py --models vgg_fmnist resnet_fmnist mobilenet_fmnist

Every configuration is converted for each T (thresholds, caps and corrections depend on T) and
evaluated at that T on the same test subset; SOPs per sample are counted in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from common import provenance, save, setup_classifier

import ann2snn
from ann2snn.evaluation import evaluate_classifier

CONFIGS = {
    "IF+LTB": dict(threshold="ltb"),
    "IF+MSE+light": dict(threshold="mse", correction="light"),
    "AdaFire+MSE": dict(threshold="mse", neuron="adafire"),
    "AdaFire+MSE+advanced": dict(threshold="mse", neuron="adafire", correction="advanced"),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=["vgg_fmnist", "resnet_fmnist", "mobilenet_fmnist"])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS))
    p.add_argument("--ts", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--calib-samples", type=int, default=1024)
    p.add_argument("--adapt-samples", type=int, default=128)
    p.add_argument("--extra", nargs="*", default=[], help="key=value config overrides for every run")
    p.add_argument("--out", default="adafire")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    extra = {}
    for kv in args.extra:
        k, v = kv.split("=", 1)
        extra[k] = int(v) if v.isdigit() else v
    results = {"provenance": provenance("python benchmarks/bench_adafire.py " + " ".join(argv or sys.argv[1:])),
               "models": {}}
    for name in args.models:
        model, xc, xt, yt, ann_acc = setup_classifier(name, args.calib_samples, args.test_samples)
        entry = {"ann_accuracy": ann_acc, "test_samples": len(yt), "configs": {}}
        results["models"][name] = entry
        for cname in args.configs:
            rows = entry["configs"][cname] = {}
            for T in args.ts:
                cfg = dict(CONFIGS[cname], timesteps=T, adapt_samples=args.adapt_samples, **extra)
                t = time.perf_counter()
                snn = ann2snn.convert(model, xc.split(128), **cfg)
                conv_s = time.perf_counter() - t
                res = evaluate_classifier(snn, (xt, yt), T, ceiling_at=[T], batch_size=250)
                rows[T] = {"accuracy": res.accuracy, "ceiling": res.ceiling[T], "sops": res.energy.sops,
                           "macs": res.energy.macs, "spikes": res.energy.spikes, "saving": res.energy.saving,
                           "caps": snn.info.get("caps"), "convert_seconds": conv_s}
                print(f"{name:<16}{cname:<22}T={T:<3d} acc {res.accuracy * 100:5.1f}  ceiling "
                      f"{res.ceiling[T] * 100:5.1f}  ANN {ann_acc * 100:5.1f}  SOPs {res.energy.sops:12,.0f}  "
                      f"caps {snn.info.get('caps')}  ({conv_s:.0f}s)", flush=True)
                save(args.out, results)  # after every run: a long benchmark keeps what it measured
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
