"""``dp4tl docs [NAME]`` (cli/catalog.py): the Markdown docs a message or help names, listed and
printed from any install (the wheel ships them: tests/cli/test_packaging.py checks an installed
copy). A user who installed the wheel has no docs/ folder: this is how they read
``docs/scorers.md``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_runner import cli, one_line

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def _pages() -> list[str]:
    return sorted(p.relative_to(DOCS).with_suffix("").as_posix() for p in DOCS.rglob("*.md"))


def test_the_list_names_every_page_with_its_title_and_where_they_are(capsys, monkeypatch):
    code, out, err = cli(capsys, monkeypatch, "docs")
    assert code == 0, err
    lines = out.splitlines()
    listed = [line.split()[0] for line in lines[:-1]]
    assert sorted(listed) == _pages()
    assert lines[0].split()[0] == "deviations"  # top-level pages first, by name
    scorers = next(line for line in lines if line.split()[0] == "scorers")
    assert scorers.split(None, 1)[1] == "Scoring methods"  # (docs/scorers.md: "# Scoring methods")
    assert "cost-table/report" in listed and "embedded-benchmark/README" in listed
    assert lines[-1] == f"({len(_pages())} pages in {DOCS}; `dp4tl docs NAME` prints one)"


@pytest.mark.parametrize("name", ["scorers", "scorers.md", "docs/scorers.md", "docs/scorers",
                                  "./docs/scorers.md"])
def test_a_page_prints_by_each_spelling(capsys, monkeypatch, name):
    code, out, err = cli(capsys, monkeypatch, "docs", name)
    assert (code, err) == (0, "")
    assert out == (DOCS / "scorers.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name, page", [("cost-table/report", "cost-table/report.md"),
                                        ("docs/cost-table/report.md", "cost-table/report.md"),
                                        ("embedded-benchmark/README", "embedded-benchmark/README.md"),
                                        ("embedded-benchmark", "embedded-benchmark/README.md")])
def test_a_page_in_a_subfolder_prints_and_a_folder_means_its_readme(capsys, monkeypatch, name, page):
    code, out, err = cli(capsys, monkeypatch, "docs", name)
    assert (code, err) == (0, "")
    assert out == (DOCS / page).read_text(encoding="utf-8")


@pytest.mark.parametrize("name, needles", [
    ("NOPE", ["unknown doc 'NOPE'", "deviations, evaluations, gpu, scale, scorers"]),
    ("scorer", ["unknown doc 'scorer'", "did you mean scorers?"]),
    ("design", ["did you mean embedded-benchmark/design?"]),
    ("../README", ["unknown doc '../README'"]),  # (nothing outside the docs is read)
    ("gpu.png", ["unknown doc 'gpu.png'"]),
    ("", ["unknown doc ''"]),
])
def test_an_unknown_name_is_one_line_listing_the_pages(capsys, monkeypatch, name, needles):
    code, out, err = cli(capsys, monkeypatch, "docs", name)
    one_line(code, err, *needles, "`dp4tl docs` lists them all")
    assert out == ""
    for top in (p for p in _pages() if "/" not in p):
        assert top in err


def test_a_reader_that_had_enough_ends_it_as_sigpipe_would(tmp_path):
    """`dp4tl docs scorers | head -1`: the reader closed the pipe before the page was written:
    no traceback and no word, 141 (128 + SIGPIPE), as `dp4tl recipes | head -1`."""
    p = subprocess.Popen([sys.executable, "-m", "ffcv_dp4tl", "docs", "scorers"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    p.stdout.close()  # (no reader: its first write meets EPIPE)
    _, err = p.communicate(timeout=300)
    assert (p.returncode, err.decode()) == (141, "")


def test_a_page_that_cannot_be_read_is_one_line_saying_so(capsys, monkeypatch):
    """A page the install may not read (permissions): "cannot read", not the writer's line."""
    import errno

    real = Path.read_text

    def refused(self, *a, **k):
        if self.name == "scorers.md":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", refused)
    code, out, err = cli(capsys, monkeypatch, "docs", "scorers")
    one_line(code, err, "cannot read", "scorers.md (Permission denied)")
