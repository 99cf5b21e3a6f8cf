"""``ann2snn convert``: calibrate a pretrained ANN on training data and save the spiking model."""

from __future__ import annotations

import argparse
import datetime
import time

from torch.utils.data import DataLoader

from .. import __version__
from .. import distributed as D
from ..api import convert
from ..data import subset
from ..loading import LoadError, bundled_input_shape, check_data_fits, load_data, load_model
from ..serialize import save
from .common import (
    UsageError,
    add_config_flags,
    add_data_options,
    add_model_options,
    add_quiet,
    build_config,
    check_writable_file,
    neuron_words,
    positive_int,
    print_notes,
)

HELP = "convert a pretrained ReLU network into a spiking network (no training)"
EPILOG = """examples:
  ann2snn convert --model vgg_digits --data digits --out snn.pt
  ann2snn convert --model vgg_fmnist --data fashion-mnist --threshold mse --timesteps 16
  ann2snn convert --model unet_seg --data synthetic-seg --threshold mse --out seg.pt
  ann2snn convert --model mypkg.models:build --weights model_state.pt --data train.npz --config conv.toml
  ann2snn convert --model 'timm:resnet18(num_classes=10)' --weights ckpt.pth.tar --data cifar/ --mean ...
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("convert", help=HELP, description=HELP, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    data = add_data_options(p, description="calibration data: a random subset of the training split")
    data.add_argument("--calib-samples", type=positive_int, default=1024, metavar="N",
                      help="calibration samples drawn from the training split (default: 1024)")
    add_config_flags(p, other="the saved model is read by `ann2snn evaluate`, `compare` and `export`\n"
                     "(other formats: see docs/export.md); --seed: see docs/methods/thresholds.md", own=_output_options)
    p.set_defaults(run=run)
    return p


def _output_options(group) -> None:
    group.add_argument("--out", default="snn.pt", metavar="FILE", help="where to save the spiking model (default: snn.pt)")
    add_quiet(group)


def run(args: argparse.Namespace) -> int:
    cfg = build_config(args)  # bad method names, T <= 0, ... fail before anything is loaded
    out = check_writable_file(args.out)
    if (args.mean is None) != (args.std is None):
        raise UsageError("give both --mean and --std, or neither")
    loaded = load_model(args.model, args.weights, trust_pickle=args.trust_pickle)
    print_notes(loaded)
    known = bundled_input_shape(args.data)
    if known is not None and loaded.input_shape is not None and known != tuple(loaded.input_shape):
        raise LoadError(f"data {args.data!r} has input shape {known} but model {loaded.name} expects "
                        f"{tuple(loaded.input_shape)}")
    train = load_data(args.data, "train", input_shape=loaded.input_shape, mean=args.mean, std=args.std)
    check_data_fits(loaded.module, train, model_name=loaded.name, data_name=args.data,
                    input_shape=loaded.input_shape, task=loaded.task)
    calib = subset(train, args.calib_samples, seed=cfg.seed)
    loader = DataLoader(calib, batch_size=args.batch_size, shuffle=False)

    start = time.perf_counter()
    snn = convert(loaded.module, loader, cfg)
    seconds = time.perf_counter() - start
    snn.info["source"] = {
        **loaded.describe(),
        "data": args.data,
        "normalisation": {"mean": args.mean, "std": args.std} if args.mean is not None else None,
        "calib_samples": len(calib),
        "batch_size": args.batch_size,
        "calib_seconds": round(seconds, 2),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ann2snn": __version__,
    }
    if not D.is_main():  # under torchrun every rank holds the same SNN: rank 0 writes and reports
        return 0
    if D.is_distributed():
        snn.info["source"]["processes"] = D.world_size()
    save(snn, out)

    neurons = snn.neurons()
    passes = snn.info.get("passes", {})
    print(f"converted {loaded.name} -> {out}")
    print(f"  {len(neurons)} neuron layers ({neuron_words(cfg)}, {cfg.threshold} thresholds, {cfg.granularity}-wise), "
          f"T={cfg.timesteps}; calibrated on {len(calib)} {args.data} training samples in {seconds:.1f} s")
    if passes:
        print(f"  graph: {passes.get('nodes_traced', '?')} nodes traced -> {passes.get('nodes_final', '?')}; "
              f"BN folded {passes.get('bn_folded', 0)}, BN kept as affine {passes.get('bn_affine', 0)}, "
              f"dropout/identity removed {passes.get('removed', 0)}, max-pools moved {passes.get('maxpool_moved', 0)}")
    stages = snn.info.get("stage_times")
    if stages:
        print("  stages: " + ", ".join(f"{name} {secs:.1f} s" for name, secs in stages.items()))
    print(f"  next: ann2snn evaluate {out} --data {args.data}")
    return 0
