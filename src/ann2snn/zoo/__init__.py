"""Reference architectures, a model registry and bundled checkpoints.

>>> from ann2snn.zoo import create_model, list_models
>>> model = create_model("vgg_digits", pretrained=True)  # doctest: +SKIP
"""

from . import catalog  # noqa: F401  (registers the built-in models)
from .hed import HED, find_hed_weights, hed_preprocess, load_hed
from .models import CNN, MLP, VGG, BasicBlock, InvertedResidual, MobileNetV2, ResNet
from .registry import (
    WEIGHTS_DIR,
    ZOO,
    CheckpointNotFoundError,
    ZooEntry,
    create_model,
    get_entry,
    list_models,
    load_metadata,
    register_model,
)
from .training import evaluate_accuracy, train_classifier

__all__ = [
    "CNN",
    "HED",
    "MLP",
    "VGG",
    "WEIGHTS_DIR",
    "ZOO",
    "BasicBlock",
    "CheckpointNotFoundError",
    "InvertedResidual",
    "MobileNetV2",
    "ResNet",
    "ZooEntry",
    "create_model",
    "evaluate_accuracy",
    "find_hed_weights",
    "get_entry",
    "hed_preprocess",
    "list_models",
    "load_hed",
    "load_metadata",
    "register_model",
    "train_classifier",
]
