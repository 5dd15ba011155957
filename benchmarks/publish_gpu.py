#!/usr/bin/env python
"""Publish a GPU check: ``summary.md`` from ``scripts/gpu_check.sh`` → BENCHMARKS.md.

    python benchmarks/publish_gpu.py gpu-out/summary.md [--report BENCHMARKS.md]
    python benchmarks/publish_gpu.py call1/summary.md call2/summary.md --notes docs/gpu-notes.md

The summary already names the device, versions (its Environment table), command and date; this
puts it under one ``## GPU check (<device>, <date>)`` section (headings demoted one level),
replacing a section of the same device and date (a re-publish) and leaving every other section
untouched: a later run on the same device gets its own section, beside the earlier one. A task's
device time may go to more than one call (a follow-up ``gpu_check.sh --only ...`` for what the
first call's limits cut): several summaries of one device become one section, a ``### Call i of
n`` part each, in the order given. ``--notes`` puts a Markdown file (what the numbers mean, read
by a person) at the top of the section, so a re-publish keeps it.

It then **settles the "pending" bullets** of earlier GPU-check sections (another device's): a
bullet ending in ``Pending a GPU re-measure.`` (Lloyd) or ``Pending: the next device run.`` (the
GPU-decode fix) gets the new run's numbers in place of that sentence, with the run's device and
date, so the old section says what became of its open points.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._report import write_section  # noqa: E402
from ffcv_dp4tl.reporting import DEFAULT_HEADER  # noqa: E402


def section(summary: str, demote: int = 1) -> tuple[str, str]:
    """(section title, body) from the text of a summary.md; headings demoted ``demote`` levels."""
    # a stage's Markdown made by write_section into a new file starts with the report header
    summary = summary.replace(DEFAULT_HEADER, "")
    lines = summary.splitlines()
    if not lines or not lines[0].startswith("# GPU check"):
        raise SystemExit("publish_gpu: not a gpu_check summary (first line must be '# GPU check')")
    host = next((ln for ln in lines if ln.startswith("Host: ")), "")
    m = re.match(r"Host: ([^,;]+)", host)
    device = m.group(1).strip() if m else "unknown device"
    when = re.search(r"date (\d{4}-\d{2}-\d{2}) ", summary)
    if when:
        device += f", {when.group(1)}"
    body = [("#" * demote + ln) if ln.startswith("#") else ln for ln in lines[1:]]
    # a run report's figures stay on the GPU host (only summary.md and logs.txt come back)
    body = [re.sub(r"!\[([^\]]*)\]\((?!https?://)[^)]*\)", r"(figure on the GPU host, not carried back: \1)", ln)
            for ln in body]
    return f"GPU check ({device})", "\n".join(body).strip() + "\n"


def sections(summaries: list[tuple[str, str]], notes: str | None = None) -> tuple[str, str]:
    """One section from the summaries ``(name, text)`` of one device's calls, in call order."""
    if len(summaries) == 1:
        title, body = section(summaries[0][1])
    else:
        parts, titles = [], []
        for i, (name, text) in enumerate(summaries, 1):
            t, b = section(text, demote=2)
            titles.append(t)
            parts.append(f"### Call {i} of {len(summaries)}\n\n{b}")
        devices = {re.sub(r", \d{4}-\d{2}-\d{2}\)$", ")", t) for t in titles}  # calls may cross midnight
        if len(devices) > 1:
            raise SystemExit("publish_gpu: the summaries come from different devices "
                             f"({', '.join(sorted(devices))}); publish each device on its own")
        title, body = titles[0], "\n".join(parts)
    if notes:
        body = notes.strip() + "\n\n" + body
    return title, body


#: The sentences that mark an open point of an earlier run, and what settles each.
PENDING = {"lloyd": "Pending a GPU re-measure.", "decode": "Pending: the next device run."}


