#!/usr/bin/env python
"""Train the dense / video / event zoo models on the synthetic tasks and write their checkpoints.

    python benchmarks/train_dense.py                       # unet_seg centernet_det video3d_motion eventcnn_events
    python benchmarks/train_dense.py --models unet_seg --out /tmp/w

One thread, Adam, a fixed seed: each model trains in a few minutes on one CPU core. The data are the
deterministic generators of ann2snn.data.synthetic (train split: 4000 samples, seed 1; test: 1000, seed 2).
metadata.json (merged) records the test metric, recipe, time, checkpoint size and sha256.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import datetime  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ann2snn.data.synthetic import synthetic_dataset  # noqa: E402
from ann2snn.tasks import centernet_targets, coco_map, confusion_matrix, decode_centernet, mean_iou  # noqa: E402
from ann2snn.zoo import WEIGHTS_DIR, ZOO, create_model  # noqa: E402

MODELS = ["unet_seg", "centernet_det", "video3d_motion", "eventcnn_events"]


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on Gaussian heatmaps, normalised by the object count."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1 - pos
    pos_loss = torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = torch.log(1 - p) * p ** 2 * (1 - target) ** 4 * neg
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def loss_fn(task: str, model, x, y, extra):
    out = model(x)
    if task == "detection":
        heat, reg, mask = extra
        lh = focal_loss(out["heatmap"], heat)
        m = mask[:, None].expand_as(reg)
        lb = F.l1_loss(out["box"][m], reg[m], reduction="sum") / mask.sum().clamp(min=1)
        return lh + 0.2 * lb
    return F.cross_entropy(out, y)


@torch.no_grad()
def test_metric(task: str, model, x, y) -> float:
    model.eval()
    if task == "segmentation":
        conf = sum(confusion_matrix(model(x[i:i + 200]).argmax(1), y[i:i + 200], 5) for i in range(0, len(x), 200))
        return mean_iou(conf)
    if task == "detection":
        dets = []
        for i in range(0, len(x), 200):
            o = model(x[i:i + 200])
            dets += decode_centernet(o["heatmap"], o["box"], 4)
        return coco_map(dets, y, 4)["map50"]
    correct = sum(int((model(x[i:i + 200]).argmax(1) == y[i:i + 200]).sum()) for i in range(0, len(x), 200))
    return correct / len(x)


RECIPES = {
    "unet_seg": {"epochs": 15, "lr": 3e-3, "batch_size": 32},
    "centernet_det": {"epochs": 15, "lr": 3e-3, "batch_size": 32},
    "video3d_motion": {"epochs": 10, "lr": 3e-3, "batch_size": 32},
    "eventcnn_events": {"epochs": 15, "lr": 3e-3, "batch_size": 32},
}
TASK = {"unet_seg": "segmentation", "centernet_det": "detection", "video3d_motion": "classification",
        "eventcnn_events": "classification"}


def train(name: str, out_dir: Path, seed: int, epochs: int | None) -> dict:
    entry = ZOO[name]
    task = TASK[name]
    recipe = dict(RECIPES[name])
    if epochs is not None:
        recipe["epochs"] = epochs
    torch.manual_seed(seed)
    train_ds = synthetic_dataset(entry.dataset, "train")
    test_ds = synthetic_dataset(entry.dataset, "test")
    x, y = train_ds.x, train_ds.y
    extra_all = None
    if task == "detection":
        extra_all = centernet_targets(y, 4, (x.shape[-2] // 4, x.shape[-1] // 4), 4)
    model = create_model(name)
    opt = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
    steps = recipe["epochs"] * ((len(x) + recipe["batch_size"] - 1) // recipe["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in range(recipe["epochs"]):
        model.train()
        order = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), recipe["batch_size"]):
            idx = order[i:i + recipe["batch_size"]]
            xb, yb = x[idx], y[idx]
            if task == "segmentation" and torch.rand((), generator=g) < 0.5:  # flips keep masks aligned
                xb, yb = xb.flip(-1), yb.flip(-1)
            extra = tuple(t[idx] for t in extra_all) if extra_all is not None else None
            loss = loss_fn(task, model, xb, yb, extra)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"{name} epoch {epoch + 1}/{recipe['epochs']}: loss {total / len(x):.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - start
    metric = test_metric(task, model, test_ds.x, test_ds.y)
    print(f"{name}: test {task} metric {metric:.4f}", flush=True)
    model.eval()
    path = out_dir / entry.checkpoint
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, path)
    data = path.read_bytes()
    return {"test_metric": round(metric, 4), "metric": {"segmentation": "mIoU", "detection": "mAP@0.5"}.get(task, "accuracy"),
            "dataset": entry.dataset, "test_samples": len(test_ds), "epochs": recipe["epochs"], "seed": seed,
            "recipe": {**recipe, "optimizer": "adam", "schedule": "onecycle"},
            "parameters": sum(p.numel() for p in model.parameters()), "train_seconds": round(seconds, 1),
            "threads": torch.get_num_threads(), "checkpoint": entry.checkpoint, "checkpoint_bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--epochs", type=int, default=None, help="override each recipe's epoch count")
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    meta_path = args.out / "metadata.json"
    for name in args.models:
        info = train(name, args.out, args.seed, args.epochs)
        metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        metadata[name] = info
        meta_path.write_text(json.dumps(dict(sorted(metadata.items())), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
