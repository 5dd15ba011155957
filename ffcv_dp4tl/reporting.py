"""Replace one ``## `` section of a Markdown report (BENCHMARKS.md), and describe the machine a
report was made on: shared by the benchmark scripts under ``benchmarks/`` and ``dp4tl bench``."""
from __future__ import annotations

import platform
import shlex
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import DP4TLError
from .fsutil import atomic_write_text

DEFAULT_HEADER = ("# Benchmarks\n\nEach `## ` section is written by one script under `benchmarks/` "
                  "(or one `dp4tl bench` command) and holds only numbers from its last run (see "
                  "its header for the machine, versions and command).\n")


def write_section(path: str | Path, title: str, body: str) -> None:
    """Replace section ``## title`` (up to the next ``## `` line) of ``path``, or append it.

    The file is created with a short header if absent; other sections are left untouched.
    The write is atomic (temporary file + rename).
    """
    path = Path(path)
    header = f"## {check_section_title(title).strip()}"  # (lines are compared stripped)
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else DEFAULT_HEADER
    except UnicodeDecodeError:
        raise DP4TLError(f"{path} is not UTF-8 text, so no Markdown section can be written "
                         "into it; choose another --report file") from None
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.rstrip() == header), None)
    block = [header, "", *body.rstrip("\n").splitlines()]
    if start is None:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ["", *block]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        tail = lines[end:]
        lines = lines[:start] + block + ([""] + tail if tail else [])
    atomic_write_text(path, "\n".join(lines) + "\n")


def check_section_title(title: str) -> str:
    """A section title is one non-empty line: an empty one wrote a bare ``## `` that the next
    run could not find (a second copy), a line break an extra heading into the file."""
    if not str(title).strip() or "\n" in str(title) or "\r" in str(title):
        raise DP4TLError(f"--section {title!r}: a section title is one non-empty line")
    return title


def link_prefix(out: str | Path, report: str | Path) -> str:
    """How ``report`` (a Markdown file) links into the folder ``out``: relative to the report's
    folder when ``out`` lies below it, else absolute; with a trailing ``/``."""
    out, report = Path(out).resolve(), Path(report).resolve()
    try:
        return str(out.relative_to(report.parent)) + "/"
    except ValueError:
        return str(out) + "/"


def publish_section(report: str | Path, title: str, out: str | Path,
                    body: Callable[[str], str], log: Callable[[str], None] = print) -> None:
    """Write section ``## title`` of ``report`` from a bench's output folder ``out``: ``body``
    gets the link prefix (:func:`link_prefix`) its links and images need."""
    write_section(report, title, body(link_prefix(out, report)))
    log(f"[bench] wrote section '{title}' of {report}")


def machine_info() -> dict[str, Any]:
    """CPU model, usable cores, Python / torch versions and platform: a report's header."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    from .cpus import available_cores

    cores = available_cores()

    return {"cpu": cpu, "cores": cores, "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(terse=True)}


def command_line(prog: str, opts: Iterable[tuple[str, Any]]) -> str:
    """``prog --name value ...``: the exact command of a bench, every option spelled out (defaults
    included, empty ones left out) so the line in its report reproduces the run."""
    return prog + " " + " ".join(f"--{name} {shlex.quote(str(v))}" for name, v in opts
                                 if v not in ("", None))
