"""The scorer registry: what every built-in method declares, the errors, and that a new method is
one file — a toy scorer registered here is picked up by the score stage, prune, the pipeline,
the cost table and the CLI without any other edit (and unregistered again after each test)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ffcv_dp4tl.contracts import SCORE_UNITS
from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.scoring.context import ScoringContext
from ffcv_dp4tl.scoring.registry import (FEATURES, LOGITS, NEEDS, TARGET, TRAJECTORY, UNIT_PLURAL,
                                        Cost, Option, PlotStyle, Scorer, ScoreResult, get_scorer, list_scorers,
                                        methods_help, register_scorer, scorers,
                                        self_supervised_alternatives, unregister_scorer)
from tiny_data import SYNTH, TRAIN

BUILTINS = ["lm", "fm", "fm-sup", "random", "moderate", "el2n", "grand"]
#: the paper's other in-domain baselines (registered after the ones above)
INDOMAIN = ["sp", "ssp", "forget", "infmax", "infsum"]
ALL_BUILTINS = BUILTINS + INDOMAIN


class ToyScorer(Scorer):
    """The smallest complete scorer: keeps the source classes with the highest ids."""
    name = "toy"
    help = "toy: highest class ids first"
    unit = "class"
    cost = Cost(steps=("nothing at all",))
    style = PlotStyle("black", "*", "TOY")

    def score(self, ctx: ScoringContext) -> ScoreResult:
        ctx.meta["toy"] = True
        return ScoreResult(scores=np.arange(ctx.source.num_classes, dtype=np.float64))


@pytest.fixture
def toy():
    register_scorer(ToyScorer)
    yield get_scorer("toy")
    unregister_scorer("toy")


# ------------------------------------------------------------------------ built-in methods
def test_builtin_names_units_and_needs():
    assert list_scorers()[:len(BUILTINS)] == BUILTINS
    units = {s.name: s.unit for s in scorers() if s.name in BUILTINS}
    assert units == {"lm": "class", "fm": "cluster", "fm-sup": "cluster", "random": "sample",
                     "moderate": "sample", "el2n": "sample", "grand": "sample"}
    needs = {n: get_scorer(n).needs for n in BUILTINS}
    assert needs["lm"] == {LOGITS, TARGET}
    assert needs["fm"] == needs["fm-sup"] == {FEATURES, TARGET}
    assert needs["random"] == frozenset()
    assert needs["moderate"] == {FEATURES}
    assert needs["el2n"] == needs["grand"] == {LOGITS, TRAJECTORY}
    assert all(set(n) <= set(NEEDS) for n in needs.values())
    assert [n for n in BUILTINS if get_scorer(n).needs_class_head] == ["lm", "el2n", "grand"]
    assert [n for n in BUILTINS if not get_scorer(n).needs_surrogate] == ["random"]
    assert self_supervised_alternatives() == ["fm", "fm-sup", "moderate", "ssp"]


def test_every_method_has_help_cost_and_its_own_plot_style():
    styles = {}
    for s in scorers():
        assert s.help and "\n" not in s.help, s.name
        assert s.unit in SCORE_UNITS
        assert s.style is not None and s.style.color and s.style.marker and s.style.label, s.name
        assert "|" not in s.cost_summary()  # it goes into a Markdown table cell
        styles[s.name] = (s.style.color, s.style.marker)
    assert len(set(styles.values())) == len(styles)  # no two methods look alike in a plot
    labels = {n: get_scorer(n).label for n in BUILTINS}
    assert labels == {"lm": "LM", "fm": "FM", "fm-sup": "FM-sup", "random": "RANDOM",
                      "moderate": "MODERATE", "el2n": "EL2N", "grand": "GraNd"}
    assert get_scorer("random").cost_summary() == "seeded permutation"
    assert get_scorer("fm").cost_summary().startswith("surrogate training; surrogate forward over "
                                                      "target train, source train; k-means")
    assert "early checkpoint" in get_scorer("el2n").cost_summary()


def test_trajectory_methods_score_the_earliest_kept_checkpoint():
    final, e2, e4 = Path("checkpoint.pt"), Path("checkpoint_e2.pt"), Path("checkpoint_e4.pt")
    assert get_scorer("el2n").pick_checkpoint(final, (e2, e4)) == e2
    assert get_scorer("grand").pick_checkpoint(final, ()) == final
    assert get_scorer("lm").pick_checkpoint(final, (e2, e4)) == final


def test_units_are_the_ones_scores_files_and_prune_know():
    from ffcv_dp4tl.pipeline.prune import PRUNE_BY_UNIT

    assert set(UNIT_PLURAL) == set(SCORE_UNITS) == set(PRUNE_BY_UNIT)


# ------------------------------------------------------------------------------- errors
def test_unknown_method_is_one_line_listing_the_registered_names(tmp_path):
    from ffcv_dp4tl.bench.cost_table import run_cost_table
    from ffcv_dp4tl.pipeline.config import PipelineConfig
    from ffcv_dp4tl.pipeline.run import run_pipeline
    from ffcv_dp4tl.pipeline.score import score

    with pytest.raises(DP4TLError) as e:
        get_scorer("nope")
    msg = str(e.value)
    assert msg == f"unknown scoring method 'nope'; choose one of {', '.join(list_scorers())}"
    assert "\n" not in msg
    for call in (lambda: score("nope", source_dir=tmp_path, out_dir=tmp_path / "s"),
                 lambda: run_pipeline(PipelineConfig(method="nope", runs_root=tmp_path / "r")),
                 lambda: run_cost_table(PipelineConfig(runs_root=tmp_path / "r"),
                                        methods=("lm", "nope"))):
        with pytest.raises(DP4TLError, match="unknown scoring method 'nope'; choose one of lm, "):
            call()
    assert not (tmp_path / "s").exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", list_scorers())
def test_a_method_named_as_the_docs_write_it_is_told_its_spelling(name, tmp_path):
    """The README and reports write the methods in capitals (LM, FM, RANDOM); ``--method LM``
    was refused with the whole list, which did not say that case was the problem (audit). The
    names stay lower case (stage keys hold them); the refusal names the spelling, also in the
    pipeline and the cost table, before any work."""
    from ffcv_dp4tl.bench.cost_table import run_cost_table
    from ffcv_dp4tl.pipeline.config import PipelineConfig
    from ffcv_dp4tl.pipeline.run import run_pipeline

    want = f"unknown scoring method {name.upper()!r}; method names are lower case: {name!r}"
    for call in (lambda: get_scorer(name.upper()),
                 lambda: run_pipeline(PipelineConfig(method=name.upper(), runs_root=tmp_path / "r")),
                 lambda: run_cost_table(PipelineConfig(runs_root=tmp_path / "r"),
                                        methods=("lm", name.upper()))):
        with pytest.raises(DP4TLError) as e:
            call()
        assert str(e.value) == want
    assert get_scorer(name).name == name and not (tmp_path / "r").exists()


@pytest.mark.parametrize("method", ["el2n", "grand"])
def test_negative_early_training_epoch_is_refused_not_run_as_the_default(method):
    """--opt epoch=-1 ran as epoch 0 (the recipe's early checkpoint) and was recorded as -1."""
    from ffcv_dp4tl.scoring.training_runs import early_epoch
    from ffcv_dp4tl.training.recipe import load_recipe

    scorer = get_scorer(method)
    assert scorer.parse_options({"epoch": "0"})["epoch"] == 0
    with pytest.raises(DP4TLError, match=rf"^{method}: option epoch='-1' must be >= 0; epoch: "):
        scorer.parse_options({"epoch": "-1"})
    with pytest.raises(DP4TLError, match=r"epoch=-1 must be >= 0"):  # the API path too
        early_epoch(load_recipe("resnet18_tiny_cpu"), -1)


@pytest.mark.parametrize("method", list_scorers())
def test_every_numeric_option_declares_and_enforces_its_minimum(method):
    """Counts, epochs and dampings below their minimum are refused when options are parsed,
    before any work (a negative value used to run as the default, or fail deep inside)."""
    scorer = get_scorer(method)
    for name, opt in scorer.options.items():
        if not opt.is_number:
            continue
        assert opt.minimum is not None, f"{method}: option {name} has no minimum"
        assert scorer.parse_options({name: str(opt.minimum)})[name] == opt.minimum
        with pytest.raises(DP4TLError, match=rf"^{method}: option {name}=.* must be >= "):
            scorer.parse_options({name: str(opt.minimum - 1)})
        if isinstance(opt.default, float):  # inf passed `< minimum` and gave NaN scores
            for bad in ("inf", "nan", "-inf"):
                with pytest.raises(DP4TLError, match=rf"^{method}: option {name}='{bad}' must be a finite"):
                    scorer.parse_options({name: bad})


def test_registration_is_checked():
    class BadUnit(Scorer):
        name, unit = "bad-unit", "pixel"

    class BadNeeds(Scorer):
        name, needs = "bad-needs", frozenset({"labels"})

    class BadReads(Scorer):
        name, reads = "bad-reads", frozenset({"batch_size"})

    class Nameless(Scorer):
        pass

    class BadRevision(Scorer):
        name, revision = "bad-revision", "2"

    class Clash(Scorer):
        name = "lm"

    class NoMinimum(Scorer):  # docs/scorers.md's example knob, before it showed `minimum`
        name, options = "no-minimum", {"power": Option(1.0, "exponent of the counts")}

    class CountNoMinimum(Scorer):
        name, options = "count-no-minimum", {"runs": Option(3, "runs")}

    class LooksLikeForget(Scorer):  # a newcomer's first style was FORGET's (review)
        name, unit = "looks-like-forget", "sample"
        style = PlotStyle(get_scorer("forget").style.color, get_scorer("forget").style.marker, "X")

    with pytest.raises(ValueError, match="unit 'pixel'"):
        register_scorer(BadUnit)
    with pytest.raises(ValueError, match="unknown needs"):
        register_scorer(BadNeeds)
    with pytest.raises(ValueError, match="unknown reads"):
        register_scorer(BadReads)
    with pytest.raises(ValueError, match="name"):
        register_scorer(Nameless)
    with pytest.raises(ValueError, match="revision must be an integer >= 0, got '2'"):
        register_scorer(BadRevision)
    with pytest.raises(ValueError, match="registered already"):
        register_scorer(Clash)
    # a numeric knob without its minimum is refused at import, naming the fix (a test found it)
    with pytest.raises(ValueError, match=r"^scorer 'no-minimum': numeric option 'power' has no "
                                         r"minimum; give its smallest allowed value: "
                                         r"Option\(1\.0, \.\.\., minimum=\.\.\.\)$"):
        register_scorer(NoMinimum)
    with pytest.raises(ValueError, match="numeric option 'runs' has no minimum"):
        register_scorer(CountNoMinimum)
    with pytest.raises(ValueError, match=r"^scorer 'looks-like-forget': plot style '.+' '.+' is "
                                         r"'forget''s; choose another colour or marker"):
        register_scorer(LooksLikeForget)
    with pytest.raises(TypeError):
        register_scorer(object)  # type: ignore[arg-type]
    assert list_scorers()[:len(BUILTINS)] == BUILTINS and "bad-unit" not in list_scorers()
    assert "looks-like-forget" not in list_scorers()
    assert "no-minimum" not in list_scorers() and "count-no-minimum" not in list_scorers()


def test_self_supervised_refusal_names_the_alternatives():
    from ffcv_dp4tl.pipeline.score import self_supervised_refusal

    msg = str(self_supervised_refusal(get_scorer("lm"), "ckpt.pt was trained self-supervised "
                                                        "(moco_v2)"))
    assert "supervised surrogate" in msg and "self-supervised" in msg
    assert msg.endswith("fm, fm-sup, moderate, ssp")


# ----------------------------------------------------------------- adding a method = one file
def test_a_registered_toy_scorer_runs_through_score_prune_and_the_pipeline(toy, data_root,
                                                                           tmp_path, capsys):
    from ffcv_dp4tl.data import load_manifest, load_mask
    from ffcv_dp4tl.bench.markdown import method_cost, method_label, method_style
    from ffcv_dp4tl.pipeline.config import PipelineConfig
    from ffcv_dp4tl.pipeline.run import run_pipeline
    from ffcv_dp4tl.pipeline.scores_io import load_scores

    assert "toy" in list_scorers() and "toy" in methods_help() and toy.label == "TOY"
    assert method_label("toy") == "TOY" and method_style("toy").marker == "*"
    assert method_cost("toy") == "nothing at all"
    said: list[str] = []
    capsys.readouterr()
    res = run_pipeline(PipelineConfig(ratio=0.5, source=SYNTH, target="", method="toy",
                                      fmt="wds", finetune=(), device="cpu", data_root=data_root,
                                      runs_root=tmp_path / "runs", overrides=TRAIN),
                       log=said.append)
    # the pretraining's own lines reach the pipeline's log, not stdout (Python API review)
    assert capsys.readouterr().out == ""
    assert any(s.startswith("training ") for s in said) and any(s.startswith("epoch 1/")
                                                                for s in said)
    # needs nothing: no surrogate is trained for it
    assert list(res.stages) == ["score", "prune", "pretrain"]
    sc = load_scores(next((tmp_path / "runs").glob("score-*")))
    assert sc.method == "toy" and sc.unit == "class" and sc.meta.meta["toy"] is True
    source = load_manifest(res.source)
    n = source.num_classes
    assert res.stages["prune"].values["kept_units"] == list(range(n - n // 2, n))
    info = source.split("train")
    mask = load_mask(next((tmp_path / "runs").glob("prune-*")) / "train.npy", info)
    labels = np.asarray(info.load_labels())
    np.testing.assert_array_equal(mask.indices, np.flatnonzero(labels >= n - n // 2))
    assert "TOY at ratio 0.5" in Path(res.report).read_text()


def test_a_scorer_that_returns_no_score_result_is_one_line(source_dir, tmp_path):
    """A user's scorer returning a bare array is told what score() must return: it failed as
    "'numpy.ndarray' object has no attribute 'scores'" (Python API review)."""
    from ffcv_dp4tl.pipeline.score import score

    class Bare(ToyScorer):
        name = "bare"

        def score(self, ctx):
            return np.arange(ctx.source.num_classes, dtype=np.float64)

    register_scorer(Bare)
    try:
        with pytest.raises(DP4TLError, match=r"scorer 'bare' returned a ndarray; its score\(ctx\) "
                                             r"must return a ScoreResult\(scores=\.\.\.\)"):
            score("bare", source_dir=source_dir, out_dir=tmp_path / "s")
    finally:
        unregister_scorer("bare")


def test_a_registered_toy_scorer_is_a_cli_choice(source_dir, tmp_path):
    """In a fresh process: register the toy (as importing its file would), then the CLI lists
    it in --help, scores with it and prunes its scores; unknown names stay one-line errors.
    One process runs every command (``cli_runner.run_cli``), since a start costs seconds."""
    source = source_dir
    commands = [
        ["score", "--help"],
        ["pipeline", "--help"],
        ["score", "--method", "toy", "--data", str(source), "--out", str(tmp_path / "s")],
        ["prune", "--scores", str(tmp_path / "s"), "--data", str(source), "--ratio", "0.5",
         "--out", str(tmp_path / "m")],
        ["score", "--method", "zz", "--data", str(source), "--out", str(tmp_path / "z")],
    ]
    prog = ("import importlib.util, json, sys\n"
            f"sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"  # tests/: tiny_data, cli_runner
            f"spec = importlib.util.spec_from_file_location('toy_module', {str(Path(__file__))!r})\n"
            "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
            "from ffcv_dp4tl.scoring.registry import register_scorer\n"
            "register_scorer(mod.ToyScorer)\n"
            "from cli_runner import run_cli\n"
            "res = [run_cli(*args) for args in json.loads(sys.argv[1])]\n"
            "print(json.dumps([[r.returncode, r.stdout, r.stderr] for r in res]))\n")
    proc = subprocess.run([sys.executable, "-c", prog, json.dumps(commands)], capture_output=True,
                          text=True, timeout=600, env={**__import__("os").environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    (h_score, h_pipe, score, prune, unknown) = [
        subprocess.CompletedProcess(c, *r) for c, r in zip(commands, json.loads(proc.stdout.splitlines()[-1]))]

    # (the help as read: rich's box and the wrapping of its help column removed, so a new option
    # that widens the option column and rewraps the text does not hide it)
    def read(text: str) -> str:
        return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())

    assert h_score.returncode == 0 and "toy: toy: highest class ids first" in read(h_score.stdout), h_score.stderr
    # (what is registered, not a copy of the list: a method file added to scoring/methods/ is
    # one of them, and toy, registered last, is listed after every built-in; review)
    registered = list_scorers()
    assert registered[:len(ALL_BUILTINS)] == ALL_BUILTINS
    assert h_pipe.returncode == 0 and f"{registered[-1]} | toy" in read(h_pipe.stdout), h_pipe.stderr
    assert score.returncode == 0 and "toy scores per class" in score.stdout, score.stderr
    assert json.loads((tmp_path / "s" / "scores.json").read_text())["unit"] == "class"
    assert prune.returncode == 0 and "4 classes kept" in prune.stdout, prune.stderr
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert unknown.stderr.strip() == ("error: unknown scoring method 'zz'; choose one of "
                                      f"{', '.join(registered)}, toy")
    assert not (tmp_path / "z").exists()


# ------------------------------------------------------------- every registered scorer, for real
def _score_all(method: str, out: Path, source_dir: Path, target_dir: Path, run: Path,
               **settings):
    """``score(method)`` as the pipeline calls it, on the session's tiny data and surrogate;
    knobs that multiply work (``runs``, ``epochs``) at 1 where a scorer has them."""
    from tiny_data import TEST_OVERRIDES

    from ffcv_dp4tl.pipeline.score import score

    s = get_scorer(method)
    opts = {name: 1 for name in ("runs", "epochs") if name in s.options}
    own_recipe = s.trains and not s.needs_surrogate  # (FORGET: trains from the recipe alone)
    return score(method, source_dir=source_dir, out_dir=out,
                 target_dir=target_dir if s.needs_target else None,
                 checkpoint=run / "checkpoint.pt" if s.needs_surrogate else None,
                 trajectory=[run / "checkpoint_e1.pt"], fmt="wds", device="cpu",
                 num_workers=0, progress=False, options=opts,
                 train_recipe="resnet18_tiny_cpu" if own_recipe else None,
                 train_overrides=TEST_OVERRIDES if own_recipe else (), **settings)


@pytest.mark.parametrize("method", list_scorers())
def test_every_registered_scorer_scores_its_units_deterministically_and_prunes(
        method, source_dir, target_dir, trained_run, tmp_path):
    """As timm runs every ``list_models()`` entry: each scorer, through the score stage, gives
    one finite score per unit of its declared unit, the same scores again for the same seed,
    scores that settings it does not declare (``Scorer.reads``: k, seed) cannot change (what
    lets its stage key leave them out), and scores that ``prune`` turns into masks."""
    from ffcv_dp4tl.data import load_manifest, load_mask
    from ffcv_dp4tl.pipeline.prune import prune
    from ffcv_dp4tl.pipeline.scores_io import load_scores

    s = get_scorer(method)
    src = load_manifest(source_dir)
    train = src.split("train")
    _score_all(method, tmp_path / "a", source_dir, target_dir, trained_run, k=4, seed=0)
    a = load_scores(tmp_path / "a")
    assert a.method == method and a.unit == s.unit and a.meta.num_units == len(a.scores)
    assert a.meta.source_fingerprint == src.fingerprint
    assert np.isfinite(a.scores).all() and (a.tiebreak is None or np.isfinite(a.tiebreak).all())
    if s.unit == "class":
        assert len(a.scores) == src.num_classes
    elif s.unit == "cluster":
        assert a.train_units.shape == (train.num_samples,)
        assert 0 <= a.train_units.min() and a.train_units.max() < len(a.scores)
    else:
        assert len(a.scores) == train.num_samples
    # again: the same settings → the same scores; other values of settings it does not read
    # (k, seed) → the same scores too
    again = {"k": 4, "seed": 0} if s.reads else {"k": 5, "seed": 1}
    _score_all(method, tmp_path / "b", source_dir, target_dir, trained_run, **again)
    b = load_scores(tmp_path / "b")
    np.testing.assert_array_equal(a.scores, b.scores)
    for name in ("tiebreak", "train_units", "val_units"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y)
    # prune takes them: half the units (or samples) go, a consistent mask is written
    summary = prune(tmp_path / "a", source_dir, 0.5, tmp_path / "mask")
    mask = load_mask(tmp_path / "mask" / "train.npy", train)
    assert 0 < len(mask) == summary["train_kept"] < train.num_samples
    assert summary["unit"] == s.unit and summary["method"] == method


def test_score_keys_hold_only_the_settings_a_scorer_reads(data_root, tmp_path):
    """``--k`` changes FM's clusters but not LM's votes: rerunning with another k reuses LM's
    score stage (and every stage after it: same scores, same mask) but rescores FM."""
    from ffcv_dp4tl.pipeline.config import PipelineConfig
    from ffcv_dp4tl.pipeline.result import PipelineResult
    from ffcv_dp4tl.pipeline.run import run_pipeline

    assert get_scorer("lm").key_settings(k=4, seed=1) == {}
    assert get_scorer("fm").key_settings(k=4, seed=1) == {"k": 4, "seed": 1}
    assert get_scorer("random").key_settings(k=4, seed=1) == {"seed": 1}

    def run(method: str, k: int) -> PipelineResult:
        return run_pipeline(PipelineConfig(ratio=0.5, source=SYNTH, method=method, k=k,
                                           fmt="wds", finetune=(), device="cpu",
                                           data_root=data_root, runs_root=tmp_path / "runs",
                                           overrides=TRAIN, surrogate_overrides=TRAIN),
                            log=lambda s: None)

    lm3, lm5 = run("lm", 3), run("lm", 5)
    assert lm3.stages["score"].ran and not lm5.stages["score"].ran
    assert not lm5.stages["prune"].ran and not lm5.stages["pretrain"].ran
    assert lm5.stages["prune"].values["kept_units"] == lm3.stages["prune"].values["kept_units"]
    fm3, fm5 = run("fm", 3), run("fm", 5)
    assert not fm3.stages["surrogate"].ran  # the surrogate is LM's: shared
    assert fm3.stages["score"].ran and fm5.stages["score"].ran
    assert (fm3.stages["score"].values["k"], fm5.stages["score"].values["k"]) == (3, 5)
