"""ann2snn: turn a pretrained PyTorch ReLU network into a spiking neural network without training."""

import os as _os
import sys as _sys

if "torch" not in _sys.modules:  # spinning OpenMP workers stall simulations on shared CPUs
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .adaptation.iat import calibrate_iat, run_iat
from .api import adapt, calibrate, convert, prepare, to_snn
from .config import ConversionConfig
from .errors import (
    CalibrationError,
    ConfigError,
    ConversionError,
    SerializationError,
    UnsupportedOperationError,
)
from .model import SpikingModel
from .serialize import load, save

__version__ = "0.1.0"

_EXPORTS = ("export_nir", "import_nir", "save_portable", "load_portable")


def __getattr__(name: str):
    # ann2snn.export_nir(snn, path) and friends, imported on first use (nir stays optional)
    if name in _EXPORTS:
        from . import export

        return getattr(export, name)
    raise AttributeError(f"module 'ann2snn' has no attribute {name!r}")


__all__ = [
    "CalibrationError", "ConfigError", "ConversionConfig", "ConversionError", "SerializationError",
    "SpikingModel", "UnsupportedOperationError", "adapt", "calibrate", "calibrate_iat", "run_iat", "convert", "load", "prepare", "save", "to_snn",
    "export_nir", "import_nir", "save_portable", "load_portable",
]
