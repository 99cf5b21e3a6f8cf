"""``ann2snn compare``: the ANN and spiking models of it on the same test samples, in one table.

Each spiking model runs at its own configured T (or ``--timesteps``); the ANN (recorded in the
files, the original network with BN folded) runs once. The data, the checks and the evaluation are
``ann2snn evaluate``'s (:mod:`ann2snn.cli.evaluate`, :func:`ann2snn.evaluation.evaluate_classifier`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .. import distributed as D
from ..energy import resolve_energy_model
from ..evaluation import evaluate_ann, evaluate_classifier
from ..export import load_snn
from ..model import SpikingModel
from .common import UsageError, check_output_dir, neuron_words, progress_flag
from .evaluate import (
    DataChoice,
    add_output_group,
    add_run_options,
    check_fits,
    check_run_options,
    checked_choices,
    threshold_words,
)

HELP = "compare spiking models of one ANN on the same test samples: accuracy, SOPs, energy, time"
EPILOG = """examples:
  ann2snn compare runs/demo/adafire.pt runs/demo/if.pt --max-samples 1000
  ann2snn compare a.pt b.pt c.pt --timesteps 8 --energy neuromorphic --json
  ann2snn compare a.pt b.pt --report runs/compare        # compare.png, compare.md, compare.json
"""
WIDTH = 100  # the table fits this many columns


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("compare", help=HELP, description=HELP, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("snns", nargs="+", metavar="SNN", help="spiking models of one ANN saved by `ann2snn convert` "
                   "(or .nir files / portable folders from `ann2snn export`)")
    add_run_options(p, "simulate every model T steps (default: each model's own timesteps)")
    output = add_output_group(p)
    output.add_argument("--json", action="store_true", help="print only JSON: the table's figures and each "
                        "model's full evaluation (EvalResult.to_dict())")
    output.add_argument("--report", metavar="DIR", help="also write a plot (compare.png), a markdown table "
                        "(compare.md) and the JSON (compare.json) into DIR")
    p.set_defaults(run=run)
    return p


# -- checks ----------------------------------------------------------------------------------------

def _names(paths: list[str]) -> list[str]:
    """The file names, or the paths as given where two files share a name."""
    names = [Path(p).name or str(p) for p in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)]


def _ann_of(snn: SpikingModel) -> tuple[Any, Any]:
    source = snn.info.get("source") or {}
    return source.get("model"), source.get("weights")


def _same_ann(paths: list[str], snns: list[SpikingModel]) -> None:
    """Every file that records its source was converted from the same model and weights."""
    known = [(p, _ann_of(s)) for p, s in zip(paths, snns, strict=True) if _ann_of(s)[0] is not None]
    for path, ann in known[1:]:
        if ann != known[0][1]:
            def words(a):
                return a[0] + (f" (weights {a[1]})" if a[1] else "")
            raise UsageError(f"{known[0][0]} was converted from {words(known[0][1])} but {path} from {words(ann)}: "
                             f"compare needs spiking models of one ANN")
    for path, snn in zip(paths, snns, strict=True):
        task = (snn.info.get("source") or {}).get("task") or "classification"
        if task != "classification":
            raise UsageError(f"{path} is a {task} model; compare covers classifiers only "
                             f"(use `ann2snn evaluate --task {task}`)")


def _same_data(paths: list[str], choices: list[DataChoice]) -> None:
    """Without ``--data``, every file records the same data (and normalisation)."""
    first = choices[0]
    for path, c in zip(paths[1:], choices[1:], strict=True):
        if c.name != first.name:
            raise UsageError(f"{paths[0]} was converted on {first.name} but {path} on {c.name}: "
                             f"give --data to compare them on one dataset")
        if (c.mean, c.std) != (first.mean, first.std):
            raise UsageError(f"{paths[0]} and {path} record different normalisations of {first.name} "
                             f"(mean {first.mean}, std {first.std} against mean {c.mean}, std {c.std}): "
                             f"give --data, --mean and --std")


# -- the comparison --------------------------------------------------------------------------------

def config_summary(snn: SpikingModel) -> dict[str, Any]:
    """Neuron, thresholds, corrections, SSC and IAT of a converted model, and the words for them."""
    cfg = snn.config
    ssc = None
    if cfg.ssc_max_loss is not None:
        ssc = {"max_loss": cfg.ssc_max_loss}
    elif cfg.ssc_tau > 0:
        ssc = {"tau": cfg.ssc_tau}
    words = [neuron_words(cfg), threshold_words(snn)]
    if cfg.correction != "none":
        words.append(cfg.correction)  # light, advanced or both
    if ssc is not None:
        words.append("SSC")
    if snn.info.get("iat"):
        words.append("IAT")
    return {"neuron": cfg.neuron, "signed": cfg.signed, "step_cap": cfg.step_cap, "threshold": cfg.threshold,
            "thresholds_picked": (snn.info.get("thresholds") or {}).get("picked"), "granularity": cfg.granularity,
            "timesteps": cfg.timesteps, "correction": cfg.correction, "ssc": ssc, "iat": bool(snn.info.get("iat")),
            "summary": ", ".join(words)}


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Load, check and evaluate every file of ``args.snns``; the comparison as plain JSON-able data."""
    paths = [str(p) for p in args.snns]
    snns = [load_snn(p) for p in paths]  # every file is read before anything runs
    _same_ann(paths, snns)
    choices = [DataChoice.of(snn, path, args) for snn, path in zip(snns, paths, strict=True)]
    if args.data is None:
        _same_data(paths, choices)
    test, full = choices[0].load_test(args, snns[0])
    for snn, c in zip(snns[1:], choices[1:], strict=True):
        check_fits(snn, test, c.name, c.shape)
    progress = progress_flag(args)
    ann = evaluate_ann(snns[0], test, progress=progress, batch_size=args.batch_size)
    names = _names(paths)
    rows = []
    for name, path, snn in zip(names, paths, snns, strict=True):
        t = args.timesteps or snn.config.timesteps
        result = evaluate_classifier(snn, test, t, energy=args.energy, progress=progress,
                                     batch_size=args.batch_size, prefix_macs=args.prefix_macs,
                                     desc=f"{name} T={t}")
        result.meta.update({"snn": path, "data": choices[0].name, "split": "test", "of_samples": full,
                            "model": (snn.info.get("source") or {}).get("model"),
                            "calibration_checks": checked_choices(snn.info)})
        e = result.energy
        rows.append({"name": name, "file": path, "config": config_summary(snn), "timesteps": t,
                     "accuracy": result.accuracy, "delta_points": (result.accuracy - ann.accuracy) * 100,
                     "sops": e.sops, "macs": e.macs, "energy_j": e.snn_energy,
                     "saving": e.saving, "seconds": result.seconds, "evaluation": result.to_dict()})
    first = rows[0]["evaluation"]["energy"]
    model = resolve_energy_model(args.energy)
    source = snns[0].info.get("source") or {}
    return {
        "model": source.get("model"), "data": choices[0].name, "split": "test", "samples": ann.samples,
        "of_samples": full,
        "energy_model": {"name": model.name, "e_mac": model.e_mac, "e_ac": model.e_ac},
        "ann": {"file": paths[0], **ann.to_dict(), "macs": first["ann_macs"], "energy_j": first["ann_energy_j"]},
        "snns": rows,
    }


