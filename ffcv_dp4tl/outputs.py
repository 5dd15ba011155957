"""Whose output folder this is, so that no command writes into another one's.

Every command that writes a folder of its own (``--out``) claims it before any work
(:func:`claim_out_dir`): a new or empty folder, or one of the same kind (a rerun, which
resumes, reuses or re-renders), is taken; a folder holding another command's outputs is
refused with one line naming them and the command that wrote them. Mixed folders were found
in audits: a finetuning into a training run replaced its ``metrics.jsonl``, a cost table over
a surrogates report replaced its ``results.json``, and ``train --out`` a scores folder, or
``score --out`` a training run, put a checkpoint and scores side by side where no later
command could tell which is which.

A folder's kind is read from the files only that kind writes (:data:`KINDS`, in order: a
finetuning run is told by its state before a training run by its checkpoint). The benches'
``results.json`` records its bench in a ``bench`` field; bench folders from before that field
are told apart by their plots. The finer rules inside one kind stay with their command:
another method's scores (``pipeline.score``), another mask (``data.masks.mask_conflict``),
another VTAB draw or settings (``evaluation.vtab``), a bench's settings.

A leaf module: every layer may import it, and it imports none of them.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .contracts.manifest import FORMAT, MANIFEST_NAME
from .errors import DP4TLError
from .fsutil import BAD_JSON


@dataclass(frozen=True)
class OutputKind:
    """What one command leaves in its ``--out``: how a message names it (``what``), the
    command that writes it, the files that tell the kind (``signatures``: any one of them),
    the files it writes directly (``writes``: those another command would replace), the kinds
    it may share a folder with, and ``guards``: its files that in a folder of no kind are the
    user's own (``--out .`` in a project replaced its README.md; `dp4tl train --out` a folder
    holding another tool's metrics.jsonl replaced it; a signature there makes the folder that
    kind's). ``runs_root``: a ``pipeline --runs-root`` may be this kind's folder, a report's
    (a bench's, an evaluation's over the models given), where some users keep their runs; any
    other kind's folder is one command's own, and the pipeline's stage folders went inside it
    (a ``dp4tl train`` run's, audit). A kind is refused as a runs root unless it says so."""

    what: str
    command: str
    signatures: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    shares: tuple[str, ...] = ()
    guards: tuple[str, ...] = ()
    #: the lock the command leaves in its folder: beside a guarded file, the command's own
    #: (a run killed before its first checkpoint holds only it and metrics.jsonl); alone, it
    #: makes no folder that kind's (a run refused before it began leaves it in the user's
    #: folder, which other commands then refused; review)
    lock: str = ""
    runs_root: bool = False


_BENCH_REPORT = ("results.json", "report.md")
#: the lock a training run holds in its folder (and leaves there: ``OutputKind.lock``)
TRAIN_LOCK = ".train.lock"
#: Every kind of output folder, in the order a folder's kind is told.
KINDS: dict[str, OutputKind] = {
    "dataset": OutputKind("a built dataset", "dp4tl build", (MANIFEST_NAME,), (MANIFEST_NAME,)),
    "finetune": OutputKind("a finetuning run", "dp4tl finetune",
                           ("finetune_state.pt", "result.json"),
                           ("finetune_state.pt", "result.json", "metrics.jsonl")),
    "train": OutputKind("a training run", "dp4tl train", ("checkpoint.pt",),
                        ("checkpoint.pt", "metrics.jsonl", "timings.json", "best.pt", "best.json"),
                        guards=("metrics.jsonl", "timings.json", "best.pt", "best.json"),
                        lock=TRAIN_LOCK),
    "scores": OutputKind("scores", "dp4tl score", ("scores.json",),
                         ("scores.json", "scores.npy", "tiebreak.npy", "train_units.npy",
                          "val_units.npy")),
    "vtab": OutputKind("a VTAB protocol", "dp4tl evaluate vtab",
                       ("vtab_settings.json", "vtab.json"), ("vtab_settings.json", "vtab.json")),
    "vtab-splits": OutputKind("VTAB masks", "dp4tl evaluate vtab-splits"),  # (names: sizes)
    "masks": OutputKind("masks", "dp4tl prune", ("train.npy",),
                        ("train.npy", "train.json", "val.npy", "val.json")),
    "corruptions": OutputKind("a corruption evaluation", "dp4tl evaluate corruptions",
                              ("corruptions.json",), ("corruptions.json", "corruptions.md"),
                              shares=("flatness",), runs_root=True),
    "flatness": OutputKind("a flatness evaluation", "dp4tl evaluate flatness",
                           ("flatness.json",), ("flatness.json", "flatness.md"),
                           shares=("corruptions",), runs_root=True),
    "cost-table": OutputKind("a cost table", "dp4tl bench cost-table",
                             ("cost.png", "accuracy.png"), _BENCH_REPORT, guards=_BENCH_REPORT,
                             runs_root=True),
    "surrogates": OutputKind("a surrogates report", "dp4tl bench surrogates", ("surrogates.png",),
                             _BENCH_REPORT, guards=_BENCH_REPORT, runs_root=True),
    "adversarial": OutputKind("an adversarial report", "dp4tl bench adversarial", (),
                              _BENCH_REPORT, guards=_BENCH_REPORT, runs_root=True),
    "embedded": OutputKind("an embedded-benchmark run", "dp4tl bench embedded", ("rows.jsonl",),
                           ("rows.jsonl", "summary.json", "README.md"),
                           guards=("README.md",), runs_root=True),
    "embedded-pool": OutputKind("a pooled embedded benchmark", "dp4tl bench embedded-pool",
                                ("summary.json",), ("summary.json", "README.md"),
                                guards=("README.md",), runs_root=True),
}
#: the benches with an output folder (``dp4tl bench NAME``), their kinds here
BENCH_KINDS = ("cost-table", "surrogates", "adversarial", "embedded", "embedded-pool")
#: ``evaluate vtab-splits`` names its masks by their sizes: train800.npy, val200.npy, …
_VTAB_MASK = re.compile(r"train\d+val\d+\.npy")


def bench_of(results: object) -> str | None:
    """The bench (a key of :data:`KINDS`) a read ``results.json`` names (``bench`` field; before
    it: an ``adv`` entry is the adversarial bench's, ``archs`` with per-arch ``runs`` the
    surrogates bench's), or ``None``: one rule for telling a folder's kind and for ``bench
    render``, which read a surrogates report as a cost table and blamed its fine file for
    lacking rows (audit; docs/surrogates/results.json predates the field)."""
    if not isinstance(results, dict):
        return None
    if results.get("bench") in BENCH_KINDS:
        return results["bench"]
    if "adv" in results:
        return "adversarial"
    return "surrogates" if "archs" in results and "runs" in results else None


def _read_results(folder: Path) -> tuple[object, bool]:
    """``folder/results.json`` read (``None`` when absent or torn) and whether it is there."""
    path = folder / "results.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")), True
    except (OSError, *BAD_JSON):  # none or torn: the files say
        return None, path.exists()


