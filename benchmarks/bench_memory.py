"""Peak memory of calibration and of evaluation against batch size, T and the
number of evaluated samples.

    python benchmarks/bench_memory.py --model vgg_fmnist

Every point runs in a fresh process: it loads the model and its data, converts 2 images once
(warm-up: tracing imports parts of torch lazily), then resets the kernel's peak-RSS counter
(/proc/self/clear_refs) and runs the measured step. Reported: the peak RSS during the step and the
peak minus the RSS just before it (what the step itself needed). Evaluation reads a Dataset that
makes its items on request (the test images cycled to the wanted length), so the number of samples
costs no memory unless the evaluation keeps them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from common import provenance, save, setup_classifier
from torch.utils.data import Dataset

import ann2snn
from ann2snn.evaluation import evaluate_classifier


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class Cycled(Dataset):
    """``n`` items made on request from a small pool: a data set of any length that holds only the pool."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n: int):
        self.x, self.y, self.n = x, y, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        j = i % self.x.shape[0]
        return self.x[j].clone(), self.y[j]


def child(spec: dict) -> dict:
    torch.set_num_threads(1)
    model, xc, xt, yt, _ = setup_classifier(spec["model"], spec.get("calib", 512), 256)
    warm = ann2snn.convert(model, xc[:2], threshold="max", timesteps=2, progress=False)
    evaluate_classifier(warm, (xt[:2], yt[:2]), 2, progress=False)
    if spec["phase"] == "evaluation":
        snn = ann2snn.convert(model, xc.split(128), threshold="ltb", ltb_iters=8, timesteps=spec["T"], progress=False)
        data = Cycled(xt, yt, spec["samples"])
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    base = _status("VmRSS")
    if spec["phase"] == "calibration":
        ann2snn.convert(model, xc.split(spec["batch"]), threshold=spec["method"], ltb_iters=16,
                        timesteps=spec["T"], progress=False)
    else:
        evaluate_classifier(snn, data, spec["T"], batch_size=spec["batch"], progress=False)
    return {**spec, "peak_mib": _status("VmHWM") / 2**20, "above_base_mib": (_status("VmHWM") - base) / 2**20}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg_fmnist")
    p.add_argument("--batches", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--ts", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--samples", type=int, nargs="+", default=[256, 2048])
    p.add_argument("--out", default="memory")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return 0
    specs = []
    for method in ("ltb", "mse"):
        specs += [dict(phase="calibration", model=a.model, method=method, batch=b, T=16, calib=512) for b in a.batches]
    specs += [dict(phase="evaluation", model=a.model, batch=b, T=16, samples=512) for b in a.batches]
    specs += [dict(phase="evaluation", model=a.model, batch=128, T=t, samples=512) for t in a.ts if t != 16]
    specs += [dict(phase="evaluation", model=a.model, batch=128, T=8, samples=n) for n in a.samples]
    rows = []
    for spec in specs:
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                             check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    path = save(a.out, {"provenance": provenance("python benchmarks/bench_memory.py " + " ".join(argv or sys.argv[1:])),
                        "rows": rows})
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
