"""Which bench wrote an output folder, so that no bench writes over another one's record.

Every bench writes its own files into its ``--out`` folder (``results.json`` + ``report.md``
and plots; ``rows.jsonl`` + ``README.md`` + ``summary.json`` for the embedded benchmark). A
folder given to the wrong bench would end up half replaced: a cost table's ``results.json``
beside a surrogates plot, a pooled verdict over a run's own ``README.md`` beside its
``rows.jsonl``. Each bench therefore claims its folder (:func:`claim_out_dir`) before any work:
an empty or new folder, or one of the same bench (a rerun, which resumes or re-renders), is
taken; a folder of another bench is refused with one line, and so is a folder of no bench that
holds a file a bench writes (a project's own ``README.md`` under ``--out .`` was replaced).

``results.json`` records its bench in its ``bench`` field; folders written before that field
existed are told apart by the files only one bench writes.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import DP4TLError

#: the benches with an output folder (``dp4tl bench NAME``)
BENCH_KINDS = ("cost-table", "surrogates", "adversarial", "embedded", "embedded-pool")
#: files only one bench writes (for folders whose results.json predates its ``bench`` field)
_SIGNATURES = (("rows.jsonl", "embedded"), ("summary.json", "embedded-pool"),
               ("surrogates.png", "surrogates"), ("cost.png", "cost-table"),
               ("accuracy.png", "cost-table"))
#: the text files each bench writes (plots aside): one of them in a folder of no bench is the
#: user's own, which that bench would replace
_WRITES = {"cost-table": ("results.json", "report.md"), "surrogates": ("results.json", "report.md"),
           "adversarial": ("results.json", "report.md"),
           "embedded": ("rows.jsonl", "summary.json", "README.md"),
           "embedded-pool": ("summary.json", "README.md")}


def folder_kind(folder: str | Path) -> str | None:
    """The bench whose outputs ``folder`` holds, or ``None`` (absent, empty, or unknown)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    try:
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none or torn: the files say
        results = None
    if not isinstance(results, dict):
        results = {}
    if results.get("bench") in BENCH_KINDS:
        return results["bench"]
    for name, kind in _SIGNATURES:
        if (folder / name).exists():
            return kind
    # an adversarial results.json from before the field: its ADV overrides
    return "adversarial" if "adv" in results else None


def claim_out_dir(folder: str | Path, kind: str, what: str = "--out",
                  inputs: tuple[str, ...] = ()) -> None:
    """Refuse ``folder`` as the output of bench ``kind`` when it holds another bench's outputs
    (checked before any work; :func:`folder_kind`) or, being no bench's, a file ``kind`` writes.
    ``inputs``: files the caller has read and checked as this bench's own (a re-render's
    ``results.json``)."""
    if kind not in BENCH_KINDS:
        raise ValueError(f"unknown bench {kind!r}")
    found = folder_kind(folder)
    if found is not None and found != kind:
        raise DP4TLError(f"{what} {folder} holds the outputs of `dp4tl bench {found}`; this "
                         f"`bench {kind}` would overwrite part of them: pass another {what}")
    if found is None and Path(folder).is_dir():
        theirs = [n for n in _WRITES[kind] if n not in inputs and (Path(folder) / n).exists()]
        if theirs:
            raise DP4TLError(f"{what} {folder} holds {', '.join(theirs)}, not written by a dp4tl "
                             f"bench; `bench {kind}` would replace it: pass another {what} (an "
                             "empty or new folder)")
