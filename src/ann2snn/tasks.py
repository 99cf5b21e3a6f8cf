"""Dense and time-varying tasks: metrics, post-processing and evaluation of a spiking model across T.

The SNN's output for any head that is not a class score (maps, boxes, regressions) is the averaged
analog output of its last layer; everything after it (argmax, sigmoid, box decoding, peak picking as
NMS) runs here, outside the SNN, on those averaged outputs: exactly as on the ANN's outputs.

* ``segmentation``: mean IoU over the classes (background included) from one confusion matrix.
* ``detection``: CenterNet-style decoding (:func:`decode_centernet`) and mAP@0.5 by pycocotools
  (:func:`coco_map`; ``pip install pycocotools``).
* ``classification`` (also video clips, and event streams as mean frames): top-1 accuracy.
* ``events``: a classifier on event frames fed one frame per SNN step (``sequence=True``), the
  stream binned into T frames for each T (:func:`~ann2snn.data.synthetic.bin_events`).

    result = evaluate_task(snn, (x, y), "segmentation", timesteps=64)
    print(result.to_text())
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError
from .evaluation import _batches as _eval_batches
from .evaluation import default_timesteps
from .model import SpikingModel

__all__ = [
    "TASKS",
    "TaskResult",
    "centernet_targets",
    "coco_map",
    "confusion_matrix",
    "decode_centernet",
    "evaluate_task",
    "mean_iou",
]

TASKS = ("classification", "segmentation", "detection", "events")
METRICS = {"classification": "accuracy", "segmentation": "mIoU", "detection": "mAP@0.5",
           "events": "accuracy"}


# -- segmentation ----------------------------------------------------------------------------------

def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``[num_classes, num_classes]`` counts, rows the true class, columns the predicted one."""
    idx = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_iou(conf: Tensor) -> float:
    """Mean over classes of ``TP / (TP + FP + FN)``; classes absent from both prediction and truth
    are left out."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    if not present.any():
        return float("nan")
    return float((tp[present] / union[present]).mean())


# -- detection -------------------------------------------------------------------------------------

def centernet_targets(boxes: Tensor, num_classes: int, grid: tuple[int, int], stride: int
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """Training targets for :class:`~ann2snn.zoo.dense.CenterNet` from ``[B, K, 5]`` boxes
    (``[label, x0, y0, x1, y1]`` in pixels, label -1 for padding).

    Returns the heatmap ``[B, classes, gh, gw]`` (a Gaussian peak of value 1 at each centre cell, its
    radius a third of the box size), the box target ``[B, 4, gh, gw]`` (offset of the centre in its
    cell and the width / height, all in cells) and the mask ``[B, gh, gw]`` of centre cells."""
    b = boxes.shape[0]
    gh, gw = grid
    heat = torch.zeros(b, num_classes, gh, gw)
    reg = torch.zeros(b, 4, gh, gw)
    mask = torch.zeros(b, gh, gw, dtype=torch.bool)
    ys = torch.arange(gh, dtype=torch.float32)[:, None]
    xs = torch.arange(gw, dtype=torch.float32)[None, :]
    for i in range(b):
        for row in boxes[i]:
            label = int(row[0])
            if label < 0:
                continue
            x0, y0, x1, y1 = (float(v) / stride for v in row[1:])
            cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
            ix, iy = min(int(cx), gw - 1), min(int(cy), gh - 1)
            sx, sy = max(w / 6, 0.35), max(h / 6, 0.35)
            g = torch.exp(-((xs - ix) ** 2) / (2 * sx * sx) - ((ys - iy) ** 2) / (2 * sy * sy))
            heat[i, label] = torch.maximum(heat[i, label], g)
            reg[i, :, iy, ix] = torch.tensor([cx - ix, cy - iy, w, h])
            mask[i, iy, ix] = True
    return heat, reg, mask


def decode_centernet(heatmap: Tensor, box: Tensor, stride: int, top_k: int = 20, min_score: float = 0.01
                     ) -> list[dict[str, Tensor]]:
    """Detections from CenterNet outputs: ``sigmoid(heatmap)``, peaks that are the maximum of their 3 x 3
    neighbourhood (CenterNet's NMS), the ``top_k`` best above ``min_score``; boxes from the offset and
    size at each peak. Returns per image ``{"boxes": [n, 4] (x0, y0, x1, y1 pixels), "scores", "labels"}``."""
    scores = torch.sigmoid(heatmap)
    peaks = scores == F.max_pool2d(scores, 3, stride=1, padding=1)
    scores = scores * peaks
    b, c, gh, gw = scores.shape
    out = []
    for i in range(b):
        flat = scores[i].reshape(-1)
        k = min(top_k, flat.numel())
        val, idx = flat.topk(k)
        keep = val > min_score
        val, idx = val[keep], idx[keep]
        labels = idx // (gh * gw)
        cell = idx % (gh * gw)
        iy, ix = (cell // gw).float(), (cell % gw).float()
        r = box[i].reshape(4, -1)[:, cell]
        cx, cy = ix + r[0], iy + r[1]
        w, h = r[2].clamp(min=0), r[3].clamp(min=0)
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1) * stride
        out.append({"boxes": boxes, "scores": val, "labels": labels})
    return out


def coco_map(detections: Sequence[dict[str, Tensor]], targets: Tensor, num_classes: int) -> dict[str, float]:
    """COCO-style average precision by pycocotools: ``{"map50": AP@IoU 0.5, "map": AP@[0.5:0.95]}``.

    ``detections`` as from :func:`decode_centernet`, ``targets`` ``[N, K, 5]`` padded boxes."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:  # pragma: no cover - dev extra
        raise ImportError("mAP needs pycocotools: pip install pycocotools") from exc
    images, annotations, results = [], [], []
    for i, row in enumerate(targets):
        images.append({"id": i, "width": 1, "height": 1})
        for t in row:
            if t[0] < 0:
                continue
            x0, y0, x1, y1 = (float(v) for v in t[1:])
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(t[0]),
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                "iscrowd": 0})
    for i, det in enumerate(detections):
        for bx, s, lab in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist(), strict=True):
            results.append({"image_id": i, "category_id": int(lab), "score": float(s),
                            "bbox": [bx[0], bx[1], bx[2] - bx[0], bx[3] - bx[1]]})
    if not annotations:
        raise ConfigError("no ground-truth boxes to compute mAP on")
    if not results:
        return {"map50": 0.0, "map": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c} for c in range(num_classes)]}
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map50": max(0.0, float(ev.stats[1])), "map": max(0.0, float(ev.stats[0]))}


