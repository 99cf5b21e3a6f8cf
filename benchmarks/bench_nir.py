"""NIR export checked against other readers of NIR.

    python benchmarks/bench_nir.py --models mlp_digits cnn_digits resnet_digits mobilenet_digits \
        resnet_fmnist mobilenet_fmnist

For each converted model (LTB thresholds, IF neurons; and AdaFire with cap 2 for the "exact" export):

* round trips: NIR (exact and IF encodings) and the portable format, rebuilt by ann2snn -> identical?
* the exact export run by ann2snn's reference NIR simulator (NIR semantics, metadata ignored) and by
  nirtorch 2.6's interpreter (Norse 1.1 modules for Conv2d / Affine, minimal I / Threshold / Scale):
  output difference, argmax agreement, identical spikes;
* the IF export run by Norse 1.1's IAF neurons (through nirtorch) and by the reference simulator:
  what a tool that reads NIR's IF node as NIR defines it (reset to zero, start at 0) computes.

Norse and nirtorch are optional (installed with --no-deps); without them those columns are skipped.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import provenance, save, setup_classifier
from torch import nn

import ann2snn
from ann2snn.export.nir import import_nir, to_nir, write_nir
from ann2snn.export.nir_sim import NIRSimulator
from ann2snn.export.portable import load_portable, save_portable


def lockstep(snn, graph, x, T):
    """ann2snn and the reference simulator side by side on the exact export: both outputs averaged
    over T steps, and the fraction of (neuron, step, sample) spike counts that are identical."""
    sim = NIRSimulator(graph)
    neurons = [n for n, node in graph.nodes.items() if isinstance(node, type(graph))
               and node.metadata.get("ann2snn_op") == "neuron"]
    snn.reset()
    sim.reset()
    ours = theirs = 0
    same = total = spikes = 0
    with torch.no_grad():
        for _ in range(T):
            ours = ours + snn.step(x)
            theirs = theirs + sim.step(x)
            for module, name in zip(snn.neurons().values(), neurons, strict=True):
                a = module.last_spikes.float()
                b = sum(v for k, v in sim.children[name].out.items() if k.startswith("threshold_"))
                same += int((a == b).sum())
                total += a.numel()
                spikes += int(a.sum())
    snn.reset()
    return ours / T, theirs / T, same / total, spikes


class _Scale(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.register_buffer("s", torch.from_numpy(np.asarray(s, np.float32)))

    def forward(self, x):
        return x * self.s


class _Integrator(nn.Module):
    def __init__(self, r):
        super().__init__()
        self.register_buffer("r", torch.from_numpy(np.asarray(r, np.float32)))

    def forward(self, x, state=None):
        v = (0 if state is None else state) + self.r * x
        return v, v


class _Threshold(nn.Module):
    def __init__(self, t):
        super().__init__()
        self.register_buffer("t", torch.from_numpy(np.asarray(t, np.float32)))

    def forward(self, x):
        return (x > self.t).float()


def nirtorch_run(graph, x, T, exact):
    import nir
    import nirtorch
    from norse.torch.utils.import_nir import _import_norse_module

    # nirtorch's default Affine mapping leaves the layer's bias at its random initialisation
    # (it assigns weight.bias), so Norse's mapping is used for Affine and Conv2d.
    node_map = {t: _import_norse_module for t in (nir.Affine, nir.Conv2d, nir.Flatten)}
    node_map[nir.Scale] = lambda n: _Scale(n.scale)
    if exact:
        node_map[nir.I] = lambda n: _Integrator(n.r)
        node_map[nir.Threshold] = lambda n: _Threshold(n.threshold)
    else:
        node_map[nir.IF] = _import_norse_module
    net = nirtorch.nir_to_torch(graph, node_map)
    outs = []
    with torch.no_grad():
        for sample in x:  # NIR's Flatten(start_dim=0) flattens one sample: run unbatched
            state, total = None, 0
            for _ in range(T):
                y, state = net(sample.unsqueeze(0) if exact else sample, state)
                total = total + y.reshape(-1)
            outs.append(total / T)
    return torch.stack(outs)


def compare(a, b, y):
    return {"max_abs_diff": float((a - b).abs().max()), "argmax_agree": float((a.argmax(1) == b.argmax(1)).float().mean()),
            "acc_a": float((a.argmax(1) == y).float().mean()), "acc_b": float((b.argmax(1) == y).float().mean())}


def bench(name, T, test_samples, calib_samples, neuron, norse_samples, have_norse):
    model, xc, xt, yt, ann_acc = setup_classifier(name, calib_samples, test_samples)
    kw = {"neuron": "adafire", "burst_alloc": "uniform", "burst_cap": 2} if neuron == "adafire" else {}
    t0 = time.perf_counter()
    snn = ann2snn.convert(model, xc.split(128), timesteps=T, progress=False, **kw)
    row = {"model": name, "neuron": neuron, "T": T, "test_samples": len(xt), "ann_acc": ann_acc,
           "convert_s": round(time.perf_counter() - t0, 1)}
    ours = snn.run(xt, T)
    row["snn_acc"] = float((ours.argmax(1) == yt).float().mean())
    with tempfile.TemporaryDirectory() as tmp:
        exact = to_nir(snn)
        path = write_nir(exact, Path(tmp) / "exact.nir")
        row["nir_exact_bytes"] = path.stat().st_size
        row["roundtrip_nir_exact_identical"] = bool(torch.equal(import_nir(path).run(xt, T), ours))
        row["roundtrip_portable_identical"] = bool(torch.equal(load_portable(save_portable(snn, Path(tmp) / "p"))
                                                               .run(xt, T), ours))
        same, sim_out, identical, spikes = (None, None, 0.0, 0)
        for chunk in range(0, len(xt), 100):  # in chunks: spike maps of every layer are large
            a, b, ident, n = lockstep(snn, exact, xt[chunk:chunk + 100], T)
            same = a if same is None else torch.cat([same, a])
            sim_out = b if sim_out is None else torch.cat([sim_out, b])
            identical += ident * len(a)
            spikes += n
        assert torch.equal(same, ours)
        row["refsim_exact"] = compare(ours, sim_out, yt)
        row["refsim_exact"]["identical_spikes"] = identical / len(xt)
        row["refsim_exact"]["spikes"] = spikes
        if neuron == "if":
            graph_if = to_nir(snn, neuron_model="if")
            path = write_nir(graph_if, Path(tmp) / "if.nir")
            row["roundtrip_nir_if_identical"] = bool(torch.equal(import_nir(path).run(xt, T), ours))
            row["refsim_if"] = compare(ours, NIRSimulator(graph_if).run(xt, T), yt)
        if have_norse:
            xs, ys = xt[:norse_samples], yt[:norse_samples]
            t0 = time.perf_counter()
            row["nirtorch_exact"] = compare(ours[:norse_samples], nirtorch_run(exact, xs, T, exact=True), ys)
            if neuron == "if":
                norse_if = nirtorch_run(graph_if, xs, T, exact=False)
                row["norse_if"] = compare(ours[:norse_samples], norse_if, ys)
                row["norse_if_vs_refsim_if"] = compare(NIRSimulator(graph_if).run(xs, T), norse_if, ys)
            row["norse_s"] = round(time.perf_counter() - t0, 1)
    return row


def table(d: dict) -> str:
    """The results as a markdown table."""
    p = d["provenance"]
    out = [f"`{p['command']}` — commit `{p['commit']}`, {p['date']}, {p['machine']}, "
           + ", ".join(f"{k} {v}" for k, v in d["versions"].items()), ""]
    out.append("| model | neuron | SNN acc % | round trips identical (NIR exact / NIR IF / portable) | "
               "exact export in reference sim: max diff, identical spikes % | exact export in nirtorch: max diff, "
               "argmax agree % | IF export in reference sim: acc % | IF export in Norse: acc %, argmax agree % with ann2snn | Norse vs reference sim "
               "(IF): max diff |")
    out.append("|---|---|---|---|---|---|---|---|---|")

    def yn(v):
        return "—" if v is None else ("yes" if v else "**no**")

    for r in d["rows"]:
        rs = r["refsim_exact"]
        nt, nf, nv = r.get("nirtorch_exact"), r.get("norse_if"), r.get("norse_if_vs_refsim_if")
        ri = r.get("refsim_if")
        out.append(
            f"| {r['model']} | {r['neuron']} | {r['snn_acc'] * 100:.1f} | {yn(r['roundtrip_nir_exact_identical'])} / "
            f"{yn(r.get('roundtrip_nir_if_identical'))} / {yn(r['roundtrip_portable_identical'])} | "
            f"{rs['max_abs_diff']:.2g}, {rs['identical_spikes'] * 100:.4f} | "
            + (f"{nt['max_abs_diff']:.2g}, {nt['argmax_agree'] * 100:.0f} | " if nt else "— | ")
            + (f"{ri['acc_b'] * 100:.1f} | " if ri else "— | ")
            + (f"{nf['acc_b'] * 100:.1f} (ann2snn {nf['acc_a'] * 100:.1f}), {nf['argmax_agree'] * 100:.0f} | "
               if nf else "— | ")
            + (f"{nv['max_abs_diff']:.2g} |" if nv else "— |"))
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mlp_digits", "cnn_digits", "resnet_digits", "mobilenet_digits",
                                                   "resnet_fmnist", "mobilenet_fmnist"])
    p.add_argument("--timesteps", type=int, default=32)
    p.add_argument("--test-samples", type=int, default=300)
    p.add_argument("--norse-samples", type=int, default=100, help="samples run through nirtorch / Norse (slow)")
    p.add_argument("--calib-samples", type=int, default=512)
    p.add_argument("--out", default="nir_crosscheck")
    p.add_argument("--table", metavar="JSON", help="only print the markdown table of a results file")
    args = p.parse_args(argv)
    if args.table:
        import json

        print(table(json.loads(Path(args.table).read_text())))
        return 0
    logging.disable(logging.WARNING)  # Norse warns on every IF node with r != 1 (ours have r = 1)
    try:
        import nirtorch  # noqa: F401
        import norse.torch  # noqa: F401
        have_norse = True
    except ImportError:
        have_norse = False
        print("norse / nirtorch not installed: their columns are skipped", file=sys.stderr)
    rows = []
    for name in args.models:
        for neuron in ("if", "adafire"):
            row = bench(name, args.timesteps, args.test_samples, args.calib_samples, neuron, args.norse_samples,
                        have_norse)
            rows.append(row)
            print(row, flush=True)
    import nir
    import norse

    versions = {"nir": nir.version, "torch": torch.__version__}
    if have_norse:
        import importlib.metadata as md

        versions.update(norse=norse.__version__ if hasattr(norse, "__version__") else md.version("norse"),
                        nirtorch=md.version("nirtorch"))
    command = "python benchmarks/bench_nir.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(save(args.out, {"provenance": provenance(command), "versions": versions, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
