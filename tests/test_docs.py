"""The Markdown a reader follows points at files that exist.

Why a test: the docs link into result folders (docs/embedded-benchmark/..., docs/ablations/...)
that get renamed when a result is rerun and kept as "earlier-*"; a link left behind sends a
reader to nothing, and nobody clicks every link before a commit.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# raw output of device runs, kept byte for byte as the machine wrote it (its figures stayed on
# the device; benchmarks/publish_gpu.py rewrites those links when it publishes)
RAW = ("benchmarks/gpu_runs/",)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _markdown_files() -> list[str]:
    res = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
                         capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:  # not a git checkout (an unpacked sdist): every .md file
        return sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.md") if ".venv" not in p.parts)
    return sorted(f for f in res.stdout.split() if not f.startswith(RAW))


def broken_links(path: Path) -> list[str]:
    """Relative links in ``path`` whose file or folder does not exist (anchors ignored)."""
    bad = []
    for m in LINK.finditer(path.read_text(encoding="utf-8")):
        target = m.group(1)
        if re.match(r"[a-zA-Z][a-zA-Z+.-]*:", target) or target.startswith("#"):
            continue  # a URL or mailto:, or an anchor in the same file
        if not (path.parent / target.split("#")[0]).exists():
            bad.append(target)
    return bad


def test_readme_and_architecture_are_checked():
    files = _markdown_files()
    assert {"README.md", "ARCHITECTURE.md", "BENCHMARKS.md", "CHANGELOG.md"} <= set(files)


@pytest.mark.parametrize("name", _markdown_files())
def test_relative_links_resolve(name):
    assert broken_links(ROOT / name) == [], f"{name} links to files that do not exist"


def test_a_dead_link_is_found(tmp_path):
    (tmp_path / "there.md").write_text("x")
    doc = tmp_path / "doc.md"
    doc.write_text("[ok](there.md) [anchor](there.md#a) [web](https://x.org/y) [self](#top) "
                   "![fig](gone.png) [dir](./) [moved](old/README.md)\n")
    assert broken_links(doc) == ["gone.png", "old/README.md"]
