"""The registered reference models (digits: 8x8 inputs, Fashion-MNIST: 28x28 inputs)."""

from __future__ import annotations

import torch.nn as nn

from .dense import CenterNet, EventCNN, SegUNet, Video3D
from .models import CNN, MLP, VGG, MobileNetV2, ResNet
from .registry import register_model

DIGITS = {"dataset": "digits", "input_shape": (1, 8, 8), "num_classes": 10}
FMNIST = {"dataset": "fashion-mnist", "input_shape": (1, 28, 28), "num_classes": 10}

# Training recipes (train_classifier kwargs) used by benchmarks/train_zoo.py.
_DIGITS_TRAIN = {"epochs": 20, "batch_size": 64, "optimizer": "adam", "lr": 3e-3, "augment": "none"}
_FMNIST_TRAIN = {"batch_size": 128, "optimizer": "sgd", "lr": 0.05, "augment": "flip",
                 "channels_last": True}


# ------------------------------------------------------------------------------------------ digits


@register_model("mlp_digits", **DIGITS, train={**_DIGITS_TRAIN, "epochs": 30},
                description="MLP 64-128-64-10 with dropout on 8x8 digits")
def mlp_digits(**kwargs) -> nn.Module:
    return MLP(**{"in_channels": 1, "num_classes": 10, "input_size": 8, "hidden": (128, 64), **kwargs})


@register_model("cnn_digits", **DIGITS, train=_DIGITS_TRAIN,
                description="3-conv CNN (16-32-32) with BN, avg pooling on 8x8 digits")
def cnn_digits(**kwargs) -> nn.Module:
    return CNN(**{"in_channels": 1, "num_classes": 10, "input_size": 8, "channels": (16, 32, 32), **kwargs})


@register_model("vgg_digits", **DIGITS, train={**_DIGITS_TRAIN, "epochs": 15},
                description="VGG-style 16-16-M-32-32-M-64 + 64-unit classifier on 8x8 digits")
def vgg_digits(**kwargs) -> nn.Module:
    return VGG(**{"in_channels": 1, "num_classes": 10, "input_size": 8,
                  "cfg": (16, 16, "M", 32, 32, "M", 64), "hidden": 64, "dropout": 0.2, **kwargs})


@register_model("resnet_digits", **DIGITS, train={**_DIGITS_TRAIN, "epochs": 15},
                description="ResNet with 3 BasicBlocks (16-32-32) on 8x8 digits")
def resnet_digits(**kwargs) -> nn.Module:
    return ResNet(**{"in_channels": 1, "num_classes": 10, "input_size": 8, "widths": (16, 32, 32),
                     "blocks": (1, 1, 1), **kwargs})


@register_model("mobilenet_digits", **DIGITS, train={**_DIGITS_TRAIN, "epochs": 15},
                description="MobileNetV2-style (4 inverted residuals, ReLU6) on 8x8 digits")
def mobilenet_digits(**kwargs) -> nn.Module:
    return MobileNetV2(**{"in_channels": 1, "num_classes": 10, "input_size": 8, "stem_channels": 16,
                          "last_channels": 64,
                          "inverted_residual_setting": ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 1, 2)),
                          **kwargs})


# ----------------------------------------------------------------------------------- Fashion-MNIST


@register_model("vgg_fmnist", **FMNIST, train={**_FMNIST_TRAIN, "epochs": 4},
                description="VGG-style 32-32-M-64-64-M-128-M + 256-unit classifier on Fashion-MNIST")
def vgg_fmnist(**kwargs) -> nn.Module:
    return VGG(**{"in_channels": 1, "num_classes": 10, "input_size": 28,
                  "cfg": (32, 32, "M", 64, 64, "M", 128, "M"), "hidden": 256, "dropout": 0.3, **kwargs})


@register_model("resnet_fmnist", **FMNIST, train={**_FMNIST_TRAIN, "epochs": 5, "lr": 0.1},
                description="ResNet-14: 3 stages x 2 BasicBlocks (16-32-64) on Fashion-MNIST")
def resnet_fmnist(**kwargs) -> nn.Module:
    return ResNet(**{"in_channels": 1, "num_classes": 10, "input_size": 28, "widths": (16, 32, 64),
                     "blocks": (2, 2, 2), **kwargs})


@register_model("mobilenet_fmnist", **FMNIST, train={**_FMNIST_TRAIN, "epochs": 4},
                description="MobileNetV2-style (6 inverted residuals, ReLU6) on Fashion-MNIST")
def mobilenet_fmnist(**kwargs) -> nn.Module:
    return MobileNetV2(**{"in_channels": 1, "num_classes": 10, "input_size": 28, "stem_channels": 16,
                          "last_channels": 128,
                          "inverted_residual_setting": ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2),
                                                        (4, 64, 1, 2)),
                          **kwargs})


# ----------------------------------------------------------- synthetic dense / video / event tasks
# Trained by benchmarks/train_dense.py on the generators of ann2snn.data.synthetic.


@register_model("unet_seg", dataset="synthetic-seg", input_shape=(1, 32, 32), num_classes=5, task="segmentation",
                description="U-Net (16-32-64, ConvTranspose + concat skips): 5-class masks of Fashion-MNIST canvases")
def unet_seg(**kwargs) -> nn.Module:
    return SegUNet(**{"in_channels": 1, "num_classes": 5, "width": 16, **kwargs})


@register_model("centernet_det", dataset="synthetic-det", input_shape=(1, 48, 48), num_classes=4, task="detection",
                description="CenterNet-style anchor-free detector, stride 4, heatmap + box heads, 4 classes")
def centernet_det(**kwargs) -> nn.Module:
    return CenterNet(**{"in_channels": 1, "num_classes": 4, "width": 16, **kwargs})


@register_model("video3d_motion", dataset="synthetic-video", input_shape=(1, 8, 24, 24), num_classes=16,
                description="3-D CNN (Conv3d, BN3d, MaxPool3d, AvgPool3d): direction and speed of a moving object, "
                            "16 classes")
def video3d_motion(**kwargs) -> nn.Module:
    return Video3D(**{"in_channels": 1, "num_classes": 16, "width": 8, **kwargs})


@register_model("eventcnn_events", dataset="synthetic-events", input_shape=(2, 24, 24), num_classes=10,
                task="events",
                description="CNN on ON/OFF event frames of moving Fashion-MNIST objects (simulated DVS), 10 classes")
def eventcnn_events(**kwargs) -> nn.Module:
    return EventCNN(**{"in_channels": 2, "num_classes": 10, "width": 16, **kwargs})
