"""Issue 3 / 4 benchmark: simulation cost against T x the ANN's forward time, the cost of counting
synaptic operations, and peak memory against T (memory must not grow with T).

    python benchmarks/bench_simulation.py --models vgg_fmnist resnet_fmnist

Times are medians of repeated runs in one process (ratios, as the machine is shared). Memory is
measured in a fresh subprocess per T: the kernel's peak-RSS counter is reset right before the run
(/proc/self/clear_refs), and the peak minus the RSS before the run is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import load_pretrained, provenance, save, tensors

import ann2snn
from ann2snn.energy import SynapticCounter


def interleaved_medians(fns, repeats: int) -> tuple[list[float], list[float]]:
    """Median wall and CPU (process) time of each function; runs alternate so that slow phases of a
    shared machine hit every function alike. CPU time is the steadier figure when cores are contended."""
    for fn in fns:
        fn()  # warm-up
    wall = [[] for _ in fns]
    cpu = [[] for _ in fns]
    for _ in range(repeats):
        for fn, w, c in zip(fns, wall, cpu, strict=True):
            t, p = time.perf_counter(), time.process_time()
            fn()
            w.append(time.perf_counter() - t)
            c.append(time.process_time() - p)
    return [statistics.median(ts) for ts in wall], [statistics.median(ts) for ts in cpu]


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def memory_child(path: str, timesteps: int, batch: int, shape: list[int]) -> None:
    torch.set_num_threads(2)
    snn = ann2snn.load(path)
    x = torch.randn(batch, *shape)
    snn.run(x, 2)  # allocate the per-step working set once
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    base = _status("VmRSS")
    snn.run(x, timesteps)
    print(json.dumps({"T": timesteps, "peak_bytes": _status("VmHWM"), "base_bytes": base}))


def bench_model(name: str, args: argparse.Namespace) -> dict:
    model, dataset = load_pretrained(name)
    xc, _ = tensors(dataset, "train", 512, seed=1)
    x, _ = tensors(dataset, "test", args.batch, seed=3)
    snn = ann2snn.convert(model, xc.split(128))
    T = args.timesteps

    @torch.no_grad()
    def ann():
        model(x)

    def folded():
        snn.analog(x, "relu")

    def counted():
        with SynapticCounter(snn):
            snn.run(x, T)

    # All four interleaved, so that every ratio compares runs made in the same phases of the machine.
    wall, cpu = interleaved_medians([ann, folded, lambda: snn.run(x, T), counted], args.repeats)
    (t_ann, t_folded, t_snn, t_counted), (c_ann, c_folded, c_snn, c_counted) = wall, cpu
    row = {"batch": args.batch, "T": T, "ann_forward_s": t_ann, "ann_bn_folded_forward_s": t_folded,
           "snn_run_s": t_snn, "snn_run_counting_s": t_counted,
           "ratio_vs_T_ann": t_snn / (T * t_ann), "ratio_vs_T_folded_ann": t_snn / (T * t_folded),
           "counting_overhead": t_counted / t_snn, "ann_forward_cpu_s": c_ann, "ann_bn_folded_forward_cpu_s": c_folded,
           "snn_run_cpu_s": c_snn, "snn_run_counting_cpu_s": c_counted,
           "ratio_vs_T_ann_cpu": c_snn / (T * c_ann), "ratio_vs_T_folded_ann_cpu": c_snn / (T * c_folded),
           "counting_overhead_cpu": c_counted / c_snn, "memory": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = ann2snn.save(snn, Path(tmp) / "snn.pt")
        for mt in args.memory_ts:
            out = subprocess.run([sys.executable, __file__, "--memory-child", str(path), str(mt), str(args.batch),
                                  json.dumps(list(x.shape[1:]))], capture_output=True, text=True, check=True)
            row["memory"].append(json.loads(out.stdout.strip().splitlines()[-1]))
    m = {r["T"]: r["peak_bytes"] - r["base_bytes"] for r in row["memory"]}
    row["memory_growth_ratio"] = m[max(m)] / max(m[min(m)], 1)
    peak = {r["T"]: r["peak_bytes"] for r in row["memory"]}
    row["peak_rss_ratio"] = peak[max(peak)] / peak[min(peak)]
    print(f"{name}: SNN T={T} {t_snn:.2f}s = {row['ratio_vs_T_ann']:.2f} x T x ANN "
          f"({row['ratio_vs_T_folded_ann']:.2f} x T x BN-folded ANN; CPU time {row['ratio_vs_T_ann_cpu']:.2f} / "
          f"{row['ratio_vs_T_folded_ann_cpu']:.2f}); counting x{row['counting_overhead']:.2f} "
          f"(CPU time x{row['counting_overhead_cpu']:.2f}); "
          f"run memory above baseline " + ", ".join(f"T={k}: {v / 2**20:.1f} MiB" for k, v in m.items())
          + f"; peak RSS T={max(peak)} / T={min(peak)} = {row['peak_rss_ratio']:.3f}", flush=True)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=["vgg_fmnist", "resnet_fmnist"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--timesteps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--memory-ts", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="simulation")
    p.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        path, t, b, shape = args.memory_child
        memory_child(path, int(t), int(b), json.loads(shape))
        return 0
    torch.set_num_threads(args.threads)
    results = {"provenance": provenance("python benchmarks/bench_simulation.py " + " ".join(argv or sys.argv[1:])),
               "models": {}}
    for name in args.models:
        row = bench_model(name, args)
        results["models"][name] = row
        save(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
