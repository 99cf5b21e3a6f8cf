"""Shared set-up for the benchmarks: bundled models, data subsets, JSON results, provenance."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))

from ann2snn.data.datasets import get_dataset  # noqa: E402
from ann2snn.zoo import create_model, get_entry  # noqa: E402


def provenance(command: str) -> dict:
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = "unknown"
    return {"command": command, "commit": commit, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.processor() or 'cpu'}",
            "torch": torch.__version__}


def load_pretrained(name: str):
    model = create_model(name, pretrained=True).eval()
    return model, get_entry(name).dataset


def tensors(dataset_name: str, split: str, n: int | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ds = get_dataset(dataset_name, split)
    total = len(ds)
    if n is None or n >= total:
        idx = torch.arange(total)
    else:
        idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]
    xs, ys = zip(*(ds[int(i)] for i in idx), strict=True)
    return torch.stack(xs), torch.as_tensor([int(y) for y in ys])


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, default=float))
    return path


def setup_classifier(name: str, calib_samples: int, test_samples: int):
    """The pretrained model, calibration inputs, a fixed test subset and the ANN's accuracy on it."""
    model, dataset = load_pretrained(name)
    xc, _ = tensors(dataset, "train", calib_samples, seed=1)
    xt, yt = tensors(dataset, "test", test_samples, seed=2)
    with torch.no_grad():
        ann_acc = float((model(xt).argmax(1) == yt).float().mean())
    return model, xc, xt, yt, ann_acc
