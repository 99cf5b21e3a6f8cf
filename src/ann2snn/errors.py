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
    """One graph node that cannot be converted, with where it came from in the user's code.

    ``rank`` orders the kinds in the error: 0 for activations (the usual reason a model cannot
    spike), 1 for normalisations, 2 for anything else.
    """

    node: str
    op: str
    reason: str
    source: str | None = None
    rank: int = 2

    def describe(self) -> str:
        where = f" at {self.source}" if self.source else ""
        return f"node '{self.node}' ({self.op}){where}: {self.reason}"


_WHAT_HELPS = {
    0: "replace the activation by ReLU (or ReLU6, LeakyReLU, PReLU) and fine-tune the model",
    1: "per-sample normalisation has no spiking form: use BatchNorm (folded into the weights) instead",
}


class UnsupportedOperationError(ConversionError):
    """The model contains operations a spiking network cannot represent.

    ``offenders`` lists every offending node, each with its op and the user's source line, activations
    first (then graph order); the message groups them by kind, with a count and the first source lines.
    """

    def __init__(self, offenders: list[OffendingNode], hint: str | None = None):
        self.offenders = sorted(offenders, key=lambda o: o.rank)  # stable: graph order within a rank
        groups: dict[str, list[OffendingNode]] = {}
        for o in self.offenders:
            groups.setdefault(o.op, []).append(o)
        kinds = f", {len(groups)} kinds" if len(groups) > 1 else ""
        lines = [f"cannot convert {len(self.offenders)} operation(s) to spiking form{kinds}:"]
        for op, members in groups.items():
            places = f"at {len(members)} places" if len(members) > 1 else "at 1 place"
            sources = list(dict.fromkeys(o.source for o in members if o.source))
            where = ""
            if sources:
                more = f" (+{len(sources) - 3} more)" if len(sources) > 3 else ""
                where = ", first at " + "; ".join(sources[:3]) + more
            nodes = ", ".join(o.node for o in members[:3]) + (", ..." if len(members) > 3 else "")
            lines.append(f"  - {op} {places}{where}: {members[0].reason} [node {nodes}]")
        helps = [_WHAT_HELPS[r] for r in sorted({o.rank for o in self.offenders}) if r in _WHAT_HELPS]
        lines.append(
            hint
            or ("To convert it: " + "; ".join(helps) + ". " if helps else "")
            + "Only ReLU-family activations (ReLU, ReLU6, Hardtanh(0, x), clamp(min=0), LeakyReLU, PReLU), "
            "conv / linear layers, pooling, BatchNorm, residual addition, concatenation, upsampling and "
            "reshaping are convertible."
        )
        super().__init__("\n".join(lines))
