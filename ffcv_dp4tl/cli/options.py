"""Options shared by every command, so each concept has one name, one syntax and one default.

- the dataset a command reads is ``--data`` (required wherever a command cannot do without it,
  so ``--help`` marks it; no second spelling);
- what it writes is ``--out/-o``; the device is ``--device`` (``auto`` by default everywhere);
- lists are comma-separated (``--finetune lp,ff``); ``--set`` stays repeatable because a TOML
  value may itself contain commas;
- choices are the Enums of :mod:`ffcv_dp4tl.contracts` (listed in ``--help``) or validated in a
  callback, so a bad value is a one-line usage error before any folder is created or any data
  is built.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence

import typer

# the CLI's choice sets are the project's (defined once in contracts; typer lists them in --help)
from ..contracts import (AdvNorm, AdvUnits, Backend, BetonMode, Budget, FinetuneMode, Format, Order,  # noqa: F401
                         PretrainLength, Protocol, RecipeSet, TargetCrop, TargetSplit, check_items, check_k,
                         check_pruned_ratios, check_ratio, check_seeds, split_items, PAPER_K, SYNTH_K)
from ..contracts import check_device as contracts_check_device
from ..contracts import default_k as contracts_default_k
from ..errors import DP4TLError


FORMAT_HELP = "ffcv (betons) or wds (WebDataset shards)"
PROGRESS_HELP = ("Show the progress bars of builds, training and scoring (a timestamped line a "
                 "minute where stderr is not a terminal); every stage's lines are printed either "
                 "way")
PRETRAIN_LENGTH_HELP = ("epochs: a pruned set is pretrained for the recipe's epochs (the paper's "
                        "protocol: pruning saves time) | steps: for as many optimizer steps as the "
                        "unpruned set (more epochs, schedule stretched): the saved time spent "
                        "again, to tell what the removed data cost from what fewer steps cost")
DEVICE_HELP = "auto (CUDA when available, else CPU) | cpu | cuda | cuda:N"
DATA_HELP = "Built dataset directory (from `dp4tl build`)"
OUT_HELP = "Output directory"
RECIPES_HELP = ("fast protocol: tiny | bench | full (auto: per the data's manifest: bench for "
                "synth:bench and synth:hard, tiny for other synth data, full otherwise)")

ORDER_HELP = ("ordered: keep the highest-scored classes/clusters/samples (the method); "
              "reversed: keep the lowest-scored ones, pruning the top first (Fig. A3)")
K_HELP = (f"fm: k-means clusters K (default: the paper's {PAPER_K}; {SYNTH_K} on any synth data, "
          "sized for the small presets: pass --k for synth:imagenet)")

@contextlib.contextmanager
def usage_error() -> Iterator[None]:
    """A :class:`DP4TLError` raised by a check inside becomes a click usage error (one line
    naming the option, before any work): how every callback here reuses the project's rules."""
    try:
        yield
    except DP4TLError as e:
        raise typer.BadParameter(str(e)) from None


def option_name(param) -> str:
    """How a parameter is named in a message: its long option (``--out``), else its metavar
    (``DATA`` for an argument)."""
    opts = list(getattr(param, "opts", None) or ())
    return next((o for o in opts if o.startswith("--")), None) or str(param.name).upper()


def _blank(value) -> bool:
    """``value`` (or an item of a repeated option's values) is a string of blanks only."""
    values = value if isinstance(value, (list, tuple)) else (value,)
    return any(isinstance(v, str) and not v.strip() for v in values)


