"""Capture parity: the bundled models converted through torch.export against torch.fx symbolic tracing.

Both front ends must give the same spiking network: for each bundled classifier and configuration, the
two SNNs' outputs on the test images are compared (largest absolute difference) and their accuracies
reported side by side, with the time each front end takes to prepare the graph.

    python benchmarks/bench_capture.py --test-samples 1000 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from common import load_pretrained, provenance, save, tensors

import ann2snn

CONFIGS = {
    "adafire-mse-advanced-T4": dict(neuron="adafire", threshold="mse", correction="advanced", timesteps=4),
    "if-ltb-T32": dict(neuron="if", threshold="ltb", timesteps=32),
}


def convert(model, xc, cfg, export: bool):
    t = time.perf_counter()
    prepared = ann2snn.prepare(model, cfg, example_input=xc[:64] if export else None)
    t_prepare = time.perf_counter() - t
    ann2snn.calibrate(prepared, xc.split(64))
    return ann2snn.to_snn(prepared), t_prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vgg_fmnist", "resnet_fmnist", "mobilenet_fmnist"])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--calib-samples", type=int, default=512)
    ap.add_argument("--test-samples", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="capture_parity")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        model, dataset = load_pretrained(name)
        xc, _ = tensors(dataset, "train", args.calib_samples, seed=1)
        xt, yt = tensors(dataset, "test", args.test_samples, seed=2)
        with torch.no_grad():
            ann_acc = float((model(xt).argmax(1) == yt).float().mean())
        for key in args.configs:
            cfg = ann2snn.ConversionConfig(**CONFIGS[key], progress=False)
            outs, row = {}, {"model": name, "config": key, "ann": ann_acc}
            for front, export in (("fx", False), ("export", True)):
                snn, t_prep = convert(model, xc, cfg, export)
                with torch.no_grad():
                    out = torch.cat([snn.run(b, cfg.timesteps) for b in xt.split(250)])
                outs[front] = out
                row[f"{front}_acc"] = float((out.argmax(1) == yt).float().mean())
                row[f"{front}_prepare_s"] = t_prep
                row[f"{front}_neurons"] = len(snn.neurons())
            row["max_abs_diff"] = float((outs["fx"] - outs["export"]).abs().max())
            rows.append(row)
            print(row, flush=True)
    save(args.out, {"provenance": provenance("python benchmarks/bench_capture.py " + " ".join(sys.argv[1:])),
                    "rows": rows})


if __name__ == "__main__":
    main()
