"""torch.fx tracing with errors that point at the user's code."""

from __future__ import annotations

import copy
import re
import traceback

from torch import fx, nn

from .errors import ConversionError, OffendingNode, UnsupportedOperationError
from .passes.patterns import LINEAR_MODULES, MAXPOOL_MODULES

_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')


class _Tracer(fx.Tracer):
    """Records stack traces so every node knows its source line; keeps known torch.nn modules as leaves."""

    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, LINEAR_MODULES + MAXPOOL_MODULES):
            return True
        return super().is_leaf_module(m, qualname)


def source_of(node: fx.Node) -> str | None:
    """``file:line (code)`` of the user's line that created ``node``, when known."""
    trace = getattr(node, "stack_trace", None)
    if not trace:
        return None
    frames = [f for f in _FRAME.findall(trace) if "/torch/" not in f[0]]
    if not frames:
        return None
    path, line, _func, code = frames[-1]
    return f"{path}:{line} `{code.strip()}`"


def user_frame(exc: BaseException) -> str | None:
    """``file:line (code)`` of the deepest frame of the user's code in ``exc``'s traceback."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename]
    if not frames:
        return None
    f = frames[-1]
    return f"{f.filename}:{f.lineno} `{(f.line or '').strip()}`"


def eval_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode, for a front end to capture; the model itself is not touched."""
    if not isinstance(model, nn.Module):
        raise ConversionError(f"expected a torch.nn.Module, got {type(model).__name__}")
    try:
        work = copy.deepcopy(model)
    except Exception as exc:  # noqa: BLE001 - any failure to copy is reported the same way
        raise ConversionError(f"could not copy the model before converting it ({exc}); the model was not modified") from exc
    return work.eval()


def trace(model: nn.Module) -> fx.GraphModule:
    """Trace a copy of ``model`` (in eval mode) into a GraphModule; the model itself is not touched."""
    work = eval_copy(model)
    tracer = _Tracer()
    try:
        graph = tracer.trace(work)
    except Exception as exc:  # noqa: BLE001 - torch.fx raises many kinds
        where = user_frame(exc)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "control flow" in message or "iteration" in message or isinstance(exc, fx.proxy.TraceError):
            reason = f"data-dependent Python control flow cannot be traced ({message})"
        else:
            reason = f"tracing failed: {message}"
        raise UnsupportedOperationError(
            [OffendingNode(node=type(model).__name__ + ".forward", op="trace", reason=reason, source=where)],
            hint="ann2snn traces forward() with torch.fx: make the computation independent of the data values "
            "(no `if` / loops over tensor contents), or wrap such logic outside the model.",
        ) from exc
    gm = fx.GraphModule(work, graph, class_name=type(model).__name__)
    gm.eval()
    return gm
