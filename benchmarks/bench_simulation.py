"""Simulation cost against T x the ANN's forward time for each execution mode (step mode computing
every node every step, step mode with the static prefix computed once, the same with the compiled
neuron update, time-batched mode), the cost
of counting synaptic operations, and peak memory against T.

    python benchmarks/bench_simulation.py --models vgg_fmnist resnet_fmnist mobilenet_fmnist --timesteps 4 32
    python benchmarks/bench_simulation.py --models resnet50_224 --batch 8 --timesteps 8 --repeats 1 \
        --out simulation_modes_resnet50

``resnet50_224`` is an ImageNet-size ResNet-50 with random weights (``benchmarks/resnet50.py``),
converted with the default IF + LTB on 64 random 224x224 images.

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


MODES = {  # name -> SpikingModel.run keyword arguments
    "step": dict(mode="step", static_prefix=False),
    "step_prefix": dict(mode="step"),
    "step_prefix_fused": dict(mode="step", fused=True),
    "batched": dict(mode="batched"),
}


def memory_child(path: str, timesteps: int, batch: int, shape: list[int], mode: str) -> None:
    torch.set_num_threads(1)
    snn = ann2snn.load(path)
    x = torch.randn(batch, *shape)
    snn.run(x, 2, **MODES[mode])  # allocate the per-step working set once
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    base = _status("VmRSS")
    snn.run(x, timesteps, **MODES[mode])
    print(json.dumps({"T": timesteps, "mode": mode, "peak_bytes": _status("VmHWM"), "base_bytes": base}))


def bench_model(name: str, args: argparse.Namespace) -> dict:
    if name == "resnet50_224":  # benchmarks/resnet50.py: random weights, randomised BN, random images
        from resnet50 import images, resnet50

        model, xc, x = resnet50(), images(64, seed=1), images(args.batch, seed=3)
        snn = ann2snn.convert(model, xc.split(32), progress=False)
    else:
        model, dataset = load_pretrained(name)
        xc, _ = tensors(dataset, "train", 512, seed=1)
        x, _ = tensors(dataset, "test", args.batch, seed=3)
        snn = ann2snn.convert(model, xc.split(128), progress=False)
    rows = {}
    for T in args.timesteps:
        @torch.no_grad()
        def ann():
            model(x)

        def counted(T=T):
            with SynapticCounter(snn):
                snn.run(x, T)

        runs = {mode: (lambda kw=kw, T=T: snn.run(x, T, **kw)) for mode, kw in MODES.items()}
        # all interleaved, so that every ratio compares runs made in the same phases of the machine
        wall, cpu = interleaved_medians([ann, *runs.values(), counted], args.repeats)
        row = {"batch": args.batch, "T": T, "ann_forward_s": wall[0], "ann_forward_cpu_s": cpu[0], "modes": {}}
        for i, mode in enumerate(MODES, start=1):
            row["modes"][mode] = {"run_s": wall[i], "run_cpu_s": cpu[i], "ratio_vs_T_ann": wall[i] / (T * wall[0]),
                                  "ratio_vs_T_ann_cpu": cpu[i] / (T * cpu[0])}
        row["counting_overhead_vs_step_prefix"] = wall[-1] / row["modes"]["step_prefix"]["run_s"]
        outs = {mode: snn.run(x, T, **kw) for mode, kw in MODES.items()}
        row["max_abs_diff_vs_step"] = {m: float((o - outs["step"]).abs().max()) for m, o in outs.items()}
        if args.memory:
            with tempfile.TemporaryDirectory() as tmp:
                path = ann2snn.save(snn, Path(tmp) / "snn.pt")
                for mode in MODES:
                    out = subprocess.run([sys.executable, __file__, "--memory-child", str(path), str(T), str(args.batch),
                                          json.dumps(list(x.shape[1:])), mode],
                                         capture_output=True, text=True, check=True)
                    mem = json.loads(out.stdout.strip().splitlines()[-1])
                    row["modes"][mode]["peak_rss_bytes"] = mem["peak_bytes"]
                    row["modes"][mode]["run_memory_above_base_bytes"] = mem["peak_bytes"] - mem["base_bytes"]
        rows[str(T)] = row
        print(f"{name} T={T}: ANN {wall[0] * 1e3:.1f} ms; " + "; ".join(
            f"{m} {r['ratio_vs_T_ann']:.2f} x T x ANN (CPU {r['ratio_vs_T_ann_cpu']:.2f})"
            + (f", +{r['run_memory_above_base_bytes'] / 2**20:.0f} MiB" if "peak_rss_bytes" in r else "")
            for m, r in row["modes"].items()) + f"; counting x{row['counting_overhead_vs_step_prefix']:.2f}", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=["vgg_fmnist", "resnet_fmnist"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--timesteps", type=int, nargs="+", default=[4, 32])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory subprocesses")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="simulation_modes")
    p.add_argument("--memory-child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        path, t, b, shape, mode = args.memory_child
        memory_child(path, int(t), int(b), json.loads(shape), mode)
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
