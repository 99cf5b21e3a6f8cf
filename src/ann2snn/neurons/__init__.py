"""Spiking neurons: pure step functions and their module wrappers."""

from .functional import burst_step, if_step, initial_potential, quantize
from .modules import Affine, RunningMaxPool, SpikingNeuron, StatefulModule

__all__ = ["burst_step", "if_step", "initial_potential", "quantize", "Affine", "RunningMaxPool",
           "SpikingNeuron", "StatefulModule"]