def outcomes(summary: str) -> dict[str, str]:
    """What the run showed for each pending point, as one sentence (or 'not measured ...')."""
    m = re.search(r"Lloyd after a warm-up: (\d+) iterations.*?, (\d+) empty clusters re-seeded \| [0-9.]+ "
                  r"\(\*\*([0-9.]+)/iter\*\*\)", summary)
    lloyd = (f"{float(m.group(3)):.4f} s per Lloyd iteration after a warm-up ({m.group(1)} iterations, "
             f"{m.group(2)} empty clusters re-seeded)") if m else "Lloyd not measured (fm stage missing or failed)"
    race = re.search(r"^Verdict: (.*)$", summary, re.M)
    bad = re.search(r"^- bad input batches, all runs: (\d+)", summary, re.M)
    gap = re.search(r"^- ffcv: (val top-1 GPU decode .*)$", summary, re.M)
    compared = "GPU vs CPU decode top-1 not compared"
    if gap:
        compared = gap.group(1)
        if "of one model" not in compared:  # a run before 2026-12-04: separately trained models
            compared += (" (two separately trained runs, not one model through both decoders: at a few "
                         "epochs their gap is run-to-run noise, not the decoder's)")
    parts = [f"race probe: {race.group(1).rstrip('.')}" if race else "race probe not run",
             f"{bad.group(1)} training batches with NaN/Inf inputs" if bad else "bad-input count not reported",
             compared]
    return {"lloyd": lloyd, "decode": "; ".join(parts)}


def settle_pending(report: Path, title: str, summary: str, stamp: str) -> int:
    """Replace the pending sentences of the other ``## GPU check (...)`` sections; returns how many."""
    text = report.read_text(encoding="utf-8")
    got = outcomes(summary)
    out, section, count = [], "", 0
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        if section.startswith("GPU check (") and section != title:
            for key, sentence in PENDING.items():
                if sentence in line:
                    line = line.replace(sentence, f"Settled by the {title} run of {stamp}: {got[key]}.")
                    count += 1
        out.append(line)
    if count:
        from ffcv_dp4tl.fsutil import atomic_write_text

        atomic_write_text(report, "\n".join(out) + "\n")
    return count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("summary", type=Path, nargs="+", help="summary.md of each call, in call order")
    p.add_argument("--report", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument("--notes", type=Path, default=None, help="Markdown put at the top of the section")
    p.add_argument("--allow-smoke", action="store_true",
                   help="publish a CPU rehearsal's summary too (tests; never BENCHMARKS.md)")
    args = p.parse_args(argv)
    texts = []
    for path in [*args.summary, *([args.notes] if args.notes else [])]:
        what = "--notes file" if path is args.notes else "summary"
        if path.is_dir():
            raise SystemExit(f"publish_gpu: {what} {path} is a folder; give the file (summary.md, notes .md)")
        if not path.is_file():
            hint = "write it first" if path is args.notes else "run scripts/gpu_check.sh first"
            raise SystemExit(f"publish_gpu: {what} {path} does not exist; {hint}")
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise SystemExit(f"publish_gpu: {path} is not UTF-8 text") from None
    notes = texts.pop() if args.notes else None
    for path, text in zip(args.summary, texts):  # a rehearsal is no device's measurement
        if not args.allow_smoke and re.search(r"^Command: `GPU_CHECK_SMOKE=1 ", text, re.M):
            raise SystemExit(f"publish_gpu: {path} is a CPU rehearsal's summary "
                             "(GPU_CHECK_SMOKE=1), not a device run's; publish the summary.md the "
                             "device call returned")
    title, body = sections(list(zip(map(str, args.summary), texts)), notes)
    write_section(args.report, title, body)
    # the latest call first: a point measured again later is settled by its latest measurement
    summary = "\n".join(reversed(texts))
    m = re.search(r"date (\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC)", texts[-1])
    n = settle_pending(args.report, title, summary, m.group(1) if m else "unknown date")
    print(f"publish_gpu: wrote '## {title}' to {args.report}; settled {n} pending point(s) of earlier runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
