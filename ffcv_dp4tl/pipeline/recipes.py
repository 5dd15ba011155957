"""Which recipes a pipeline runs: the fast protocol's sets per data scale (tiny / bench / full)
and the paper's protocol (``recipes/paper/``, App. A.1 / Tab. A1, per-target LP/FF)."""
from __future__ import annotations

from ..contracts import Protocol
from ..errors import DP4TLError

#: The fast protocol's recipes per scale (``contracts.RecipeSet``): the embedded default runs
#: the tiny CPU recipes, real data the ffcv-imagenet-style ones.
RECIPE_SETS = {
    "tiny": {"surrogate": "resnet18_tiny_cpu", "pretrain": "resnet34_tiny_cpu",
             "lp": "lp_tiny_cpu", "ff": "ff_tiny_cpu"},
    "full": {"surrogate": "resnet18_surrogate", "pretrain": "resnet50_16ep", "lp": "lp", "ff": "ff"},
    # the embedded benchmark (`dp4tl bench embedded`, data synth:hard or synth:bench): sized for
    # 2 CPU cores
    "bench": {"surrogate": "resnet18_bench_surrogate_cpu", "pretrain": "resnet18_bench_cpu",
              "lp": "lp_bench_cpu", "ff": "ff_bench_cpu"},
}
#: The paper's protocol (recipes/paper/, App. A.1 and Tab. A1), whatever the data's scale.
PAPER_RECIPES = {"surrogate": "paper/resnet18_surrogate", "pretrain": "paper/resnet101_16ep",
                 "lp": "paper/lp", "ff": "paper/ff"}
#: Tab. A1: per-target finetuning resolution (CIFAR-10 at 160; the others 224 = paper/lp, paper/ff)
PAPER_TARGET_RECIPES = {"cifar10": {"lp": "paper/lp_cifar10", "ff": "paper/ff_cifar10"}}
#: MoCo's linear classification protocol, the paper's LP for self-supervised source models
PAPER_SSL_LP = "paper/lp_moco"
#: The authors' released code (recipes/paper_code/, OPTML-Group/DP4TL configs and scripts): the
#: RN-18 surrogate and RN-101 source as released, LP and FF per target as the released
#: configs/imagenet_transfer_to_downstream/<target>_rn101{,_ff}.json (docs/deviations.md)
PAPER_CODE_RECIPES = {"surrogate": "paper_code/resnet18_surrogate",
                      "pretrain": "paper_code/resnet101_16ep",
                      "lp": "paper_code/lp", "ff": "paper_code/ff"}
#: per target (the manifest's dataset name): FF is Adam lr 1e-4 (paper_code/ff) except the three
#: SGD lr 0.1 targets; CIFAR-10 at 160 px
PAPER_CODE_TARGET_RECIPES = {
    "oxfordpets": {}, "flowers102": {}, "dtd": {}, "ucf101": {},
    "cifar10": {"lp": "paper_code/lp_cifar10", "ff": "paper_code/ff_cifar10"},
    "food101": {"ff": "paper_code/ff_sgd"}, "stanfordcars": {"ff": "paper_code/ff_sgd"},
    "sun397": {"ff": "paper_code/ff_sgd"}}
#: the protocols that run a recipes/paper*/ set (one set each: no fast-protocol scale)
PAPER_PROTOCOLS = (Protocol.paper.value, Protocol.paper_code.value)


def recipe_set(protocol: str, scale: str, target_name: str | None = None) -> dict[str, str]:
    """The recipes a protocol runs: ``fast`` → :data:`RECIPE_SETS` [scale]; ``paper`` →
    :data:`PAPER_RECIPES` with Tab. A1's per-target LP/FF (``target_name`` = the target
    manifest's name, e.g. ``cifar10``); ``paper-code`` → :data:`PAPER_CODE_RECIPES` with the
    released per-target LP/FF (a target the authors did not release, e.g. the embedded data's:
    the majority FF recipe, Adam lr 1e-4)."""
    if Protocol.check(protocol, "protocol") == Protocol.fast:
        if scale not in RECIPE_SETS:
            raise DP4TLError(f"recipes= must be one of {', '.join(RECIPE_SETS)}")
        return dict(RECIPE_SETS[scale])
    name = str(target_name or "").lower()
    if protocol == "paper-code":
        return {**PAPER_CODE_RECIPES, **PAPER_CODE_TARGET_RECIPES.get(name, {})}
    return {**PAPER_RECIPES, **PAPER_TARGET_RECIPES.get(name, {})}


def recipe_scorer_options(entries: list[str], method: str) -> dict[str, str]:
    """``["grand.grad=full", "moderate.band=class"]`` (a recipe's scoring.scorer_options) →
    the options of ``method``: ``{"grad": "full"}`` for grand."""
    out: dict[str, str] = {}
    for text in entries:
        name, _, value = text.partition("=")
        m, _, key = name.partition(".")
        if m.strip() == method:
            out[key.strip()] = value.strip()
    return out


def recipe_scale(manifest) -> str:
    """``tiny`` for the embedded generated data (its manifest says ``extra.generator = synth``,
    however it was named or where it was built), ``bench`` for its benchmark presets
    (``synth:bench``, ``synth:hard``), ``full`` for real data."""
    extra = manifest.contract.extra
    if extra.get("generator") != "synth":
        return "full"
    return _synth_scale(extra.get("synth_config") or {})


def _synth_scale(synth_config: dict) -> str:
    return "bench" if synth_config.get("preset") in ("bench", "hard") else "tiny"


def scale_of_source(source: str) -> str:
    """The scale :func:`recipe_scale` gives SOURCE's data, known before it is built: a ``synth``
    spec by its preset, a built folder (or a synth build's ``source/``) by its manifest, anything
    else is real data (``full``). For keys that must name the recipes a run will use."""
    from pathlib import Path

    from ..data.manifest import MANIFEST_NAME, load_manifest

    if source.strip().lower().split(":", 1)[0] == "synth":
        from beton_builders.synth import parse_synth

        return _synth_scale(parse_synth(source).to_dict())
    p = Path(source).expanduser()
    for d in (p / "source", p):
        if (d / MANIFEST_NAME).exists():
            return recipe_scale(load_manifest(d))
    return "full"
