"""``ann2snn export``: write a converted SNN as a NIR graph or in the portable JSON + safetensors format."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import UsageError, check_writable_file

HELP = "export a converted spiking model: NIR (neuromorphic hardware) or portable JSON + safetensors"
EPILOG = """examples:
  ann2snn export snn.pt --format nir --out snn.nir
  ann2snn export snn.pt --format nir --neuron-model if --out snn_if.nir   # standard IF nodes (reset to zero)
  ann2snn export snn.pt --format nir --maxpool extension --out vgg.nir  # max-pools as ann2snn-only subgraphs
  ann2snn export snn.pt --format portable --out snn_portable/             # graph.json + weights.safetensors
  ann2snn export snn.pt --target snntorch --out snn_snntorch.nir          # thresholds folded into the weights,
                                                                          # nodes snnTorch's import_from_nir reads
  ann2snn export snn.pt --target sinabs --out snn_speck.nir               # also: norse, rockpool, nir-exact
the exported file is read back by `ann2snn evaluate FILE` (a .nir file or a portable folder) and by
ann2snn.export.load_snn; see docs/export.md for what each format holds.
"""
FORMATS = ("nir", "portable")


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..export.nir import MAXPOOL_MODES, NEURON_MODELS

    p = subparsers.add_parser("export", help=HELP, description=HELP, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("snn", metavar="SNN", help="a spiking model saved by `ann2snn convert` (or a .nir / portable folder)")
    from ..export.deploy import TARGETS

    p.add_argument("--format", choices=FORMATS, help="nir (HDF5, nir 1.0) or portable (one of --format / --target)")
    p.add_argument("--target", choices=TARGETS,
                   help="a NIR file for one library's own NIR import: thresholds folded into the weights (one "
                        "threshold 1 per layer), the nodes and pooling that library reads; nir-exact is ann2snn's "
                        "exact encoding (docs/export.md lists what each target can express)")
    p.add_argument("--out", required=True, metavar="PATH", help="the .nir file, or the folder for the portable format")
    p.add_argument("--neuron-model", default="exact", choices=NEURON_MODELS,
                   help="NIR only: exact (integrator + threshold subgraphs, subtractive reset; default) or if "
                        "(standard IF nodes; tools that ignore the metadata run reset-to-zero neurons)")
    p.add_argument("--maxpool", default="refuse", choices=MAXPOOL_MODES,
                   help="NIR only: refuse max-pooling (default) or write it as ann2snn-only extension subgraphs")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..export import load_snn

    if args.target is not None:
        if args.format not in (None, "nir"):
            raise UsageError("--target writes a NIR file: leave out --format or give --format nir")
        if args.neuron_model != "exact" or args.maxpool != "refuse":
            raise UsageError("--neuron-model and --maxpool do not apply with --target (the target decides)")
        args.format = "nir"
    elif args.format is None:
        raise UsageError("give --format nir|portable or --target TARGET")
    if args.format == "nir":
        out = check_writable_file(args.out)
    else:
        out = Path(args.out).expanduser()
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a folder (the portable format writes a folder)")
        if not (out.parent if str(out.parent) else Path(".")).is_dir():
            raise UsageError(f"cannot write {out}: folder {out.parent} does not exist")
    if args.format != "nir" and (args.neuron_model != "exact" or args.maxpool != "refuse"):
        raise UsageError("--neuron-model and --maxpool apply to --format nir only")
    snn = load_snn(args.snn)
    from .. import distributed as D

    if not D.is_main():  # under torchrun: one writer
        return 0
    if args.target is not None:
        from ..export.deploy import export_deploy

        export_deploy(snn, out, args.target)
        print(f"wrote {out}: NIR graph for {args.target} ({len(snn.neurons())} neuron layers)")
        if args.target != "nir-exact":
            print(f"  run it in {args.target}: ann2snn.export.deploy.run_reader({args.target!r}, {str(out)!r}, x, T)")
        return 0
    if args.format == "nir":
        from ..export.nir import to_nir, write_nir

        graph = to_nir(snn, neuron_model=args.neuron_model, maxpool=args.maxpool)
        write_nir(graph, out)
        print(f"wrote {out}: NIR graph, {len(graph.nodes)} nodes, {len(graph.edges)} edges, "
              f"{len(snn.neurons())} neuron layers as {args.neuron_model!r} neurons")
    else:
        from ..export.portable import GRAPH_FILE, WEIGHTS_FILE, save_portable

        save_portable(snn, out)
        print(f"wrote {out}/{GRAPH_FILE} and {out}/{WEIGHTS_FILE} ({len(snn.neurons())} neuron layers)")
    print(f"  check: ann2snn evaluate {out}")
    return 0
