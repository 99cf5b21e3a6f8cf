"""Requested against measured: IAT's ``iat_tolerance`` and SSC's ``ssc_max_loss`` on the bundled
Fashion-MNIST models. Each target is chosen on half of the adaptation samples and checked on the
other half (the interval recorded in ``snn.info``); here it is measured on test images: the fraction of
predictions that change against the same SNN run in full / uncompressed, the mean exit step (IAT)
and the SOP cut (SSC).

    python benchmarks/bench_targets.py --models vgg_fmnist resnet_fmnist mobilenet_fmnist \
        --losses 0.002 0.005 0.01 --test-samples 2000
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from common import load_pretrained, provenance, save, tensors

import ann2snn
from ann2snn.adaptation.iat import calibrate_iat, run_iat
from ann2snn.adaptation.ssc import (
    GRIDS,
    compress_to_target,
    restore_thresholds,
    ssc_table,
    target_split,
    threshold_state,
)
from ann2snn.energy import SynapticCounter


def full_run(snn, xt, T, batch):
    preds, sops = [], 0.0
    for i in range(0, len(xt), batch):
        with SynapticCounter(snn) as c:
            preds.append(snn.run(xt[i:i + batch], T).argmax(1))
        sops += c.report().sops * len(preds[-1])
    return torch.cat(preds), sops / len(xt)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=["vgg_fmnist", "resnet_fmnist", "mobilenet_fmnist"])
    p.add_argument("--losses", type=float, nargs="+", default=[0.002, 0.005, 0.01])
    p.add_argument("--timesteps", type=int, default=16)
    p.add_argument("--test-samples", type=int, default=2000)
    p.add_argument("--calib-samples", type=int, default=1024)
    p.add_argument("--adapt-samples", type=int, default=256)
    p.add_argument("--base", default="adafire", choices=["if", "adafire"])
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="targets")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    T = args.timesteps
    results = {"provenance": provenance("python benchmarks/bench_targets.py " + " ".join(argv or sys.argv[1:])),
               "models": {}}
    base = dict(threshold="mse", adapt_samples=args.adapt_samples, timesteps=T, progress=False)
    if args.base == "adafire":
        base.update(neuron="adafire", correction="advanced")
    for name in args.models:
        model, dataset = load_pretrained(name)
        xc, _ = tensors(dataset, "train", args.calib_samples, seed=1)
        xt, yt = tensors(dataset, "test", args.test_samples, seed=2)
        t = time.perf_counter()
        snn = ann2snn.convert(model, xc.split(128), **base)
        entry = {"base": base, "test_samples": len(yt), "convert_seconds": time.perf_counter() - t,
                 "iat": {}, "ssc": {}}
        results["models"][name] = entry
        with torch.no_grad():
            full, full_sops = full_run(snn, xt, T, args.batch_size)
            ann = torch.cat([model(xt[i:i + args.batch_size]).argmax(1) for i in range(0, len(xt), args.batch_size)])
        entry.update(full_accuracy=float((full == yt).float().mean()), ann_accuracy=float((ann == yt).float().mean()),
                     full_sops=full_sops)
        x_adapt = xc[:args.adapt_samples]
        for loss in args.losses:
            with torch.no_grad():
                schedule = calibrate_iat(snn, x_adapt.split(64), T, tolerance=loss, seed=snn.config.seed)
                out, steps = [], []
                for i in range(0, len(xt), args.batch_size):
                    res = run_iat(snn, xt[i:i + args.batch_size], T, schedule)
                    out.append(res.output.argmax(1))
                    steps.append(res.exit_steps)
            pred, steps = torch.cat(out), torch.cat(steps)
            row = {"requested": loss, "changed": float((pred != full).float().mean()),
                   "accuracy": float((pred == yt).float().mean()), "mean_steps": float(steps.float().mean()),
                   "a": schedule.a, "b": schedule.b, "fit": schedule.fit}
            entry["iat"][str(loss)] = row
            chk = schedule.fit["check"]
            print(f"{name:<17} IAT  request {loss * 100:.1f} %: test changed {row['changed'] * 100:.2f} %, mean steps "
                  f"{row['mean_steps']:.2f} of {T}; held-out check {chk['changed']}/{chk['samples']} "
                  f"[{chk['interval'][0] * 100:.2f}, {chk['interval'][1] * 100:.2f}] %", flush=True)
            save(args.out, results)
        original = threshold_state(snn)
        x_fit, _ = target_split(x_adapt, 0.5, snn.config.seed)
        table = ssc_table(snn, x_fit, T, GRIDS[snn.config.ssc_grid])
        for loss in args.losses:
            restore_thresholds(snn, original)
            snn.info.pop("ssc", None)
            compress_to_target(snn, x_adapt, loss, T, GRIDS[snn.config.ssc_grid], seed=snn.config.seed, table=table)
            with torch.no_grad():
                pred, sops = full_run(snn, xt, T, args.batch_size)
            ssc = snn.info["ssc"]
            row = {"requested": loss, "changed": float((pred != full).float().mean()),
                   "accuracy": float((pred == yt).float().mean()), "sops": sops, "sop_cut": 1 - sops / full_sops,
                   "tau": ssc["tau"], "scales": ssc["scales"], "check": ssc["check"], "fit": ssc["fit"],
                   "tries": ssc["tries"]}
            entry["ssc"][str(loss)] = row
            chk = ssc["check"]
            print(f"{name:<17} SSC  request {loss * 100:.1f} %: test changed {row['changed'] * 100:.2f} %, SOPs "
                  f"{-row['sop_cut'] * 100:+.1f} % (tau {ssc['tau']:g}); held-out check {chk['changed']}/"
                  f"{chk['samples']} [{chk['interval'][0] * 100:.2f}, {chk['interval'][1] * 100:.2f}] %", flush=True)
            save(args.out, results)
        restore_thresholds(snn, original)
        print(f"{name:<17} full run at T={T}: {entry['full_accuracy'] * 100:.2f} % (ANN {entry['ann_accuracy'] * 100:.2f} %)",
              flush=True)
    print("saved", save(args.out, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