def _bench_field(folder: Path) -> str | None:
    """The bench ``folder/results.json`` names (:func:`bench_of`), or ``None``."""
    return bench_of(_read_results(folder)[0])


def folder_kind(folder: str | Path) -> str | None:
    """The kind (a key of :data:`KINDS`) of the outputs ``folder`` holds, or ``None`` (absent,
    empty, or no command's)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    bench = _bench_field(folder)
    if bench is not None:
        return bench
    for kind, spec in KINDS.items():
        if kind == "dataset":  # (another program's manifest.json is no dataset)
            if is_dataset(folder):
                return kind
        elif any((folder / name).exists() for name in spec.signatures):
            return kind
    if any(_VTAB_MASK.fullmatch(p.name) for p in folder.glob("train*val*.npy")):
        return "vtab-splits"
    return None


def _beside(folder: Path, kind: str) -> Path:
    """A folder for ``kind`` beside ``folder`` (``runs/a`` → ``runs/a-finetune``; ``.`` → the
    current folder's name, never "-finetune", which a shell reads as an option)."""
    if not folder.name or folder.name in (".", ".."):
        folder = folder.resolve()
    return folder.parent / f"{folder.name}-{kind}"


def is_dataset(folder: str | Path) -> bool:
    """``folder`` holds a dp4tl build's manifest (its ``format`` tag): a ``manifest.json`` of
    another program (a web app's, a browser extension's) is no dataset, and a project holding
    one blocked every command in it (review)."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, *BAD_JSON):  # (unreadable: not one a command could use)
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def dataset_around(folder: str | Path, strict: bool = True) -> Path | None:
    """The built dataset ``folder`` lies inside (``strict``: the dataset's own folder is its
    kind; else ``folder`` may be the dataset, for a root whose sub-folders are outputs), or
    ``None``. A run in ``DATASET/wds`` trained and was then deleted, without a word, by a
    rebuild with ``--overwrite`` (audit)."""
    folder = Path(folder).resolve()
    for parent in folder.parents if strict else (folder, *folder.parents):
        if is_dataset(parent):
            return parent
    return None


def claim_out_dir(folder: str | Path, kind: str, what: str = "--out",
                  inputs: tuple[str, ...] = ()) -> None:
    """Refuse ``folder`` as the output of ``kind`` when it lies inside a built dataset
    (:func:`dataset_around`), when it holds another kind's outputs (:func:`folder_kind`; kinds
    that share a folder aside) or, for a bench, when being no kind's it holds a file that bench
    writes. ``inputs``: files the caller has read and checked as its own (a re-render's
    ``results.json``). Call it before any work."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    folder = Path(folder)
    spec = KINDS[kind]
    inside = dataset_around(folder)
    if inside is not None:
        raise DP4TLError(f"{what} {folder} lies inside the built dataset {inside}: keep outputs "
                         f"outside datasets (a rebuild with --overwrite replaces a dataset's own "
                         f"folders): pass another {what}")
    found = folder_kind(folder)
    if found is not None and found != kind and found not in spec.shares:
        theirs = KINDS[found]
        clash = [n for n in spec.writes if (folder / n).exists()]
        does = (f"would replace its {', '.join(clash)}" if clash
                else "would mix its files with them")
        raise DP4TLError(f"{what} {folder} holds {theirs.what} (written by `{theirs.command}`); "
                         f"`{spec.command}` {does}: pass another {what} (e.g. "
                         f"{_beside(folder, kind)})")
    if found is None and kind in BENCH_KINDS:
        _refuse_a_root(folder, spec, what, kind)
    if found is None and folder.is_dir() and not (spec.lock and (folder / spec.lock).exists()):
        mine = [n for n in spec.guards if n not in inputs and (folder / n).exists()]
        if mine and set(mine) <= set(_BENCH_REPORT):
            _refuse_a_bench_report(folder, spec, what, mine)
        if mine:
            raise DP4TLError(f"{what} {folder} holds {', '.join(mine)}, not written by "
                             f"`{spec.command}`, which would replace it: pass another {what} (an "
                             "empty or new folder)")


