"""Pruning reports the kept *sample* fraction beside every ratio, and ``budget="samples"`` prunes
clusters/classes until that fraction matches 1 − ratio (closest prefix of the unit ranking,
shorter prefix on a tie)."""
from __future__ import annotations


import numpy as np
import pytest

from ffcv_dp4tl.data import load_manifest, load_mask
from ffcv_dp4tl.errors import DataError
from ffcv_dp4tl.pipeline.prune import prune, select_units_by_samples
from ffcv_dp4tl.pipeline.scores_io import write_scores

SIZES = [30, 5, 20, 10, 5]  # 70 samples in 5 clusters


def _units(n: int = 70) -> np.ndarray:
    u = np.repeat(np.arange(5), SIZES)
    return np.random.default_rng(0).permutation(u)[:n]


def _fm_scores(tmp, scores, units, name="s"):
    out = tmp / name
    write_scores(out, method="fm", unit="cluster", scores=np.asarray(scores, float),
                 tiebreak=np.bincount(units, minlength=5).astype(float), train_units=units,
                 meta={})
    return out


def test_select_units_by_samples_hand_made():
    units = _units()
    votes = np.zeros(5)  # all tied: the tie-break (here the sizes) orders them
    sizes = np.bincount(units).astype(float)
    # cumulative sizes in rank order 0, 2, 3, 1, 4: 30, 50, 60, 65, 70
    assert select_units_by_samples(votes, units, 0.6, sizes).tolist() == [0]  # 28 → 30
    assert select_units_by_samples(votes, units, 3 / 7, sizes).tolist() == [0]  # 40: 30|50 tie → shorter
    assert select_units_by_samples(votes, units, 0.2, sizes).tolist() == [0, 2, 3]  # 56 → 60
    assert select_units_by_samples(votes, units, 0.0, sizes).tolist() == [0, 1, 2, 3, 4]
    # scores first: order 1, 3, 2, 4, 0 → cum 5, 15, 35, 40, 70
    s = np.array([1.0, 5, 3, 4, 2])
    assert select_units_by_samples(s, units, 0.5, sizes).tolist() == [1, 2, 3]  # 35
    assert select_units_by_samples(s, units, 0.99, sizes).tolist() == [1]  # at least one unit
    assert select_units_by_samples(s, units, 0.5, sizes, reverse=True).tolist() == [0, 4]  # 30+5
    # an empty unit ranked first is no selection on its own: the prefix runs to one with samples
    empty_first = np.array([9.0, 5, 3, 4, 2, 1])  # unit 0 first; units hold 0, 30, 5, 20, 10, 5
    shifted = units + 1
    assert select_units_by_samples(empty_first, shifted, 0.97, None).tolist() == [0, 1]


def test_prune_reports_the_kept_sample_fraction_and_budget_samples(index_dataset, tmp_path):
    src = index_dataset.root
    units = _units()
    sd = _fm_scores(tmp_path, np.zeros(5), units)
    s = prune(sd, src, 0.6, tmp_path / "m_units")
    # the ratio counts clusters: 2 of 5 kept (the two biggest) = 50 of 70 samples, not 40 %
    assert s["kept_units"] == [0, 2] and s["train_kept"] == 50
    assert s["kept_sample_fraction"] == pytest.approx(50 / 70)
    assert s["kept_unit_fraction"] == pytest.approx(0.4) and "budget" not in s
    info = load_manifest(src).split("train")
    meta = load_mask(tmp_path / "m_units" / "train.npy", info).meta
    assert meta["kept_sample_fraction"] == pytest.approx(50 / 70)
    s = prune(sd, src, 0.6, tmp_path / "m_samples", budget="samples")
    assert s["kept_units"] == [0] and s["train_kept"] == 30 and s["budget"] == "samples"
    assert s["kept_sample_fraction"] == pytest.approx(30 / 70)
    mask = load_mask(tmp_path / "m_samples" / "train.npy", info)
    np.testing.assert_array_equal(mask.indices, np.flatnonzero(units == 0))
    assert mask.meta["budget"] == "samples"
    with pytest.raises(DataError, match="budget"):
        prune(sd, src, 0.6, tmp_path / "x", budget="pixels")
    # ratios are kept to 6 decimals: 0.6000004 is 0.6's prune, in its record too
    s = prune(sd, src, 0.6000004, tmp_path / "m_rounded")
    assert s["kept_units"] == [0, 2] and s["ratio"] == 0.6
    assert load_mask(tmp_path / "m_rounded" / "train.npy", info).meta["ratio"] == 0.6


