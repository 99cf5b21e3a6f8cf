"""Write docs/cli.md, the command-line reference, from the parser's own --help texts.

    python scripts/make_cli_page.py --write     # regenerate docs/cli.md
    python scripts/make_cli_page.py --check     # exit 1 when docs/cli.md is out of date
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "cli.md"
WIDTH = 100

INTRO = """# Command line

`ann2snn COMMAND ...` or `python -m ann2snn COMMAND ...`; `ann2snn --version` names the versions of
ann2snn, torch and Python. Exit status: 0 success; 2 bad input (one line `ann2snn: error: ...` on
stderr, nothing written); 130 on Ctrl-C (nothing written); 1 when `inspect` finds operations that
cannot convert, or on an internal error (`ANN2SNN_DEBUG=1` shows the traceback). Under
`torchrun --nproc-per-node N -m ann2snn ...` the processes calibrate and evaluate data-parallel and
only rank 0 prints and writes.

Each flag of `convert` is a field of `ann2snn.ConversionConfig` (also a key of `--config FILE.toml`),
grouped by the method it belongs to; each group names the page that explains it.

This page is the `--help` of each command, written by `python scripts/make_cli_page.py --write`.
"""


def _help(parser: argparse.ArgumentParser) -> str:
    return parser.format_help().rstrip()


def render() -> str:
    os.environ["COLUMNS"] = str(WIDTH)  # argparse wraps to the terminal's width
    sys.path.insert(0, str(ROOT / "src"))
    from ann2snn.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = [INTRO, "```text", _help(parser), "```", ""]
    for name, p in sub.choices.items():
        parts += [f"## ann2snn {name}", "", "```text", _help(p), "```", ""]
    return "\n".join(parts)


def check(page: Path = PAGE) -> int:
    new = render()
    old = page.read_text() if page.exists() else ""
    if old == new:
        return 0
    diff = difflib.unified_diff(old.splitlines(), new.splitlines(), str(page), "generated", lineterm="", n=1)
    print(f"{page.name} is out of date: run `python scripts/make_cli_page.py --write`", file=sys.stderr)
    print("\n".join(list(diff)[:40]), file=sys.stderr)
    return 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    if args.check:
        return check()
    text = render()
    if args.write:
        PAGE.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
