"""spike_linear: accuracy, SOPs, MACs and energy with the linear bottlenecks left analog (MACs every
step) against bipolar neurons on them (every weight layer but the first runs on spikes).

    python benchmarks/bench_spike_linear.py --models mobilenet_fmnist --ts 2 4 8 --ssc-taus 2
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import provenance, save, setup_classifier

import ann2snn
from ann2snn.evaluation import evaluate_classifier


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=["mobilenet_fmnist"])
    p.add_argument("--test-samples", type=int, default=2000)
    p.add_argument("--calib-samples", type=int, default=1024)
    p.add_argument("--ts", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--ssc-taus", type=float, nargs="*", default=[2.0], help="also SSC at the middle T")
    p.add_argument("--out", default="spike_linear")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    results = {"provenance": provenance("python benchmarks/bench_spike_linear.py " + " ".join(argv or sys.argv[1:])),
               "models": {}}
    base = dict(threshold="mse", adapt_samples=128, neuron="adafire", correction="advanced")
    for name in args.models:
        model, xc, xt, yt, ann_acc = setup_classifier(name, args.calib_samples, args.test_samples)
        rows = []
        runs = [(T, 0.0) for T in args.ts] + [(args.ts[len(args.ts) // 2], tau) for tau in args.ssc_taus]
        for T, tau in runs:
            for spike_linear in (False, True):
                snn = ann2snn.convert(model, xc.split(128), timesteps=T, spike_linear=spike_linear, ssc_tau=tau, **base)
                res = evaluate_classifier(snn, (xt, yt), T, batch_size=250)
                e = res.energy
                row = {"T": T, "ssc_tau": tau, "spike_linear": spike_linear, "accuracy": res.accuracy,
                       "sops": e.sops, "macs": e.macs, "ann_macs": e.ann_macs, "saving": e.saving,
                       "bipolar_neurons": snn.info["passes"].get("bipolar_neurons", 0)}
                rows.append(row)
                print(f"{name} T={T} ssc={tau:g} spike_linear={spike_linear!s:5} acc {res.accuracy * 100:.2f} "
                      f"(ANN {ann_acc * 100:.2f}) SOPs {e.sops / 1e6:.2f} M MACs {e.macs / 1e6:.2f} M "
                      f"saving {e.saving * 100:.1f} %", flush=True)
                results["models"][name] = {"ann_accuracy": ann_acc, "base": base, "rows": rows}
                save(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