def _refuse_a_bench_report(folder: Path, spec: OutputKind, what: str, mine: list[str]) -> None:
    """A bench report's files (``mine``) in a folder of no kind because its ``results.json``
    is missing or is no JSON object (torn): nothing tells which command wrote them (an
    adversarial report has no plot to tell it by), so the message says what is there and what
    to do either way, blaming no command: a rerun of ``bench adversarial`` into its own folder,
    its results.json deleted, was told its files were not written by it (audit). Still refused:
    a user's own report.md is guarded alike. A whole results.json naming no bench is another
    program's: the caller's message stands."""
    results, there = _read_results(folder)
    if there and isinstance(results, dict):
        return
    files = ", ".join(mine)
    state = ("a results.json that is no JSON object (torn?)" if there
             else f"{files} and no results.json")
    raise DP4TLError(f"{what} {folder} holds {state}: if a bench wrote it, restore its "
                     f"results.json, or delete {files} to rerun into this folder; if not, "
                     f"`{spec.command}` would replace {files}: pass another {what} (an empty or "
                     "new folder)")


def _refuse_a_root(folder: Path, spec: OutputKind, what: str, kind: str) -> None:
    """A bench's ``--out`` of no kind yet is no data root (built datasets one or two folders
    down: ``data/<source>/``, a synth build's ``source/``): the report, results and plots went
    in among the builds, where no command owns them (audit: ``--out data/synth-tiny``). A runs
    root is not refused: a bench's ``--out X --runs-root X`` keeps its runs beside its report
    (``OutputKind.runs_root``), and a first run of it killed before its results were written
    holds stage folders and nothing that tells it is the bench's (review)."""
    if not folder.is_dir():
        return
    built = next((m.parent for pattern in (f"*/{MANIFEST_NAME}", f"*/*/{MANIFEST_NAME}")
                  for m in sorted(folder.glob(pattern)) if is_dataset(m.parent)), None)
    if built is not None:
        raise DP4TLError(f"{what} {folder} holds the built dataset {built}: it is a --data-root "
                         f"or a build, not a report folder; pass another {what} for "
                         f"`{spec.command}` (e.g. {_beside(folder, kind)})")
