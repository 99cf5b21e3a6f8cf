"""torchvision-style architectures for the coverage table of ``compare_peers.py`` (random weights).

torchvision cannot be installed beside torch 2.13 cheaply, so these are
re-implementations written the way torchvision 0.2x writes the modules, with the features that matter
to a converter kept as they are there:

* ``resnet18``: torchvision's ``BasicBlock`` holds **one** ``nn.ReLU(inplace=True)`` module and calls it
  twice per block (after ``bn1`` and after the residual ``out += identity``); stem conv 7x7 / max-pool
  3x3 stride 2; ``AdaptiveAvgPool2d((1, 1))``, ``torch.flatten(x, 1)``, ``fc``.
* ``mobilenet_v2``: ``Conv2dNormActivation`` blocks with ``nn.ReLU6(inplace=True)``, inverted
  residuals with linear bottlenecks, ``adaptive_avg_pool2d`` applied functionally as torchvision does,
  a dropout + linear classifier.
* ``vgg11_bn``: cfg "A" with BatchNorm, ``AdaptiveAvgPool2d((7, 7))``, classifier 4096-4096 with
  dropout (widths can be reduced with ``width`` to keep the coverage run light; the structure is
  unchanged).
* ``fcn_resnet18``: an FCN segmentation model the way ``torchvision.models.segmentation.fcn`` builds it:
  a ResNet backbone read through an intermediate-layer getter, ``FCNHead`` (conv-BN-ReLU-dropout-conv),
  ``F.interpolate(..., mode="bilinear", align_corners=False)`` back to the input size, and an
  ``OrderedDict`` output ``{"out": ...}``.

All weights are random (no pretrained weights can be downloaded here): these models only test
whether a tool converts the architecture without hand edits and whether the converted model runs.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------------------------------- ResNet


def _conv3x3(inp: int, out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inp, out, kernel_size=3, stride=stride, padding=1, bias=False)


class TVBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)  # the same ReLU module, a second time
        return out


class TVResNet(nn.Module):
    def __init__(self, layers=(2, 2, 2, 2), num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        _randomise_bn(self)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [TVBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [TVBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_impl(x)


def resnet18(num_classes: int = 1000) -> TVResNet:
    return TVResNet((2, 2, 2, 2), num_classes)


# ------------------------------------------------------------------------------------- MobileNetV2


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class Conv2dNormActivation(nn.Sequential):
    def __init__(self, inp: int, out: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 activation: type[nn.Module] | None = nn.ReLU6):
        layers: list[nn.Module] = [nn.Conv2d(inp, out, kernel_size, stride, (kernel_size - 1) // 2, groups=groups,
                                             bias=False), nn.BatchNorm2d(out)]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class TVInvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden_dim, kernel_size=1))
        layers.extend([Conv2dNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
                       nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)])
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class TVMobileNetV2(nn.Module):
    SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        input_channel = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [Conv2dNormActivation(3, input_channel, stride=2)]
        for t, c, n, s in self.SETTING:
            output_channel = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(TVInvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        features.append(Conv2dNormActivation(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        _randomise_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))  # functional, as torchvision writes it
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0) -> TVMobileNetV2:
    return TVMobileNetV2(num_classes, width_mult)


# --------------------------------------------------------------------------------------------- VGG


class TVVGG(nn.Module):
    def __init__(self, features: nn.Module, num_classes: int = 1000, width: int = 4096, dropout: float = 0.5):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, width), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(width, width), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(width, num_classes))
        _randomise_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _vgg_layers(cfg, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            conv2d = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
            layers += [conv2d, nn.BatchNorm2d(v), nn.ReLU(inplace=True)] if batch_norm else \
                [conv2d, nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


def vgg11_bn(num_classes: int = 1000, width: int = 4096) -> TVVGG:
    cfg_a = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    return TVVGG(_vgg_layers(cfg_a, batch_norm=True), num_classes, width)


# --------------------------------------------------------------------------------------------- FCN


class IntermediateLayerGetter(nn.ModuleDict):
    """torchvision's getter: the backbone's children up to the last returned one, outputs by name."""

    def __init__(self, model: nn.Module, return_layers: dict[str, str]):
        layers = OrderedDict()
        wanted = dict(return_layers)
        for name, module in model.named_children():
            layers[name] = module
            wanted.pop(name, None)
            if not wanted:
                break
        super().__init__(layers)
        self.return_layers = dict(return_layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class FCNHead(nn.Sequential):
    def __init__(self, in_channels: int, channels: int):
        inter = in_channels // 4
        super().__init__(nn.Conv2d(in_channels, inter, 3, padding=1, bias=False), nn.BatchNorm2d(inter),
                         nn.ReLU(), nn.Dropout(0.1), nn.Conv2d(inter, channels, 1))


class FCN(nn.Module):
    def __init__(self, backbone: nn.Module, classifier: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        input_shape = x.shape[-2:]
        features = self.backbone(x)
        result = OrderedDict()
        x = features["out"]
        x = self.classifier(x)
        x = F.interpolate(x, size=input_shape, mode="bilinear", align_corners=False)
        result["out"] = x
        return result


def fcn_resnet18(num_classes: int = 21) -> FCN:
    backbone = IntermediateLayerGetter(resnet18(), {"layer4": "out"})
    return FCN(backbone, FCNHead(512, num_classes))


def _randomise_bn(model: nn.Module) -> None:
    """Random but plausible BN statistics (a fresh BN is the identity, which hides folding bugs)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


#: name -> (factory, input shape without batch, what it reproduces)
TORCHVISION_STYLE = {
    "tv_resnet18": (lambda: resnet18(10), (3, 64, 64), "torchvision ResNet-18 (BasicBlock reusing one ReLU)"),
    "tv_mobilenet_v2": (lambda: mobilenet_v2(10), (3, 64, 64), "torchvision MobileNetV2 (ReLU6)"),
    "tv_vgg11_bn": (lambda: vgg11_bn(10, width=512), (3, 64, 64),
                    "torchvision VGG-11-BN (classifier width 512 instead of 4096)"),
    "tv_fcn_resnet18": (lambda: fcn_resnet18(21), (3, 64, 64),
                        "torchvision FCN (ResNet-18 backbone, FCNHead, bilinear upsampling, dict output)"),
}