# -- evaluation across T ---------------------------------------------------------------------------

@dataclass
class TaskResult:
    """A task metric of the SNN at chosen T beside the ANN's.

    Attributes:
        task: ``classification``, ``segmentation``, ``detection`` or ``events``.
        metric: the metric's name (``accuracy``, ``mIoU``, ``mAP@0.5``).
        snn: ``{T: metric}`` in [0, 1].
        ann: the ANN's metric (for ``events``, on the mean event frame).
        extra: further figures (``mAP@[.5:.95]`` per T for detection, the mean-frame SNN for events).
    """

    task: str
    metric: str
    snn: dict[int, float]
    ann: float
    samples: int
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "metric": self.metric, "ann": self.ann,
                "snn": {str(t): v for t, v in sorted(self.snn.items())}, "samples": self.samples,
                "extra": self.extra, "seconds": self.seconds, "meta": self.meta}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def to_text(self) -> str:
        head = f"{'T':>6}  {'SNN ' + self.metric:>14}  {'SNN-ANN':>8}"
        lines = [head, "-" * len(head)]
        for t, v in sorted(self.snn.items()):
            lines.append(f"{t:>6}  {v * 100:13.2f}%  {(v - self.ann) * 100:+8.2f}")
        lines.append("-" * len(head))
        lines.append(f"{'ANN':>6}  {self.ann * 100:13.2f}%   ({self.samples} samples, {self.seconds:.1f} s)")
        return "\n".join(lines)


def _batches(data: Any, batch_size: int):
    """``(x, y)`` batches of a tensor pair or any Dataset, in order (evaluation's streaming batcher)."""
    return _eval_batches(data, batch_size, None, shard=False)[0]


