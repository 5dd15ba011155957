#!/usr/bin/env python
"""Publish a GPU check: ``summary.md`` from ``scripts/gpu_check.sh`` → BENCHMARKS.md.

    python benchmarks/publish_gpu.py gpu-out/summary.md [--report BENCHMARKS.md]

The summary already names the device, versions (its Environment table), command and date; this
puts it under one ``## GPU check (<device>)`` section (headings demoted one level), replacing the
previous run's section of the same device and leaving every other section untouched.
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


def section(summary: str) -> tuple[str, str]:
    """(section title, body) from the text of a summary.md."""
    # a stage's Markdown made by write_section into a new file starts with the report header
    summary = summary.replace(DEFAULT_HEADER, "")
    lines = summary.splitlines()
    if not lines or not lines[0].startswith("# GPU check"):
        raise SystemExit("publish_gpu: not a gpu_check summary (first line must be '# GPU check')")
    host = next((ln for ln in lines if ln.startswith("Host: ")), "")
    m = re.match(r"Host: ([^,;]+)", host)
    device = m.group(1).strip() if m else "unknown device"
    body = [("#" + ln) if ln.startswith("#") else ln for ln in lines[1:]]
    return f"GPU check ({device})", "\n".join(body).strip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("summary", type=Path)
    p.add_argument("--report", type=Path, default=REPO / "BENCHMARKS.md")
    args = p.parse_args(argv)
    if not args.summary.is_file():
        raise SystemExit(f"publish_gpu: {args.summary} does not exist; run scripts/gpu_check.sh first")
    title, body = section(args.summary.read_text(encoding="utf-8"))
    write_section(args.report, title, body)
    print(f"publish_gpu: wrote '## {title}' to {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
