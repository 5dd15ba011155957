"""The embedded benchmark (``dp4tl bench embedded``, ``just bench-embedded``): can the CPU machine
answer the paper's question?

LM, FM and RANDOM at 0/40/60/80 %, the paper's eight in-domain baselines at 60 %, three seeds, LP
(every epoch evaluated) on each 500-test-image target of the ``synth:bench`` preset, in <= 90 min
on 2 cores. The in-domain selections, RANDOM and the 0 % reference do not depend on the target:
their pretrainings are cached stages shared by the three targets (only LM/FM pretrain anew).

:class:`EmbeddedBench` is the definition (the grid is fixed; what varies is where and how it
runs), :func:`run_embedded` runs one cost table per target and writes ``OUT/README.md`` (and a
BENCHMARKS.md section) with :func:`embedded_summary`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import DP4TLError
from ..fsutil import atomic_write_text, read_json
from ..pipeline.config import PipelineConfig
from ..reporting import command_line, publish_section
from .cost_table import rerender_table, run_cost_table
from .markdown import markdown_tables, method_label, ratio_label
from .variants import plan_methods

EMBEDDED_METHODS = ("lm,fm,random,sp@0.6,ssp@0.6,grand@0.6,el2n@0.6,moderate@0.6,forget@0.6,"
                    "infmax@0.6,infsum@0.6")
EMBEDDED_TARGETS = ("warm", "paper", "blur")
EMBEDDED_SECTION = "Embedded benchmark (CPU): do LM and FM beat RANDOM?"


@dataclass(frozen=True)
class EmbeddedBench:
    """Where and how the embedded benchmark runs; the grid itself (data, recipes, ratios,
    methods, LP only, EL2N/GraNd over 4 runs) is fixed by the class attributes below."""

    k: int  # FM clusters (the CLI's default for the embedded data)
    seeds: tuple[int, ...] = (0, 1, 2)
    targets: tuple[str, ...] = EMBEDDED_TARGETS
    data_root: Path = Path("data")
    runs_root: Path = Path("runs/embedded-benchmark")
    fmt: str = "wds"
    device: str = "auto"

    DATA = "synth:bench"
    RECIPES = "bench"
    RATIOS = (0.0, 0.4, 0.6, 0.8)
    METHODS = EMBEDDED_METHODS
    FINETUNE = ("lp",)
    OPTIONS = ("el2n.runs=4", "grand.runs=4")

    def check(self) -> None:
        for name in self.targets:
            if name not in EMBEDDED_TARGETS:
                raise DP4TLError(f"--targets: {name!r} is not a target of synth:bench "
                                 "(paper, warm, blur)")

    def base(self, target: str) -> PipelineConfig:
        """The pipeline configuration every run of ``target``'s cost table starts from."""
        return PipelineConfig(source=self.DATA, target=target, recipes=self.RECIPES,
                              data_root=self.data_root, runs_root=self.runs_root, fmt=self.fmt,
                              device=self.device, k=self.k, scorer_options=self.OPTIONS)

    def cost_table_command(self, target: str, out: Path) -> str:
        """The ``dp4tl bench cost-table`` line that reproduces ``target``'s table."""
        return command_line("dp4tl bench cost-table", [
            ("ratios", ",".join(f"{r:g}" for r in self.RATIOS)), ("methods", self.METHODS),
            ("seeds", ",".join(map(str, self.seeds))), ("finetune", ",".join(self.FINETUNE)),
            ("data", self.DATA), ("target", target), ("protocol", "fast"),
            ("recipes", self.RECIPES), ("data-root", self.data_root),
            ("runs-root", self.runs_root), ("format", self.fmt), ("device", self.device),
            ("k", self.k), ("tol", 0.0), *(("opt", o) for o in self.OPTIONS), ("out", out)])

    def command(self, out: Path, report: Optional[Path]) -> str:
        return (f"dp4tl bench embedded --targets {','.join(self.targets)} --seeds "
                f"{','.join(map(str, self.seeds))} --out {out} --data-root {self.data_root} "
                f"--runs-root {self.runs_root} --format {self.fmt} --device {self.device}"
                + (f" --report {report}" if report else ""))


