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


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of ``text`` (lower case, punctuation dropped but
    hyphens, spaces to hyphens); lines in fenced code blocks are no headings."""
    out, fenced = set(), False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6} +(.*?) *#*$", line)):
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def broken_links(path: Path) -> list[str]:
    """Relative links in ``path`` whose file or folder does not exist, or whose ``#anchor``
    names no heading of the Markdown file it points into."""
    bad = []
    for m in LINK.finditer(path.read_text(encoding="utf-8")):
        target = m.group(1)
        if re.match(r"[a-zA-Z][a-zA-Z+.-]*:", target):
            continue  # a URL or mailto:
        file, _, anchor = target.partition("#")
        dest = path.parent / file if file else path
        if not dest.exists():
            bad.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            bad.append(target)
    return bad


def test_readme_and_architecture_are_checked():
    files = _markdown_files()
    assert {"README.md", "ARCHITECTURE.md", "BENCHMARKS.md", "CHANGELOG.md"} <= set(files)


@pytest.mark.parametrize("name", _markdown_files())
def test_relative_links_resolve(name):
    assert broken_links(ROOT / name) == [], f"{name} links to files that do not exist"


def test_a_dead_link_is_found(tmp_path):
    doc = tmp_path / "doc.md"
    (tmp_path / "there.md").write_text("# Tests and benchmarks\n```bash\n# not a heading\n```\n")
    doc = tmp_path / "doc.md"
    doc.write_text("# Top: the `first` one\n[ok](there.md) [anchor](there.md#tests-and-benchmarks) "
                   "[web](https://x.org/y) [self](#top-the-first-one) ![fig](gone.png) [dir](./) "
                   "[moved](old/README.md) [renamed](there.md#tests) [code](there.md#not-a-heading) "
                   "[lost](#top)\n")
    assert broken_links(doc) == ["gone.png", "old/README.md", "there.md#tests",
                                 "there.md#not-a-heading", "#top"]


def test_the_readmes_python_blocks_compile_and_import_what_they_name():
    """README's Python examples (the loader, "From Python") are code a reader pastes: each
    block compiles and its imports resolve, so a renamed function fails here, not for them.
    (The "From Python" script itself trains: it was run by hand for the README, not here.)"""
    import ast

    from repo_scripts import parse_python

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"),
                        re.S)
    assert len(blocks) >= 2
    for block in blocks:
        tree = parse_python(block)
        imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        exec(compile(ast.Module(body=imports, type_ignores=[]), "README.md", "exec"), {})
