"""Do LM and FM beat RANDOM? A paired test over seeds x targets (``dp4tl bench embedded``).

The run is a loop over :func:`~ffcv_dp4tl.pipeline.run.run_pipeline`, seeds outermost (so an interrupted run still
holds whole seeds, and a rerun resumes: every stage is cached and ``rows.jsonl`` is appended row
by row). For every seed and target it runs the unpruned reference, RANDOM and each method at
each ratio, with LP and FF, and records the target test top-1 and the selection's ground truth
(:mod:`ffcv_dp4tl.pipeline.truth`).

**Verdict.** A method and RANDOM at the same ratio, seed and target form a pair (same
pretraining seed, same target split, same finetuning recipe). Two tests of the mean paired
difference, each a two-sided 95 % Student-t interval: pooled over all seeds x targets, and by
seed (one difference per seed: the mean over its targets). **better** when both intervals lie
above 0 (and the seed-level p stays below 0.05 after Holm's adjustment over the table),
**worse** below, else **no difference detected**, with the test that saw no difference named
where the other saw one. Pairs of one seed share RANDOM's pretraining across targets (RANDOM
does not read the target), so they are not fully independent; the per-target rows (pairs =
seeds) show whether one target carries the result.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shlex
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..contracts import check_items, check_pruned_ratios
from ..contracts.fields import typed
from ..errors import DP4TLError, count
from ..figures import save, subplots
from ..fsutil import BAD_JSON, atomic_write_json, atomic_write_text
from ..locks import directory_lock
from ..pipeline.config import PipelineConfig
from ..pipeline.report import mean_std
from ..pipeline.resolve import seed_overrides
from ..pipeline.result import PipelineResult
from ..pipeline.run import preflight, run_pipeline
from ..pipeline.truth import CHANCE_NOTE, TRUTH_COLUMNS, check_truth
from ..reporting import carry_notes, literal_text, md_code
from .stats import ALPHA, after_holm, direction, format_interval, format_p, holm, paired_test
from ..outputs import claim_out_dir

REFERENCE = "0 %"
#: held while a run appends to its folder's rows.jsonl
EMBEDDED_LOCK = ".embedded.lock"
MODES = ("lp", "ff")


def verdict(test: dict[str, Any], by_seed: dict[str, Any] | None = None,
            p_adjusted: float | None = None) -> str:
    """**better** / **worse** when the pooled test rejects a zero mean (:func:`~.stats.direction`)
    and so does the seed-level one (``by_seed``: one difference per seed, the mean over its
    targets), and ``p_adjusted`` (the deciding test's p after Holm's adjustment over the table,
    when given) stays below 0.05.

    Neither test is the conservative one (the docstring said the seed-level one was; stats
    audit). The pooled test treats the pairs of one seed as independent, though they share
    RANDOM's pretraining, which can make it too sure; but it counts the targets' spread as
    noise, so targets that differ (+10, 0, −5 points) widen it, while the seed-level test, of
    each seed's mean over its targets, ignores that spread and can be far surer (pooled p 0.11,
    by seed 4.5e-7). Requiring both keeps each one's error rate (a verdict is wrong only if
    both are) at some loss of power. Where they disagree the words say which test saw what:
    ``better over pairs, not shown over seeds``, ``no difference detected (pooled p 0.109; by
    seed: better)`` (it printed "no difference detected" beside a p Holm of 4.5e-7, the
    seed-level test's); a pooled direction with too few seeds (one) to test at the seed
    level is said so: the bold words need both tests."""
    if test.get("lo") is None and test.get("p") is None:
        return "too few pairs"
    word = direction(test)
    if not word:
        alone = direction(by_seed) if by_seed is not None else ""
        if alone:  # (the seed-level test alone saw one: the p Holm beside it is its)
            return (f"no difference detected (pooled p {format_p(test.get('p'))}; by seed: "
                    f"{after_holm(alone, p_adjusted)})")
        return "no difference detected"
    if by_seed is not None:  # (pairs without a seed structure: the pooled test is the test)
        if by_seed.get("lo") is None and by_seed.get("p") is None:
            return f"{word} over pairs, too few seeds to test"
        if direction(by_seed) != word:
            return f"{word} over pairs, not shown over seeds"
    qualified = after_holm(word, p_adjusted)
    return qualified if qualified != word else f"**{word}**"


def deciding(test: dict[str, Any]) -> dict[str, Any]:
    """The test whose p a row's Holm adjustment takes: the seed-level one where it has a
    p-value (its pairs, each seed's mean, are independent), else the pooled one. The verdict
    needs the pooled test too (:func:`verdict`)."""
    q = test.get("by_seed")
    return q if q is not None and q.get("p") is not None else test["pooled"]


def _row(res: PipelineResult, seed: int, target: str, method: str, ratio: float) -> dict[str, Any]:
    run_seed = res.seeds[0] if res.seeds else seed
    pr, pt = res.find("prune"), res.pretrain(run_seed)
    row: dict[str, Any] = {"seed": seed, "target": target, "method": method, "ratio": ratio,
                           "kept_sample_fraction": pr.values.get("kept_sample_fraction")
                           if pr is not None else None,
                           "pretrain_s": float(pt.seconds) if pt is not None else 0.0}
    for mode in MODES:
        ft = res.finetune(mode, run_seed)
        v = ft.values if ft is not None else None
        row[mode] = None if v is None else 100.0 * float(v["test_top1"])
        row[f"{mode}_best"] = None if v is None else 100.0 * float(v.get("best_test_top1",
                                                                         v["test_top1"]))
    row["truth"] = res.ground_truth
    row["report"] = res.report or None
    if _revision(method):  # the rule the method scored by (absent: 0)
        row["revision"] = _revision(method)
    return row


def _revision(method: str) -> int:
    """The registered scorer's revision (0 for the unpruned reference and unknown names)."""
    from ..scoring.registry import get_scorer, list_scorers

    return get_scorer(method).revision if method in list_scorers() else 0


def _older_rule(rows: list[dict[str, Any]], path: Path, hint: str = "delete those lines (the "
                "other rows stay valid; the deleted runs rerun), or pass another --out"
                ) -> DP4TLError | None:
    """Rows of a method scored by an older rule of it (its revision since changed, e.g. FM's
    tie-break): pairing them with new rows would mix two methods under one name."""
    old = [r for r in rows if r.get("revision", 0) != _revision(r["method"])]
    if not old:
        return None
    methods = sorted({r["method"] for r in old})
    return DP4TLError(f"{path}: {len(old)} of its {len(rows)} rows ({', '.join(methods)}) were "
                      f"scored by another rule of the method (revision "
                      f"{old[0].get('revision', 0)}, this code: {_revision(old[0]['method'])}); "
                      f"{hint}")


#: why two runs' settings keys differ (the parts of :func:`settings_key`)
_SETTINGS = ("data, recipes, K, budget, format, device, overrides or finetuning changed since, or "
             "the rows predate 2026-12-04, when a seed began to vary the data order too")


def settings_key(base: PipelineConfig, finetune: Sequence[str]) -> str:
    """What every row of one benchmark shares: the data, the recipes' contents (fingerprints),
    FM's K, the pruning budget (``--budget``, keyed only when not units), the format, the
    device (CUDA), the overrides and the finetuning modes. A resumed run only reuses rows of
    the same key: rows of an older surrogate recipe would otherwise pair silently with new ones.
    The recipes are the ones the pipeline will run: ``base.recipes``, else the data's scale by
    the pipeline's own rule, with any recipe named per role."""
    from ..pipeline.recipes import recipe_set, scale_of_source
    from ..pipeline.run import device_key
    from ..training.recipe import load_recipe, result_overrides

    names = recipe_set(base.protocol, base.recipes or scale_of_source(base.source))
    names.update({role: n for role, n in (("surrogate", base.surrogate_recipe),
                                          ("pretrain", base.recipe), ("lp", base.lp_recipe),
                                          ("ff", base.ff_recipe)) if n})
    key = {"data": base.source, "k": base.k, "format": base.fmt, "finetune": sorted(finetune),
           "recipes": {role: load_recipe(n).fingerprint() for role, n in sorted(names.items())},
           "overrides": result_overrides(base.overrides),
           "finetune_overrides": result_overrides(base.finetune_overrides)}
    # a seed varies the data order too since 2026-12-04 (seed_overrides): rows of seeds that
    # varied the initialisation only are other trials, never paired with these
    key["seeds_vary"] = "init+data"
    if base.budget != "units":  # only when set: the keys of published (units) rows stay valid
        key["budget"] = base.budget
    if base.surrogate_overrides:  # only when set: the keys of published rows stay valid
        key["surrogate_overrides"] = result_overrides(base.surrogate_overrides)
    key.update(device_key(base.device))  # CUDA rows never pair with CPU rows (CPU: unchanged)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def run_separation(base: PipelineConfig, out: str | Path, *, targets: Sequence[str],
                   seeds: Iterable[int], methods: Sequence[str] = ("lm", "fm"),
                   ratios: Sequence[float] = (0.6, 0.8), finetune: Sequence[str] = MODES,
                   reference_seeds: Iterable[int] | None = None,
                   log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run (or resume) every (seed, target, method, ratio); returns the rows of this design
    (``rows.jsonl`` may hold more, of earlier runs into the folder: they are kept, not reported).
    The unpruned reference (not part of any pair) runs for ``reference_seeds`` only (default:
    every seed): it answers "is the target off the ceiling?" and costs a full pretraining."""
    out = Path(out)
    seeds = [int(s) for s in seeds]
    for what, items in (("--seeds", seeds), ("--targets", targets), ("--methods", methods),
                        ("--ratios", ratios), ("--finetune", finetune)):
        check_items(what, items)
    check_pruned_ratios(ratios, "--ratios", "RANDOM and each method are paired at each")
    if "random" in methods:  # it is the baseline: paired with itself, its difference is 0
        raise DP4TLError("--methods: random is the baseline every method is paired with; list "
                         "only the methods to compare with it (e.g. lm,fm)")
    if reference_seeds is not None:
        stray = [int(s) for s in reference_seeds if int(s) not in seeds]
        if stray:  # it never ran: the reference runs inside the loop over --seeds
            raise DP4TLError(f"--reference-seeds: {stray[0]} is not among --seeds "
                             f"({','.join(map(str, seeds))}); reference seeds are a subset of "
                             "them ('' = every seed)")
    claim_out_dir(out, "embedded")
    plan = [(REFERENCE, 0.0)] + [(m, r) for r in ratios for m in ("random", *methods)]
    path = out / "rows.jsonl"
    # (read only: another run may be appending, and holds the lock; the read under the lock
    # below repairs a torn last line. Repaired here, a row being appended was cut; audit)
    rows = read_rows(path, repair=None)
    key = settings_key(base, finetune)
    stale = sum(r.get("settings_key") != key for r in rows)
    if stale:
        raise DP4TLError(f"{path}: {stale} of its {len(rows)} rows ran with other settings "
                         f"({_SETTINGS}); move the file away to start over, or pass another --out")
    older = _older_rule(rows, path)
    if older is not None:
        raise older
    # every check of every run before the first trains (a bad method is refused now, not at
    # run 3 of 3): one seed is enough, the seeds differ only in their seed overrides
    preflight([replace(base, seed=seeds[0], target=target, ratio=ratio, finetune=tuple(finetune),
                       method="random" if method == REFERENCE else method)
               for target in targets for method, ratio in plan], log)
    out.mkdir(parents=True, exist_ok=True)
    # one run per folder: two at once appended every row twice (a trial counted twice)
    with directory_lock(out / EMBEDDED_LOCK, f"benchmark folder {out}"):
        rows = read_rows(path)  # again, under the lock: another run may have finished since
        done = {_cell(r) for r in rows}
        ref_seeds = set(seeds if reference_seeds is None else (int(s) for s in reference_seeds))
        total, i = len(seeds) * len(targets) * len(plan), 0
        for seed in seeds:
            over = tuple(seed_overrides(seed))
            cfg_s = replace(base, seed=seed, overrides=tuple(base.overrides) + over,
                            finetune_overrides=tuple(base.finetune_overrides) + over,
                            finetune=tuple(finetune))
            for target in targets:
                for method, ratio in plan:
                    i += 1
                    if (seed, target, method, ratio) in done or (method == REFERENCE
                                                                 and seed not in ref_seeds):
                        continue
                    log(f"[bench embedded] {i}/{total}: seed {seed}, target {target}, {method} at "
                        f"{100 * ratio:.0f} %")
                    res = run_pipeline(replace(cfg_s, target=target, ratio=ratio,
                                               method="random" if method == REFERENCE else method),
                                       log=log)
                    row = _row(res, seed, target, method, ratio)
                    row["loadavg_1min"] = os.getloadavg()[0]
                    row["settings_key"] = key
                    if base.budget != "units":  # (absent: units, the rows written before it)
                        row["budget"] = base.budget
                    rows.append(row)
                    append_row(path, row)
        # the report covers this invocation's design only: rows of other seeds, targets, methods
        # or ratios (an earlier run into this folder, cut short or wider) stay in rows.jsonl but
        # never enter its tests (a half-finished seed 2 under --seeds 0,1 moved a +1.0 mean to
        # +3.0 and the header's "seeds x targets" misstated n; review)
        cells = {(s, t, m, r) for s in seeds for t in targets for m, r in plan
                 if m != REFERENCE or s in ref_seeds}
        return [r for r in rows if _cell(r) in cells]


#: the fields of a rows.jsonl line that the resume and the summary read, with their kinds
#: (:data:`~ffcv_dp4tl.contracts.fields.KINDS`): a top-1 is in points, a ratio or kept share a
#: fraction (an edited lp of 250 was averaged, a kept share of 2.5 shown as "250 %")
_ROW_FIELDS = {"seed": "int", "target": "str", "method": "str", "ratio": "fraction"}
#: fields that may be null or absent (a mode not run, data without ground truth, rows written
#: before the settings key or a method's revision was recorded)
_OPTIONAL_FIELDS = {**{m: "percent" for m in MODES}, **{f"{m}_best": "percent" for m in MODES},
                    "kept_sample_fraction": "fraction", "truth": "object",
                    "settings_key": "str", "revision": "count", "budget": "str"}
#: what to do about a line the reader refuses
_FIX_LINE = ("fix or delete that line (its run then reruns), or move the file away to start "
             "over")


def _cell(row: dict[str, Any]) -> tuple[int, str, str, float]:
    """A row's (seed, target, method, ratio): one trial, which a rows file holds once."""
    return row["seed"], row["target"], row["method"], row["ratio"]


def read_rows(path: Path, *, repair: bool | None = True) -> list[dict[str, Any]]:
    """The finished runs of ``rows.jsonl``: the one reader of the run (its resume), the render
    and the pool, so all three accept the same rows. A last line cut short (a crash during its
    append) is dropped with a warning, and that run reruns; any other damaged line is a one-line
    error naming the file and line, since dropping it silently would lose a finished run.
    ``repair=False`` (a reader that runs nothing, e.g. pooling): the cut-short line is an
    error too, and the file is left as it is. ``repair=None`` (a look before the folder's lock
    is held, whose last line may be another run's append in progress): that line is left out
    of the rows, and the file as it is, silently.

    Refused too, since each would change the verdict while the report looks whole: a field of
    the wrong type or out of range (:data:`_ROW_FIELDS`, :data:`_OPTIONAL_FIELDS`, the
    ``truth`` measures by :func:`~ffcv_dp4tl.pipeline.truth.check_truth`); a (seed, target,
    method, ratio) on two lines (the summary kept the last, the reference's spread counted it
    twice); rows of two settings keys, which are never paired; a method's rows of two rules
    (revisions), or of a rule newer than this code's. (The run further refuses rows of other
    settings or an older rule than its own; a render of an archived run keeps them.)"""
    if not path.exists():
        return []
    if not path.is_file():
        raise DP4TLError(f"{path} is not a file (a folder?); move it away, or pass another --out")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DP4TLError(f"{path} is not UTF-8 text (damaged, or not a rows file); restore it, "
                         "or move it away to start over") from None
    lines = text.splitlines()
    rows: list[dict[str, Any]] = []
    numbers: list[int] = []  # each row's line number
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except BAD_JSON:
            if n == len(lines) and not text.endswith("\n") and repair is False:
                raise DP4TLError(f"{path}: its last line was cut short (an interrupted run); "
                                 "rerun its `bench embedded` command (it resumes) first") from None
            if n == len(lines) and not text.endswith("\n") and repair is None:
                break  # (not ours to repair, nor to warn of: the read under the lock does)
            if n == len(lines) and not text.endswith("\n"):  # a torn append: rerun that run
                warnings.warn(f"{path}: line {n} was cut short (an interrupted write); its run "
                              "runs again", UserWarning, stacklevel=2)
                atomic_write_text(path, "".join(f"{x}\n" for x in lines[:-1]))
                break  # (before the checks below: its rerun's row is no duplicate of it)
            raise DP4TLError(f"{path} line {n} is not JSON; {_FIX_LINE}") from None
        rows.append(_checked_row(row, f"{path} line {n}"))
        numbers.append(n)
    _check_together(rows, numbers, path)
    return rows


def _checked_row(row: Any, where: str) -> dict[str, Any]:
    """One line's row with the fields the resume and the summary read typed (one line naming
    ``where`` and the field otherwise)."""
    if not isinstance(row, dict):
        raise DP4TLError(f"{where} is not a JSON object; {_FIX_LINE}")
    for key, kind in _ROW_FIELDS.items():
        typed(row, key, kind, where, _FIX_LINE)
    for key, kind in _OPTIONAL_FIELDS.items():
        typed(row, key, kind, where, _FIX_LINE, default=None)
    if row.get("truth"):
        check_truth(row["truth"], f"{where} truth", _FIX_LINE)
    return row


def _check_together(rows: list[dict[str, Any]], numbers: list[int], path: Path) -> None:
    """The rows of one file as one benchmark's record: each trial once, one settings key, one
    rule per method, none newer than this code's (see :func:`read_rows`)."""
    first: dict[tuple, int] = {}
    rule: dict[str, tuple[int, int]] = {}  # method -> (revision, its first line)
    key_line: tuple[Any, int] | None = None
    for row, n in zip(rows, numbers):
        cell = _cell(row)
        if cell in first:
            raise DP4TLError(f"{path} lines {first[cell]} and {n} are both seed {cell[0]}, target "
                             f"{cell[1]}, {cell[2]} at {100 * cell[3]:.0f} %: one trial counted "
                             "twice (a copied line, or one of another run) changes the verdict; "
                             "delete one of the lines")
        first[cell] = n
        key = row.get("settings_key")
        if key_line is None:
            key_line = (key, n)
        elif key != key_line[0]:
            raise DP4TLError(f"{path} mixes rows of 2 settings ({_SETTINGS}): line {n}'s "
                             f"settings_key {key!r} is not line {key_line[1]}'s "
                             f"{key_line[0]!r}; rows of other settings are never paired: keep "
                             "one run's rows in one file (delete the other run's lines)")
        method, revision = row["method"], row.get("revision", 0)
        if revision > (ours := _revision(method)):
            raise DP4TLError(f"{path} line {n}: {method} scored by revision {revision} of its "
                             f"rule, newer than this code's ({ours}): an edited "
                             "line, or one of newer code; fix or delete that line, or read the "
                             "file with the code that wrote it")
        seen = rule.setdefault(method, (revision, n))
        if seen[0] != revision:
            raise DP4TLError(f"{path} lines {seen[1]} and {n}: {method} scored by two rules of "
                             f"it (revision {seen[0]} and {revision}), which are never paired; "
                             "delete the lines of one rule (their runs rerun), or move the file "
                             "away to start over")


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one finished run as one line, in one write, flushed to disk before the next run
    starts: an interruption leaves at most a cut-short last line, which :func:`read_rows`
    drops. (One line per run: the file is never rewritten, so finished runs cannot be lost.)"""
    line = json.dumps(row, default=str) + "\n"
    with path.open("a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell():  # a last line without its newline (an editor, a cut write): end it first
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode())
        f.flush()
        os.fsync(f.fileno())



POOLED = "pooled_folders"  # summary.json's key for them (pool_record)


def pool_record(folders: Sequence[str | Path], out: Path) -> dict[str, list[str]]:
    """The pooled folders as a pool's ``summary.json`` keeps them for ``bench render``:
    relative to the pool's own folder, so a render finds the same folders from any current
    directory and in any copy or clone of the tree that holds them. The command keeps them as
    typed, relative to the directory the pool was made in, which a render does not know (it
    read those, or same-named folders, from its own); an absolute path would not survive a
    clone."""
    base = os.path.abspath(out)
    return {POOLED: [Path(os.path.relpath(os.path.abspath(f), base)).as_posix() for f in folders]}


def pool_rows(folders: Sequence[str | Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of several ``bench embedded`` runs of one design (replicates over other seeds),
    for one verdict over all their seeds, and a line per folder for the report's header.
    Nothing is written to the folders. Refused, with the folder named: a folder without
    ``rows.jsonl`` or with a cut-short line; what :func:`read_rows` refuses in any rows file (a
    trial on two lines, rows of two settings keys or two rules of a method); rows of other
    settings (:func:`settings_key`) than the first folder's or without a key; rows of an older
    rule of a method; another pruning budget (``--budget``: FM's 80 % of clusters is not 80 %
    of the images); another design (targets x methods x ratios, finetuning modes) or a seed
    missing some of its runs, since the verdict's "seeds x targets" would then misstate its n;
    and a (seed, target, method, ratio) in two folders, which would count one trial twice and
    narrow the interval falsely; one folder given twice (also through a link), by its name."""
    if len(folders) < 2:
        raise DP4TLError("pool needs two or more `bench embedded` --out folders")
    rows: list[dict[str, Any]] = []
    lines: list[str] = []
    seen: dict[tuple, Path] = {}
    first: tuple[Path, str, frozenset, frozenset, str] | None = None  # path, key, design, modes,
    # budget
    truth_seen: bool | None = None  # the folders so far have ground truth
    given: dict[Path, Path] = {}  # resolved -> as given (one folder twice: a link, a "/")
    for folder in map(Path, folders):
        if folder.resolve() in given:
            raise DP4TLError(f"{folder} is given twice (also as {given[folder.resolve()]}): pass "
                             "each `bench embedded` folder once")
        given[folder.resolve()] = folder
        path = folder / "rows.jsonl"
        if not path.exists():
            raise DP4TLError(f"{path} does not exist: pass the --out folder of a `dp4tl bench "
                             "embedded` run")
        these = read_rows(path, repair=False)
        if not these:
            raise DP4TLError(f"{path} holds no finished run; run its `bench embedded` first")
        keys = {r.get("settings_key") for r in these}
        if None in keys:
            raise DP4TLError(f"{path}: {sum(r.get('settings_key') is None for r in these)} rows "
                             "have no settings key (written by older code): rerun that benchmark "
                             "into a new --out before pooling it")
        older = _older_rule(these, path, hint="rerun those runs (`bench embedded` with the "
                            "same --out) before pooling")
        if older is not None:
            raise older
        key = next(iter(keys))
        pruned = [r for r in these if r["method"] != REFERENCE]
        blind = sum(not r.get("truth") for r in pruned)
        if 0 < blind < len(pruned) or (truth_seen is not None and truth_seen != (blind == 0)):
            why = (f"{blind} of its {len(pruned)} pruned runs have no ground truth (`truth`)"
                   + (" while its other runs have it" if blind < len(pruned)
                      else " while the folders before it have it") if blind else
                   "its runs have ground truth (`truth`) but the folders before it have none")
            raise DP4TLError(f"{path}: {why}; the pooled ground-truth table would cover only "
                             "some seeds: pool runs that all have it (rerun the others: delete "
                             "their lines, then rerun their `bench embedded` command)")
        truth_seen = blind == 0
        by_seed: dict[int, set] = {}
        for r in these:
            if r["method"] != REFERENCE:
                by_seed.setdefault(r["seed"], set()).add((r["target"], r["method"], r["ratio"]))
        design = frozenset().union(*by_seed.values()) if by_seed else frozenset()
        short = sorted(s for s, cells in by_seed.items() if cells != design)
        if short:
            raise DP4TLError(f"{path}: seed {short[0]} lacks some of the runs its other seeds "
                             "have (an interrupted benchmark?); finish it (rerun its `bench "
                             "embedded` command: it resumes) before pooling")
        modes = frozenset(m for m in MODES if any(r.get(m) is not None for r in these
                                                  if r["method"] != REFERENCE))
        budget = rows_budget(these)
        if first is None:
            first = (path, key, design, modes, budget)
        elif budget != first[4]:
            raise DP4TLError(f"{path}: its runs pruned with --budget {budget}, those of {first[0]} "
                             f"with --budget {first[4]} (other kept shares of the images); only "
                             "replicates of one design are pooled")
        elif key != first[1]:
            raise DP4TLError(f"{path}: its rows ran with other settings than {first[0]} "
                             f"({_SETTINGS}); only replicates of one design are pooled")
        elif design != first[2] or modes != first[3]:
            raise DP4TLError(f"{path} is another design than {first[0]} (its targets, methods, "
                             "ratios or finetuning modes differ); only replicates of one design "
                             "are pooled")
        for r in these:
            cell = _cell(r)
            if cell in seen:
                raise DP4TLError(f"{path}: seed {cell[0]}, target {cell[1]}, {cell[2]} at "
                                 f"{100 * cell[3]:.0f} % is also in {seen[cell]}: pooling would "
                                 "count one trial twice; pool runs of disjoint --seeds")
            seen[cell] = path
        rows.extend(these)
        seeds = sorted({r["seed"] for r in these})
        lines.append(f"  - {md_code(folder)}: {len(these)} runs, seeds {_span(seeds)}"
                     + (f", `--budget {budget}`" if budget != "units" else ""))
    return rows, lines


def rows_budget(rows: list[dict[str, Any]]) -> str:
    """The pruning budget of one rows file's runs (a row without one: units, the default; one
    file holds one settings key, so one budget)."""
    return str(rows[0].get("budget", "units"))


def _span(seeds: Sequence[int]) -> str:
    """0–9 for a consecutive run of seeds, else the list."""
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


# ------------------------------------------------------------------ summary
def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Reference accuracies, paired tests (pooled and per target) and ground truth per cell."""
    targets = list(dict.fromkeys(r["target"] for r in rows))
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m not in (REFERENCE, "random")]
    ratios = sorted({r["ratio"] for r in rows if r["ratio"] > 0})
    modes = [m for m in MODES if any(r.get(m) is not None for r in rows)]
    by = {_cell(r): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    ref = {}
    for t in targets:
        for mode in modes:
            xs = [r[mode] for r in rows if r["target"] == t and r["method"] == REFERENCE
                  and r.get(mode) is not None]
            if xs:
                ref[(t, mode)] = (*mean_std(xs), len(xs))
    tests = []
    for mode in modes:
        # the top-1s' magnitude: a seed's mean difference over its targets is 0 only up to
        # the rounding of these (paired_test's scale)
        scale = max((abs(r[mode]) for r in rows if r.get(mode) is not None), default=None)
        for ratio in ratios:
            for m in methods:
                pairs = {t: [] for t in targets}
                seed_means = []  # one difference per seed: the mean over its targets
                for s in seeds:
                    ds = []
                    for t in targets:
                        a, b = by.get((s, t, m, ratio)), by.get((s, t, "random", ratio))
                        if a and b and a.get(mode) is not None and b.get(mode) is not None:
                            pairs[t].append(a[mode] - b[mode])
                            ds.append(a[mode] - b[mode])
                    if len(ds) == len(targets):
                        seed_means.append(sum(ds) / len(ds))
                pooled = [d for t in targets for d in pairs[t]]
                tests.append({"mode": mode, "ratio": ratio, "method": m,
                              "pooled": paired_test(pooled, scale=scale),
                              "by_seed": paired_test(seed_means, scale=scale),
                              "per_target": {t: paired_test(pairs[t], scale=scale)
                                             for t in targets}})
    # one family: every verdict of the table (modes x ratios x methods), on its deciding test
    for t, p in zip(tests, holm([deciding(t)["p"] for t in tests])):
        t["p_holm"] = p
    truth = []
    for ratio in ratios:
        for m in ("random", *methods):
            for t in targets:
                ts = [by[k]["truth"] for k in by if k[1:] == (t, m, ratio) and by[k].get("truth")]
                if not ts:
                    continue
                cell = {"ratio": ratio, "method": m, "target": t, "n": len(ts)}
                for key, _ in TRUTH_COLUMNS:
                    vals = [x[key] for x in ts if x.get(key) is not None]
                    cell[key] = sum(vals) / len(vals) if vals else None
                cell["chance"] = ts[0].get("chance")
                cell["recall_chance"] = ts[0].get("recall_chance")
                kept = [by[k]["kept_sample_fraction"] for k in by if k[1:] == (t, m, ratio)
                        and by[k].get("kept_sample_fraction") is not None]
                cell["kept_sample_fraction"] = sum(kept) / len(kept) if kept else None
                truth.append(cell)
    return {"targets": targets, "methods": methods, "ratios": ratios, "modes": modes,
            "seeds": seeds, "reference": {f"{t}/{m}": v for (t, m), v in ref.items()},
            "tests": tests, "truth": truth}


def _tests_family(s: dict[str, Any]) -> str:
    """The Holm family of the table's verdicts, in words: every row, modes × ratios ×
    methods."""
    return (f"{count(len(s['tests']), 'test')}, one family of every mode × ratio × method "
            f"({len(s['modes'])} × {len(s['ratios'])} × {len(s['methods'])}; p Holm)")


def _ci(t: dict[str, Any]) -> str:
    """A test's interval cell (one pair, or identical differences: no interval; the p is exact)."""
    return format_interval(t["mean"], t["lo"], t["hi"], " (all equal)" if t.get("exact") else "")


def _p(t: dict[str, Any], key: str = "p") -> str:
    return format_p(t.get(key))


def markdown(summary: dict[str, Any], *, command: str = "", header: Sequence[str] = (),
             plot: str = "") -> str:
    s = summary
    lines = [*header]
    if command:
        lines.append(f"- command: {md_code(command)}")
    lines += ["", "### Verdict: paired differences to RANDOM (top-1 points)", "",
              f"Pairs = seeds × targets ({len(s['seeds'])} × {len(s['targets'])}); cell = mean "
              "difference [95 % t interval]. Two tests: pooled over the pairs, and by seed (one "
              "difference per seed: the mean over its targets). Neither test is the conservative "
              "one: the pairs of one seed share RANDOM's pretraining (the pooled test can be too "
              "sure), while targets that differ widen the pooled interval and not the seed-level "
              "one. **better** / **worse** = both intervals exclude 0 and the seed-level p stays "
              f"below {ALPHA} after Holm's adjustment over the table's "
              f"{_tests_family(s)}; where the two tests disagree, the verdict says "
              "which saw no difference. Identical differences have no interval: their p is the "
              "exact sign-flip test's.", "",
              "| mode | ratio | method | Δ vs RANDOM [95 % CI] | p | pairs won | by seed [95 % CI] "
              "| p (seeds) | p Holm | verdict | " + " | ".join(md_code(t, cell=True) for t in s["targets"]) + " |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---|" + "---:|" * len(s["targets"])]
    for t in s["tests"]:
        p, q = t["pooled"], _seed_test(t)
        lines.append(f"| {t['mode'].upper()} | {100 * t['ratio']:.0f} % | {t['method'].upper()} | {_ci(p)} | "
                     f"{_p(p)} | {p['wins']}/{p['n']} | {_ci(q)} | {_p(q)} | {_p(t, 'p_holm')} | "
                     f"{row_verdict(t)} | "
                     + " | ".join(_ci(t['per_target'][x]) for x in s["targets"]) + " |")
    if plot:
        lines += ["", f"![paired differences to RANDOM]({plot})"]
    elif s["tests"] and not any(has_difference(t) for t in s["tests"]):
        lines += ["", "(No figure: no row has a paired difference to draw.)"]
    lines += ["", "### Unpruned reference (is the target off the ceiling?)", "",
              "Target test top-1 of the unpruned (0 %) pretraining: mean ± sample std over the "
              "seeds it ran for (`--reference-seeds`, default every seed; n in each cell). It "
              "is in no pair.", "",
              "| target | " + " | ".join(f"{m.upper()} top-1 %" for m in s["modes"]) + " |",
              "|---|" + "---:|" * len(s["modes"])]
    for t in s["targets"]:
        cells = []
        for m in s["modes"]:
            v = s["reference"].get(f"{t}/{m}")
            one = v is not None and len(v) > 2 and v[2] == 1  # (a spread of one run reads 0.0)
            cells.append("–" if v is None else f"{v[0]:.1f} (one seed)" if one
                         else f"{v[0]:.1f} ± {v[1]:.1f}" + (f" ({v[2]} seeds)" if len(v) > 2
                                                           else ""))
        lines.append(f"| {md_code(t, cell=True)} | " + " | ".join(cells) + " |")
    if s["truth"]:
        lines += ["", "### Selection against the ground truth (mean over seeds)", "",
                  "top-k recall: mapped source classes among the k best-scored (class units); "
                  "related samples / classes: share of the kept ones from the target's related "
                  "superclasses (RANDOM keeps them at the source's share). " + CHANCE_NOTE, "",
                  "| ratio | method | target | kept samples | "
                  + " | ".join(h for _, h in TRUTH_COLUMNS) + " | source share | recall by chance |",
                  "|---:|---|---|---:|" + "---:|" * (len(TRUTH_COLUMNS) + 2)]
        for c in s["truth"]:
            ks = "–" if c.get("kept_sample_fraction") is None else f"{100 * c['kept_sample_fraction']:.0f} %"
            lines.append(f"| {100 * c['ratio']:.0f} % | {c['method'].upper()} | {md_code(c['target'], cell=True)} | {ks} | "
                         + " | ".join("–" if c.get(k) is None else f"{c[k]:.2f}"
                                      for k, _ in TRUTH_COLUMNS)
                         + f" | {c['chance']:.2f} | "
                         + ("–" if c.get("recall_chance") is None else f"{c['recall_chance']:.2f}")
                         + " |")
    return "\n".join(lines) + "\n"


#: colour of a forest-plot row per verdict kind, and the key's words for it
VERDICT_COLOURS = {"better": ("tab:green", "better (both tests, after Holm)"),
                   "worse": ("tab:red", "worse (both tests, after Holm)"),
                   "qualified": ("tab:orange", "one direction, not confirmed (by both tests "
                                 "or Holm)"),
                   "none": ("tab:gray", "no difference detected / too few pairs")}


def verdict_kind(word: str) -> str:
    """The colour key of a printed verdict (:func:`verdict`): the plot's colour follows the
    table's words, so a raw interval above 0 that Holm's adjustment or the other test does
    not confirm is not drawn as a win (nor, seen by the seed-level test alone, as nothing)."""
    if word in ("**better**", "**worse**"):
        return word.strip("*")
    if word.startswith(("better", "worse")) or "; by seed: " in word:
        return "qualified"
    return "none"


def _forest_title(summary: dict[str, Any], tests: list[dict[str, Any]]) -> str:
    """What the intervals are over (n seeds x targets, 95 % t), that rows without one are
    points without a bar (all of them: too few pairs for intervals), and that one seed has no
    seed-level interval."""
    seeds, targets = summary.get("seeds") or [], summary.get("targets") or []
    title = f"n = {count(len(seeds), 'seed')} × {count(len(targets), 'target')}"
    bars = [t["pooled"].get("lo") is not None for t in tests]
    if not tests:
        return title + ": no paired differences to draw"
    if not any(bars):  # (it drew an empty 0–1 frame titled "95 % t intervals"; figures audit)
        title += ": too few pairs for intervals, mean differences only"
    else:
        title += ", 95 % t intervals"
        if not all(bars):
            title += "\nno bar: no interval (one pair, or identical differences)"
    if not any((t.get("by_seed") or {}).get("lo") is not None for t in tests):
        title += "\nno by-seed interval (" + ("one seed)" if len(seeds) == 1 else "too few seeds)")
    return title


def _seed_test(t: dict[str, Any]) -> dict[str, Any]:
    """A test row's seed-level test; an empty one for a row from before it was recorded."""
    return t.get("by_seed") or paired_test([])


def row_verdict(t: dict[str, Any]) -> str:
    """The verdict of one row of ``summary["tests"]``: what its table prints and its forest-plot
    row's colour says (the plot passed no seed test for an older row, and coloured "better"
    where the table said "too few seeds to test"; review)."""
    return verdict(t["pooled"], _seed_test(t), t.get("p_holm"))


def has_difference(t: dict[str, Any]) -> bool:
    """Whether a row of ``summary["tests"]`` has a mean difference to draw (some pair)."""
    return t["pooled"].get("mean") is not None


@literal_text
def plot_tests(summary: dict[str, Any], path: Path) -> Path:
    """Forest plot: each (mode, ratio, method)'s mean paired difference with its 95 % CI,
    coloured by the verdict the table prints (key below the plot; markers: which test)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    tests = [t for t in summary["tests"] if has_difference(t)]
    fig, ax = subplots(figsize=(6.4, 0.4 * len(tests) + 2.6))
    kinds = []
    for i, t in enumerate(tests):
        kind = verdict_kind(row_verdict(t))
        kinds.append(kind)
        colour = VERDICT_COLOURS[kind][0]
        pooled = t["pooled"]
        if pooled.get("lo") is None:  # (a mean difference without an interval: no bar)
            ax.plot(pooled["mean"], i - 0.15, "o", color=colour)
        for p, dy, marker in ((pooled, -0.15, "o"), (t.get("by_seed") or {}, 0.15, "s")):
            if p.get("lo") is None:
                continue
            ax.errorbar(p["mean"], i + dy, xerr=[[p["mean"] - p["lo"]], [p["hi"] - p["mean"]]],
                        fmt=marker, color=colour, mfc="white" if marker == "s" else colour,
                        capsize=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(tests)), [f"{t['mode'].upper()} {100 * t['ratio']:.0f} % {t['method'].upper()}"
                                      for t in tests])
    ax.invert_yaxis()
    ax.set_xlabel("target top-1 minus RANDOM's, points (mean, 95 % CI)"
                  if any(t["pooled"].get("lo") is not None for t in tests)
                  else "target top-1 minus RANDOM's, points (mean)")
    ax.set_title(_forest_title(summary, tests), fontsize=9)
    # the key: which test (black swatches: the colour is the verdict's), then the verdicts
    swatches = [Line2D([], [], color="black", marker="o", ls="", label="seeds × targets")]
    if any((t.get("by_seed") or {}).get("lo") is not None for t in tests):
        swatches.append(Line2D([], [], color="black", marker="s", mfc="white", ls="",
                               label="by seed"))
    swatches += [Patch(color=c, label=w) for k, (c, w) in VERDICT_COLOURS.items() if k in kinds]
    if tests:
        fig.legend(handles=swatches, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.05 + 0.045 * (-(-len(swatches) // 2)), 1, 1))
    save(fig, path, dpi=110)
    return path


def write_outputs(rows: list[dict[str, Any]], out: Path, *, command: str, header: Sequence[str],
                  date: str | None = None, keep_notes: bool = False,
                  record: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """``summary.json``, ``paired.png`` and the Markdown body (returned, for README/BENCHMARKS).
    ``date``: the run's, when a report is rendered again (the render's time is ``rendered``).
    ``record``: more for ``summary.json`` alone (a pool's folders, :func:`pool_record`).
    ``keep_notes`` (a render): README.md keeps its hand-written notes
    (:func:`~ffcv_dp4tl.reporting.carry_notes`); the body returned holds none, so a file
    that publishes it keeps its own (README's notes link relative to README)."""
    now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    summary = summarize(rows)
    summary.update({"command": command, "date": date or now, **({"rendered": now} if date else {}),
                    **(record or {})})
    atomic_write_json(out / "summary.json", json.loads(json.dumps(summary, default=str)))
    # (no row with a pair: no figure, rather than an empty frame; the report says so)
    drawn = any(has_difference(t) for t in summary["tests"])
    plot = plot_tests(summary, out / "paired.png").name if drawn else ""
    if not drawn and (out / "paired.png").exists():  # (an earlier run's, of other rows)
        (out / "paired.png").unlink()
    body = markdown(summary, command=command, header=header, plot=plot)
    readme = out / "README.md"
    text = body
    if keep_notes and readme.is_file():
        text = carry_notes(readme.read_text(encoding="utf-8"), body, readme)
    atomic_write_text(readme, text)
    return summary, body


def rerender_inputs(out: Path) -> tuple[list[dict[str, Any]], str, list[str], str | None,
                                         dict[str, Any]]:
    """What a ``bench embedded`` (or ``embedded-pool``) folder's report is rebuilt from, running
    nothing: the rows its ``summary.json`` reported (of ``rows.jsonl``, or of the pooled
    folders), its command, its README's header lines (machine, timing), the run's date and,
    for a pool, its folders' record (:func:`pool_record`) for the new ``summary.json``.
    A pool's folders are those it recorded relative to itself; an older pool recorded none,
    so its command's are read, as typed, from the current directory (the one it was made in,
    for the right folders), and then recorded.
    For a report written by an older version (a table or a test rule since changed)."""
    summary_path, readme = out / "summary.json", out / "README.md"
    for f in (summary_path, readme):
        if not f.is_file():
            raise DP4TLError(f"{f} not found: point at the --out folder of a `bench embedded` "
                             "run that finished, or rerun its command")
    try:
        old = json.loads(summary_path.read_text(encoding="utf-8"))
        command = str(old["command"])
        cells = {k: set(old[k]) for k in ("seeds", "targets", "ratios")}
        methods = set(old["methods"]) | {"random", REFERENCE}
    except (ValueError, KeyError, TypeError) as e:
        raise DP4TLError(f"{summary_path} is not a `bench embedded` summary ({type(e).__name__}: "
                         f"{e}); rerun its command to rewrite the report") from None
    words = command.split()
    pooled = words[:3] == ["dp4tl", "bench", "embedded-pool"]
    if pooled:  # (its folders are read from it: quoted where they hold a space, shlex.join)
        try:
            words = shlex.split(command)
        except ValueError as e:
            raise DP4TLError(f"{summary_path}: its command {command!r} does not parse ({e}); "
                             "rerun it to rewrite the report") from None
    claim_out_dir(out, "embedded-pool" if pooled else "embedded", "folder",
                  inputs=("rows.jsonl", "summary.json", "README.md"))
    record: dict[str, Any] = {}
    if pooled:
        kept = old.get(POOLED)
        if kept is not None and not (isinstance(kept, list) and all(isinstance(f, str) for f in kept)):
            raise DP4TLError(f"{summary_path}: its {POOLED} is not a list of folders; rerun its "
                             "command to rewrite the report")
        folders = ([out / f for f in kept] if kept is not None
                   else [Path(f) for f in words[3:words.index("--out")]] if "--out" in words else [])
        for f in folders:
            if not (f / "rows.jsonl").is_file():
                raise DP4TLError(
                    f"{summary_path}: its pooled folder {f} has no rows.jsonl: "
                    + ("put the pooled folders back where they were beside it (kept relative "
                       "to it), or pool them again" if kept is not None else
                       f"this pool's folders are its command's, resolved from the current "
                       f"directory ({Path.cwd()}): run the render from the directory the pool "
                       "was made in"))
        rows, _ = pool_rows(folders)
        record = pool_record(folders, out)
    else:
        rows = read_rows(out / "rows.jsonl", repair=False)
    rows = [r for r in rows if r["seed"] in cells["seeds"] and r["target"] in cells["targets"]
            and r["method"] in methods and (r["ratio"] in cells["ratios"] or r["method"] == REFERENCE)]
    if not rows:
        raise DP4TLError(f"{out}: none of the runs its summary.json reported are in its rows; "
                         "rerun its command")
    text = readme.read_text(encoding="utf-8").splitlines()
    end = next((i for i, x in enumerate(text) if x.startswith("### ")), len(text))
    header = [x for x in text[:end] if x.strip() and not x.startswith("- command: ")]
    return rows, command, header, old.get("date"), record


__all__ = ["paired_test", "verdict", "run_separation", "pool_rows", "pool_record", "summarize", "markdown",
           "write_outputs", "plot_tests", "rerender_inputs"]
