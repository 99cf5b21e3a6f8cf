"""docs/results.md and docs/history.md are what benchmarks/make_tables.py writes from benchmarks/results/*.json."""

import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import make_tables  # noqa: E402


def test_pages_are_current():
    assert make_tables.check() == 0, "run `python benchmarks/make_tables.py --write` and commit docs/"


def test_check_reports_a_stale_page(tmp_path, capsys):
    for name in ("results.md", "history.md"):
        shutil.copy(ROOT / "docs" / name, tmp_path / name)
    assert make_tables.check(tmp_path) == 0
    page = tmp_path / "results.md"
    page.write_text(page.read_text().replace("| `vgg_fmnist` |", "| `vgg_fmnist` (edited) |", 1))
    assert make_tables.check(tmp_path) == 1
    assert "results.md is out of date" in capsys.readouterr().err
    (tmp_path / "history.md").unlink()
    page.write_text((ROOT / "docs" / "results.md").read_text())
    assert make_tables.check(tmp_path) == 1


def test_every_results_file_is_in_the_history():
    files = sorted(p.name for p in (ROOT / "benchmarks" / "results").glob("*.json"))
    assert files
    rows = re.findall(r"^\| `([^`]+\.json)` \|", (ROOT / "docs" / "history.md").read_text(), re.M)
    assert sorted(rows) == files  # each file once


LINKS = sorted(set(re.findall(r"\]\(results\.md#([\w-]+)\)", (ROOT / "docs" / "history.md").read_text())
                   + re.findall(r"\]\(#([\w-]+)\)", (ROOT / "docs" / "results.md").read_text())))


@pytest.mark.parametrize("link", LINKS)
def test_links_to_the_results_page_name_its_sections(link):
    headings = re.findall(r"^#{2,3} (.+)$", (ROOT / "docs" / "results.md").read_text(), re.M)
    assert link in {make_tables.slug(h) for h in headings}
