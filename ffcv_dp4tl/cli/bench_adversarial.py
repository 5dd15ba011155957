"""``dp4tl bench adversarial``: paper Tab. 5 (DENSE / DENSE-ADV / LM / LM-ADV)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .bench import bench_app
from .options import (PROGRESS_HELP, RECIPES_HELP, REPORT_HELP, FORMAT_HELP, K_HELP, AdvNorm, AdvUnits, Format, Protocol, RecipeSet,
                      check_arch, check_data_root_beside, check_report_beside, default_k, device_option, list_callback, out_callback, report_callback,
                      pruned_ratio_callback, section_callback, seeds_callback, split_list)
from .pipeline import FINETUNE_MODES, PROTOCOL_HELP

SECTION = "Adversarial pretraining (Tab. 5)"


@bench_app.command("adversarial")
def adversarial(
    ratio: float = typer.Option(0.6, help="LM pruning ratio of the pruned models (the paper: the "
                                "best winning ratio per target, 0.7 for SUN397 and 0.5 for DTD)",
                                callback=pruned_ratio_callback("--ratio", "the pruned models' ratio")),
    seeds: str = typer.Option("0", help="Seeds (train.seed and data.seed of pretraining and finetuning); "
                              "accuracies are mean ± std over them", callback=seeds_callback()),
    finetune: str = typer.Option("lp", help="Finetuning modes (comma-separated: lp, ff)",
                                 callback=list_callback(FINETUNE_MODES, "a finetuning mode", required=True)),
    steps: int = typer.Option(3, help="PGD steps of the ADV models (the paper: 3)"),
    eps: str = typer.Option("3/255", help="PGD radius > 0 in pixel units (images in [0, 1]; "
                            "at most 1 for linf), a number or N/D (authors' code: Linf 3/255; Salman et al.: L2 3 or Linf 4/255)"),
    step_size: str = typer.Option("", help="PGD step size in pixel units (default: 2 × eps / "
                                  "steps, the authors' code; 0 = 2.5 × eps / steps, Madry et al.)"),
    norm: AdvNorm = typer.Option(AdvNorm.linf, help="PGD norm"),
    random_start: bool = typer.Option(True, help="Start the attack at a random point of the ball"),
    units: Optional[AdvUnits] = typer.Option(None, help="Units of the PGD step and random start "
                                             "(default: normalized under --protocol paper-code, "
                                             "as the authors' released script; pixel otherwise)",
                                             show_default=False),
    method: str = typer.Option("lm", help="Selection method of the pruned models"),
    out: Path = typer.Option(Path("docs/adversarial"), "--out", "-o",
                             help="report.md and results.json", callback=out_callback),
    data: str = typer.Option("", "--data", help="Source: a built dataset dir or a `dp4tl build` "
                             "SOURCE (default: synth:tiny, the embedded data)"),
    target: str = typer.Option("", help="Built target dir, SOURCE, or synth target name "
                               "(default: the alphabetically first, blur on synth data)"),
    protocol: Protocol = typer.Option(Protocol.fast, help=PROTOCOL_HELP),
    recipes: RecipeSet = typer.Option(RecipeSet.auto, help=RECIPES_HELP),
    arch: str = typer.Option("", help="Override the pretraining model (`dp4tl models`)",
                             callback=check_arch),
    data_root: Path = typer.Option(Path("data")),
    runs_root: Path = typer.Option(Path("runs")),
    format: Format = typer.Option(Format.wds, "--format", help=FORMAT_HELP),
    device: str = device_option(),
    k: Optional[int] = typer.Option(None, help=K_HELP, show_default=False),
    set_: List[str] = typer.Option([], "--set", help="Pretraining recipe override (all four "
                                   "models; repeatable)"),
    set_surrogate: List[str] = typer.Option([], "--set-surrogate", help="Surrogate recipe override"),
    set_finetune: List[str] = typer.Option([], "--set-finetune", help="LP/FF recipe override"),
    report: Optional[str] = typer.Option(None, help=REPORT_HELP, callback=report_callback),
    section: str = typer.Option(SECTION, help="Title of that section", callback=section_callback),
    progress: bool = typer.Option(True, help=PROGRESS_HELP),
) -> None:
    """DENSE, DENSE-ADV, LM and LM-ADV source models → LP/FF accuracy and pretraining time (Tab. 5)."""
    from ..bench.adversarial import adv_overrides, header_lines, markdown_tables, run_adversarial
    from ..pipeline.config import PipelineConfig
    from ..reporting import command_line, publish_section

    check_data_root_beside(data_root, out)
    check_report_beside(report, out, section)
    data = data or "synth:tiny"
    recipes_ = "" if recipes is RecipeSet.auto else recipes.value
    k = default_k(k, data)
    units_ = units.value if units is not None else (
        AdvUnits.normalized.value if protocol is Protocol.paper_code else AdvUnits.pixel.value)
    adv = adv_overrides(steps, eps, step_size, norm.value, random_start, units_)
    base = PipelineConfig(source=data, target=target, recipes=recipes_, arch=arch,
                          protocol=protocol.value, data_root=data_root, runs_root=runs_root,
                          fmt=format.value, device=device, k=k, overrides=tuple(set_),
                          surrogate_overrides=tuple(set_surrogate),
                          finetune_overrides=tuple(set_finetune), progress=progress)
    opts = [("ratio", ratio), ("seeds", seeds), ("finetune", finetune), ("steps", steps),
            ("eps", eps), ("step-size", step_size), ("norm", norm.value),
            *((("units", units.value),) if units is not None else ()), ("method", method),
            ("data", data), ("target", target), ("protocol", protocol.value), ("recipes", recipes_),
            ("arch", arch), ("data-root", data_root), ("runs-root", runs_root),
            ("format", format.value), ("device", device), ("k", k),
            *(("set", v) for v in set_), *(("set-surrogate", v) for v in set_surrogate),
            *(("set-finetune", v) for v in set_finetune), ("out", out), ("report", report)]
    command = command_line("dp4tl bench adversarial", opts) + \
        ("" if random_start else " --no-random-start")
    t = run_adversarial(base, out, ratio=ratio, seeds=[int(s) for s in split_list(seeds)],
                        finetune=split_list(finetune), adv=adv, method=method, command=command,
                        log=typer.echo)
    typer.echo((out / "report.md").read_text())
    if report is not None:
        publish_section(Path(report), section, out, lambda prefix: "\n".join(
            [*header_lines(t), f"- full report: `{prefix}report.md`", "", markdown_tables(t)]),
            typer.echo)
