"""The ``ann2snn`` command line: one module per subcommand, each with ``add_parser`` and ``run``.

    ann2snn convert --model vgg_digits --data digits --out snn.pt
    ann2snn evaluate snn.pt --data digits [--json] [--report DIR]
    ann2snn compare adafire.pt if.pt --max-samples 1000 [--json] [--report DIR]
    ann2snn inspect vgg_digits
    ann2snn zoo
    ann2snn report snn.pt --data digits --out DIR
    ann2snn export snn.pt --format nir --out snn.nir

Exit status: 0 success; 1 ``inspect`` found operations that cannot convert, or an unexpected
internal error; 2 bad input (a one-line ``ann2snn: error: ...`` on stderr, nothing written).
Set ``ANN2SNN_DEBUG=1`` to see tracebacks; ``KeyboardInterrupt`` (Ctrl-C) exits with status 130
and leaves no output file behind.

Under ``torchrun --nproc-per-node N ann2snn ...`` the processes join one ``torch.distributed`` group
(gloo on CPU, nccl with GPUs), calibration and evaluation run data-parallel, and only rank 0 prints
and writes files.
"""

from __future__ import annotations

import os
import sys

from .. import __version__
from .. import distributed as D
from ..errors import ConversionError, UnsupportedOperationError
from . import compare, convert, evaluate, export, inspect, report, zoo
from .common import Parser, UsageError, one_line

__all__ = ["build_parser", "main"]

SUBCOMMANDS = (convert, evaluate, compare, inspect, zoo, report, export)


def version_line() -> str:
    """``ann2snn 0.1.0 (torch 2.13.0+cpu, Python 3.12.3)``."""
    import platform

    import torch

    return f"ann2snn {__version__} (torch {torch.__version__}, Python {platform.python_version()})"


def build_parser() -> Parser:
    parser = Parser(prog="ann2snn", description="Convert pretrained PyTorch ReLU networks into spiking "
                    "neural networks without training, and evaluate them.")
    parser.add_argument("--version", action="version", version=version_line(),
                        help="print ann2snn's version (and torch's) and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def _message(exc: BaseException) -> str:
    if isinstance(exc, UnsupportedOperationError):
        shown = "; ".join(o.describe() for o in exc.offenders[:3])
        more = f"; ... {len(exc.offenders) - 3} more" if len(exc.offenders) > 3 else ""
        return (f"cannot convert {len(exc.offenders)} operation(s): {shown}{more} "
                f"(`ann2snn inspect MODEL` shows the whole graph)")
    return one_line(str(exc)) or type(exc).__name__


_RANK = [0]  # this process's rank while main() runs (kept after the group is left, for the error line)


def _error(message: str) -> None:
    rank = D.rank() or _RANK[0]
    where = f" (rank {rank})" if rank else ""
    print(f"ann2snn: error{where}: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    debug = bool(os.environ.get("ANN2SNN_DEBUG"))
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        # launched by torchrun: join the process group (no-op otherwise); a group the caller made is
        # the caller's to leave
        owned = D.init_from_env()
        _RANK[0] = D.rank()
        try:
            code = int(args.run(args) or 0)
        except BaseException:
            if owned:
                D.shutdown(sync=False)  # a peer may never reach a barrier
            raise
        if owned:
            D.shutdown()
        return code
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except (UsageError, ConversionError, OSError, ValueError) as exc:
        # ValueError: the data readers and torch report bad values this way
        if debug:
            raise
        if isinstance(exc, OSError) and exc.filename and exc.strerror:
            _error(f"{exc.strerror}: {exc.filename}")
        else:
            _error(_message(exc))
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: say so in one line, traceback on request
        if debug:
            raise
        _error(f"unexpected {type(exc).__name__}: {one_line(str(exc))} (this is a bug in ann2snn; "
               f"rerun with ANN2SNN_DEBUG=1 for the traceback)")
        return 1
