"""``dp4tl bench ...``: benchmarks that write Markdown reports (``just bench`` calls them)."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import List

import typer

from ..scoring.registry import methods_help
from .app import app

bench_app = typer.Typer(help="Benchmarks that write a report (and a BENCHMARKS.md section).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")

SECTION = "Cost table (CPU, embedded data)"


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


@bench_app.command("cost-table")
def cost_table(
    ratios: str = typer.Option("0,0.2,0.4,0.6,0.8", help="Pruning ratios (0 = the shared reference)"),
    methods: str = typer.Option("lm,fm,random,moderate,grand,el2n", help="Selection methods ("
                                f"{methods_help()}); METHOD@R1/R2 runs that method only at "
                                "those ratios (e.g. grand@0.6)"),
    seeds: str = typer.Option("0", help="Seeds (scoring seed; train.seed for seeds != 0)"),
    finetune: str = typer.Option("lp,ff", help="Finetuning modes"),
    ff_methods: str = typer.Option("", help="Run FF only for these methods (default: all; LP "
                                   "always runs; the 0 % reference runs every mode)"),
    out: Path = typer.Option(Path("docs/cost-table"), help="report.md, PNGs, results.json"),
    source: str = typer.Option("synth:tiny", help="Built source dir or a `dp4tl build` SOURCE"),
    target: str = typer.Option("warm", help="Built target dir, SOURCE, or synth target name"),
    recipes: str = typer.Option("", help="tiny | full (default: tiny for synth)"),
    arch: str = typer.Option("", help="Override the pretraining model"),
    data_root: Path = typer.Option(Path("data")),
    runs_root: Path = typer.Option(Path("runs")),
    format: str = typer.Option("wds", "--format", help="ffcv | wds"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    k: int = typer.Option(64, help="fm: k-means clusters"),
    tol: float = typer.Option(0.5, help="Best winning subset tolerance (accuracy points)"),
    set_: List[str] = typer.Option([], "--set", help="Pretraining recipe override"),
    set_surrogate: List[str] = typer.Option([], "--set-surrogate", help="Surrogate recipe override"),
    set_finetune: List[str] = typer.Option([], "--set-finetune", help="LP/FF recipe override"),
    report: Path = typer.Option(None, help="Also write a `## Cost table` section into this "
                                "Markdown file (e.g. BENCHMARKS.md)"),
    section: str = typer.Option(SECTION, help="Title of that section"),
) -> None:
    """Pipeline for every (method, ratio, seed) → cost table (Tab. 3/4) + accuracy plots (Fig. 4)."""
    from ..pipeline.cost_table import header_lines, markdown_tables, run_cost_table
    from ..pipeline.run import PipelineConfig
    from ..reporting import write_section

    base = PipelineConfig(source=source, target=target, recipes=recipes, arch=arch,
                          data_root=data_root, runs_root=runs_root, fmt=format, device=device,
                          k=k, overrides=tuple(set_), surrogate_overrides=tuple(set_surrogate),
                          finetune_overrides=tuple(set_finetune))
    # the exact command, every option spelled out (defaults included) so it reproduces the run
    opts = [("ratios", ratios), ("methods", methods), ("seeds", seeds), ("finetune", finetune),
            ("ff-methods", ff_methods), ("source", source), ("target", target),
            ("recipes", recipes), ("arch", arch), ("data-root", data_root),
            ("runs-root", runs_root), ("format", format), ("device", device), ("k", k),
            ("tol", tol), *(("set", v) for v in set_), *(("set-surrogate", v) for v in set_surrogate),
            *(("set-finetune", v) for v in set_finetune), ("out", out), ("report", report)]
    command = "dp4tl bench cost-table " + " ".join(
        f"--{name} {shlex.quote(str(v))}" for name, v in opts if v not in ("", None))
    names = _names(methods)
    method_ratios = {n.split("@")[0]: [float(r) for r in n.split("@")[1].split("/") if r]
                     for n in names if "@" in n}
    t = run_cost_table(base, out, ratios=_floats(ratios), methods=[n.split("@")[0] for n in names],
                       method_ratios=method_ratios,
                       seeds=[int(s) for s in _names(seeds)], finetune=_names(finetune),
                       ff_methods=_names(ff_methods) or None, tol=tol,
                       command=command, log=typer.echo)
    typer.echo((out / "report.md").read_text())
    if report is not None:
        try:
            prefix = str(out.resolve().relative_to(report.resolve().parent)) + "/"
        except ValueError:
            prefix = str(out.resolve()) + "/"
        body = "\n".join([*header_lines(t), f"- full report: `{prefix}report.md`", "",
                          markdown_tables(t, plots_prefix=prefix)])
        write_section(report, section, body)
        typer.echo(f"[bench] wrote section '{section}' of {report}")
