"""Speed-up of data-parallel calibration + evaluation with 2 processes (gloo).

    python benchmarks/bench_distributed.py --model vgg_fmnist --calib 512 --test 512 --timesteps 16

Three set-ups, each in fresh processes started the same way (torch.multiprocessing.spawn):
1 process with 1 thread, 1 process with 2 threads, and 2 processes (torch.distributed, gloo) with
1 thread each. Each process loads the model and data, converts and evaluates 2 images per process once (warm-up:
tracing imports parts of torch lazily), waits at a barrier, then the clock runs over
``ann2snn.convert`` (LTB calibration by default) and ``evaluate_classifier`` (with energy counting);
start-up and imports are not timed. Repeated ``--repeats`` times in turn; the median is reported.
The distributed run must give the one-process thresholds (to 1e-6) and the same accuracies.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import provenance, save, setup_classifier

import ann2snn
from ann2snn import distributed as D
from ann2snn.evaluation import evaluate_classifier


def worker(rank: int, world: int, threads: int, args: dict, init_file: str, out: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    torch.set_num_threads(threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model, xc, xt, yt, _ = setup_classifier(args["model"], args["calib"], args["test"])
    cfg = dict(threshold=args["threshold"], ltb_iters=args["ltb_iters"], timesteps=args["timesteps"], progress=False)
    # warm-up: the first trace imports much of torch.fx lazily, which is start-up, not work
    warm = ann2snn.convert(model, xc[:2 * world], threshold="max", timesteps=2, progress=False)
    evaluate_classifier(warm, (xt[:2 * world], yt[:2 * world]), 2, progress=False)
    if world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    snn = ann2snn.convert(model, xc.split(args["batch"]), **cfg)
    t1 = time.perf_counter()
    result = evaluate_classifier(snn, (xt, yt), args["timesteps"], batch_size=args["batch"], progress=False)
    t2 = time.perf_counter()
    if world > 1:
        D.shutdown()  # a barrier, then destroy
    if rank == 0:
        Path(out).write_text(json.dumps({
            "calibration_s": t1 - t0, "evaluation_s": t2 - t1, "total_s": t2 - t0,
            "thresholds": [n.threshold.tolist() for n in snn.neurons().values()],
            "accuracy_per_t": result.accuracy_per_t, "sops_per_t": result.sops_per_t,
        }))


def run_setup(world: int, threads: int, args: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        mp.spawn(worker, args=(world, threads, args, os.path.join(tmp, "init"), out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def max_rel_diff(a: list, b: list) -> float:
    ta, tb = torch.tensor([v for row in a for v in row]), torch.tensor([v for row in b for v in row])
    return float(((ta - tb).abs() / tb.abs().clamp(min=1e-12)).max())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg_fmnist")
    p.add_argument("--calib", type=int, default=512)
    p.add_argument("--test", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--timesteps", type=int, default=16)
    p.add_argument("--threshold", default="ltb")
    p.add_argument("--ltb-iters", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="distributed")
    a = p.parse_args(argv)
    args = {k: getattr(a, k) for k in ("model", "calib", "test", "batch", "timesteps", "threshold", "ltb_iters")}
    setups = {"1 process x 1 thread": (1, 1), "1 process x 2 threads": (1, 2), "2 processes x 1 thread": (2, 1)}
    runs: dict[str, list[dict]] = {k: [] for k in setups}
    for _ in range(a.repeats):
        for name, (world, threads) in setups.items():
            runs[name].append(run_setup(world, threads, args))
            print(f"{name}: {runs[name][-1]['total_s']:.2f} s", flush=True)
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("calibration_s", "evaluation_s", "total_s")}
           for name, rs in runs.items()}
    ref, par = runs["1 process x 1 thread"][0], runs["2 processes x 1 thread"][0]
    payload = {
        "provenance": provenance("python benchmarks/bench_distributed.py " + " ".join(argv or sys.argv[1:])),
        "config": args, "cpus": os.cpu_count(), "median_seconds": med,
        "speedup_2proc_vs_1proc_1thread": med["1 process x 1 thread"]["total_s"] / med["2 processes x 1 thread"]["total_s"],
        "speedup_2proc_vs_1proc_2threads": med["1 process x 2 threads"]["total_s"] / med["2 processes x 1 thread"]["total_s"],
        "threshold_max_rel_diff": max_rel_diff(par["thresholds"], ref["thresholds"]),
        "same_accuracy": par["accuracy_per_t"] == ref["accuracy_per_t"],
        # LTB thresholds agree to ~1e-7, not bit for bit, so a few spikes (and SOPs) may differ
        "sops_max_rel_diff": max_rel_diff([par["sops_per_t"]], [ref["sops_per_t"]]),
        "runs": runs,
    }
    for r in payload["runs"].values():
        for x in r:
            x.pop("thresholds")
            x.pop("sops_per_t")
    path = save(a.out, payload)
    print(json.dumps({k: v for k, v in payload.items() if k != "runs"}, indent=1))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
