"""``ann2snn evaluate``: accuracy against T, the ANN and the quantisation ceiling, spikes and energy."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import distributed as D
from ..adaptation.checks import summaries
from ..data import subset
from ..energy import ENERGY_PRESETS
from ..evaluation import EvalResult, evaluate_classifier
from ..export import load_snn
from ..loading import LoadError, load_data
from ..model import SpikingModel
from ..tasks import TASKS, TaskResult, evaluate_task
from .common import (
    UsageError,
    add_data_options,
    add_quiet,
    check_output_dir,
    neuron_words,
    positive_int,
    progress_flag,
)

HELP = "evaluate a saved spiking model: accuracy at T = 1, 2, 4, ..., the ANN, the ceiling, energy"
EPILOG = """examples:
  ann2snn evaluate snn.pt --data digits
  ann2snn evaluate snn.pt --data fashion-mnist --timesteps 64 --max-samples 2000 --report runs/report
  ann2snn evaluate snn.pt --json > result.json
  ann2snn evaluate seg.pt --task segmentation --timesteps 64      # mIoU (task: default the zoo model's)
  ann2snn evaluate det.pt --task detection                         # mAP@0.5 by pycocotools
  ann2snn evaluate events.pt --task events                         # one event frame per SNN step
"""


def add_run_options(p: argparse.ArgumentParser, timesteps_help: str) -> None:
    """The test data, simulation and energy options of ``evaluate``, ``report`` and ``compare``, in groups."""
    data = add_data_options(p, required=False, description="the test split; the model file records the data it "
                            "was converted with")
    data.add_argument("--max-samples", type=positive_int, default=None, metavar="N",
                      help="evaluate on a fixed random subset of N test samples")
    sim = p.add_argument_group("simulation and energy", "how steps run and what the estimate counts: see "
                               "docs/simulation.md")
    sim.add_argument("--timesteps", "-T", type=int, default=None, metavar="T", help=timesteps_help)
    sim.add_argument("--energy", default="45nm", metavar="{" + ",".join(ENERGY_PRESETS) + "}",
                     help="energy model for the estimate (default: 45nm)")
    sim.add_argument("--prefix-macs", choices=("step", "once"), default="step",
                     help="charge the MACs of the layers before the first neuron (the same input every step "
                          "under direct coding) every step (default) or once per sample")


def add_output_group(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """An "output" group holding ``-q``, for each command's own output flags."""
    output = p.add_argument_group("output")
    add_quiet(output)
    return output


def add_eval_options(p: argparse.ArgumentParser) -> None:
    """SNN and :func:`add_run_options`."""
    p.add_argument("snn", metavar="SNN", help="a spiking model saved by `ann2snn convert`, a .nir file or a portable "
                   "folder from `ann2snn export`")
    add_run_options(p, "simulate T steps (default: the model's timesteps); accuracy is shown at 1, 2, 4, ..., T")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evaluate", help=HELP, description=HELP, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_options(p)
    task = p.add_argument_group("task", "what the output is: see docs/methods/dense.md, docs/methods/events.md")
    task.add_argument("--task", choices=TASKS, default=None,
                      help="what the output is and so the metric: classification (accuracy), segmentation (mIoU), "
                           "detection (mAP@0.5, CenterNet outputs), events (accuracy with one event frame per step "
                           "and on the mean frame); default: the zoo model's task, recorded at conversion")
    output = add_output_group(p)
    output.add_argument("--json", action="store_true", help="print only JSON (the same as EvalResult.to_dict())")
    output.add_argument("--report", metavar="DIR", help="also write plots and a report page into DIR")
    p.set_defaults(run=run)
    return p


def check_run_options(args: argparse.Namespace) -> None:
    """The checks of :func:`add_run_options`'s values that come before anything is loaded."""
    if args.timesteps is not None and args.timesteps <= 0:
        raise UsageError(f"--timesteps must be a positive integer, got {args.timesteps}")
    if args.energy not in ENERGY_PRESETS:
        raise UsageError(f"unknown energy model {args.energy!r}; choose one of: {', '.join(ENERGY_PRESETS)}")
    if (args.mean is None) != (args.std is None):
        raise UsageError("give both --mean and --std, or neither")


