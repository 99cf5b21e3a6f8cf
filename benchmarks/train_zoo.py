#!/usr/bin/env python
"""Train the zoo models and write their checkpoints + metadata.json.

    python benchmarks/train_zoo.py                      # every model with a checkpoint name
    python benchmarks/train_zoo.py --models fmnist      # vgg_fmnist resnet_fmnist mobilenet_fmnist
    python benchmarks/train_zoo.py --models vgg_digits --epochs 5 --out /tmp/w

Checkpoints are float32 ``state_dict`` files; metadata.json (merged, one entry per model) records the
test accuracy, epochs, seed, date, torch version, training time and checkpoint size/sha256.
"""

from __future__ import annotations

import os

# Sleep instead of spin in OpenMP barriers: much faster when the cores are shared with other jobs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import datetime  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from ann2snn.data import get_dataset  # noqa: E402
from ann2snn.zoo import WEIGHTS_DIR, ZOO, create_model, train_classifier  # noqa: E402

GROUPS = {
    "digits": [n for n, e in ZOO.items() if e.dataset == "digits" and e.checkpoint],
    "fmnist": [n for n, e in ZOO.items() if e.dataset == "fashion-mnist" and e.checkpoint],
}
GROUPS["all"] = GROUPS["digits"] + GROUPS["fmnist"]


def parse_models(spec: list[str]) -> list[str]:
    names: list[str] = []
    for item in spec:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            expanded = GROUPS.get(part, [part])
            for n in expanded:
                if n not in ZOO:
                    raise SystemExit(f"unknown model {n!r}; choose from {sorted(ZOO)} or {sorted(GROUPS)}")
                if n not in names:
                    names.append(n)
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["all"],
                    help="model names and/or groups (digits, fmnist, all); comma or space separated")
    ap.add_argument("--epochs", type=int, default=None, help="override each recipe's epoch count")
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output folder (default: the zoo weights)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: 1 for 8x8 digits models, 2 otherwise)")
    args = ap.parse_args(argv)

    names = parse_models(args.models)
    args.out.mkdir(parents=True, exist_ok=True)
    meta_path = args.out / "metadata.json"
    metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}

    for name in names:
        entry = ZOO[name]
        recipe = dict(entry.train)
        if args.epochs is not None:
            recipe["epochs"] = args.epochs
        threads = args.threads or (1 if entry.input_shape[-1] <= 8 else 2)
        train_ds = get_dataset(entry.dataset, "train")
        test_ds = get_dataset(entry.dataset, "test")

        torch.manual_seed(args.seed)
        model = create_model(name)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"== {name}: {type(model).__name__}, {n_params} parameters, {entry.dataset} "
              f"({len(train_ds)} train / {len(test_ds)} test), recipe {recipe}, {threads} threads", flush=True)
        t0 = time.perf_counter()
        acc = train_classifier(model, train_ds, test_ds, seed=args.seed, num_threads=threads,
                               log=lambda s: print("   ", s, flush=True), **recipe)
        seconds = time.perf_counter() - t0

        state_dict = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
        assert all(not v.is_floating_point() or v.dtype == torch.float32 for v in state_dict.values())
        ckpt = args.out / entry.checkpoint
        torch.save(state_dict, ckpt)
        size = ckpt.stat().st_size
        sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
        print(f"   {name}: test accuracy {acc * 100:.2f}% in {seconds:.0f}s -> {ckpt} ({size / 1e6:.2f} MB)",
              flush=True)
        if size > 5e6:
            print(f"   WARNING: {ckpt} is larger than 5 MB", file=sys.stderr)

        metadata[name] = {
            "test_accuracy": round(acc, 4),
            "dataset": entry.dataset,
            "test_samples": len(test_ds),
            "epochs": recipe["epochs"],
            "seed": args.seed,
            "recipe": {k: v for k, v in recipe.items()},
            "parameters": n_params,
            "train_seconds": round(seconds, 1),
            "threads": threads,
            "checkpoint": entry.checkpoint,
            "checkpoint_bytes": size,
            "sha256": sha,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
        meta_path.write_text(json.dumps(dict(sorted(metadata.items())), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
