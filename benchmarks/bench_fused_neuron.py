"""Does a compiled, fused neuron update beat the eager in-place one on this machine?

    python benchmarks/bench_fused_neuron.py --batch 128

Times one neuron-layer update (charge, fire, subtract) of a [batch, 64, 28, 28] layer: the eager
in-place update :class:`ann2snn.neurons.SpikingNeuron` runs, against ``torch.compile`` of the pure
step function (:func:`ann2snn.neurons.functional.if_step` / ``burst_step``), which inductor fuses into
one loop. Reports the compile (warm-up) time, the per-update medians in one process, their ratio and
whether the compiled spikes equal the eager ones bit for bit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from common import provenance, save

from ann2snn.neurons import SpikingNeuron
from ann2snn.neurons import functional as NF


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="fused_neuron")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = (args.batch, 64, 28, 28)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g)
    theta = torch.rand(64, generator=g) + 0.5
    results = {"provenance": provenance("python benchmarks/bench_fused_neuron.py " + " ".join(argv or sys.argv[1:])),
               "shape": list(shape), "neurons": {}}
    for cap in (1, 3):
        neuron = SpikingNeuron(theta, cap=cap)
        th = neuron.effective_threshold(4, torch.float32)
        neuron(x)  # builds the state

        def eager(neuron=neuron):
            neuron(x)

        def step(v, x, th, cap=cap):
            return NF.if_step(x, v, th) if cap == 1 else NF.burst_step(x, v, th, cap)

        t = time.perf_counter()
        compiled = torch.compile(step, dynamic=False)
        v = torch.rand(shape, generator=g) * th  # a membrane part-way to the threshold
        spikes_c, _ = compiled(v, x, th)
        compile_s = time.perf_counter() - t
        spikes_e, _ = step(v, x, th)
        t_eager = median_time(eager, args.repeats)
        t_comp = median_time(lambda c=compiled, v=v, th=th: c(v, x, th), args.repeats)
        row = {"compile_s": compile_s, "eager_update_s": t_eager, "compiled_update_s": t_comp,
               "compiled_over_eager": t_comp / t_eager, "bit_identical": bool(torch.equal(spikes_c, spikes_e))}
        results["neurons"][f"cap{cap}"] = row
        print(f"cap={cap}: compile {compile_s:.1f} s; update eager {t_eager * 1e3:.1f} ms, compiled "
              f"{t_comp * 1e3:.1f} ms (x{row['compiled_over_eager']:.2f}); identical {row['bit_identical']}", flush=True)
        save(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