@dataclass(frozen=True)
class DataChoice:
    """The test data for a spiking model: ``--data`` / ``--mean`` / ``--std``, else what it records."""

    name: str
    mean: Any
    std: Any
    shape: tuple | None

    @classmethod
    def of(cls, snn: SpikingModel, path: str, args: argparse.Namespace) -> DataChoice:
        source = snn.info.get("source") or {}
        name = args.data or source.get("data")
        if not name:
            raise UsageError(f"{path} does not record its dataset: give --data")
        mean, std = args.mean, args.std
        if mean is None and args.data is None and source.get("normalisation"):
            mean, std = source["normalisation"].get("mean"), source["normalisation"].get("std")
        return cls(name, mean, std, tuple(snn.info.get("example_shape") or ()) or None)

    def load_test(self, args: argparse.Namespace, snn: SpikingModel) -> tuple[Any, int]:
        """(the test split, or its ``--max-samples`` subset, checked to fit ``snn``; its full size)."""
        test = load_data(self.name, "test", input_shape=self.shape, mean=self.mean, std=self.std)
        full = len(test)
        if args.max_samples is not None:
            test = subset(test, args.max_samples, seed=0)
        check_fits(snn, test, self.name, self.shape)
        return test, full


def evaluate_from_args(args: argparse.Namespace, report_dir: str | None) -> tuple[SpikingModel, EvalResult, Any]:
    """Shared by ``evaluate`` and ``report``: validate, load, evaluate."""
    check_run_options(args)
    out_dir = check_output_dir(report_dir) if report_dir else None
    snn = load_snn(args.snn)
    source = snn.info.get("source") or {}
    data = DataChoice.of(snn, args.snn, args)
    task = getattr(args, "task", None) or source.get("task") or "classification"
    if task != "classification":
        if report_dir:
            raise UsageError(f"report pages cover classification only; use `ann2snn evaluate --task {task}`")
        return snn, _evaluate_task(args, snn, task, data.name, data.mean, data.std, data.shape), None
    test, full = data.load_test(args, snn)
    result = evaluate_classifier(snn, test, args.timesteps, energy=args.energy, progress=progress_flag(args),
                                 batch_size=args.batch_size, prefix_macs=getattr(args, "prefix_macs", "step"))
    result.meta.update({"snn": str(args.snn), "data": data.name, "split": "test", "of_samples": full,
                        "model": source.get("model"), "calibration_checks": checked_choices(snn.info)})
    return snn, result, out_dir


def checked_choices(info: dict) -> dict:
    """The calibration choices checked on samples, as stored in ``snn.info`` (for ``--json``)."""
    out = {}
    if info.get("thresholds"):
        out["thresholds"] = info["thresholds"]
    if ((info.get("iat") or {}).get("fit") or {}).get("check"):
        out["iat"] = {k: v for k, v in info["iat"]["fit"].items() if k != "tries"}
    if (info.get("ssc") or {}).get("max_loss") is not None:
        ssc = info["ssc"]
        out["ssc"] = {"max_loss": ssc["max_loss"], "tau": ssc["tau"], "fit": ssc["fit"], "check": ssc["check"]}
    return out


def _evaluate_task(args, snn: SpikingModel, task: str, data_name: str, mean, std, shape) -> TaskResult:
    """Segmentation, detection or event-stream evaluation (:func:`ann2snn.tasks.evaluate_task`)."""
    if task == "events":
        if data_name != "synthetic-events":
            raise UsageError("--task events needs event streams: only --data synthetic-events provides them")
        from ..data.synthetic import make_events

        n = args.max_samples or 1000
        test = make_events(n, "test", seed=2)
        full = n
        t_max = args.timesteps or 64
        ts = [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= t_max]
        if t_max not in ts:
            raise UsageError(f"--task events bins the 64 sub-frames into T frames: T must divide 64, got {t_max}")
    else:
        ds = load_data(data_name, "test", input_shape=shape, mean=mean, std=std)
        full = len(ds)
        if args.max_samples is not None:
            ds = subset(ds, args.max_samples, seed=0)
        test = (ds.tensors[0], ds.tensors[1])
        ts = args.timesteps
        try:
            out = snn.analog(test[0][:2], "relu")
        except Exception as exc:  # noqa: BLE001
            raise LoadError(f"data {data_name!r} does not fit the model: {str(exc).strip().splitlines()[0]}") from exc
        if task == "detection" and not (isinstance(out, dict) and {"heatmap", "box"} <= set(out)):
            raise LoadError("--task detection needs a CenterNet-style model with outputs {'heatmap', 'box'}")
        if task == "segmentation" and not (isinstance(out, torch.Tensor) and out.ndim == 4):
            raise LoadError("--task segmentation needs per-pixel class scores [batch, classes, H, W]")
    result = evaluate_task(snn, test, task, ts, batch_size=args.batch_size)
    result.meta.update({"snn": str(args.snn), "data": data_name, "split": "test", "of_samples": full,
                        "model": (snn.info.get("source") or {}).get("model")})
    return result