# -- output ------------------------------------------------------------------------------------------

def _delta_sign() -> str:
    try:
        "Δ".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "d"
    return "Δ"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 3, 1)] + "..."


def saving_words(saving: float) -> str:
    """``saving +54.0 %``: positive = less energy than the ANN."""
    return f"saving {saving * 100:+.1f} %"


def table_rows(comparison: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The header and the rows (ANN first) as strings: what the text table and compare.md show."""
    header = ["model", "config", "T", "accuracy", f"{_delta_sign()} vs ANN", "SOPs/sample", "energy vs ANN", "time"]
    ann = comparison["ann"]
    rows = [["ANN", comparison.get("model") or "the recorded ANN", "-", f"{ann['accuracy'] * 100:.2f} %", "-", "-",
             "-", f"{ann['seconds']:.1f} s"]]
    for r in comparison["snns"]:
        rows.append([r["name"], r["config"]["summary"], str(r["timesteps"]), f"{r['accuracy'] * 100:.2f} %",
                     f"{r['delta_points']:+.2f}", f"{r['sops']:,.0f}", saving_words(r["saving"]),
                     f"{r['seconds']:.1f} s"])
    return header, rows


def to_text(comparison: dict[str, Any], width: int = WIDTH) -> str:
    header, rows = table_rows(comparison)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    fixed = sum(widths) - widths[0] - widths[1] + 2 * (len(header) - 1)
    widths[0] = min(widths[0], 24)
    widths[1] = max(12, min(widths[1], width - fixed - widths[0]))
    left = {0, 1}

    def line(cells: list[str]) -> str:
        out = [(_cut(c, w).ljust(w) if i in left else c.rjust(w)) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                                   strict=True))]
        return "  ".join(out).rstrip()

    c = comparison
    m = c["energy_model"]
    subset = f" (random subset of {c['of_samples']})" if c["samples"] < c["of_samples"] else ""
    what = f"{c['model']} on " if c.get("model") else ""
    lines = [f"{what}{c['data']}: {c['samples']} test samples{subset}, the same for every model", "",
             line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows), "",
             f"{_delta_sign()} vs ANN: accuracy points. Energy per sample ({m['name']}): MACs x {m['e_mac'] * 1e12:.3g} pJ "
             f"+ SOPs x {m['e_ac'] * 1e12:.3g} pJ;",
             f"the ANN's {c['ann']['macs']:,.0f} MACs: {c['ann']['energy_j'] * 1e6:.4g} uJ. "
             f"A positive saving is less energy than the ANN's."]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    check_run_options(args)
    out_dir = check_output_dir(args.report) if args.report else None
    comparison = compare(args)
    if not D.is_main():  # under torchrun every rank has the full result: rank 0 prints and writes
        return 0
    if args.json:
        import json

        print(json.dumps(comparison, indent=2))
    else:
        print(to_text(comparison))
    if out_dir is not None:
        from ..report import write_comparison

        header, rows = table_rows(comparison)
        page = write_comparison(out_dir, comparison, header, rows)
        if not args.json:
            print(f"\nreport: {page}")
    return 0