def run_embedded(bench: EmbeddedBench, out: Path, *, report: Optional[Path] = None,
                 log: Callable[[str], None] = print) -> str:
    """One cost table per target into ``out/<target>/``, then ``out/README.md`` (and, with
    ``report``, its section of that Markdown file); returns the summary's Markdown. Rerunning
    resumes: every finished stage is cached."""
    bench.check()
    t0 = time.perf_counter()
    methods, method_ratios = plan_methods(bench.METHODS)
    tables = {}
    for name in bench.targets:
        log(f"[bench embedded] target {name}")
        run_cost_table(bench.base(name), out / name, ratios=list(bench.RATIOS), methods=methods,
                       method_ratios=method_ratios, seeds=list(bench.seeds),
                       finetune=list(bench.FINETUNE),
                       command=bench.cost_table_command(name, out / name), log=log)
        tables[name] = out / name / "results.json"
    return publish_embedded(out, tables, bench.command(out, report), time.perf_counter() - t0,
                            report, log)


def publish_embedded(out: Path, tables: dict[str, Path], command: str, seconds: float | None,
                     report: Optional[Path], log: Callable[[str], None] = print) -> str:
    """``out/README.md`` (and ``report``'s section) from the per-target ``results.json``."""
    loaded = {name: rerender_table(path) for name, path in tables.items()}
    stages = runs_stage_seconds(Path(next(iter(loaded.values()))["config"]["runs_root"]))

    def summary(prefix: str) -> str:
        return embedded_summary(loaded, command=command, seconds=seconds, link_prefix=prefix,
                                stages=stages)

    body = summary("")
    atomic_write_text(out / "README.md", "# " + EMBEDDED_SECTION + "\n\n" + body)
    log(body)
    if report is not None:
        publish_section(report, EMBEDDED_SECTION, out, summary, log)
    return body


def runs_stage_seconds(runs_root: Path) -> tuple[float, int]:
    """Sum of the ``seconds`` every finished stage of ``runs_root`` recorded in its DONE.json, and
    the number of stages: the compute a benchmark cost, each stage counted once however many
    (method, ratio, target) rows share it through the cache."""
    total, n = 0.0, 0
    for done in Path(runs_root).glob("*/DONE.json"):
        try:
            total += float(read_json(done).get("seconds") or 0.0)
            n += 1
        except (OSError, ValueError, AttributeError):
            continue
    return total, n


def describe_data(data: dict[str, Any] | None) -> str:
    """`` (64 source classes in 16 superclasses, 8,000 train images at 32 px; each target 10
    classes, 400 train / 500 test images)`` from the manifests of a cost table's data folders
    (its ``data`` entry); ``""`` when they are not on this machine (a table rendered elsewhere)."""
    from ..data.manifest import load_manifest

    try:
        src = load_manifest(Path(data["source"]))
        tgts = {n: load_manifest(Path(d)) for n, d in data["targets"].items()}
    except (KeyError, TypeError, OSError, DP4TLError):
        return ""

    def count(m, split: str) -> str:
        return f"{m.split(split).num_samples:,}" if split in m.split_names else "–"

    sup = src.contract.extra.get("superclass_names") or []
    px = src.contract.image.max_side if src.contract.image is not None else None
    head = (f"{src.num_classes} source classes" + (f" in {len(sup)} superclasses" if sup else "")
            + f", {count(src, 'train')} train images" + (f" at {px} px" if px else ""))
    each = {n: f"{m.num_classes} classes, {count(m, 'train')} train / {count(m, 'test')} test "
               "images" for n, m in tgts.items()}
    tail = (f"each target {next(iter(each.values()))}" if len(set(each.values())) == 1 else
            "; ".join(f"target `{n}` {e}" for n, e in each.items()))
    return f" ({head}; {tail})"