@torch.no_grad()
def evaluate_task(
    snn: SpikingModel,
    data: Any,
    task: str,
    timesteps: int | Sequence[int] | None = None,
    *,
    batch_size: int = 100,
    num_classes: int | None = None,
    stride: int = 4,
) -> TaskResult:
    """The task metric of ``snn`` at every T of ``timesteps`` (an int T: 1, 2, 4, ..., T), and the ANN's.

    Args:
        snn: the converted model.
        data: ``(x, y)`` tensors or an :class:`~ann2snn.data.ArrayDataset`. Segmentation: ``y`` the
            class map ``[N, H, W]``; detection: ``y`` padded boxes ``[N, K, 5]``; classification:
            labels; events: ``x`` the event counts ``[N, S, 2, H, W]`` and labels (the SNN runs once
            per T on the stream binned into T frames, one per step, and once on the mean frame).
        task: one of :data:`TASKS`.
        num_classes: segmentation and detection classes (default: the model's output channels).
        stride: the detector's output stride (pixels per output cell).
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    t_max = snn.config.timesteps if timesteps is None else timesteps
    ts = default_timesteps(t_max) if isinstance(t_max, int) else sorted(set(t_max))
    if not ts or any(isinstance(t, bool) or not isinstance(t, int) or t <= 0 for t in ts):
        raise ConfigError(f"timesteps must be positive integers, got {t_max!r}")
    start = time.perf_counter()
    snn.eval()
    if task == "events":
        result = _evaluate_events(snn, data, ts, batch_size)
    elif task == "detection":
        result = _evaluate_detection(snn, data, ts, batch_size, num_classes, stride)
    else:
        result = _evaluate_dense(snn, data, task, ts, batch_size, num_classes)
    result.seconds = time.perf_counter() - start
    return result


def _evaluate_dense(snn, data, task, ts, batch_size, num_classes) -> TaskResult:
    """Segmentation (confusion matrices) or classification (counts) at every T from one run per batch."""
    t_max = max(ts)
    stats: dict[int, Any] = {}
    ann_stat: Any = None
    n = 0
    for x, y in _batches(data, batch_size):
        x = x.float()
        _, history = snn.run(x, t_max, return_all=True)
        ann = snn.analog(x, "relu")
        if task == "segmentation":
            c = num_classes or ann.shape[1]
            ann_stat = _add(ann_stat, confusion_matrix(ann.argmax(1), y, c))
            for t in ts:
                stats[t] = _add(stats.get(t), confusion_matrix(history[t - 1].argmax(1), y, c))
        else:
            ann_stat = _add(ann_stat, int((ann.argmax(-1) == y).sum()))
            for t in ts:
                stats[t] = _add(stats.get(t), int((history[t - 1].argmax(-1) == y).sum()))
        n += int(x.shape[0])
    if task == "segmentation":
        return TaskResult(task, METRICS[task], {t: mean_iou(s) for t, s in stats.items()}, mean_iou(ann_stat), n)
    return TaskResult(task, METRICS[task], {t: s / n for t, s in stats.items()}, ann_stat / n, n)


def _add(a, b):
    return b if a is None else a + b


def _evaluate_detection(snn, data, ts, batch_size, num_classes, stride) -> TaskResult:
    t_max = max(ts)
    dets: dict[int, list] = {t: [] for t in ts}
    ann_dets: list = []
    targets = []
    for x, y in _batches(data, batch_size):
        x = x.float()
        _, history = snn.run(x, t_max, return_all=True)
        ann = snn.analog(x, "relu")
        ann_dets += decode_centernet(ann["heatmap"], ann["box"], stride)
        for t in ts:
            dets[t] += decode_centernet(history["heatmap"][t - 1], history["box"][t - 1], stride)
        targets.append(y)
    y_all = torch.cat(targets)
    c = num_classes or ann["heatmap"].shape[1]
    ann_m = coco_map(ann_dets, y_all, c)
    snn_m = {t: coco_map(d, y_all, c) for t, d in dets.items()}
    return TaskResult("detection", METRICS["detection"], {t: m["map50"] for t, m in snn_m.items()},
                      ann_m["map50"], int(y_all.shape[0]),
                      extra={"map_50_95": {"ann": ann_m["map"], "snn": {str(t): m["map"] for t, m in snn_m.items()}}})


def _evaluate_events(snn, data, ts, batch_size) -> TaskResult:
    from .data.synthetic import bin_events, mean_event_frame

    t_max = max(ts)
    seq_correct = dict.fromkeys(ts, 0)
    mean_correct = dict.fromkeys(ts, 0)
    ann_correct, n = 0, 0
    for ev, y in _batches(data, batch_size):
        frame = mean_event_frame(ev)
        ann_correct += int((snn.analog(frame, "relu").argmax(-1) == y).sum())
        _, history = snn.run(frame, t_max, return_all=True)
        for t in ts:
            mean_correct[t] += int((history[t - 1].argmax(-1) == y).sum())
            out = snn.run(bin_events(ev, t), sequence=True)
            seq_correct[t] += int((out.argmax(-1) == y).sum())
        n += int(y.shape[0])
    return TaskResult("events", "accuracy", {t: c / n for t, c in seq_correct.items()}, ann_correct / n, n,
                      extra={"mean_frame": {str(t): c / n for t, c in mean_correct.items()},
                             "mode": "one event frame per step (the stream binned into T frames)"})
