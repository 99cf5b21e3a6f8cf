"""Small dense-prediction, video and event models for the synthetic tasks of :mod:`ann2snn.data.synthetic`.

Each is plain PyTorch: the converter sees ConvTranspose / concatenation skips (U-Net), a dict of two
heads (CenterNet), Conv3d / BatchNorm3d / MaxPool3d / AvgPool3d (video) and 2-channel event frames.
Anything after the last layer (softmax, sigmoid, box decoding, NMS) is left to
:mod:`ann2snn.tasks`, which runs it on the SNN's averaged analog outputs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CenterNet", "EventCNN", "SegUNet", "Video3D"]


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SegUNet(nn.Module):
    """A two-level U-Net: per-pixel class logits ``[B, classes, H, W]``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 5, width: int = 16) -> None:
        super().__init__()
        w = width
        self.enc1 = nn.Sequential(_conv_bn(in_channels, w), _conv_bn(w, w))
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), _conv_bn(w, 2 * w), _conv_bn(2 * w, 2 * w))
        self.mid = nn.Sequential(nn.MaxPool2d(2), _conv_bn(2 * w, 4 * w))
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _conv_bn(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = _conv_bn(2 * w, w)
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        m = self.mid(e2)
        d2 = self.dec2(torch.cat([F.relu(self.up2(m)), e2], dim=1))
        d1 = self.dec1(torch.cat([F.relu(self.up1(d2)), e1], dim=1))
        return self.head(d1)


class CenterNet(nn.Module):
    """An anchor-free detector in the style of CenterNet (Zhou et al. 2019), output stride 4.

    Returns ``{"heatmap": [B, classes, H/4, W/4], "box": [B, 4, H/4, W/4]}``: class-centre logits
    (sigmoid outside the SNN) and, per cell, the centre offset (2) and box size (2) in cells.
    """

    stride = 4

    def __init__(self, in_channels: int = 1, num_classes: int = 4, width: int = 16) -> None:
        super().__init__()
        w = width
        self.backbone = nn.Sequential(
            _conv_bn(in_channels, w), _conv_bn(w, 2 * w, stride=2), _conv_bn(2 * w, 2 * w),
            _conv_bn(2 * w, 4 * w, stride=2), _conv_bn(4 * w, 4 * w), _conv_bn(4 * w, 4 * w),
        )
        self.heat = nn.Sequential(nn.Conv2d(4 * w, 2 * w, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(2 * w, num_classes, 1))
        self.box = nn.Sequential(nn.Conv2d(4 * w, 2 * w, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(2 * w, 4, 1))
        nn.init.constant_(self.heat[-1].bias, -2.19)  # prior 0.1 on every cell (focal-loss start)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.backbone(x)
        return {"heatmap": self.heat(f), "box": self.box(f)}


class Video3D(nn.Module):
    """A 3-D CNN over clips ``[B, 1, frames, H, W]``: Conv3d-BN-ReLU, MaxPool3d, AvgPool3d, linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 8, width: int = 8) -> None:
        super().__init__()
        w = width
        self.c1 = nn.Conv3d(in_channels, w, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm3d(w)
        self.pool1 = nn.MaxPool3d(2)
        self.c2 = nn.Conv3d(w, 2 * w, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm3d(2 * w)
        self.pool2 = nn.AvgPool3d(2)
        self.c3 = nn.Conv3d(2 * w, 4 * w, 3, padding=1)
        self.pool3 = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(F.relu(self.b1(self.c1(x))))
        x = self.pool2(F.relu(self.b2(self.c2(x))))
        x = self.pool3(F.relu(self.c3(x)))
        return self.fc(x.flatten(1))


class EventCNN(nn.Module):
    """A CNN on 2-channel (ON / OFF) event frames ``[B, 2, H, W]``."""

    def __init__(self, in_channels: int = 2, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(in_channels, w), _conv_bn(w, 2 * w), nn.MaxPool2d(2),
            _conv_bn(2 * w, 4 * w), nn.MaxPool2d(2), _conv_bn(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))
