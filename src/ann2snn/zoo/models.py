"""Small reference architectures written the way ordinary PyTorch model code is written.

Each model takes ``in_channels``, ``num_classes`` and ``input_size`` (8 for sklearn digits, 28 for
(Fashion-)MNIST). The mix of ReLU spellings (``nn.ReLU(inplace=True)``, ``F.relu``, ``torch.relu``,
``Tensor.relu``, ``nn.ReLU6``), in-place residual adds, ``view``/``flatten`` and BatchNorm is
deliberate: the converter must handle real-world code, not a curated subset.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CNN", "MLP", "VGG", "BasicBlock", "ConvBNReLU", "InvertedResidual", "MobileNetV2", "ResNet"]


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------------------- MLP


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU -> Dropout] x len(hidden) -> Linear."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int = 8,
        hidden: Sequence[int] = (128, 64),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        in_features = in_channels * input_size * input_size
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            in_features = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        x = self.body(x)
        return self.head(x)


# ------------------------------------------------------------------------------------------- CNN


class CNN(nn.Module):
    """Conv-BN-ReLU blocks with average pooling and a linear head (ReLUs applied functionally)."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int = 8,
        channels: Sequence[int] = (16, 32, 64),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not 2 <= len(channels) <= 3:
            raise ValueError(f"CNN takes 2 or 3 conv layers, got channels={tuple(channels)}")
        c1, c2 = channels[0], channels[1]
        self.conv1 = nn.Conv2d(in_channels, c1, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.pool = nn.AvgPool2d(2)
        size = input_size // 2 // 2
        out_channels = c2
        if len(channels) == 3:
            self.conv3 = nn.Conv2d(c2, channels[2], kernel_size=3, padding=1, bias=False)
            self.bn3 = nn.BatchNorm2d(channels[2])
            out_channels = channels[2]
        else:
            self.conv3 = None
        if size < 1:
            raise ValueError(f"input_size={input_size} is too small for two 2x2 poolings")
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(out_channels * size * size, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.pool(x)
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.pool(x)
        if self.conv3 is not None:
            x = self.bn3(self.conv3(x)).relu()
        x = x.view(x.size(0), -1)
        x = self.dropout(x)
        return self.fc(x)


# ------------------------------------------------------------------------------------------- VGG


def make_vgg_layers(cfg: Sequence[int | str], in_channels: int = 1, batch_norm: bool = True) -> nn.Sequential:
    """torchvision-style ``make_layers``: ints are 3x3 conv widths, ``"M"`` is a 2x2 max pool."""
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            v = int(v)
            conv = nn.Conv2d(in_channels, v, kernel_size=3, padding=1, bias=not batch_norm)
            if batch_norm:
                layers += [conv, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            else:
                layers += [conv, nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG-style ``features`` (from a cfg list) + ``classifier`` Linear-ReLU-Dropout-Linear."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int = 28,
        cfg: Sequence[int | str] = (32, 32, "M", 64, 64, "M", 128, "M"),
        hidden: int = 256,
        dropout: float = 0.3,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.features = make_vgg_layers(cfg, in_channels, batch_norm)
        size = input_size
        for v in cfg:
            if v == "M":
                size //= 2
        if size < 1:
            raise ValueError(f"input_size={input_size} is too small for cfg {list(cfg)}")
        last = [v for v in cfg if v != "M"][-1]
        self.classifier = nn.Sequential(
            nn.Linear(int(last) * size * size, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


# ---------------------------------------------------------------------------------------- ResNet


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x

        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = torch.relu(out)
        return out


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, stages of BasicBlocks, global average pool, fc."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int = 28,
        widths: Sequence[int] = (16, 32, 64),
        blocks: Sequence[int] = (1, 1, 1),
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError("widths and blocks must have the same length")
        self.inplanes = widths[0]
        self.conv1 = conv3x3(in_channels, self.inplanes)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        stages = []
        size = input_size
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            # Downsample by 2 at every stage after the first while the feature map stays >= 2x2.
            stride = 2 if i > 0 and size >= 4 else 1
            size = (size + stride - 1) // stride
            stages.append(self._make_layer(w, n, stride))
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.inplanes, num_classes)
        _init_weights(self)
        if zero_init_residual:
            # Zero-init the last BN of each residual branch (Goyal et al.): blocks start as identity.
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(self.inplanes, planes, stride)]
        self.inplanes = planes
        for _ in range(1, num_blocks):
            layers.append(BasicBlock(planes, planes))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


# ------------------------------------------------------------------------------------- MobileNetV2


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        self.stride = stride
        assert stride in (1, 2)
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = self.stride == 1 and inp == oup

        layers: list[nn.Module] = []
        if expand_ratio != 1:
            # pointwise expansion
            layers.append(ConvBNReLU(inp, hidden_dim, kernel_size=1))
        layers.extend([
            # depthwise
            ConvBNReLU(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            # pointwise-linear bottleneck
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ])
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """A narrow MobileNetV2: inverted residuals with depthwise convs and linear bottlenecks."""

    # t (expansion), c (channels), n (repeats), s (stride of the first repeat)
    DEFAULT_SETTING = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 2))

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int = 28,
        stem_channels: int = 16,
        last_channels: int = 256,
        inverted_residual_setting: Sequence[Sequence[int]] = DEFAULT_SETTING,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        features: list[nn.Module] = [ConvBNReLU(in_channels, stem_channels, stride=1)]
        input_channel = stem_channels
        size = input_size
        for t, c, n, s in inverted_residual_setting:
            for i in range(n):
                stride = s if i == 0 and size >= 4 else 1
                size = (size + stride - 1) // stride
                features.append(InvertedResidual(input_channel, c, stride, expand_ratio=t))
                input_channel = c
        features.append(ConvBNReLU(input_channel, last_channels, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        _init_weights(self)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.pool(x)
        x = x.flatten(1)
        return self.classifier(x)
