"""The documentation site: every page is in the navigation, the generated pages are current, every
public name has a docstring on the API page, every docs page a config error points to exists, and
(when MkDocs is installed) the site builds with --strict."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "scripts"))

import make_cli_page  # noqa: E402


def _nav_pages() -> list[str]:
    text = (ROOT / "mkdocs.yml").read_text()
    nav = text[text.index("\nnav:"):]
    return re.findall(r":\s*([\w/.\-]+\.md)\s*$", nav, re.M)


def test_every_page_is_in_the_nav_and_exists():
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    nav = _nav_pages()
    assert sorted(nav) == pages, "each docs/*.md page must appear once in mkdocs.yml's nav"


def test_cli_page_is_current():
    assert make_cli_page.check() == 0, "run `python scripts/make_cli_page.py --write` and commit docs/cli.md"


def test_public_names_are_documented():
    import ann2snn

    api = (DOCS / "api.md").read_text()
    for name in ann2snn.__all__:
        obj = getattr(ann2snn, name)
        assert (obj.__doc__ or "").strip(), f"ann2snn.{name} has no docstring"
        module = obj.__module__
        shown = (f"::: ann2snn.{name}\n" in api or f"::: {module}.{name}\n" in api
                 or (module == "ann2snn.errors" and "::: ann2snn.errors\n" in api))
        assert shown, f"ann2snn.{name} is not on docs/api.md"


def test_config_errors_point_to_pages_that_exist():
    from ann2snn.config import CONFIG_GROUPS

    pages = {p for g in CONFIG_GROUPS.values() for p in g.pages if p is not None}
    assert pages
    for page in pages:
        assert (ROOT / page).is_file(), page


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs not installed (pip install -e '.[docs]')")
def test_site_builds_strict(tmp_path):
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").is_file()


def test_each_config_field_is_documented_on_its_page():
    # the page a config error points to holds the field's row in a fields table
    import dataclasses

    from ann2snn.config import FIELD_PAGE, ConversionConfig

    for f in dataclasses.fields(ConversionConfig):
        page = FIELD_PAGE.get(f.name)
        assert page, f"config field {f.name} has no docs page"
        assert re.search(rf"^\|\s*`{f.name}`\s*\|", (ROOT / page).read_text(), re.M), f"{page} has no row for {f.name}"
