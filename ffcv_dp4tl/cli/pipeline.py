"""``dp4tl pipeline``: the whole job in one command (``just pretrain`` calls it)."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import List, Optional

import typer

from ..scoring.registry import methods_help, parse_option_pairs
from ..shipped import doc_ref
from .app import UsageError, app
from .options import (ORDER_HELP, PRETRAIN_LENGTH_HELP, PROGRESS_HELP, RECIPES_HELP, FORMAT_HELP, K_HELP, Budget, Format, FinetuneMode, Order,
                      PretrainLength, Protocol, RecipeSet, TargetSplit,
                      check_arch, check_k, device_option, list_callback, not_blank_callback,
                      ratio_callback, refuse_unread, seeds_callback, split_list)

PROTOCOL_HELP = ("fast: today's recipes (tiny on synth data, ffcv-imagenet-style otherwise); "
                 "paper: recipes/paper/, the paper's App. A.1 / Tab. A1 protocol (RN-18 surrogate, "
                 "RN-101 source, LP/FF as published, target read at 224 with no crop for scoring); "
                 "paper-code: recipes/paper_code/, the authors' released configs (per-target LP/FF, "
                 "finetuning from best.ckpt, fp16). How they differ: "
                 f"{doc_ref('deviations')}")
SURROGATE_WEIGHTS_HELP = ("A torchvision/timm state dict (.pth), or a `dp4tl train` checkpoint.pt, of the surrogate recipe's "
                          "architecture, e.g. torchvision's ImageNet ResNet-18: used instead of "
                          "training a surrogate (checked against the source's classes; nothing "
                          "is downloaded)")
SOURCE_WEIGHTS_HELP = ("A torchvision/timm state dict, or a `dp4tl train` checkpoint.pt, of the pretraining recipe's architecture: "
                       "the source model LP/FF start from instead of pretraining one (the "
                       "unpruned reference: --ratio 0)")
SPLIT_HELP = ("Targets built here: auto = the CoOp split_zhou_*.json when it lies beside the data "
              "(the paper's Tab. A1 splits), else official; coop: require it; official: never")

FINETUNE_MODES = [m.value for m in FinetuneMode]
TARGET_HELP = ("Built target dir, a SOURCE like flowers102:/data/flowers, or a synth target name "
               "(default: the alphabetically first, blur on synth data); several "
               "(comma-separated or repeated, e.g. --target warm,blur): one selection scored on "
               "all of them (Fig. A5), LP/FF on each")
TARGET_WEIGHTS_HELP = ("With several targets: one weight per target, comma-separated, in "
                       "--target's order (each target's votes sum to 1 before weighting; "
                       "default: equal)")


def refuse_out(ctx: typer.Context, value: Optional[str]) -> None:
    """A hidden ``--out``/``-o`` (the other commands' output option): refused with where the
    pipeline writes instead. click's "No such option: --out (Possible options: --budget,
    --format, --opt)" named nothing that helps (``just pretrain out=/tmp/x``). The defaults
    shown are the options' own."""
    if value is None:
        return None
    default = {p.name: p.default for p in ctx.command.params}
    folder = shlex.quote(value) if value.strip() and value.isprintable() else "DIR"
    raise UsageError(  # (not BadParameter: "Invalid value for '--out'" says there is one)
        f"dp4tl pipeline has no --out: its stages go under --runs-root (default "
        f"{default['runs_root']}) and its built data under --data-root (default "
        f"{default['data_root']}); pass `--runs-root {folder}` (`just pretrain "
        f"runs_root={folder}`)", ctx=ctx)


def target_config(target: List[str], target_weights: str) -> dict:
    """``--target`` values and ``--target-weights`` → the PipelineConfig fields (one target:
    ``target=``, as before; several: ``targets=`` and ``target_weights=``)."""
    from ..pipeline.targets import check_weights, parse_weights, split_targets

    ts = split_targets(target)
    if not ts and any(str(t).strip() for t in target):  # ',' ran the default target, silently
        raise typer.BadParameter(f"{','.join(target)!r} names no target; give a built target "
                                 "dir, SOURCE or synth target name (or omit --target)",
                                 param_hint="--target")
    if target_weights.strip() and len(ts) <= 1:
        raise typer.BadParameter(f"{target_weights!r} weighs several targets against each other, "
                                 f"but {'one target is' if ts else 'no --target is'} given; drop "
                                 "it, or give several targets", param_hint="--target-weights")
    ws = check_weights(parse_weights(target_weights), max(1, len(ts)))
    if len(ts) <= 1:
        return {"target": ts[0] if ts else ""}
    return {"targets": tuple(ts), "target_weights": ws}