def check_fits(snn: SpikingModel, data, data_name: str, shape: tuple | None) -> None:
    x, y = data.tensors[0], data.tensors[1]
    if shape is not None and tuple(x.shape[1:]) != shape:
        raise LoadError(f"data {data_name!r} has input shape {tuple(x.shape[1:])} but the spiking model was "
                        f"calibrated on {shape}")
    try:
        out = snn.analog(x[:2], "relu")
    except Exception as exc:  # noqa: BLE001 - shape errors come as RuntimeError, ValueError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoadError(f"data {data_name!r} of input shape {tuple(x.shape[1:])} does not fit the model: {first}") from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise LoadError("evaluate needs a classifier: the model's output must be class scores [batch, classes]")
    if int(y.max()) >= out.shape[1]:
        raise LoadError(f"data {data_name!r} has class labels up to {int(y.max())} but the model outputs "
                        f"only {out.shape[1]} classes")


def describe(snn: SpikingModel, result: EvalResult | TaskResult, path: str) -> str:
    cfg = snn.config
    source = snn.info.get("source") or {}
    made = f"{source['model']}, " if source.get("model") else ""
    if isinstance(result, TaskResult):
        mode = f"; {result.extra['mode']}" if result.extra.get("mode") else ""
        return (f"{Path(path).name}: {made}{len(snn.neurons())} neuron layers, {neuron_words(cfg)} neurons, "
                f"{threshold_words(snn)} thresholds ({cfg.granularity}-wise)\n"
                f"task: {result.task} ({result.metric}); data: {result.meta['data']} test split, "
                f"{result.samples} samples{mode}\n")
    subset_note = f" (random subset of {result.meta['of_samples']})" if result.samples < result.meta.get("of_samples", 0) else ""
    checks = "".join(f"{line}\n" for line in summaries(snn.info))
    return (f"{Path(path).name}: {made}{len(snn.neurons())} neuron layers, {neuron_words(cfg)} neurons, "
            f"{threshold_words(snn)} thresholds ({cfg.granularity}-wise)\n"
            f"data: {result.meta['data']} test split, {result.samples} samples{subset_note}; T = {result.timesteps}\n"
            + checks)


def threshold_words(snn: SpikingModel) -> str:
    """``mse``, or ``auto: mse`` where the method was chosen at conversion."""
    picked = (snn.info.get("thresholds") or {}).get("picked")
    return f"{snn.config.threshold}: {picked}" if picked else snn.config.threshold


def run(args: argparse.Namespace) -> int:
    snn, result, out_dir = evaluate_from_args(args, args.report)
    if not D.is_main():  # under torchrun every rank has the full result: rank 0 prints and writes
        return 0
    if args.json:
        print(result.to_json(indent=2))
    else:
        print(describe(snn, result, args.snn))
        print(result.to_text())
        if isinstance(result, TaskResult) and "mean_frame" in result.extra:
            print("\nthe mean event frame as static input, every step:")
            print("\n".join(f"{t:>6}  {v * 100:13.2f}%  {(v - result.ann) * 100:+8.2f}"
                            for t, v in result.extra["mean_frame"].items()))
    if out_dir is not None:
        from ..report import write_report

        page = write_report(out_dir, result, snn)
        if not args.json:
            print(f"\nreport: {page}")
    return 0