def embedded_summary(tables: dict[str, dict[str, Any]], *, command: str,
                     seconds: float | None = None, link_prefix: str = "",
                     stages: tuple[float, int] | None = None) -> str:
    """The embedded benchmark's section: per target the LP accuracy table, each method against
    RANDOM (beyond the seeds' spread or not) and the winning subsets, with one verdict line per
    target; ``tables`` maps target name → its cost table (:func:`rerender_table` of its
    ``results.json``). ``stages``: :func:`runs_stage_seconds` of the runs folder, when already read."""
    first = next(iter(tables.values()))
    mach, cfg = first["machine"], first["config"]
    stage_s, n_stages = stages or runs_stage_seconds(Path(cfg["runs_root"]))
    loads = [r["loadavg_1min"] for t in tables.values() for r in t["rows"]
             if r.get("loadavg_1min") is not None]
    opts = cfg.get("scorer_options") or []
    L = [f"- **CPU** run, {mach['cores']} cores ({mach['cpu']}), Python {mach['python']}, "
         f"torch {mach['torch']}; finished {max(t['date'] for t in tables.values())}",
         f"- command: `{command}` (`just bench-embedded`)",
         f"- data `{cfg['source']}`{describe_data(first.get('data'))}; recipes "
         f"`{cfg.get('recipes') or 'auto'}` "
         f"({', '.join(f'{k} `{v}`' for k, v in sorted(first['recipes'].items()))}); FM k="
         f"{cfg['k']}"
         + (f"; method options {', '.join(f'`{o}`' for o in opts)}" if opts else "")
         + f"; seeds {first['seeds']}",
         f"- compute: {stage_s / 60:.1f} min of stage time in all ({n_stages} stages, each run "
         "once and shared through the cache by every target that needs it: the in-domain "
         "baselines, RANDOM and the 0 % reference pretrain once for all targets)"
         + (f"; this invocation took {seconds / 60:.1f} min" if seconds else "")
         + (f"; 1-min load average when pretrainings finished {min(loads):.1f}–{max(loads):.1f} "
            f"on {mach['cores']} cores (a shared machine)" if loads else ""),
         "- accuracy: final-epoch LP target test top-1 %, mean ± std over seeds; **better** / "
         "**worse** = the mean ± std intervals of the method and of RANDOM at the same ratio do "
         "not overlap.", ""]
    L += ["### Verdict per target", "",
          "| target | LM vs RANDOM | FM vs RANDOM | baselines at 60 % vs RANDOM | best winning "
          "ratio LM / FM / RANDOM |", "|---|---|---|---|---|"]
    for name, t in tables.items():
        vs = t["versus_random"].get("lp", [])

        def cell(m: str) -> str:
            return ", ".join(f"{ratio_label(v['ratio'])}: {v['delta']:+.1f} ({v['wins']}/{v['paired']}, "
                             f"{v['verdict']})" for v in vs if v["method"] == m) or "–"
        base = [v for v in vs if v["method"] not in ("lm", "fm")]
        better = [method_label(v["method"]) for v in base if v["verdict"] == "better"]
        worse = [method_label(v["method"]) for v in base if v["verdict"] == "worse"]
        above = sum(v["delta"] > 0 for v in base)
        bcell = (f"{above}/{len(base)} above RANDOM's mean; beyond the spread: "
                 f"{', '.join(better) or 'none'} better, {', '.join(worse) or 'none'} worse")
        w = t["winners"].get("lp", {})
        wcell = " / ".join(ratio_label(w[m]["ratio"]) if m in w else "–" for m in ("lm", "fm", "random"))
        L.append(f"| `{name}` | {cell('lm')} | {cell('fm')} | {bcell} | {wcell} |")
    L += ["", "Cells: Δ top-1 points vs RANDOM (seeds won, verdict)."]
    for name, t in tables.items():
        md = markdown_tables(t, plots_prefix=None)
        tail = md[md.index("### Target test top-1"):]
        tail = tail.replace("\n### ", "\n#### ").replace("### Target test top-1", "#### Target test top-1", 1)
        L += ["", f"### Target `{name}`", "",
              f"Full report (cost, Tab. 4 selection cost, stage breakdown): "
              f"[`{link_prefix}{name}/report.md`]({link_prefix}{name}/report.md)", "", tail.rstrip(),
              "", f"![accuracy vs ratio, {name}]({link_prefix}{name}/accuracy.png)"]
    return "\n".join(L) + "\n"

