"""One hierarchy of errors, so callers can catch ``ConversionError`` for anything ann2snn refuses."""

from __future__ import annotations

from dataclasses import dataclass


class ConversionError(Exception):
    """Base class of every error ann2snn raises on purpose."""


class ConfigError(ConversionError, ValueError):
    """An invalid configuration value (unknown method name, T <= 0, ...)."""


class CalibrationError(ConversionError):
    """Calibration could not run (empty data, NaN / inf in the data, shape mismatch, ...)."""


class SerializationError(ConversionError):
    """A saved SNN file is missing, corrupt or of an unknown format."""


class LoadError(ConversionError):
    """A model, checkpoint or dataset could not be loaded (missing, corrupt or not matching)."""


@dataclass(frozen=True)
class OffendingNode:
    """One graph node that cannot be converted, with where it came from in the user's code."""

    node: str
    op: str
    reason: str
    source: str | None = None

    def describe(self) -> str:
        where = f" at {self.source}" if self.source else ""
        return f"node '{self.node}' ({self.op}){where}: {self.reason}"


class UnsupportedOperationError(ConversionError):
    """The model contains operations a spiking network cannot represent.

    ``offenders`` lists every offending node at once, each with its op and the user's source line.
    """

    def __init__(self, offenders: list[OffendingNode], hint: str | None = None):
        self.offenders = list(offenders)
        lines = [f"cannot convert {len(self.offenders)} operation(s) to spiking form:"]
        lines += [f"  - {o.describe()}" for o in self.offenders]
        lines.append(
            hint
            or "Only ReLU-family activations (ReLU, ReLU6, Hardtanh(0, x), clamp(min=0)), linear layers, "
            "pooling, BatchNorm, residual addition, concatenation and reshaping are convertible. "
            "Replace the listed operations in the model (or move them out of forward) and try again."
        )
        super().__init__("\n".join(lines))
