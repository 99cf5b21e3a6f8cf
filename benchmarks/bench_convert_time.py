"""Conversion time by stage for the bundled Fashion-MNIST models: AdaFire as the demo converts it
(MSE thresholds, advanced correction, T = 4, SSC with tau = 2) and IF + LTB (T = 32).

    OMP_NUM_THREADS=2 python benchmarks/bench_convert_time.py
    python benchmarks/bench_convert_time.py --models vgg_fmnist --baseline vgg_fmnist
    python benchmarks/bench_convert_time.py --models resnet50_224 --configs adafire_nossc_fisher \
        --calib-samples 64 --test-samples 32 --out convert_time_resnet50

Each conversion is ``ann2snn.convert`` on 512 training samples (batches of 128, as ``ann2snn
convert`` loads them); the stage times are its ``snn.info["stage_times"]``. ``--baseline`` converts
the named models again with AdaFire in the same process with every calibration step running the
whole network each time (``ann2snn.adaptation.incremental.ENABLED = False``) and checks that both
conversions chose the same: thresholds, caps, corrections and SSC scales bit for bit, and the same
predictions on test samples. ``resnet50_224`` is an ImageNet-size ResNet-50 (``benchmarks/resnet50.py``)
on random 224x224 images; its accuracy column is the SNN's agreement with the ANN's predictions.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from common import load_pretrained, provenance, save, tensors

import ann2snn
from ann2snn.adaptation import incremental

CONFIGS = {
    "adafire": dict(neuron="adafire", threshold="mse", correction="advanced", timesteps=4, ssc_tau=2.0),
    "if_ltb": dict(neuron="if", threshold="ltb", timesteps=32),
    "adafire_fisher": dict(neuron="adafire", threshold="mse", correction="advanced", timesteps=4, ssc_tau=2.0,
                           sensitivity_method="fisher"),
    "adafire_nossc": dict(neuron="adafire", threshold="mse", correction="advanced", timesteps=4),
    "adafire_nossc_fisher": dict(neuron="adafire", threshold="mse", correction="advanced", timesteps=4,
                                 sensitivity_method="fisher"),
}
RESNET50 = "resnet50_224"  # benchmarks/resnet50.py: random weights, randomised BN, 224x224 random images


def load(name: str, calib_samples: int, test_samples: int):
    """(model, calibration batches, test images, test labels); the ResNet-50's labels are the ANN's own
    predictions (random weights: the accuracy column is then the SNN's agreement with the ANN)."""
    if name == RESNET50:
        from resnet50 import images, resnet50

        model = resnet50()
        xt = images(test_samples, seed=2)
        with torch.no_grad():
            yt = torch.cat([model(x).argmax(1) for x in xt.split(32)])
        return model, list(images(calib_samples, seed=1).split(32)), xt, yt
    model, dataset = load_pretrained(name)
    xc, _ = tensors(dataset, "train", calib_samples, seed=1)
    xt, yt = tensors(dataset, "test", test_samples, seed=2)
    return model, list(xc.split(128)), xt, yt


def convert(model, batches, config: dict) -> tuple[ann2snn.SpikingModel, float]:
    start = time.perf_counter()
    snn = ann2snn.convert(model, batches, progress=False, **config)
    return snn, time.perf_counter() - start


def chosen(snn) -> dict:
    """What the conversion chose: every neuron buffer and cap, and the SSC scales."""
    return {"state": {k: v.clone() for k, v in snn.state_dict().items()},
            "caps": {n: m.cap for n, m in snn.neurons().items()},
            "ssc": snn.info.get("ssc", {}).get("scales")}


def same(a: dict, b: dict) -> bool:
    return (a["caps"] == b["caps"] and a["ssc"] == b["ssc"] and a["state"].keys() == b["state"].keys()
            and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vgg_fmnist", "resnet_fmnist", "mobilenet_fmnist"])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--baseline", nargs="*", default=[], metavar="MODEL",
                   help="models converted again with AdaFire, every calibration step on full runs")
    p.add_argument("--calib-samples", type=int, default=512)
    p.add_argument("--test-samples", type=int, default=500)
    p.add_argument("--out", default="convert_time")
    args = p.parse_args(argv)

    rows = []
    for name in args.models:
        model, batches, xt, yt = load(name, args.calib_samples, args.test_samples)
        runs = [(cfg, True) for cfg in args.configs]
        if name in args.baseline:
            runs.append(("adafire", False))
        picks = {}
        for cfg, fast in runs:
            incremental.ENABLED = fast
            try:
                snn, seconds = convert(model, batches, CONFIGS[cfg])
            finally:
                incremental.ENABLED = True
            with torch.no_grad():
                pred = torch.cat([snn.run(x).argmax(1) for x in xt.split(32 if name == RESNET50 else 250)])
            row = {"model": name, "config": cfg, "incremental": fast, "seconds": round(seconds, 2),
                   "stage_times": snn.info["stage_times"], "accuracy": float((pred == yt).float().mean()),
                   "caps": snn.info.get("caps"), "ssc_scales": snn.info.get("ssc", {}).get("scales")}
            picks[(cfg, fast)] = (chosen(snn), pred)
            if not fast:
                ref, ref_pred = picks[(cfg, True)]
                row["same_as_incremental"] = same(ref, picks[(cfg, fast)][0]) and torch.equal(ref_pred, pred)
            rows.append(row)
            stages = ", ".join(f"{k} {v:.1f}" for k, v in row["stage_times"].items())
            print(f"{name:17s} {cfg:8s} {'incremental' if fast else 'full runs':11s} {seconds:7.1f} s  "
                  f"acc {row['accuracy']:.4f}  [{stages}]", flush=True)
            if "same_as_incremental" in row:
                print(f"{'':17s} same choices and predictions as the incremental runner: {row['same_as_incremental']}")
    payload = {"provenance": provenance(" ".join(["python", *sys.argv])),
               "settings": {"calib_samples": args.calib_samples, "adapt_samples": 256, "batch_size": "128 (resnet50_224: 32)",
                            "test_samples": args.test_samples, "configs": CONFIGS},
               "rows": rows}
    print(save(args.out, payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