def given_blank(ctx: Optional[typer.Context], param: Optional[typer.CallbackParam], value) -> bool:
    """Whether the user gave ``value`` as '' (or blanks) on the command line: an option whose
    default is '' (the default recipe, model, split, ...) ran with that default when given ''
    (``pipeline --arch ''``, ``mask check --split ''``), silently; only its default may be ''."""
    if ctx is None or param is None or not _blank(value):
        return False
    source = ctx.get_parameter_source(param.name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def not_blank_callback(ctx: typer.Context, param: typer.CallbackParam, value):
    """Callback of an option whose default is '' (or None) and for which a given '' means
    nothing: refused (:func:`given_blank`). Options where '' has a documented meaning
    (``--report ''`` = no report, ``--reference-seeds ''`` = every seed) do not use it."""
    if given_blank(ctx, param, value):
        name = option_name(param)
        raise typer.BadParameter(f"{name} is empty: give a value, or leave {name} out for its "
                                 "default")
    return value


def _is_path_annotation(annotation) -> bool:
    """A ``Path`` parameter, or a repeated one (``List[Path]``)."""
    from pathlib import PurePath
    from typing import get_args, get_origin

    def is_path(t) -> bool:
        return isinstance(t, type) and issubclass(t, PurePath)

    if get_origin(annotation) in (list, tuple):
        return any(is_path(t) for t in get_args(annotation))
    return is_path(annotation)


def check_path_text(value: str, name: str) -> str:
    """A path as typed on the command line: not empty or blanks (``Path('')`` is the current
    folder: ``prune --out ''`` wrote its masks and lock into the working directory, ``info --data
    ''`` named ``.``), and one line (no control character: ``--out $'o/nl\\nx.npy'`` wrote a file
    with a line break in its name, and split every line naming it). A usage error."""
    if _blank(value):
        raise typer.BadParameter(f"{name} is empty: give a path")
    bad = next((c for c in value if ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029"),
               None)
    if bad is not None:
        raise typer.BadParameter(f"{name} {value!r} holds a control character ({bad!r}); give a "
                                 "path without line breaks or other control characters")
    return value


def expand_home(text: str) -> str:
    """A path's leading ``~`` (``~/d``, ``~user/d``) as the user's home folder: the shell
    expands it only at the start of a word, so ``--out=~/x`` (after '='), a quoted ``"~/d"``
    and a value passed on by ``just`` or a script arrive as typed, and ``build --out=~/x``
    built into a folder named ``~`` in the working folder while ``pipeline --data ~/d``
    (``expanduser`` in the pipeline) read the home folder's. Any other text is returned as
    it is."""
    return os.path.expanduser(text) if text.startswith("~") else text


def check_path_params(command) -> None:
    """Every path parameter of ``command`` and its sub-commands (``Path`` or ``List[Path]``,
    option or argument) checks the text it is given (:func:`check_path_text`) before typer
    turns it into a ``Path``, where '' would already be ``.``, then has its leading ``~``
    expanded (:func:`expand_home`), so every command reads ``~/d`` as the pipeline does: the
    one place for every command's paths, those of commands registered later included. Called
    by the app's callback, which click runs before it parses a sub-command's parameters;
    idempotent."""
    for sub in (getattr(command, "commands", None) or {}).values():
        check_path_params(sub)
    for param in getattr(command, "params", ()):
        descriptor = getattr(param, "type_descriptor", None)
        if getattr(param, "dp4tl_path_checked", False) or descriptor is None \
                or not _is_path_annotation(descriptor.annotation):
            continue

        def process_value(ctx, value, _process=param.process_value, _param=param):
            for v in (value if isinstance(value, (list, tuple)) else (value,)):
                if isinstance(v, str):  # (a default is a Path already)
                    try:
                        check_path_text(v, option_name(_param))
                    except typer.BadParameter as e:
                        e.ctx, e.param = ctx, _param
                        raise
            if isinstance(value, (list, tuple)):
                value = type(value)(expand_home(v) if isinstance(v, str) else v for v in value)
            elif isinstance(value, str):
                value = expand_home(value)
            return _process(ctx, value)

        param.process_value = process_value
        param.dp4tl_path_checked = True


def check_device(value: str) -> str:
    """``--device`` callback: the syntax, and that CUDA exists when it is asked for
    (:func:`~ffcv_dp4tl.contracts.check_device`, the rule of the Python API too), as a usage
    error."""
    if value is None:
        return value
    with usage_error():
        contracts_check_device(value, "--device")
    return value


def device_option(help: str = DEVICE_HELP):
    return typer.Option("auto", "--device", help=help, callback=check_device)


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu`` (for code that takes a concrete device)."""
    from ..training.distributed import resolve_device as resolve  # imports torch: only when called

    return device if device != "auto" else str(resolve(device))


def split_list(text: str, what: str | None = None) -> list[str]:
    """``"a, b,c"`` → ``["a", "b", "c"]``: the one list syntax of the CLI
    (:func:`~ffcv_dp4tl.contracts.split_items`); an empty item between commas is a usage error,
    named by click for a callback, by ``what`` (the option) where a command reads the list."""
    try:
        return split_items(text, "")
    except DP4TLError as e:
        raise typer.BadParameter(str(e), param_hint=what) from None


def _items(items: list, required: bool, example: str, what: str = "the list") -> None:
    """``contracts.check_items`` (at least one, each once) as a usage error; an empty list
    passes where ``required`` is False (it has a meaning there)."""
    if items or required:
        try:
            check_items(what, items)
        except DP4TLError as e:
            raise typer.BadParameter(f"{e}{f', e.g. {example}' if not items else ''}") from None


def list_callback(choices: Sequence[str], what: str, required: bool = False):
    """A callback refusing any comma-separated item not in ``choices`` (before any work), and
    with ``required`` an empty list."""
    def check(value: str) -> str:
        items = split_list(value)
        bad = [x for x in items if x not in choices]
        if bad:
            raise typer.BadParameter(f"{', '.join(map(repr, bad))} not {what}; use a "
                                     f"comma-separated list of {', '.join(choices)}")
        if required:
            _items(items, True, ",".join(choices))
        return value
    return check


def ratio_callback(value: float) -> float:
    """``--ratio`` callback: :func:`~ffcv_dp4tl.contracts.check_ratio`, as a usage error."""
    with usage_error():
        return check_ratio(value, "--ratio")


def floats_callback(what: str):
    def check(value: str) -> str:
        for x in split_list(value):
            try:
                float(x)
            except ValueError:
                raise typer.BadParameter(f"{x!r} is not a number; give {what} as a "
                                         "comma-separated list like 0,0.2,0.6") from None
        return value
    return check


def ratios_callback(what: str):
    """Pruning ratios: at least one, each in [0, 1) (``check_ratio``), each once. (A bench that
    pairs pruned runs refuses 0 itself: ``run_separation``.)"""
    def check(value: str) -> str:
        with usage_error():
            ratios = [check_ratio(x, what, text=True) for x in split_list(floats_callback(what)(value))]
        _items(ratios, True, "0.2,0.6", what)
        return value
    return check


def pruned_ratios_callback(what: str, why: str, required: bool = True):
    """Ratios of pruned runs only (:func:`~ffcv_dp4tl.contracts.check_pruned_ratios`: each in
    (0, 1), ``why`` says why 0 is not one), each once; '' passes where ``required`` is False."""
    def check(value: str) -> str:
        with usage_error():
            ratios = check_pruned_ratios(split_list(floats_callback(what)(value)), what, why)
        _items(ratios, required, "0.6,0.8", what)
        return value
    return check


def pruned_ratio_callback(what: str, why: str):
    """One pruned ratio (a float option): in (0, 1)."""
    def check(value: float) -> float:
        with usage_error():
            check_pruned_ratios([value], what, why)
        return value
    return check


def ints_callback(what: str):
    def check(value: str) -> str:
        for x in split_list(value):
            try:
                int(x)
            except ValueError:
                raise typer.BadParameter(f"{x!r} is not an integer; give {what} as a "
                                         "comma-separated list like 0,1,2") from None
        return value
    return check


def seeds_callback(what: str = "--seeds", required: bool = True):
    """Seeds: integers >= 0, each once (a repeated seed would count one run twice in a mean ±
    std); at least one unless ``required`` is False (then '' has a documented meaning)."""
    def check(value: str) -> str:
        with usage_error():
            seeds = check_seeds(split_list(ints_callback(what)(value)), what)
        _items(seeds, required, "0,1,2", what)
        return value
    return check


def out_callback(value: Optional[Path]) -> Optional[Path]:
    """``--out`` folder callback: a file in the way or an unwritable place is refused before
    any work (``fsutil.check_out_dir``)."""
    from ..fsutil import check_out_dir

    if value is not None:
        with usage_error():
            check_out_dir(value, "--out")
    return value


def report_callback(value: Optional[str]) -> Optional[str]:
    """``--report`` callback: '' = no report (None); a folder or an unwritable place is refused
    before any work (``fsutil.check_out_file``), not after the bench ran, and so is a file no
    section may go into (``reporting.check_report``: not Markdown, or a command's output; a
    pipeline's stage folder, ``pipeline.stages.stage_folder_around``; a bench checks it against its own
    --out at its start, ``check_report_beside``). A link is judged, and written, by the file
    it names (``reporting.report_target``)."""
    from ..fsutil import check_out_file
    from ..pipeline.stages import stage_folder_around
    from ..reporting import check_report, report_target

    if value is None or not value.strip():
        return None
    value = expand_home(value)  # (a str option: check_path_params covers Path ones)
    with usage_error():
        path = check_out_file(report_target(value), "--report")
        check_report(value)
    stage = stage_folder_around(path)
    if stage is not None:
        raise typer.BadParameter(f"{value} lies in the pipeline's stage folder {stage}, whose "
                                 "files a rerun of that stage reads or replaces: choose a "
                                 "Markdown file outside the pipeline's stage folders, such as "
                                 "BENCHMARKS.md")
    if not path.parent.is_dir():  # (a typo made /nonexistent/dir/ and "wrote section"; review)
        raise typer.BadParameter(f"{value}: its folder {path.parent} does not exist; create it, or "
                                 "choose a file in an existing folder")
    if path.is_file():  # the section is written into it after the bench ran: read it now
        try:
            path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise typer.BadParameter(f"{value} is not UTF-8 text, so no Markdown section can be "
                                     "written into it; choose another file") from None
    return value


def check_report_beside(report: Optional[str], out: Path, section: Optional[str] = None) -> None:
    """A bench's ``--report`` inside its own ``--out`` (``reporting.check_report``), or one
    holding its ``section`` twice (``reporting.check_sections``), refused at the command's
    start: its callback cannot see ``--out`` and ``--section``, and the same checks in
    ``publish_section`` came only after the whole run."""
    from ..reporting import check_report, check_sections

    if report:
        try:
            check_report(report, out)
            if section is not None:
                check_sections(report, section)
        except DP4TLError as e:
            raise typer.BadParameter(str(e), param_hint="--report") from None


def check_data_root_beside(data_root: Path, out: Path) -> None:
    """A bench's ``--data-root`` that is its ``--out`` or lies inside it, refused at the
    command's start: the builds went into the report folder, and the rerun after a kill was
    refused, its --out now holding a built dataset (``outputs.claim_out_dir``), so the run
    could not resume (audit). An --out inside the data root (``--data-root .``, ``--out
    docs/x``) is fine: the builds go to their own folders beside it (review)."""
    root, folder = Path(data_root).resolve(), Path(out).resolve()
    if root.is_relative_to(folder):
        how = "is" if root == folder else "lies inside"
        raise typer.BadParameter(f"{data_root} {how} the bench's --out {out}: the builds would "
                                 "go in among the report's files, which a rerun then refuses; "
                                 "pass a --data-root outside the --out", param_hint="--data-root")


def section_callback(value: str) -> str:
    """``--section``: one non-empty line, not starting with '#'
    (:func:`~ffcv_dp4tl.reporting.check_section_title`)."""
    from ..reporting import check_section_title

    with usage_error():
        check_section_title(value)
    return value


def notes_callback(values: List[str]) -> List[str]:
    """``--note`` (repeatable): each one line (:func:`~ffcv_dp4tl.reporting.check_one_line`),
    the rule of ``--section``: a line break put a heading of its own into the report."""
    from ..reporting import check_one_line

    with usage_error():
        for value in values or ():
            check_one_line(value, "--note")
    return values


REPORT_HELP = "Also write a section into this Markdown file (e.g. BENCHMARKS.md; '' = none)"


def check_arch(value: Optional[str], ctx: typer.Context = None,  # type: ignore[assignment]
               param: typer.CallbackParam = None) -> Optional[str]:  # type: ignore[assignment]
    """``--arch`` callback: a registered model (``dp4tl models``), checked before any training;
    a given '' is refused (:func:`not_blank_callback`), the default '' is the recipe's model.
    (typer hands ``ctx`` and ``param`` to a callback by their annotations: not Optional ones.)"""
    if not value:
        return not_blank_callback(ctx, param, value)
    from ..training.models import list_models

    if value not in list_models():
        raise typer.BadParameter(f"unknown model {value!r}; choose one of "
                                 f"{', '.join(list_models())} (`dp4tl models` lists them)")
    return value


def refuse_unread(method: str, *, k: Optional[int] = None, iters: Optional[int] = None,
                  backend: Optional[Backend] = None, **inputs: Any) -> None:
    """A setting given for a method that never reads it would be ignored in silence (``--k`` to
    lm, ``--iters`` to sp, ``--target`` or ``--checkpoint`` to random): refused, naming the
    methods that read it. ``None`` (and the default ``Backend.auto``) = not given; an unknown
    method is left to the run to name. ``inputs``: ``dp4tl score``'s inputs by parameter name
    (``checkpoint``, ``target``, ``resolution``, ``target_resolution``, ``target_crop``,
    ``source_resolution``, ``source_crop``; an empty list = not given)."""
    from ..scoring.registry import BACKEND, FEATURES, ITERS, K, get_scorer, is_registered, scorers

    if not is_registered(method):
        return
    scorer = get_scorer(method)
    if k is not None and K not in scorer.reads and "k" in scorer.options:  # (ssp: --opt k=N)
        raise typer.BadParameter(f"{k}: method {method} sets its clusters with --opt k=N, not "
                                 "--k; drop --k", param_hint="--k")

    def setting(name):
        return lambda s: name in (s.reads | s.kernels)

    read_by = {"k": (setting(K), "does not cluster the source"),
               "iters": (setting(ITERS), "runs no k-means"),
               "backend": (setting(BACKEND), "runs none of the scoring kernels"),
               "checkpoint": (lambda s: s.needs_surrogate, "uses no surrogate"),
               "resolution": (lambda s: s.needs_surrogate, "uses no surrogate"),
               "target": (lambda s: s.needs_target, "reads no target"),
               "target_resolution": (lambda s: s.needs_target, "reads no target"),
               "target_crop": (lambda s: s.needs_target, "reads no target"),
               "source_resolution": (lambda s: FEATURES in s.needs, "reads no source features"),
               "source_crop": (lambda s: FEATURES in s.needs, "reads no source features")}
    given = {"k": k, "iters": iters,
             "backend": None if backend in (None, Backend.auto) else backend.value, **inputs}
    for name, value in given.items():
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        reads, what = read_by[name]
        if not reads(scorer):
            flag = "--" + name.replace("_", "-")
            shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else \
                getattr(value, "value", value)
            users = ", ".join(s.name for s in scorers() if reads(s))
            raise typer.BadParameter(f"{shown}: method {method} {what} ({flag} is read by "
                                     f"{users} only); drop {flag}", param_hint=flag)


def default_k(k: Optional[int], data: str) -> int:
    """``--k`` when given, else the default for ``data`` (:func:`~ffcv_dp4tl.contracts.default_k`:
    fewer clusters on the embedded synth data)."""
    if k is not None:
        return check_k(k, "--k")
    return contracts_default_k(is_synth(data))


#: The target the benchmarks score on the embedded synth data (the published cost table's);
#: on other data they take the pipeline's default, the alphabetically first built target.
BENCH_SYNTH_TARGET = "warm"
BENCH_TARGET_HELP = (f"(default: {BENCH_SYNTH_TARGET} on the embedded synth data, else the "
                     "alphabetically first)")


def bench_target(target: str, data: str) -> str:
    """A benchmark's ``--target``: as given, else :data:`BENCH_SYNTH_TARGET` on synth data that
    has it and "" (the pipeline's alphabetically-first rule) on any other data: synth data of
    one target (``num_targets=1``: ``paper`` only) was refused with "unknown target 'warm'",
    after its build, though the help promises the alphabetically first (audit)."""
    if target or not is_synth(data):
        return target
    names = synth_target_names(data)
    return BENCH_SYNTH_TARGET if names is None or BENCH_SYNTH_TARGET in names else ""


def synth_target_names(data: str) -> Optional[list[str]]:
    """The targets of the synth data ``data``, sorted: a ``synth:*`` SOURCE's (as its build
    will name them) or a built folder's (``targets/NAME/``, as the pipeline finds them); None
    when they cannot be told (a bad SOURCE: the pipeline names what is wrong with it). The
    pipeline's rule (:func:`~ffcv_dp4tl.pipeline.targets.synth_targets`), not a second one
    beside it (``SYNTH:tiny`` was no synth data here; review)."""
    from ..pipeline.targets import synth_targets

    return sorted(synth_targets(str(data))) or None


def is_synth(data: str) -> bool:
    """``data`` is the embedded synth data: a ``synth:*`` SOURCE or a folder built from one."""
    return str(data).split(":", 1)[0].split(",", 1)[0] == "synth" or _is_embedded(data)


def _is_embedded(data: str) -> bool:
    """A built folder of the embedded synth data (its manifest says so, whatever its name)."""
    import json

    from ..fsutil import BAD_JSON

    for m in (Path(data) / "manifest.json", Path(data) / "source" / "manifest.json"):
        try:
            return json.loads(m.read_text()).get("extra", {}).get("generator") == "synth"
        except (OSError, *BAD_JSON, AttributeError):
            continue
    return False


def paths(values: Sequence[Path], what: str | None = None) -> list[Path]:
    """Repeated path options (``what``: the option) where each value may also be a
    comma-separated list; each item's leading ``~`` expanded (:func:`expand_home`: the
    parameter's own expansion sees only the first item of ``~/a,~/b``)."""
    return [Path(expand_home(p)) for v in values for p in split_list(str(v), what)]
