"""Sensitivity Spike Compression (SOPs against accuracy over tau) and
Input-aware Adaptive Timesteps (accuracy, mean steps, wall time against the full run, same process).

    python benchmarks/bench_ssc_iat.py --models vgg_fmnist
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch
from common import load_pretrained, provenance, save, tensors

import ann2snn
from ann2snn.adaptation.iat import calibrate_iat, run_iat
from ann2snn.adaptation.ssc import (
    GRIDS,
    apply_corrected,
    apply_verified,
    choose_scales,
    restore_thresholds,
    ssc_table,
    threshold_state,
)
from ann2snn.energy import SynapticCounter
from ann2snn.evaluation import evaluate_classifier


def timed_iat(snn, xt, yt, T, schedule, batch=250):
    """IAT accuracy, exit steps and counts (counted run), and the wall time of an uncounted run."""
    t = time.perf_counter()
    for i in range(0, len(yt), batch):
        run_iat(snn, xt[i:i + batch], T, schedule)
    seconds = time.perf_counter() - t
    correct, steps, sops, macs, ann_macs = 0, [], 0.0, 0.0, 0.0
    for i in range(0, len(yt), batch):
        with SynapticCounter(snn) as c:
            res = run_iat(snn, xt[i:i + batch], T, schedule)
        rep = c.report()
        n = len(res.exit_steps)
        correct += int((res.output.argmax(1) == yt[i:i + batch]).sum())
        steps.append(res.exit_steps)
        sops, macs, ann_macs = sops + rep.sops * n, macs + rep.macs * n, ann_macs + rep.ann_macs * n
        energy = rep.energy_model
    n = len(yt)
    e_snn = (macs * energy.e_mac + sops * energy.e_ac) / n
    return {"accuracy": correct / n, "mean_steps": float(torch.cat(steps).float().mean()), "seconds": seconds,
            "sops": sops / n, "macs": macs / n, "saving": 1 - e_snn / (ann_macs / n * energy.e_mac),
            "exit_histogram": torch.bincount(torch.cat(steps), minlength=T + 1)[1:].tolist()}


def timed_full(snn, xt, yt, T, batch=250):
    t = time.perf_counter()
    correct = 0
    for i in range(0, len(yt), batch):
        correct += int((snn.run(xt[i:i + batch], T).argmax(1) == yt[i:i + batch]).sum())
    return {"accuracy": correct / len(yt), "seconds": time.perf_counter() - t}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=["vgg_fmnist"])
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--calib-samples", type=int, default=1024)
    p.add_argument("--taus", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 2.0, 4.0])
    p.add_argument("--ssc-t", type=int, default=16)
    p.add_argument("--iat-ts", type=int, nargs="*", default=[16, 32])
    p.add_argument("--base", default="adafire", choices=["if", "adafire"])
    p.add_argument("--iat-tolerances", type=float, nargs="*", default=[0.0, 0.005],
                   help="also fit the schedule per model to these prediction-change tolerances")
    p.add_argument("--skip-ssc", action="store_true")
    p.add_argument("--ssc-verify", action="store_true",
                   help="also run each tau with the chosen combination checked and backed off (--ssc-variants verified)")
    p.add_argument("--ssc-variants", nargs="+", default=["plain"],
                   choices=["plain", "verified", "recorrected", "verified-recorrected"],
                   help="plain: the DP's choice (the paper); verified: checked on calibration data and backed off; "
                        "recorrected: the base's correction measured again after scaling (compress() does both)")
    p.add_argument("--ssc-grids", nargs="+", default=["paper"], choices=["fine", "paper"],
                   help="candidate scales: the paper's 0.5 steps or the library's default (0.25 steps up to 2)")
    p.add_argument("--ssc-costs", nargs="+", default=["spikes"], choices=["spikes", "sops"],
                   help="what the DP minimises: each layer's spikes (the paper) or the SOPs they cause")
    p.add_argument("--ssc-refines", type=int, nargs="+", default=[3],
                   help="verified variants: bisection steps after the first allowance that holds (0: halving only, "
                        "the search before this option; 3: the library's default)")
    p.add_argument("--out", default="ssc_iat")
    p.add_argument("--adapt-samples", type=int, default=128,
                   help="calibration images for AdaFire, corrections and SSC (the config's adapt_samples)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"provenance": provenance("python benchmarks/bench_ssc_iat.py " + " ".join(argv or sys.argv[1:])),
               "models": {}}
    base = dict(threshold="mse", adapt_samples=args.adapt_samples)
    if args.base == "adafire":
        base.update(neuron="adafire", correction="advanced")
    for name in args.models:
        model, dataset = load_pretrained(name)
        xc, _ = tensors(dataset, "train", args.calib_samples, seed=1)
        xt, yt = tensors(dataset, "test", args.test_samples, seed=2)
        entry = {"base": base, "ssc": {}, "iat": {}}
        if not args.skip_ssc:  # one conversion; the sensitivity table is reused for every tau
            snn = ann2snn.convert(model, xc.split(128), timesteps=args.ssc_t, **base)
            original = threshold_state(snn)
            variants = args.ssc_variants + (["verified"] if args.ssc_verify else [])
            x_adapt = xc[:args.adapt_samples]
            if 0 in args.taus:  # the unscaled model: the reference of every other row
                entry["ssc"]["0.0"] = _ssc_row(snn, None, original, 0.0, xt, yt, args.ssc_t, name, x_adapt, "spikes",
                                               "plain", None)
            for grid in args.ssc_grids:
                taus = [t for t in args.taus if t > 0]
                table = ssc_table(snn, x_adapt, args.ssc_t, GRIDS[grid]) if taus else None
                runs = [(tau, cost, variant, refine) for tau, cost, variant, refine
                        in itertools.product(taus, args.ssc_costs, dict.fromkeys(variants), args.ssc_refines)
                        if variant.startswith("verified") or refine == args.ssc_refines[0]]
                for tau, cost, variant, refine in runs:
                    key = " ".join([str(tau)] + ([] if grid == "paper" else [f"{grid} grid"])
                                   + ([] if (variant, cost) == ("plain", "spikes") else [cost, variant])
                                   + ([f"refine {refine}"] if variant.startswith("verified") and refine != 3 else []))
                    entry["ssc"][key] = _ssc_row(snn, table, original, tau, xt, yt, args.ssc_t, name, x_adapt,
                                                 cost, variant, base.get("correction"), refine)
                    entry["ssc"][key]["grid"] = grid
                    save(args.out, {**results, "models": {**results["models"], name: entry}})
        for T in args.iat_ts:
            snn = ann2snn.convert(model, xc.split(128), timesteps=T, **base)
            full = timed_full(snn, xt, yt, T)
            with SynapticCounter(snn) as c:
                snn.run(xt[:250], T)
            schedules = {"paper a=0.6 b=0.4": calibrate_iat(snn, xc.split(128), T)}
            for tol in args.iat_tolerances:
                schedules[f"fitted tolerance={tol}"] = calibrate_iat(snn, xc.split(128), T, tolerance=tol)
            entry["iat"][T] = {}
            for sname, schedule in schedules.items():
                iat = timed_iat(snn, xt, yt, T, schedule)
                iat.update(full_accuracy=full["accuracy"], full_seconds=full["seconds"],
                           wall_ratio=iat["seconds"] / full["seconds"], full_sops=c.report().sops,
                           full_saving=c.report().saving, a=schedule.a, b=schedule.b, fit=schedule.fit)
                entry["iat"][T][sname] = iat
                print(f"{name} IAT T={T} {sname} (a={schedule.a:.3f} b={schedule.b:.3f}): acc "
                      f"{iat['accuracy'] * 100:.1f} (full {full['accuracy'] * 100:.1f}), mean steps "
                      f"{iat['mean_steps']:.2f} ({iat['mean_steps'] / T * 100:.0f} % of T), wall x{iat['wall_ratio']:.2f},"
                      f" SOPs {iat['sops']:,.0f} vs {c.report().sops:,.0f}, saving {iat['saving'] * 100:.1f} % "
                      f"(full {c.report().saving * 100:.1f} %)", flush=True)
            results["models"][name] = entry
            save(args.out, results)
        results["models"][name] = entry
        save(args.out, results)
    return 0


def _ssc_row(snn, table, original, tau, xt, yt, T, name, xc, cost, variant, correction, refine=3):
    restore_thresholds(snn, original)
    correction = correction if "recorrected" in variant else None
    if tau == 0:
        scales = {n: 1.0 for n in snn.neurons()}
    elif variant.startswith("verified"):
        scales, _ = apply_verified(snn, table, tau, xc, T, cost=cost, correction=correction, refine=refine)
    else:
        scales = choose_scales(table, tau, cost=cost)
        apply_corrected(snn, scales, xc, T, correction)
    res = evaluate_classifier(snn, (xt, yt), T, ceiling_at=[T], batch_size=250)
    print(f"{name} SSC T={T} tau={tau:<5} {cost:6s} {variant:21s} refine {refine} acc {res.accuracy * 100:5.1f}  SOPs "
          f"{res.energy.sops:12,.0f}  saving {res.energy.saving * 100:5.1f} %  scales {scales}", flush=True)
    return {"accuracy": res.accuracy, "sops": res.energy.sops, "spikes": res.energy.spikes,
            "saving": res.energy.saving, "scales": scales, "cost": cost, "variant": variant,
            "refine": refine if variant.startswith("verified") else None}


if __name__ == "__main__":
    raise SystemExit(main())
