"""The *measure* choices of ALGORITHMS.md, each against the default on the same model, T and
test subset (AdaFire + MSE + advanced correction as the base).

    python benchmarks/bench_measures.py --models vgg_fmnist --ts 4 8

* ``v0_mode``: half-threshold start (``initial``) or the same charge spread over the window (``spread``).
* ``mse_levels``: the MSE clipping search quantises to ``T`` or to ``T * m`` levels.
* ``burst_cap``: the allocation's target cap (its budget is rho x the spikes at that cap); a lower
  target trades accuracy for spikes, a higher one spikes for accuracy.
* ``burst_cost``: the budget counts spikes (the paper) or synaptic operations.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from common import provenance, save, setup_classifier

import ann2snn
from ann2snn.evaluation import evaluate_classifier

BASE = dict(threshold="mse", neuron="adafire", correction="advanced")
VARIANTS = {
    "default": {},
    "v0_mode=spread": dict(v0_mode="spread"),
    "mse_levels=Tm": dict(mse_levels="Tm"),
    "burst_cap=2": dict(burst_cap=2),
    "burst_cap=2,burst_initial=4": dict(burst_cap=2, burst_initial=4),
    "burst_cost=sops": dict(burst_cost="sops"),
    "burst_cost=sops,burst_cap=2": dict(burst_cost="sops", burst_cap=2),
    "burst_cap=6": dict(burst_cap=6),
    "mse_levels=Tm,burst_cap=6": dict(mse_levels="Tm", burst_cap=6),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=["vgg_fmnist"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--ts", type=int, nargs="+", default=[4, 8])
    p.add_argument("--test-samples", type=int, default=500)
    p.add_argument("--calib-samples", type=int, default=1024)
    p.add_argument("--adapt-samples", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="measures")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"provenance": provenance("python benchmarks/bench_measures.py " + " ".join(argv or sys.argv[1:])),
               "base": BASE, "models": {}}
    for name in args.models:
        model, xc, xt, yt, ann_acc = setup_classifier(name, args.calib_samples, args.test_samples)
        entry = results["models"][name] = {"ann_accuracy": ann_acc, "test_samples": len(yt), "variants": {}}
        for vname in args.variants:
            rows = entry["variants"][vname] = {}
            for T in args.ts:
                cfg = dict(BASE, **VARIANTS[vname], timesteps=T, adapt_samples=args.adapt_samples)
                t = time.perf_counter()
                snn = ann2snn.convert(model, xc.split(128), **cfg)
                conv_s = time.perf_counter() - t
                res = evaluate_classifier(snn, (xt, yt), T, ceiling_at=[T], batch_size=250)
                rows[T] = {"accuracy": res.accuracy, "ceiling": res.ceiling[T], "sops": res.energy.sops,
                           "spikes": res.energy.spikes, "caps": snn.info.get("caps"), "convert_seconds": conv_s}
                print(f"{name:<16}{vname:<30}T={T:<3d} acc {res.accuracy * 100:5.1f}  ceiling "
                      f"{res.ceiling[T] * 100:5.1f}  ANN {ann_acc * 100:5.1f}  SOPs {res.energy.sops:12,.0f}  "
                      f"caps {snn.info.get('caps')}", flush=True)
                save(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