@app.command()
def pipeline(
    ratio: float = typer.Option(0.6, help="Fraction of the method's units to prune: source classes (lm), clusters (fm, fm-sup) or samples (random and the baselines)",
                                callback=ratio_callback),
    data: str = typer.Option("", "--data", help="Source: a built dataset dir or a `dp4tl build` "
                             "SOURCE (e.g. imagenet:/data/ILSVRC2012; default: synth:tiny, the "
                             "embedded data)", callback=not_blank_callback),
    target: List[str] = typer.Option([], help=TARGET_HELP, callback=not_blank_callback),
    target_weights: str = typer.Option("", help=TARGET_WEIGHTS_HELP, callback=not_blank_callback),
    order: Order = typer.Option(Order.ordered, help=ORDER_HELP),
    method: str = typer.Option("lm", help=f"Scoring method: {methods_help()} (see `dp4tl score --help`)"),
    protocol: Protocol = typer.Option(Protocol.fast, help=PROTOCOL_HELP),
    recipes: RecipeSet = typer.Option(RecipeSet.auto, help=RECIPES_HELP),
    surrogate_recipe: str = typer.Option("", help="Override the surrogate recipe (name or .toml)",
                                         callback=not_blank_callback),
    recipe: str = typer.Option("", help="Override the source-model pretraining recipe (name or "
                               ".toml)", callback=not_blank_callback),
    arch: str = typer.Option("", help="Override the pretraining model (`dp4tl models`: resnet50, "
                             "resnet101, vit_b_16, ...)", callback=check_arch),
    lp_recipe: str = typer.Option("", help="Override the LP recipe (e.g. a per-target file extending lp)",
                                  callback=not_blank_callback),
    ff_recipe: str = typer.Option("", help="Override the FF recipe (e.g. a per-target file extending ff)",
                                  callback=not_blank_callback),
    finetune: str = typer.Option("lp,ff", help="Finetuning modes to run on the target "
                                 "(comma-separated: lp, ff)",
                                 callback=list_callback(FINETUNE_MODES, "a finetuning mode",
                                                        required=True)),
    data_root: Path = typer.Option(Path("data"), help="Where SOURCE/target builds go"),
    runs_root: Path = typer.Option(Path("runs"), help="Where stage outputs go"),
    format: Format = typer.Option(Format.ffcv, "--format", help=FORMAT_HELP),
    device: str = device_option(),
    k: Optional[int] = typer.Option(None, help=K_HELP, show_default=False),
    seed: int = typer.Option(0, help="Scoring seed (RANDOM, k-means)"),
    seeds: str = typer.Option("0", help="Pretraining + finetuning seeds (train.seed: init; data.seed: data order), comma-"
                              "separated; several: final/best top-1 as mean ± std in the report",
                              callback=seeds_callback()),
    surrogate_weights: Optional[Path] = typer.Option(None, help=SURROGATE_WEIGHTS_HELP,
                                                     show_default=False),
    source_weights: Optional[Path] = typer.Option(None, help=SOURCE_WEIGHTS_HELP,
                                                  show_default=False),
    split: TargetSplit = typer.Option(TargetSplit.auto, help=SPLIT_HELP),
    set_: List[str] = typer.Option([], "--set", help="Pretraining recipe override section.key=value "
                                   "(repeatable)"),
    set_surrogate: List[str] = typer.Option([], "--set-surrogate", help="Surrogate recipe override "
                                            "(repeatable)"),
    set_finetune: List[str] = typer.Option([], "--set-finetune", help="LP/FF recipe override "
                                           "(repeatable)"),
    opt: List[str] = typer.Option([], "--opt", help="Scoring method option NAME=VALUE "
                                  "(repeatable); the options: `dp4tl score --help`, "
                                  f"{doc_ref('scorers')}"),
    budget: Budget = typer.Option(Budget.units, help="units: the ratio counts the method's classes/"
                               "clusters; samples: prune them until the kept sample fraction "
                               "is closest to 1 - ratio"),
    pretrain_length: PretrainLength = typer.Option(PretrainLength.epochs, help=PRETRAIN_LENGTH_HELP),
    progress: bool = typer.Option(True, help=PROGRESS_HELP),
    out: Optional[str] = typer.Option(None, "--out", "-o", hidden=True, callback=refuse_out),
) -> None:
    """build → surrogate → score → prune → pretrain on the mask → LP/FF on the target → report."""
    from ..pipeline.config import PipelineConfig
    from ..pipeline.report import result_line
    from ..pipeline.run import run_pipeline

    data = data or "synth:tiny"
    refuse_unread(method, k=k)
    parse_option_pairs(opt)  # (NAME=VALUE, a name before '=': refused before the run starts)
    cfg = PipelineConfig(ratio=ratio, source=data, **target_config(target, target_weights),
                         order=order.value, method=method,
                         protocol=protocol.value,
                         recipes="" if recipes is RecipeSet.auto else recipes.value,
                         surrogate_recipe=surrogate_recipe, recipe=recipe, arch=arch,
                         lp_recipe=lp_recipe, ff_recipe=ff_recipe,
                         finetune=tuple(split_list(finetune)), data_root=data_root,
                         runs_root=runs_root, fmt=format.value, device=device,
                         k=None if k is None else check_k(k, "--k"), seed=seed,  # (None: per the data)
                         overrides=tuple(set_), surrogate_overrides=tuple(set_surrogate),
                         finetune_overrides=tuple(set_finetune),
                         seeds=tuple(int(x) for x in split_list(seeds)),
                         surrogate_weights=str(surrogate_weights or ""),
                         source_weights=str(source_weights or ""), split=split.value,
                         scorer_options=tuple(opt), budget=budget.value,
                         pretrain_length=pretrain_length.value, progress=progress)
    res = run_pipeline(cfg, log=typer.echo)
    typer.echo(Path(res.report).read_text())
    typer.echo(result_line(res))