def test_budget_samples_for_classes_and_samples(index_dataset, tmp_path):
    src = index_dataset.root
    labels = index_dataset.labels
    out = tmp_path / "lm"
    write_scores(out, method="lm", unit="class", scores=np.arange(5, dtype=float), meta={})
    s = prune(out, src, 0.5, tmp_path / "m", budget="samples")
    cum = np.cumsum(np.bincount(labels, minlength=5)[::-1])  # classes 4, 3, ... first
    m = int(np.argmin(np.abs(cum - 35))) + 1
    assert s["kept_units"] == list(range(5 - m, 5))
    assert s["train_kept"] == int(cum[m - 1])
    assert s["kept_sample_fraction"] == pytest.approx(cum[m - 1] / 70)
    # sample units: both budgets are the same
    out = tmp_path / "rand"
    write_scores(out, method="random", unit="sample", scores=np.arange(70, dtype=float), meta={})
    a = prune(out, src, 0.3, tmp_path / "a")
    b = prune(out, src, 0.3, tmp_path / "b", budget="samples")
    assert a["train_kept"] == b["train_kept"] == 49
    assert a["kept_sample_fraction"] == pytest.approx(0.7)


@pytest.mark.parametrize("flag, shown", [([], True), (["--no-progress"], False),
                                         (["--progress"], True)])
def test_cli_score_takes_progress_like_every_long_command(index_dataset, tmp_path, monkeypatch,
                                                          flag, shown):
    """`dp4tl score` extracts features, runs k-means and trains (FORGET, EL2N/GraNd runs): as
    build, train, finetune, pipeline and evaluate, it takes --progress/--no-progress (it said
    "No such option"; audit), handed to the scoring run."""
    from typer.testing import CliRunner

    import ffcv_dp4tl.pipeline.score as score_mod
    from ffcv_dp4tl.cli import app

    seen = {}
    monkeypatch.setattr(score_mod, "score", lambda *a, **kw: seen.update(kw) or {"unit": "sample"})
    r = CliRunner().invoke(app, ["score", "--method", "random", "--data", str(index_dataset.root),
                                 "--out", str(tmp_path / "sc"), *flag])
    assert r.exit_code == 0, r.output
    assert seen["progress"] is shown


