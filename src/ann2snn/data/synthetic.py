"""Deterministic synthetic tasks built from Fashion-MNIST objects: segmentation, detection, video, events.

Every generator takes ``(n, split, seed)`` and returns the same tensors for the same arguments (objects
come from the Fashion-MNIST ``split``, positions and motions from a ``numpy`` generator seeded with
``seed``). Objects are Fashion-MNIST images shrunk 2x to 14 x 14 pixels, intensities in [0, 1].

* :func:`make_segmentation`: 32 x 32 canvases with 2 objects, a class per pixel (background 0 and the 4
  super-classes of :data:`SUPER_CLASSES`, 1..4).
* :func:`make_detection`: 48 x 48 canvases with 1-3 objects, boxes ``[x0, y0, x1, y1]`` (pixels, tight
  around the object's pixels) with super-class labels 0..3, padded to :data:`MAX_OBJECTS` rows.
* :func:`make_video`: 8-frame clips ``[1, 8, 24, 24]`` of one object moving in one of 8 directions at
  0.5 or 1 pixel per frame; the label is the direction and speed (16 classes).
* :func:`make_events`: an object moving along a small triangle (as the saccades of N-MNIST), seen by a
  simulated event camera: ON / OFF events where the log intensity changed by more than a contrast
  threshold since the pixel's last event, counted per polarity in :data:`EVENT_SUBFRAMES` sub-frames
  ``[n, S, 2, 24, 24]`` (uint8). :func:`bin_events` sums them into T frames (one per SNN step) and
  :func:`mean_event_frame` gives the static frame the classifier is trained on.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    ArrayDataset,
    load_fashion_mnist,
)

__all__ = [
    "EVENT_SUBFRAMES",
    "MAX_OBJECTS",
    "SEG_CLASSES",
    "SUPER_CLASSES",
    "bin_events",
    "make_detection",
    "make_events",
    "make_segmentation",
    "make_video",
    "mean_event_frame",
    "synthetic_dataset",
]

# Fashion-MNIST classes grouped into 4 super-classes: tops, trousers, footwear, bags.
SUPER_CLASSES = ("top", "trouser", "footwear", "bag")
_SUPER = np.array([0, 1, 0, 0, 0, 2, 0, 2, 3, 2])  # FMNIST label -> super-class
SEG_CLASSES = ("background", *SUPER_CLASSES)
MAX_OBJECTS = 3
OBJECT_SIZE = 14
MASK_LEVEL = 0.15  # an object's pixel belongs to it where its intensity exceeds this
EVENT_SUBFRAMES = 64
EVENT_CONTRAST = 0.15  # log-intensity change that triggers an event
VIDEO_DIRECTIONS = 8
VIDEO_SPEEDS = (0.5, 1.0)


@functools.lru_cache(maxsize=2)
def _objects(split: str) -> tuple[torch.Tensor, np.ndarray]:
    """Fashion-MNIST ``split`` shrunk to 14 x 14 in [0, 1], and the labels."""
    ds = load_fashion_mnist(split)
    raw = (ds.x * FASHION_MNIST_STD + FASHION_MNIST_MEAN).clamp(0.0, 1.0)
    small = F.avg_pool2d(raw, 2)[:, 0]
    return small.contiguous(), ds.y.numpy()


def _pick(split: str, rng: np.random.Generator, k: int) -> tuple[torch.Tensor, np.ndarray]:
    objs, labels = _objects(split)
    idx = rng.integers(0, objs.shape[0], size=k)
    return objs[idx], labels[idx]


def make_segmentation(n: int, split: str = "train", seed: int = 0, size: int = 32,
                      objects: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` float32 ``[n, 1, size, size]`` in [0, 1] and ``y`` int64 ``[n, size, size]`` (0 background,
    1..4 super-class); later objects lie on top of earlier ones."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, size, size), np.float32)
    y = np.zeros((n, size, size), np.int64)
    objs, labels = _pick(split, rng, n * objects)
    objs = objs.numpy()
    pos = rng.integers(0, size - OBJECT_SIZE + 1, size=(n * objects, 2))
    s = OBJECT_SIZE
    for i in range(n):
        for j in range(objects):
            k = i * objects + j
            r, c = pos[k]
            o = objs[k]
            m = o > MASK_LEVEL
            x[i, r:r + s, c:c + s][m] = o[m]
            y[i, r:r + s, c:c + s][m] = _SUPER[labels[k]] + 1
    return torch.from_numpy(x[:, None]), torch.from_numpy(y)


def make_detection(n: int, split: str = "train", seed: int = 0, size: int = 48
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` float32 ``[n, 1, size, size]`` and ``y`` float32 ``[n, MAX_OBJECTS, 5]``: rows
    ``[label, x0, y0, x1, y1]`` (box corners in pixels, ``x1``/``y1`` exclusive), padded with label -1.

    1-3 objects per canvas, placed so that their boxes overlap little (IoU < 0.3 with earlier ones)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, size, size), np.float32)
    y = np.full((n, MAX_OBJECTS, 5), -1.0, np.float32)
    objs, labels = _pick(split, rng, n * MAX_OBJECTS)
    objs = objs.numpy()
    counts = rng.integers(1, MAX_OBJECTS + 1, size=n)
    s = OBJECT_SIZE
    for i in range(n):
        boxes: list[np.ndarray] = []
        for j in range(int(counts[i])):
            k = i * MAX_OBJECTS + j
            o = objs[k]
            m = o > MASK_LEVEL
            rows, cols = np.nonzero(m)
            if rows.size == 0:
                continue
            for _ in range(20):  # a few tries for a spot that overlaps little
                r, c = rng.integers(0, size - s + 1, size=2)
                box = np.array([c + cols.min(), r + rows.min(), c + cols.max() + 1, r + rows.max() + 1], np.float32)
                if all(box_iou(box, b) < 0.3 for b in boxes):
                    break
            else:
                continue
            x[i, r:r + s, c:c + s][m] = o[m]
            y[i, len(boxes)] = [_SUPER[labels[k]], *box]
            boxes.append(box)
    return torch.from_numpy(x[:, None]), torch.from_numpy(y)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two ``[x0, y0, x1, y1]`` boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _render(objs: torch.Tensor, pos: torch.Tensor, size: int) -> torch.Tensor:
    """Objects ``[n, 14, 14]`` drawn with their top-left corner at sub-pixel positions ``pos``
    ``[n, F, 2]`` (row, col) on ``size`` x ``size`` canvases: ``[n, F, size, size]`` (bilinear)."""
    n, frames = pos.shape[:2]
    canvas = torch.zeros(n, 1, size, size)
    canvas[:, 0, :OBJECT_SIZE, :OBJECT_SIZE] = objs
    # grid_sample reads the canvas at (output pixel - pos): a translation by pos
    theta = torch.zeros(n * frames, 2, 3)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -pos[..., 1].reshape(-1) * 2.0 / size
    theta[:, 1, 2] = -pos[..., 0].reshape(-1) * 2.0 / size
    grid = F.affine_grid(theta, [n * frames, 1, size, size], align_corners=False)
    src = canvas.repeat_interleave(frames, dim=0)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(n, frames, size, size)


def make_video(n: int, split: str = "train", seed: int = 0, size: int = 24, frames: int = 8,
               speeds: tuple[float, ...] = VIDEO_SPEEDS) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` float32 ``[n, 1, frames, size, size]`` (an object moving at ``speeds[j]`` pixels per frame)
    and ``y`` int64 ``[n]``: ``k + 8 j`` for the direction ``k * 45`` degrees counter-clockwise from
    "right" (k = 0..7) and the speed ``speeds[j]``."""
    rng = np.random.default_rng(seed)
    objs, _ = _pick(split, rng, n)
    y = rng.integers(0, VIDEO_DIRECTIONS * len(speeds), size=n)
    angle = (y % VIDEO_DIRECTIONS) * (2 * math.pi / VIDEO_DIRECTIONS)
    speed = np.asarray(speeds, dtype=np.float64)[y // VIDEO_DIRECTIONS][:, None]
    step = np.stack([-np.sin(angle), np.cos(angle)], axis=1) * speed  # (row, col) per frame
    travel = step * (frames - 1)
    lo = np.maximum(0.0, -travel)
    hi = (size - OBJECT_SIZE) - np.maximum(0.0, travel)
    start = lo + rng.random((n, 2)) * (hi - lo)
    t = np.arange(frames)[None, :, None]
    pos = torch.from_numpy((start[:, None, :] + t * step[:, None, :]).astype(np.float32))
    x = _render(objs, pos, size)
    return x[:, None].contiguous(), torch.from_numpy(y.astype(np.int64))


def make_events(n: int, split: str = "train", seed: int = 0, size: int = 24,
                subframes: int = EVENT_SUBFRAMES, side: float = 4.0, contrast: float = EVENT_CONTRAST,
                chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Event counts uint8 ``[n, subframes, 2, size, size]`` (channel 0: ON, 1: OFF) and the
    Fashion-MNIST label ``[n]`` (10 classes).

    The object moves along an equilateral triangle of ``side`` pixels (random orientation, start and
    sense), one third of the clip per side. A pixel emits ``floor(|L - L_ref| / contrast)`` events of
    the sign of the change when its log intensity ``L = log(0.1 + 0.9 I)`` has moved that far from the
    level ``L_ref`` of its last event, which then moves by the events' worth (an ideal DVS pixel)."""
    rng = np.random.default_rng(seed)
    objs, labels = _pick(split, rng, n)
    phase = rng.random(n) * 2 * math.pi
    sense = rng.choice([-1.0, 1.0], size=n)
    corners = np.stack([phase + sense * k * 2 * math.pi / 3 for k in range(4)], axis=1)  # [n, 4]
    radius = side / math.sqrt(3.0)
    pts = np.stack([np.sin(corners), np.cos(corners)], axis=2) * radius  # [n, 4, 2] (row, col)
    u = (np.arange(subframes + 1) + 0.0) / subframes * 3.0  # the position at the start of every sub-frame and the end
    seg = np.minimum(u.astype(int), 2)
    frac = (u - seg)[None, :, None]
    path = pts[:, seg] + (pts[:, seg + 1] - pts[:, seg]) * frac  # [n, S+1, 2]
    margin = radius + 0.5
    start = margin + rng.random((n, 2)) * (size - OBJECT_SIZE - 2 * margin)
    pos = torch.from_numpy((start[:, None, :] + path).astype(np.float32))
    out = torch.zeros(n, subframes, 2, size, size, dtype=torch.uint8)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        video = _render(objs[a:b], pos[a:b], size)  # [m, S+1, size, size]
        logi = torch.log(0.1 + 0.9 * video.clamp(0.0, 1.0))
        ref = logi[:, 0].clone()
        for t in range(subframes):
            diff = logi[:, t + 1] - ref
            count = torch.floor(diff.abs() / contrast)
            ref += torch.sign(diff) * count * contrast
            out[a:b, t, 0] = (count * (diff > 0)).clamp(max=255).to(torch.uint8)
            out[a:b, t, 1] = (count * (diff < 0)).clamp(max=255).to(torch.uint8)
    return out, torch.from_numpy(labels.astype(np.int64))


def bin_events(events: torch.Tensor, bins: int) -> torch.Tensor:
    """Sum ``[n, S, 2, H, W]`` event counts into ``bins`` frames (``S`` a multiple of ``bins``), scaled
    by ``bins / S`` so that the frames' mean is :func:`mean_event_frame`: ``[bins, n, 2, H, W]``, the
    sequence layout :meth:`~ann2snn.SpikingModel.run` takes with ``sequence=True``."""
    n, s = events.shape[:2]
    if bins <= 0 or s % bins:
        raise ValueError(f"bins must divide the {s} sub-frames, got {bins}")
    frames = events.float().reshape(n, bins, s // bins, *events.shape[2:]).sum(2) * (bins / s)
    return frames.transpose(0, 1).contiguous()


def mean_event_frame(events: torch.Tensor) -> torch.Tensor:
    """The events per sub-frame, averaged over the clip: ``[n, 2, H, W]`` (the classifier's input)."""
    return events.float().mean(1)


# -- registered as datasets ------------------------------------------------------------------------

_SIZES = {"train": 4000, "test": 1000}
_SEEDS = {"train": 1, "test": 2}


def synthetic_dataset(name: str, split: str = "train", n: int | None = None) -> ArrayDataset:
    """One of the synthetic tasks as an :class:`ArrayDataset` (4000 train / 1000 test samples):
    ``synthetic-seg``, ``synthetic-det``, ``synthetic-video`` or ``synthetic-events`` (mean event
    frames; :func:`make_events` gives the event streams themselves)."""
    if split not in _SIZES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    n = _SIZES[split] if n is None else n
    seed = _SEEDS[split]
    if name == "synthetic-seg":
        x, y = make_segmentation(n, split, seed)
        classes = SEG_CLASSES
    elif name == "synthetic-det":
        x, y = make_detection(n, split, seed)
        classes = SUPER_CLASSES
    elif name == "synthetic-video":
        x, y = make_video(n, split, seed)
        classes = tuple(f"{k * 45} deg, {v} px/frame" for v in VIDEO_SPEEDS for k in range(VIDEO_DIRECTIONS))
    elif name == "synthetic-events":
        ev, y = make_events(n, split, seed)
        x = mean_event_frame(ev)
        classes = FASHION_MNIST_CLASSES
    else:
        raise ValueError(f"unknown synthetic dataset {name!r}")
    return ArrayDataset(x, y, name=name, classes=classes)


def _register() -> None:
    """Make the synthetic tasks loadable by name (``get_dataset("synthetic-seg")``, ``--data``)."""
    from .datasets import DATASETS, DatasetInfo

    shapes = {"synthetic-seg": ((1, 32, 32), 5, "32x32 canvases of 2 Fashion-MNIST objects, 5-class masks"),
              "synthetic-det": ((1, 48, 48), 4, "48x48 canvases of 1-3 Fashion-MNIST objects, boxes of 4 classes"),
              "synthetic-video": ((1, 8, 24, 24), 16, "8-frame clips of a moving object; label: its direction "
                                                      "and speed"),
              "synthetic-events": ((2, 24, 24), 10, "simulated DVS events of moving Fashion-MNIST objects, "
                                                    "mean ON/OFF frames")}
    for name, (shape, classes, text) in shapes.items():
        DATASETS.setdefault(name, DatasetInfo(
            name=name, input_shape=shape, num_classes=classes, mean=0.0, std=1.0,  # type: ignore[arg-type]
            description=f"synthetic: {text} (4000 train / 1000 test, deterministic)",
            install="generated from Fashion-MNIST (apt-get install -y dataset-fashion-mnist)",
            loader=functools.partial(synthetic_dataset, name)))


_register()
