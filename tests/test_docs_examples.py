"""Every code block of README.md and docs/ runs, so that the examples cannot rot.

- ```python blocks run page by page, in order, in one namespace per page, in a temporary folder.
  The namespace starts with the names the examples assume: ``model`` (the bundled pretrained digits
  VGG), ``calibration_loader`` and ``test_loader`` (128 digits images each, batches of 64), and a batch
  ``x`` of 16 test images with labels ``y``. A block whose first line is ``# requires: PKG`` is not
  run when PKG is not installed (a warning names it).
- ```bash blocks: every ``ann2snn ...`` command (also ``python -m ann2snn``, ``torchrun ... -m ann2snn``)
  is parsed by the real command-line parser, so a renamed flag or a bad choice fails here. They are not
  run: they name files and data of the reader's own.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```\s*$", re.S | re.M)


def blocks(page: Path, lang: str) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(page.read_text()) if m.group(1) == lang]


def _ids(pages):
    return [str(p.relative_to(ROOT)) for p in pages]


PY_PAGES = [p for p in PAGES if blocks(p, "python")]
SH_PAGES = [p for p in PAGES if blocks(p, "bash")]


@pytest.fixture(scope="module")
def prelude():
    from ann2snn.data.datasets import load_digits, subset
    from ann2snn.zoo import create_model

    train, test = subset(load_digits("train"), 128), subset(load_digits("test"), 128)
    x, y = next(iter(DataLoader(test, batch_size=16)))
    return {"train": train, "test": test, "x": x, "y": y, "create_model": create_model}


def _namespace(prelude) -> dict:
    torch.manual_seed(0)
    return {
        "__name__": "__docs__",
        "model": prelude["create_model"]("vgg_digits", pretrained=True).eval(),
        "calibration_loader": DataLoader(prelude["train"], batch_size=64),
        "test_loader": DataLoader(prelude["test"], batch_size=64),
        "x": prelude["x"].clone(),
        "y": prelude["y"].clone(),
    }


@pytest.mark.parametrize("page", PY_PAGES, ids=_ids(PY_PAGES))
def test_python_blocks_run(page, prelude, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = _namespace(prelude)
    skipped = []
    for i, code in enumerate(blocks(page, "python")):
        first = code.lstrip().splitlines()[0] if code.strip() else ""
        need = re.match(r"#\s*requires:\s*([\w.\-]+)", first)
        if need and importlib.util.find_spec(need.group(1)) is None:
            skipped.append(need.group(1))
            continue
        try:
            exec(compile(code, f"{page.name}[python block {i + 1}]", "exec"), ns)
        except Exception as exc:  # name the page and block in the failure
            raise AssertionError(f"{page.relative_to(ROOT)}, python block {i + 1} failed: "
                                 f"{type(exc).__name__}: {exc}\n---\n{code}") from exc
    if skipped:  # the other blocks of the page ran; say which did not
        warnings.warn(f"{page.relative_to(ROOT)}: {len(skipped)} block(s) need {', '.join(sorted(set(skipped)))}, "
                      "not installed: not run", stacklevel=1)


def _commands(code: str) -> list[list[str]]:
    """The ann2snn invocations of a bash block, as argument lists after the program name."""
    out = []
    joined = re.sub(r"\\\n\s*", " ", code)  # line continuations
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line, comments=True)
        for i, w in enumerate(words):
            prog = w.rsplit("/", 1)[-1]
            if prog == "ann2snn" and (i == 0 or words[i - 1] == "-m"):
                out.append(words[i + 1:])
                break
    return out


@pytest.mark.parametrize("page", SH_PAGES, ids=_ids(SH_PAGES))
def test_bash_commands_parse(page):
    from ann2snn.cli import build_parser

    cmds = [c for code in blocks(page, "bash") for c in _commands(code)]
    for argv in cmds:
        if argv in (["--version"], ["--help"], ["-h"]) or "--help" in argv or "-h" in argv:
            continue
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:  # argparse's own exit on a usage error
            raise AssertionError(f"{page.relative_to(ROOT)}: `ann2snn {shlex.join(argv)}` does not parse") from exc
        except Exception as exc:
            raise AssertionError(f"{page.relative_to(ROOT)}: `ann2snn {shlex.join(argv)}` does not parse: "
                                 f"{exc}") from exc


def test_command_extraction():
    code = "make demo\nann2snn zoo   # list\n.venv/bin/ann2snn inspect vgg_digits\n" \
           "torchrun --nproc-per-node 2 -m ann2snn evaluate snn.pt \\\n  --max-samples 10\n"
    assert _commands(code) == [["zoo"], ["inspect", "vgg_digits"], ["evaluate", "snn.pt", "--max-samples", "10"]]


def test_every_page_with_code_is_collected():
    # the README and the pages of the site hold Python examples; a broken fence would hide them
    assert ROOT / "README.md" in PY_PAGES and ROOT / "README.md" in SH_PAGES