def test_cli_prune_budget_and_score_options(index_dataset, tmp_path):
    from typer.testing import CliRunner

    from ffcv_dp4tl.cli import app

    sd = _fm_scores(tmp_path, np.zeros(5), _units())
    r = CliRunner().invoke(app, ["prune", "--scores", str(sd), "--data", str(index_dataset.root),
                                 "--ratio", "0.6", "--budget", "samples", "--out",
                                 str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "1 clusters kept, train 30 samples (kept sample fraction 0.429)" in r.output
    r = CliRunner().invoke(app, ["prune", "--scores", str(sd), "--data", str(index_dataset.root),
                                 "--ratio", "0.6", "--budget", "pixels", "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and not (tmp_path / "x").exists()
    r = CliRunner().invoke(app, ["score", "--method", "random", "--data", str(index_dataset.root),
                                 "--opt", "runs=3", "--out", str(tmp_path / "sc")])
    assert r.exit_code != 0 and "random has no option runs" in str(r.exception or r.output)
    assert not (tmp_path / "sc").exists()


def test_cost_table_gives_each_method_only_its_own_options():
    from ffcv_dp4tl.errors import DP4TLError
    from ffcv_dp4tl.bench.cost_table import options_for, run_cost_table
    from ffcv_dp4tl.pipeline.config import PipelineConfig

    opts = ("runs=2", "grad=full", "band=value")
    assert options_for("grand", opts) == ("runs=2", "grad=full")
    assert options_for("el2n", opts) == ("runs=2",)
    assert options_for("moderate", opts) == ("band=value",)
    assert options_for("lm", opts) == ()
    with pytest.raises(DP4TLError, match="--opt nope=1: none of the methods lm, random"):
        run_cost_table(PipelineConfig(scorer_options=("nope=1",)), None,
                       methods=("lm", "random"), log=lambda s: None)


def test_prune_reverse_keeps_the_other_end_of_a_sample_ranking(index_dataset, tmp_path):
    """``dp4tl prune --order reversed`` with a sample-wise method (the paper's ablation) keeps the
    *lowest*-scored samples where a plain prune keeps the highest, for the same ratio."""
    src = index_dataset.root
    info = load_manifest(src).split("train")
    n = info.num_samples
    out = tmp_path / "s"
    write_scores(out, method="random", unit="sample", scores=np.arange(n, dtype=float),
                 meta={"higher_is_better": True})
    keep = round(0.5 * n)
    prune(out, src, 0.5, tmp_path / "fwd")
    prune(out, src, 0.5, tmp_path / "rev", reverse=True)
    fwd = load_mask(tmp_path / "fwd" / "train.npy", info).indices
    rev = load_mask(tmp_path / "rev" / "train.npy", info).indices
    np.testing.assert_array_equal(fwd, np.arange(n - keep, n))
    np.testing.assert_array_equal(rev, np.arange(keep))


def test_equal_sample_scores_are_cut_in_a_seeded_order_not_by_index(index_dataset, tmp_path):
    """FORGET's integer counts tie in large blocks, and builds store samples class by class: a
    cut by lower index first kept every sample of the low class ids and dropped the high ones
    (audit: kept per class 100,100,100,54,...,32 on class-ordered data). Ties now follow a
    permutation seeded by the scores' seed: spread over the indices, reproducible, and the
    same order at every ratio, so selections nest."""
    src = index_dataset.root

    def kept(seed, ratio, name):
        out = tmp_path / f"forget-{seed}"
        if not out.exists():  # all unforgettable: one block of ties
            write_scores(out, method="forget", unit="sample", scores=np.zeros(70),
                         meta={"seed": seed, "higher_is_better": True})
        prune(out, src, ratio, tmp_path / name)
        return set(load_mask(tmp_path / name / "train.npy").indices.tolist())

    half = kept(0, 0.5, "a")
    assert len(half) == 35 and half != set(range(35))
    assert 25 < np.mean(sorted(half)) < 45  # spread (index order: mean 17)
    assert kept(0, 0.5, "again") == half  # reproducible
    assert half < kept(0, 0.3, "more")  # nested across ratios
    assert kept(1, 0.5, "other-seed") != half


def test_a_second_prune_into_a_folder_being_written_is_refused(index_dataset, tmp_path):
    """Two prunes of other ratios into one --out at once could leave one's train.npy beside the
    other's val.npy (each mask is written atomically, the pair is not): the folder is locked
    while its masks are written, and the second is one line that writes nothing."""
    import os

    from ffcv_dp4tl.locks import directory_lock
    from ffcv_dp4tl.pipeline.prune import PRUNE_LOCK

    sd = _fm_scores(tmp_path, np.zeros(5), _units())
    out = tmp_path / "masks"
    with directory_lock(out / PRUNE_LOCK, "the test's prune"):
        with pytest.raises(DataError, match=rf"another dp4tl process \(pid {os.getpid()}\) on host \S+ is "
                                            rf"using mask folder {out}"):
            prune(sd, index_dataset.root, 0.6, out)
    assert sorted(p.name for p in out.iterdir()) == [PRUNE_LOCK]
    assert prune(sd, index_dataset.root, 0.6, out)["train_kept"] == 50  # free again


def test_a_ratio_that_keeps_no_cluster_names_clusters(index_dataset, tmp_path):
    """The refusal names the method's units: FM's are clusters ("of 5 classes" misled a user
    whose source has other classes; an audit)."""
    from ffcv_dp4tl.errors import DP4TLError

    sd = _fm_scores(tmp_path, np.zeros(5), _units())
    with pytest.raises(DP4TLError, match=r"keeping a fraction 0\.05 of 5 clusters keeps none"):
        prune(sd, index_dataset.root, 0.95, tmp_path / "m")


def test_at_ratio_0_every_method_keeps_the_same_mask_and_the_pipeline_says_so(index_dataset,
                                                                              tmp_path):
    """Ratio 0 keeps the whole split whatever the unit, byte for byte, so the pretraining (keyed
    by the mask's content) is one stage for every method; a method that trains a surrogate
    first spends that time on nothing, and the pipeline says so (an audit: `--ratio 0` with
    the default LM trained a surrogate and scored)."""
    from ffcv_dp4tl.pipeline.config import PipelineConfig
    from ffcv_dp4tl.pipeline.run import ratio_zero_note
    from ffcv_dp4tl.scoring.registry import get_scorer

    src = index_dataset.root
    n = load_manifest(src).split("train").num_samples
    classes = tmp_path / "lm"
    write_scores(classes, method="lm", unit="class", scores=np.arange(5, dtype=float), meta={})
    samples = tmp_path / "random"
    write_scores(samples, method="random", unit="sample",
                 scores=np.random.default_rng(0).random(n), meta={})
    prune(classes, src, 0.0, tmp_path / "m_lm")
    prune(samples, src, 0.0, tmp_path / "m_random")
    assert (tmp_path / "m_lm" / "train.npy").read_bytes() == \
        (tmp_path / "m_random" / "train.npy").read_bytes()
    note = ratio_zero_note(PipelineConfig(ratio=0.0), get_scorer("lm"))
    assert "`--method random --ratio 0`" in note
    assert "so LM's surrogate and scores change nothing" in note  # (the method as every line names it)
    assert ratio_zero_note(PipelineConfig(ratio=0.4), get_scorer("lm")) is None
    assert ratio_zero_note(PipelineConfig(ratio=0.0), get_scorer("random")) is None


def test_budget_samples_says_when_whole_units_cannot_meet_it(index_dataset, tmp_path):
    """Whole clusters of 30, 5, 20, 10, 5 samples cannot keep 50 % of 70 in rank order 0, 2, …
    (30 or 50 of 70): the prune keeps the closest prefix and says how far it is from the ask;
    within 5 points (ratio 0.6: 30 kept for 28 asked) it says nothing."""
    src = index_dataset.root
    units = _units()
    sd = _fm_scores(tmp_path, np.zeros(5), units)
    with pytest.warns(UserWarning, match=r"asks to keep 0\.500 .* keeps 0\.429: clusters are kept whole"):
        s = prune(sd, src, 0.5, tmp_path / "far", budget="samples")
    assert s["train_kept"] == 30
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prune(sd, src, 0.6, tmp_path / "near", budget="samples")
        prune(sd, src, 0.5, tmp_path / "units")  # the units budget keeps its ratio of units
