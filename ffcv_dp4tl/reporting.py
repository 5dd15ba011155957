"""Replace one ``## `` section of a Markdown report (BENCHMARKS.md), and describe the machine a
report was made on: shared by the benchmark scripts under ``benchmarks/`` and ``dp4tl bench``."""
from __future__ import annotations

import functools
import platform
import re
import shlex
from pathlib import Path
from typing import Any, Callable, Iterable

from .contracts.names import printable
from .errors import DP4TLError
from .fsutil import atomic_write_text
from .outputs import KINDS, folder_kind

DEFAULT_HEADER = ("# Benchmarks\n\nEach `## ` section is written by one script under `benchmarks/` "
                  "(or one `dp4tl bench` command) and holds only numbers from its last run (see "
                  "its header for the machine, versions and command).\n")


def literal_text(draw: Callable) -> Callable:
    """Decorator of a function that draws a figure: every text it makes is drawn as written
    (matplotlib's ``text.parse_math`` off while it runs). Titles, labels and legends hold
    dataset, class and target names from files others wrote, and matplotlib read a ``$`` in one
    as math: ``cost_$5_to_$10`` failed to parse while the figure was laid out or saved (a
    pipeline's report lost after the whole run, ``bench render`` a traceback), ``a$b$c`` came
    out in italics (audit, review)."""
    @functools.wraps(draw)
    def drawn_as_written(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return drawn_as_written


def md_code(value: object, cell: bool = False) -> str:
    """``value`` as one Markdown code span holding exactly its text, whatever it contains: the
    span's fence is a run of backticks longer than any in the text (CommonMark), padded with a
    space where the text starts or ends with a backtick. Paths, commands, recipe and dataset
    names in a report come from files and folders other people name: a backtick in one closed
    a plain `...` span, and what followed was live Markdown and HTML (``<img onerror=...>``,
    a ``javascript:`` link; audit). ``cell``: in a table cell, where a ``|`` ends the cell
    even inside a span unless escaped (GFM), and the escape is taken back in the span."""
    text = printable(str(value))  # (one line: control characters escaped)
    fence = "`" * (max(map(len, re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text[:1] in ("`", " ") or text[-1:] in ("`", " ") else ""
    span = f"{fence}{pad}{text or ' '}{pad}{fence}"  # ('': one space; `` is no span)
    return span.replace("|", "\\|") if cell else span


def md_text(value: object) -> str:
    """``value`` as literal Markdown text (a table cell, a list item): the characters that make
    markup (HTML tags, links and images, code spans, table columns) are backslash-escaped
    (CommonMark allows it before any ASCII punctuation), so a name holding ``<script>``,
    ``[x](javascript:...)`` or a ``|`` reads as written and a table keeps its columns. Emphasis
    marks stay as they are (``vit_b16`` reads as written in the file too)."""
    return re.sub(r"([\\`\[\]<>|])", r"\\\1", printable(str(value)))


#: a hand-written note in a rendered report starts and ends with these lines: a render of the
#: same rows (``dp4tl bench render``) keeps it under its heading (:func:`carry_notes`)
NOTE_OPEN, NOTE_CLOSE = "<!-- note -->", "<!-- /note -->"


def _headings(lines: list[str]) -> tuple[list[int | None], list[bool]]:
    """For each line, the index of the Markdown heading it is under (``None`` before the first)
    and whether it lies in a code fence (its ``#`` and note markers are text, not structure)."""
    under: list[int | None] = []
    fenced: list[bool] = []
    current, fence = None, ""  # (the open fence's marker, "" outside one)
    for i, line in enumerate(lines):
        s = line.strip()
        run = s[:len(s) - len(s.lstrip(s[:1]))] if s[:1] in ("`", "~") else ""
        if fence:  # (closed by a run of its own character, at least as long, alone: CommonMark;
            # a ```` fence holding a ``` line stayed open to the file's end, its sections lost)
            if run and run[0] == fence[0] and len(run) >= len(fence) and s == run:
                fence = ""
            fenced.append(True)
        elif len(run) >= 3:
            fence = run
            fenced.append(True)
        else:
            fenced.append(False)
            if s.startswith("#"):
                current = i
        under.append(current)
    return under, fenced


def carry_notes(old: str, new: str, where: object = "the report") -> str:
    """``new`` with the hand-written notes of ``old`` (blocks from a :data:`NOTE_OPEN` line to a
    :data:`NOTE_CLOSE` line, outside code fences) put back where they were: at the end of the
    section under the same heading, in their order (a note above every heading: above the
    first one; one whose heading ``new`` lacks: at its end); one that section already holds is
    not repeated. A render rebuilt a report whole from its rows and dropped every note written
    into it, to be pasted in again by hand after each one (the published cost table's, the
    embedded benchmark's reading)."""
    lines = old.splitlines()
    under, fenced = _headings(lines)
    notes: list[tuple[str | None, list[str]]] = []
    i = 0
    while i < len(lines):
        if fenced[i] or lines[i].strip() != NOTE_OPEN:
            i += 1
            continue
        end = next((k for k in range(i + 1, len(lines))
                    if not fenced[k] and lines[k].strip() == NOTE_CLOSE), None)
        if end is None:
            raise DP4TLError(f"{where}: the note opened at line {i + 1} ({NOTE_OPEN}) is not "
                             f"closed; add a {NOTE_CLOSE} line after it, then render again")
        h = under[i]
        notes.append((None if h is None else lines[h].strip(), lines[i:end + 1]))
        i = end + 1
    if not notes:
        return new
    out = new.splitlines()
    for heading, block in notes:
        marks, _ = _headings(out)
        starts = [k for k in range(len(out)) if marks[k] == k]  # (the heading lines)
        if heading is None:
            lo, hi = 0, starts[0] if starts else len(out)
        else:
            at = next((k for k in starts if out[k].strip() == heading), None)
            lo = hi = len(out)
            if at is not None:
                lo, hi = at, next((k for k in starts if k > at), len(out))
        if "\n".join(block) in "\n".join(out[lo:hi]):  # (there already: not twice)
            continue
        before, after = out[:hi], out[hi:]
        while before and not before[-1].strip():
            before.pop()
        out = before + (["", *block] if before else block) + (["", *after] if after else [])
    return "\n".join(out) + ("\n" if new.endswith("\n") else "")


def write_section(path: str | Path, title: str, body: str, keep_notes: bool = False) -> None:
    """Replace section ``## title`` (up to the next ``## `` line) of ``path``, or append it;
    ``keep_notes``: with the hand-written notes of the section it replaces (:func:`carry_notes`;
    a render of the same rows, not a new run, whose numbers a note would no longer describe).

    The file is created with a short header if absent; other sections are left untouched.
    The write is atomic (temporary file + rename), into the file a link names
    (:func:`report_target`: the rename replaced the user's link by a regular file). A file
    holding the section twice is refused (:func:`check_sections`). Headings in code fences
    are text, not sections.
    """
    path = report_target(path)
    header = f"## {check_section_title(title).strip()}"  # (lines are compared stripped)
    text = _read_report(path)
    lines = text.splitlines()
    _, fenced = _headings(lines)
    at = _section_starts(lines, fenced, header, path)
    block = [header, "", *body.rstrip("\n").splitlines()]
    if not at:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ["", *block]
    else:
        start = at[0]
        end = next((i for i in range(start + 1, len(lines))
                    if not fenced[i] and lines[i].startswith("## ")), len(lines))
        tail = lines[end:]
        if keep_notes:
            block = carry_notes("\n".join(lines[start:end]), "\n".join(block), path).splitlines()
        lines = lines[:start] + block + ([""] + tail if tail else [])
    atomic_write_text(path, "\n".join(lines) + "\n")


def _read_report(path: Path) -> str:
    """The text of the report ``path`` (:data:`DEFAULT_HEADER` when it does not exist yet)."""
    try:
        return path.read_text(encoding="utf-8") if path.exists() else DEFAULT_HEADER
    except UnicodeDecodeError:
        raise DP4TLError(f"{path} is not UTF-8 text, so no Markdown section can be written "
                         "into it; choose another --report file") from None


def _section_starts(lines: list[str], fenced: list[bool], header: str, path: object) -> list[int]:
    """The lines (outside code fences: ``fenced``, :func:`_headings`) that open section
    ``header``: at most one. A file holding two sections of one title had only the first
    replaced, and the second, stale, stayed below it as if current (audit): refused, naming
    the file and the title."""
    at = [i for i, line in enumerate(lines) if not fenced[i] and line.rstrip() == header]
    if len(at) > 1:
        raise DP4TLError(f"{path} holds section {header!r} {len(at)} times (lines "
                         f"{', '.join(str(i + 1) for i in at)}): only one could be replaced, and "
                         "the others would stay, stale; delete all but one, then rerun")
    return at


def check_sections(report: str | Path, title: str) -> None:
    """Refuse, before any work, a report whose section ``title`` :func:`write_section` could
    not replace (the title twice in the file); a file that does not exist yet passes."""
    path = report_target(report)
    if path.is_file():
        lines = _read_report(path).splitlines()
        _section_starts(lines, _headings(lines)[1], f"## {check_section_title(title).strip()}",
                        path)


def check_one_line(value: str, what: str, noun: str = "a note") -> str:
    """``value`` is one non-empty line: no line break of any kind (``str.splitlines`` splits
    on ``\\x0b``, ``\\x0c``, ``\\x1c``-``\\x1e``, ``\\x85``, ``\\u2028`` ... too, and the report is
    written line by line), so a value put into a report cannot add a heading to it: a
    ``--note`` holding ``\\n## Adversarial pretraining (Tab. 5)`` made a second copy of that
    section, left stale by the next run (audit)."""
    text = str(value)
    if not text.strip() or text.splitlines() != [text]:
        raise DP4TLError(f"{what} {text!r}: {noun} is one non-empty line (no line breaks)")
    return value


def check_section_title(title: str) -> str:
    """A section title is one non-empty line (:func:`check_one_line`): an empty one wrote a
    bare ``## `` that the next run could not find (a second copy), a line break an extra
    heading into the file. It may not start with ``#``: ``--section "## x"`` wrote the heading
    ``## ## x``."""
    check_one_line(title, "--section", "a section title")
    if str(title).strip().startswith("#"):
        raise DP4TLError(f"--section {title!r}: give the title without '#' (the section's "
                         "'## ' is written before it)")
    return title


def link_prefix(out: str | Path, report: str | Path) -> str:
    """How ``report`` (a Markdown file) links into the folder ``out``: relative to the report's
    folder when ``out`` lies below it, else absolute; with a trailing ``/``."""
    out, report = Path(out).resolve(), Path(report).resolve()
    try:
        return str(out.relative_to(report.parent)) + "/"
    except ValueError:
        return str(out) + "/"


def report_target(report: str | Path) -> Path:
    """The file a section of ``report`` is written into: ``report``, or the file it links to
    (a symbolic link, followed to its end). The atomic rename replaced a link by a regular
    file, and the user's link was lost (audit); the write goes through it instead, and the
    target is what :func:`check_report` checks."""
    path = Path(report)
    if not path.is_symlink():
        return path
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError):  # (a loop of links)
        raise DP4TLError(f"--report {path} is a symbolic link that leads to no file (a loop); "
                         "fix the link or choose another file") from None


def check_report(report: str | Path, out: str | Path | None = None,
                 what: str = "--report") -> Path:
    """Refuse a report that a section must not be written into: a file that is not Markdown
    (``.md``), one in a folder holding a command's outputs
    (:func:`~ffcv_dp4tl.outputs.folder_kind`: its report.md, README.md, ...) or, given ``out``,
    in the bench's own ``--out``. A project's own README.md elsewhere is the user's to choose.
    A section rewrites the whole file as Markdown: into a bench's results.json or an embedded
    run's rows.jsonl it destroyed the record every later render reads (audit). A link is
    judged by the file it names (:func:`report_target`), which is the one written. The CLI
    checks it before any work; :func:`publish_section` again, for a Python caller."""
    path = report_target(report)
    name = f"{what} {report}" + (f" (a link to {path})" if path != Path(report) else "")
    tail = "choose a Markdown file outside every command's output folder, such as BENCHMARKS.md"
    if path.suffix.lower() != ".md":
        raise DP4TLError(f"{name} is not a Markdown file (.md) and a section is written "
                         f"into it as Markdown: {tail}")
    found = folder_kind(path.parent)
    if found is not None:
        raise DP4TLError(f"{name} lies in {path.parent}, which holds {KINDS[found].what} "
                         f"(written by `{KINDS[found].command}`): {tail}")
    if out is not None and path.resolve().is_relative_to(Path(out).resolve()):
        raise DP4TLError(f"{name} lies in the bench's own --out {out}, whose files the "
                         f"bench writes: {tail}")
    return path


def publish_section(report: str | Path, title: str, out: str | Path,
                    body: Callable[[str], str], log: Callable[[str], None] = print,
                    keep_notes: bool = False) -> None:
    """Write section ``## title`` of ``report`` from a bench's output folder ``out``: ``body``
    gets the link prefix (:func:`link_prefix`) its links and images need (``keep_notes``:
    :func:`write_section`); ``report`` is checked first (:func:`check_report`)."""
    check_report(report, out)
    write_section(report, title, body(link_prefix(out, report)), keep_notes)
    log(f"[bench] wrote section '{title}' of {report}")


def machine_info() -> dict[str, Any]:
    """CPU model, usable cores, the CUDA device's name (``gpu``; None without one), Python /
    torch versions and platform: a report's header."""
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
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": cores, "gpu": gpu, "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(terse=True)}


def ran_on(device: str, machine: dict[str, Any]) -> str:
    """Where a bench's training ran, for its header: "GPU (NVIDIA H200)" or "CPU", from its
    ``--device`` (``auto``: CUDA when the machine had it) and :func:`machine_info`'s record.
    Every report header said "CPU run" (and "a shared 2-core machine"), whatever the device.
    Results recorded before ``gpu`` was (all ran on CPU) read as CPU."""
    gpu = machine.get("gpu")
    if str(device).startswith("cuda") or (device == "auto" and gpu):
        return f"GPU ({gpu})" if gpu else "GPU"
    return "CPU"


def command_line(prog: str, opts: Iterable[tuple[str, Any]]) -> str:
    """``prog --name value ...``: the exact command of a bench, every option spelled out (defaults
    included, empty ones left out) so the line in its report reproduces the run."""
    return prog + " " + " ".join(f"--{name} {shlex.quote(str(v))}" for name, v in opts
                                 if v not in ("", None))
