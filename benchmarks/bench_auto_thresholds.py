"""IF neurons: LTB, MSE and the ``auto`` choice between them, each converted for the T it is run at,
on the bundled Fashion-MNIST models (accuracy on a fixed test subset, the ANN beside it; the check
figures ``auto`` based its choice on).

    python benchmarks/bench_auto_thresholds.py --models vgg_fmnist resnet_fmnist mobilenet_fmnist \
        --timesteps 16 64 --test-samples 2000
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from common import provenance, save, setup_classifier

import ann2snn


def accuracies(snn, xt, yt, ts, batch=500):
    """Accuracy at every T in ``ts`` from one run of max(ts) steps."""
    correct = dict.fromkeys(ts, 0)
    with torch.no_grad():
        for i in range(0, len(yt), batch):
            _, history = snn.run(xt[i:i + batch], max(ts), return_all=True)
            for t in ts:
                correct[t] += int((history[t - 1].argmax(1) == yt[i:i + batch]).sum())
    return {t: c / len(yt) for t, c in correct.items()}


def same_thresholds(a, b) -> bool:
    nb = b.neurons()
    return all(torch.equal(n.threshold, nb[name].threshold) for name, n in a.neurons().items())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=["vgg_fmnist", "resnet_fmnist", "mobilenet_fmnist"])
    p.add_argument("--methods", nargs="+", default=["ltb", "mse", "auto"])
    p.add_argument("--timesteps", nargs="+", type=int, default=[16, 64])
    p.add_argument("--test-samples", type=int, default=2000)
    p.add_argument("--calib-samples", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="auto_thresholds")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"provenance": provenance("python benchmarks/bench_auto_thresholds.py "
                                        + " ".join(argv or sys.argv[1:])), "models": {}}
    for name in args.models:
        model, xc, xt, yt, ann_acc = setup_classifier(name, args.calib_samples, args.test_samples)
        entry = {"ann_accuracy": ann_acc, "test_samples": len(yt), "calib_samples": len(xc), "runs": {}}
        results["models"][name] = entry
        ltb_acc = None  # LTB's thresholds do not depend on T: one run gives every T
        for T in args.timesteps:
            evaluated = {}
            for method in args.methods:
                t = time.perf_counter()
                snn = ann2snn.convert(model, xc.split(128), threshold=method, timesteps=T, neuron="if", progress=False)
                conv_s = time.perf_counter() - t
                choice = snn.info.get("thresholds")
                # "auto" keeps one method's thresholds unchanged: the same network, the same outputs
                twin = choice and evaluated.get(choice["picked"])
                if twin and same_thresholds(snn, twin[0]):
                    acc, shared = twin[1], choice["picked"]
                elif method == "ltb":
                    ltb_acc = ltb_acc or accuracies(snn, xt, yt, args.timesteps)
                    acc, shared = ltb_acc[T], None
                else:
                    acc, shared = accuracies(snn, xt, yt, [T])[T], None
                evaluated[method] = (snn, acc)
                row = {"method": method, "timesteps": T, "accuracy": acc, "convert_seconds": conv_s,
                       "choice": choice, "same_network_as": shared}
                entry["runs"][f"{method}@{T}"] = row
                picked = f" picked {row['choice']['picked']}" if row["choice"] else ""
                print(f"{name:<17} T={T:<4}{method:<6}{acc * 100:6.2f}  (ANN {ann_acc * 100:.2f}, "
                      f"{(acc - ann_acc) * 100:+.2f}){picked}  convert {conv_s:.0f}s", flush=True)
            save(args.out, results)
    print("saved", save(args.out, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
