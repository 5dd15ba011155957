"""``dp4tl bench ...``: benchmarks that write Markdown reports (``just bench`` calls them)."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Iterable, List, Optional

import typer

from ..bench import defaults
from ..contracts import Criterion
from ..errors import DP4TLError
from ..reporting import command_line
from ..scoring.registry import methods_help
from ..shipped import doc_ref
from .app import Group, app
from .options import (BENCH_TARGET_HELP, PRETRAIN_LENGTH_HELP, PROGRESS_HELP, RECIPES_HELP, REPORT_HELP, Budget, FORMAT_HELP, K_HELP, Format,
                      PretrainLength, Protocol,
                      RecipeSet, bench_target,
                      check_arch, check_data_root_beside, check_report_beside, default_k,
                      device_option, ints_callback, list_callback, notes_callback,
                      out_callback, pruned_ratio_callback, pruned_ratios_callback, ratios_callback,
                      report_callback, section_callback, seeds_callback, split_list)
from .pipeline import FINETUNE_MODES, PROTOCOL_HELP, SURROGATE_WEIGHTS_HELP

bench_app = typer.Typer(cls=Group, help="Benchmarks that write a report (and a BENCHMARKS.md section).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")

SECTION = "Cost table (CPU, embedded data)"
CRITERION_HELP = ("Which epoch's target test top-1 decides a winning subset: final (the last "
                  "epoch) | best (the best epoch on the test set, the authors' best_test_top1); "
                  f"named in every table header; {doc_ref('deviations')}, row 3")


def optional_section(value: Optional[str]) -> Optional[str]:
    """``--section`` that defaults by the folder (``bench render``): checked when given."""
    return None if value is None else section_callback(value)


def _floats(text: str) -> list[float]:
    return [float(x) for x in split_list(text)]


@bench_app.command("cost-table")
def cost_table(
    ratios: str = typer.Option(defaults.joined(defaults.RATIOS), help="Pruning ratios (0 = the shared reference)",
                               callback=ratios_callback("--ratios")),
    methods: str = typer.Option(defaults.joined(defaults.METHODS), help="Selection methods ("
                                f"{methods_help()}); METHOD@R1/R2 runs that method only at those ratios "
                                "(e.g. grand@0.6)"),
    seeds: str = typer.Option(defaults.joined(defaults.PAPER_SEEDS), help="Seeds (scoring seed; train.seed and data.seed for seeds != 0); "
                              "accuracies are mean ± std over them (the paper: 3 trials)",
                              callback=seeds_callback()),
    finetune: str = typer.Option(defaults.joined(defaults.FINETUNE), help="Finetuning modes (comma-separated: lp, ff)",
                                 callback=list_callback(FINETUNE_MODES, "a finetuning mode", required=True)),
    ff_methods: str = typer.Option("", help="Run FF only for these methods (default: all; LP "
                                   "always runs; the 0 % reference runs every mode)"),
    out: Path = typer.Option(Path("docs/cost-table"), "--out", "-o",
                             help="report.md, PNGs, results.json", callback=out_callback),
    data: str = typer.Option("", "--data", help="Source: a built dataset dir or a `dp4tl build` "
                             "SOURCE (default: synth:tiny, the embedded data)"),
    target: List[str] = typer.Option([], help="Built target dir, SOURCE, or synth target name "
                                     f"{BENCH_TARGET_HELP}; several (comma-separated or "
                                     "repeated): one selection for all, accuracy per target "
                                     "(Fig. A5)"),
    target_weights: str = typer.Option("", help="With several targets: one weight each "
                                       "(default: equal)"),
    ks: str = typer.Option("", help="FM at several K (Fig. A2): every method that clusters "
                           "(fm) becomes one variant per K, e.g. 16,32,64 → fm\\[k=16], ...; "
                           "or spell variants in --methods",
                           callback=ints_callback("--ks")),
    orders: str = typer.Option("", help="Pruning orders (Fig. A3): ordered,reversed runs every "
                               "method in both; reversed keeps the lowest-scored units "
                               "(variant lm\\[reversed], labelled \"LM (reversed)\")"),
    protocol: Protocol = typer.Option(Protocol.fast, help=PROTOCOL_HELP),
    recipes: RecipeSet = typer.Option(RecipeSet.auto, help=RECIPES_HELP),
    surrogate_weights: Optional[Path] = typer.Option(None, help=SURROGATE_WEIGHTS_HELP,
                                                     show_default=False),
    arch: str = typer.Option("", help="Override the pretraining model (`dp4tl models`)",
                             callback=check_arch),
    data_root: Path = typer.Option(Path("data")),
    runs_root: Path = typer.Option(Path("runs")),
    format: Format = typer.Option(Format.wds, "--format", help=FORMAT_HELP),
    device: str = device_option(),
    k: Optional[int] = typer.Option(None, help=K_HELP, show_default=False),
    tol: float = typer.Option(0.0, help="Winning subset tolerance in accuracy points: a ratio "
                              "wins when its mean top-1 is >= the unpruned mean - tol (the "
                              "paper: 0, no lower than unpruned)"),
    criterion: Criterion = typer.Option(Criterion.final, help=CRITERION_HELP),
    set_: List[str] = typer.Option([], "--set", help="Pretraining recipe override (repeatable)"),
    set_surrogate: List[str] = typer.Option([], "--set-surrogate", help="Surrogate recipe override"),
    set_finetune: List[str] = typer.Option([], "--set-finetune", help="LP/FF recipe override"),
    opt: List[str] = typer.Option([], "--opt", help="Method option NAME=VALUE (repeatable), given "
                                  "to every method that has it, e.g. runs=2 for el2n/grand"),
    budget: Budget = typer.Option(Budget.units, help="units | samples: what the ratio counts for "
                                  "class/cluster methods (see `dp4tl prune --help`)"),
    pretrain_length: PretrainLength = typer.Option(PretrainLength.epochs, help=PRETRAIN_LENGTH_HELP),
    progress: bool = typer.Option(True, help=PROGRESS_HELP),
    report: Optional[str] = typer.Option(None, help="Also write a `## Cost table` section into this "
                                         "Markdown file (e.g. BENCHMARKS.md; '' = none)",
                                         callback=report_callback),
    section: str = typer.Option(SECTION, help="Title of that section", callback=section_callback),
) -> None:
    """Pipeline for every (method, ratio, seed) → cost table (Tab. 3/4) + accuracy plots (Fig. 4)."""
    from ..bench.cost_table import run_cost_table
    from ..pipeline.config import PipelineConfig

    from .pipeline import target_config

    check_data_root_beside(data_root, out)
    check_report_beside(report, out, section)
    data = data or "synth:tiny"
    recipes_ = "" if recipes is RecipeSet.auto else recipes.value
    k = default_k(k, data)
    tcfg = target_config(target or [bench_target("", data)], target_weights)
    target_text = ",".join(tcfg.get("targets") or [tcfg["target"]])
    base = PipelineConfig(source=data, **tcfg, recipes=recipes_, arch=arch,
                          protocol=protocol.value, surrogate_weights=str(surrogate_weights or ""),
                          data_root=data_root, runs_root=runs_root, fmt=format.value,
                          device=device, k=k, overrides=tuple(set_),
                          surrogate_overrides=tuple(set_surrogate),
                          finetune_overrides=tuple(set_finetune), scorer_options=tuple(opt),
                          budget=budget.value, pretrain_length=pretrain_length.value,
                          progress=progress)
    # the exact command, every option spelled out (defaults included) so it reproduces the run
    opts = [("ratios", ratios), ("methods", methods), ("seeds", seeds), ("finetune", finetune),
            ("ff-methods", ff_methods), ("ks", ks), ("orders", orders), ("data", data),
            ("target", target_text), ("target-weights", target_weights),
            ("protocol", protocol.value), ("recipes", recipes_),
            ("surrogate-weights", surrogate_weights or ""), ("arch", arch), ("data-root", data_root),
            ("runs-root", runs_root), ("format", format.value), ("device", device), ("k", k),
            ("tol", tol), ("criterion", criterion.value),
            *(("set", v) for v in set_), *(("set-surrogate", v) for v in set_surrogate),
            *(("set-finetune", v) for v in set_finetune), *(("opt", v) for v in opt),
            ("budget", budget.value if budget is not Budget.units else ""),
            ("pretrain-length", "" if pretrain_length is PretrainLength.epochs else pretrain_length.value),
            ("out", out),
            ("report", report)]
    from ..bench.variants import plan_methods

    variant_names, method_ratios = plan_methods(methods, [int(x) for x in split_list(ks)],
                                                split_list(orders, "--orders"))
    t = run_cost_table(base, out, ratios=_floats(ratios), methods=variant_names,
                       method_ratios=method_ratios,
                       seeds=[int(s) for s in split_list(seeds)], finetune=split_list(finetune),
                       ff_methods=split_list(ff_methods, "--ff-methods") or None, tol=tol,
                       criterion=criterion.value,
                       command=command_line("dp4tl bench cost-table", opts), log=typer.echo)
    _publish(t, out, Path(report) if report else None, section)


def _publish(t: dict, out: Path, report: Optional[Path], section: str,
             keep_notes: bool = False) -> None:
    """Print the report and (``report``) write its section into a Markdown file (``keep_notes``:
    a render's, with the section's hand-written notes)."""
    from ..bench.markdown import header_lines, markdown_tables
    from ..reporting import publish_section

    typer.echo((out / "report.md").read_text())
    if report is not None:
        publish_section(report, section, out, lambda prefix: "\n".join(
            [*header_lines(t), f"- full report: `{prefix}report.md`", "",
             markdown_tables(t, plots_prefix=prefix)]), typer.echo, keep_notes)


#: The embedded benchmark (issue 18: "a benchmark that separates LM/FM from RANDOM"): on
#: `synth:hard` (targets off the LP ceiling, with ground truth), LM and FM against RANDOM at the
#: same ratio, LP and FF, >= 5 pretraining seeds; verdict = paired differences over seeds x
#: targets with a 95 % t interval (bench/separation.py). Sized for 2 CPU cores.
EMBEDDED_TARGETS = "paper,warm,blur"
EMBEDDED_SECTION = "Embedded benchmark (CPU): do LM and FM beat RANDOM?"


def embedded_section(budget: str, methods: Iterable[str]) -> str:
    """The default BENCHMARKS.md section of an embedded benchmark of ``budget`` comparing
    ``methods`` with RANDOM: :data:`EMBEDDED_SECTION` with the units budget, one of its own
    with another (``Embedded benchmark, same number of images (CPU): does FM beat RANDOM?``),
    so a ``--budget samples`` run or render does not write over the units benchmark's
    section, as both did by default (review)."""
    if budget == Budget.units.value:
        return EMBEDDED_SECTION
    from ..bench.separation import REFERENCE

    names = [m.upper() for m in dict.fromkeys(methods) if m not in ("random", REFERENCE)]
    verb = "does" if len(names) == 1 else "do"
    return (f"Embedded benchmark, same number of images (CPU): {verb} {' and '.join(names)} "
            "beat RANDOM?")


def _rows_section(rows: list) -> str:
    """:func:`embedded_section` of the runs in ``rows`` (the unpruned reference's not a method)."""
    from ..bench.separation import rows_budget

    return embedded_section(rows_budget(rows) if rows else Budget.units.value,
                            [r["method"] for r in rows])


def _publish_embedded(rows: list, out: Path, command: str, header: list[str],
                      report: Optional[str], date: Optional[str] = None,
                      render: bool = False, record: Optional[dict] = None,
                      section: str = EMBEDDED_SECTION) -> None:
    """README.md, paired.png and summary.json in ``out``, the body on stdout and, with
    ``report``, its section ``section`` (links relative to that file). ``date``: the
    run's; ``render``: a render of its rows, which keeps each file's hand-written notes;
    ``record``: summary.json's alone (a pool's folders)."""
    from ..bench.separation import write_outputs
    from ..reporting import publish_section

    def body(prefix: str) -> str:
        text = write_outputs(rows, out, command=command, header=header, date=date,
                             keep_notes=render, record=record)[1]
        return text.replace("](paired.png)", f"]({prefix}paired.png)")

    typer.echo(body(""))
    if report:
        publish_section(Path(report), section, out, body, typer.echo, keep_notes=render)


@bench_app.command("embedded")
def embedded(
    out: Path = typer.Option(Path("docs/embedded-benchmark"), "--out", "-o",
                             help="README.md (verdict, reference, ground truth), paired.png, "
                             "rows.jsonl (one line per finished run: a rerun resumes), summary.json",
                             callback=out_callback),
    seeds: str = typer.Option("0,1,2,3,4,5,6,7,8,9", help="Pretraining/finetuning seeds; a method and "
                              "RANDOM of one seed and target form a pair",
                              callback=seeds_callback()),
    reference_seeds: str = typer.Option("0,1", help="Seeds of the unpruned reference (is the "
                                        "target off the ceiling?); '' = every seed",
                                        callback=seeds_callback("--reference-seeds", required=False)),
    targets: str = typer.Option(EMBEDDED_TARGETS, "--targets", help="Targets of the data "
                                "(paper | warm | blur)"),
    methods: str = typer.Option("lm,fm", help="Methods compared with RANDOM"),
    ratios: str = typer.Option("0.8", help="Pruning ratios in (0, 1) (each method and RANDOM at each)",
                               callback=pruned_ratios_callback(
                                   "--ratios", "RANDOM and each method are paired at each")),
    finetune: str = typer.Option("lp,ff", help="Finetuning modes",
                                 callback=list_callback(FINETUNE_MODES, "a finetuning mode", required=True)),
    data: str = typer.Option("synth:hard", "--data", help="A synth SOURCE with ground truth "
                             "(default: the benchmark preset, targets off the LP ceiling); any "
                             "preset runs the bench recipes (recipes=bench), not the preset's "
                             "own"),
    data_root: Path = typer.Option(Path("data")),
    runs_root: Path = typer.Option(Path("runs/embedded-benchmark")),
    format: Format = typer.Option(Format.wds, "--format", help=FORMAT_HELP),
    device: str = device_option(),
    budget: Budget = typer.Option(Budget.units, help="units | samples: what the ratio counts for "
                                  "class/cluster methods (units: FM's clusters, LM's classes; "
                                  "samples: the kept images match RANDOM's; see `dp4tl prune "
                                  "--help`); in the header"),
    progress: bool = typer.Option(True, help=PROGRESS_HELP),
    report: Optional[str] = typer.Option("BENCHMARKS.md", help="Markdown file that gets the section "
                                         "('' = none)", callback=report_callback),
) -> None:
    """Do LM and FM beat RANDOM? Paired test over seeds x targets on data with a known answer
    (LP and FF; ground truth of every selection); rerunning resumes (stages are cached)."""
    import os
    import platform
    import time

    from ..bench.separation import run_separation
    from ..pipeline.config import PipelineConfig
    from ..pipeline.recipes import RECIPE_SETS
    from ..reporting import machine_info, ran_on

    check_data_root_beside(data_root, out)
    section = embedded_section(budget.value, split_list(methods, "--methods"))
    check_report_beside(report, out, section)
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    bench_set = RECIPE_SETS["bench"]
    names = split_list(targets, "--targets")
    for name in names:
        if name not in ("paper", "warm", "blur"):
            raise DP4TLError(f"--targets: {name!r} is not a target of the embedded data "
                             "(paper, warm, blur)")
    seed_list = [int(s) for s in split_list(seeds)]
    ref_seeds = [int(s) for s in split_list(reference_seeds)] or seed_list
    base = PipelineConfig(source=data, recipes="bench", data_root=data_root, runs_root=runs_root,
                          fmt=format.value, device=device, k=default_k(None, data),
                          budget=budget.value, progress=progress)
    command = (f"dp4tl bench embedded --seeds {seeds} --reference-seeds {','.join(map(str, ref_seeds))} "
               f"--targets {','.join(names)} --methods {methods} --ratios {ratios} --finetune "
               f"{finetune} --data {data} --out {out} --data-root {data_root} --runs-root "
               f"{runs_root} --format {format.value} --device {device}"
               + (f" --budget {budget.value}" if budget is not Budget.units else "")
               # (always: the default writes BENCHMARKS.md's pooled section, so a line without
               # --report '' pasted from a report that wrote none overwrote it)
               + f" --report {shlex.quote(report or '')}")
    rows = run_separation(base, out, targets=names, seeds=seed_list, methods=split_list(methods, "--methods"),
                          ratios=_floats(ratios), finetune=split_list(finetune),
                          reference_seeds=ref_seeds, log=typer.echo)
    minutes = (time.perf_counter() - t0) / 60
    mach = machine_info()
    header = [f"- machine: {platform.processor() or platform.machine()}, {mach['cores']} cores, "
              f"training on {ran_on(device, mach)}; Python {mach['python']}, torch "
              f"{mach['torch']}; finished "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
              f"- this invocation: {minutes:.1f} min (runs already in `rows.jsonl` are not "
              f"rerun); 1-min load average {load0[0]:.1f} at the start, "
              f"{os.getloadavg()[0]:.1f} at the end (a shared machine)",
              f"- data `{data}`, recipes `bench` (surrogate `{bench_set['surrogate']}`, "
              f"pretraining `{bench_set['pretrain']}`, LP `{bench_set['lp']}`, FF "
              f"`{bench_set['ff']}`); FM k={base.k}; {len(rows)} runs in `rows.jsonl`",
              f"- budget `{budget.value}`: "
              + ("the ratio counts each method's units (FM's clusters, LM's classes), so their "
                 "kept share of the images may differ from RANDOM's" if budget is Budget.units
                 else "units pruned until the kept share of the images is closest to 1 - ratio "
                 "(RANDOM's)")]
    _publish_embedded(rows, out, command, header, report, section=section)



@bench_app.command("embedded-pool")
def embedded_pool(
    folders: List[Path] = typer.Argument(..., help="Two or more `bench embedded` --out folders "
                                         "of one design over disjoint seeds (replicates)"),
    out: Path = typer.Option(..., "--out", "-o", help="README.md, paired.png, summary.json of "
                             "the pooled verdict (the rows stay in their folders)",
                             callback=out_callback),
    report: Optional[str] = typer.Option(None, help="Also write the embedded section of this "
                                         "Markdown file ('' = none)", callback=report_callback),
) -> None:
    """One verdict over the seeds of several `bench embedded` runs (a replicate over new seeds
    pooled with the first): the same paired and seed-level tests, n = all their seeds. Nothing
    reruns; runs of other settings, or one trial in two folders, are refused."""
    import time

    from ..bench.separation import pool_record, pool_rows

    from ..outputs import claim_out_dir

    for folder in folders:
        if folder.resolve() == out.resolve():
            raise DP4TLError(f"--out {out} is one of the pooled folders: its README.md and "
                             "summary.json (the run's own record) would be overwritten; pass a "
                             "new folder")
    claim_out_dir(out, "embedded-pool")  # e.g. another run's folder: its record, half replaced
    rows, lines = pool_rows(folders)
    section = _rows_section(rows)
    check_report_beside(report, out, section)
    command = shlex.join(["dp4tl", "bench", "embedded-pool", *map(str, folders), "--out", str(out),
                          *(["--report", report] if report else [])])  # (render reads it back)
    header = [f"- pooled {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from {len(folders)} "
              f"runs of one design ({len(rows)} runs; each folder's README has its machine, "
              "recipes and timing):", *lines]
    out.mkdir(parents=True, exist_ok=True)
    _publish_embedded(rows, out, command, header, report, record=pool_record(folders, out),
                      section=section)


@bench_app.command("render")
def render(
    out: Path = typer.Argument(..., help="The --out folder of a `bench cost-table`, `bench "
                               "embedded` or `bench embedded-pool` run"),
    report: Optional[str] = typer.Option(None, help="Also rewrite the section in this Markdown file "
                                         "('' = none)", callback=report_callback),
    section: Optional[str] = typer.Option(None, help="Title of that section (default: "
                                          f"\"{SECTION}\", an embedded benchmark's "
                                          f"\"{EMBEDDED_SECTION}\", with --budget "
                                          "samples its own)",
                                          callback=optional_section, show_default=False),
    criterion: Optional[Criterion] = typer.Option(None, help="Judge the winning subsets again "
                                                  "with this criterion (default: the run's)",
                                                  show_default=False),
) -> None:
    """Rebuild report.md, the plots and the BENCHMARKS.md section from results.json (nothing
    reruns): for a report written by an older version. An embedded benchmark's folder: its
    README.md, paired.png and summary.json from the rows it reported, its header kept."""
    from ..bench.cost_table import rerender

    embedded_run = (out / "rows.jsonl").is_file() or (out / "summary.json").is_file()
    if embedded_run:
        from ..bench.separation import rerender_inputs

        if criterion is not None:
            raise typer.BadParameter("an embedded benchmark has no winning subsets to judge; "
                                     "drop --criterion", param_hint="--criterion")
        rows, command, header, date, record = rerender_inputs(out)
        section = section or _rows_section(rows)  # (its budget's section)
        check_report_beside(report, out, section)
        _publish_embedded(rows, out, command, header, str(report) if report else None, date,
                          render=True, record=record, section=section)
        return

    section = section or SECTION
    check_report_beside(report, out, section)
    _publish(rerender(out, criterion.value if criterion else None), out,
             Path(report) if report else None, section, keep_notes=True)


@bench_app.command("surrogates")
def surrogates(
    archs: str = typer.Option(",".join(["resnet20s", "vgg2", "resnet32s", "vgg4", "resnet44s",
                                        "resnet56s", "vgg8", "resnet18"]),
                              help="Surrogate architectures (`dp4tl models`), each put into the "
                              "surrogate recipe's model.arch"),
    ratio: float = typer.Option(0.5, help="Pruning ratio of the class-overlap comparison (paper: 0.5)",
                                callback=pruned_ratio_callback("--ratio", "0 % is the shared reference")),
    ratios: str = typer.Option("", help="More pruning ratios for the Fig. 5 trajectory and the "
                               "largest winning ratio (e.g. 0.6,0.7,0.8)",
                               callback=pruned_ratios_callback(
                                   "--ratios", "0 % is the shared reference", required=False)),
    reference: str = typer.Option("resnet18", help="Surrogate the overlaps are measured against "
                                  "(run even if not in --archs)", callback=check_arch),
    finetune: str = typer.Option("lp", help="Finetuning modes (lp, ff); the first one is tabulated",
                                 callback=list_callback(FINETUNE_MODES, "a finetuning mode", required=True)),
    seeds: str = typer.Option("0", help="Seeds of pretraining + finetuning (accuracies: their mean)",
                              callback=seeds_callback()),
    out: Path = typer.Option(Path("docs/surrogates"), "--out", "-o",
                             help="report.md, surrogates.png, results.json", callback=out_callback),
    data: str = typer.Option("synth:tiny", "--data", help="Source: a built dataset dir or a "
                             "`dp4tl build` SOURCE"),
    target: str = typer.Option("", help="Built target dir, SOURCE, or synth target name "
                               + BENCH_TARGET_HELP, show_default=False),
    protocol: Protocol = typer.Option(Protocol.fast, help=PROTOCOL_HELP),
    recipes: RecipeSet = typer.Option(RecipeSet.auto, help="fast protocol: tiny | bench | full"),
    data_root: Path = typer.Option(Path("data")),
    runs_root: Path = typer.Option(Path("runs")),
    format: Format = typer.Option(Format.wds, "--format", help=FORMAT_HELP),
    device: str = device_option(),
    tol: float = typer.Option(0.0, help="Winning subset tolerance in accuracy points"),
    set_: List[str] = typer.Option([], "--set", help="Pretraining recipe override (repeatable)"),
    set_surrogate: List[str] = typer.Option([], "--set-surrogate", help="Surrogate recipe "
                                            "override for every arch (repeatable)"),
    set_arch: List[str] = typer.Option([], "--set-arch", help="Surrogate recipe override for one "
                                       "arch, ARCH:KEY=VALUE (repeatable), e.g. "
                                       "resnet56s:model.width=32"),
    set_finetune: List[str] = typer.Option([], "--set-finetune", help="LP/FF recipe override"),
    report: Optional[str] = typer.Option(None, help=REPORT_HELP, callback=report_callback),
    section: str = typer.Option("Surrogate size (Tab. A6, Fig. 5)", help="Title of that section",
                                callback=section_callback),
    note: List[str] = typer.Option([], "--note", help="A line for the report's header, e.g. why "
                                   "the recipes were shrunk (repeatable; one line each)",
                                   callback=notes_callback),
    progress: bool = typer.Option(True, help=PROGRESS_HELP),
) -> None:
    """LM with surrogates of different sizes (paper Tab. A6 / Fig. 5): params, source accuracy,
    class overlap with the RN-18 selection, target accuracy per ratio, largest winning ratio."""
    from ..bench.surrogates import (header_lines, markdown_tables, parse_arch_overrides,
                                             run_surrogate_bench)
    from ..pipeline.config import PipelineConfig
    from ..reporting import publish_section

    check_data_root_beside(data_root, out)
    check_report_beside(report, out, section)
    if not split_list(archs, "--archs"):
        raise typer.BadParameter(f"got {archs!r}: give at least one surrogate architecture",
                                 param_hint="--archs")
    for a in split_list(archs):
        try:
            check_arch(a)
        except typer.BadParameter as e:
            raise typer.BadParameter(e.message, param_hint="--archs") from None
    if len(set(split_list(archs))) < len(split_list(archs)):
        raise typer.BadParameter(f"{archs!r} lists an architecture twice; list each once",
                                 param_hint="--archs")
    recipes_ = "" if recipes is RecipeSet.auto else recipes.value
    base = PipelineConfig(source=data, target=bench_target(target, data), recipes=recipes_,
                          protocol=protocol.value,
                          data_root=data_root, runs_root=runs_root, fmt=format.value,
                          device=device, overrides=tuple(set_),
                          surrogate_overrides=tuple(set_surrogate),
                          finetune_overrides=tuple(set_finetune),
                          seeds=tuple(int(s) for s in split_list(seeds)), progress=progress)
    opts = [("archs", archs), ("ratio", ratio), ("ratios", ratios), ("reference", reference),
            ("finetune", finetune), ("seeds", seeds), ("data", data), ("target", target),
            ("protocol", protocol.value), ("recipes", recipes_), ("data-root", data_root),
            ("runs-root", runs_root), ("format", format.value), ("device", device), ("tol", tol),
            *(("set", v) for v in set_), *(("set-surrogate", v) for v in set_surrogate),
            *(("set-arch", v) for v in set_arch), *(("set-finetune", v) for v in set_finetune),
            *(("note", v) for v in note), ("out", out), ("report", report)]
    command = command_line("dp4tl bench surrogates", opts)
    t = run_surrogate_bench(base, out, archs=split_list(archs), ratio=ratio,
                            ratios=_floats(ratios), reference=reference,
                            arch_overrides=parse_arch_overrides(set_arch),
                            finetune=split_list(finetune), tol=tol, command=command,
                            notes=note, log=typer.echo)
    typer.echo((out / "report.md").read_text())
    if report is not None:
        publish_section(Path(report), section, out, lambda prefix: "\n".join(
            [*header_lines(t), f"- full report: `{prefix}report.md`", "",
             markdown_tables(t, plot_prefix=prefix)]), typer.echo)
