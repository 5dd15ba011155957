"""``dp4tl score``'s own checks (:mod:`ffcv_dp4tl.pipeline.score`), before any work."""
from __future__ import annotations

import json

import pytest
from lock_probe import exclusive_is_free

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.pipeline.score import score


@pytest.mark.parametrize("kw,needle", [
    ({"resolution": 0}, "--resolution"),  # 0 is not "the default": omitting the option is
    ({"resolution": -5}, "--resolution"),
    ({"resolution": 100000}, "--resolution"),  # a torch allocation traceback before
    ({"target_resolution": 100000}, "--target-resolution"),
    ({"target_resolution": -1}, "--target-resolution"),
    ({"source_resolution": 100000}, "--source-resolution"),
])
def test_impossible_resolutions_are_refused_before_work(tmp_path, kw, needle):
    out = tmp_path / "scores"
    with pytest.raises(DP4TLError, match=rf"^{needle}.* must be an integer number of pixels "
                                         r"from [01] to \d+"):
        score("lm", source_dir=tmp_path / "no_source", out_dir=out, target_dir=tmp_path / "t",
              checkpoint=tmp_path / "c.pt", **kw)
    assert not out.exists()


def test_scores_of_another_source_or_target_are_never_replaced(tmp_path, source_dir, target_dir,
                                                               trained_run):
    """``dp4tl score`` into a folder holding the same method's scores of other data (another
    target, another source) refuses, keeping them (it used to replace LM scores for one target
    with another target's silently); the same data is a rerun."""
    import numpy as np

    from ffcv_dp4tl.data import load_manifest
    from ffcv_dp4tl.errors import DataError
    from ffcv_dp4tl.pipeline.scores_io import write_scores

    src = load_manifest(source_dir)
    out = tmp_path / "lm"
    kw = dict(source_dir=source_dir, out_dir=out, target_dir=target_dir,
              checkpoint=trained_run / "checkpoint.pt", fmt="wds", device="cpu", progress=False)
    for meta, needle in (({"source_fingerprint": src.fingerprint, "target_fingerprints": ["warm?"]},
                          "another target"),
                         ({"source_fingerprint": "elsewhere",
                           "target_fingerprints": [load_manifest(target_dir).fingerprint]},
                          "another source")):
        write_scores(out, method="lm", unit="class", scores=np.ones(src.num_classes), meta=meta)
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        with pytest.raises(DataError, match=f"--out {out} holds lm scores of {needle}; pass "
                                            "another --out"):
            score("lm", **kw)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    write_scores(out, method="lm", unit="class", scores=np.ones(src.num_classes),
                 meta={"source_fingerprint": src.fingerprint,
                       "target_fingerprints": [load_manifest(target_dir).fingerprint]})
    assert score("lm", **kw)["method"] == "lm"  # the same data: rescored in place
    # scores of a newer ffcv-dp4tl are never "damaged, nothing to lose": they are not rescored
    meta = json.loads((out / "scores.json").read_text())
    (out / "scores.json").write_text(json.dumps({**meta, "format_version": 99}))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DataError, match=r"format version 99, but this ffcv-dp4tl reads versions "
                                        r"up to \d+; upgrade"):
        score("lm", **kw)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_source_input_can_be_set_for_a_surrogate_trained_without_it(tmp_path, source_dir,
                                                                     trained_run):
    """A surrogate whose recipe set no [scoring] source pair (the paper MoCo recipe before
    2026-12-03) can still read the source as the paper does: the options win over the
    checkpoint's embedded recipe, and scores.json records what was read."""
    import json

    out = tmp_path / "moderate"
    score("moderate", source_dir=source_dir, out_dir=out, checkpoint=trained_run / "checkpoint.pt",
          fmt="wds", device="cpu", progress=False, source_resolution=24, source_crop="none")
    assert json.loads((out / "scores.json").read_text())["source_feature_input"] == [24, "none"]


def test_a_target_given_twice_is_refused_before_work(tmp_path):
    """``--target warm,warm`` (or ``warm`` and ``warm/``) scored the same target twice: its votes
    counted double, in silence. One line naming it, before any data is read."""
    out, t = tmp_path / "scores", tmp_path / "warm"
    with pytest.raises(DP4TLError, match=rf"^target '{t}' is given twice; list each target once"):
        score("lm", source_dir=tmp_path / "no_source", out_dir=out,
              target_dir=[t, tmp_path / "other", f"{t}/"], checkpoint=tmp_path / "c.pt")
    assert not out.exists()


def test_a_copied_target_or_the_source_as_target_is_refused_before_work(tmp_path, source_dir,
                                                                        target_dir, trained_run):
    """A target folder copied under another path passed the path check: its votes counted
    twice. The source passed as its own target scored transfer to itself. Both are caught by
    content fingerprint (as the pipeline does), before the surrogate is loaded."""
    import shutil

    copy = tmp_path / "copy_of_target"
    shutil.copytree(target_dir, copy)
    kw = dict(source_dir=source_dir, checkpoint=trained_run / "checkpoint.pt", fmt="wds",
              device="cpu", progress=False)
    out = tmp_path / "scores"
    with pytest.raises(DP4TLError, match=rf"^targets '{target_dir}' and '{copy}' are the same "
                                         r"dataset \(same content fingerprint\)"):
        score("lm", out_dir=out, target_dir=[target_dir, copy], **kw)
    with pytest.raises(DP4TLError, match=rf"^--target {source_dir} is the source dataset.*; pass "
                                         r"the target's built folder \(`dp4tl build` makes one\)$"):
        score("lm", out_dir=out, target_dir=source_dir, **kw)  # (no LAYOUT:PATH here: the pipeline's)
    assert not out.exists()


def test_a_second_score_into_a_folder_being_scored_is_refused(tmp_path, source_dir, target_dir,
                                                              trained_run):
    """Two `dp4tl score --out S` at once: the second deleted the feature file the first was
    writing, and the first published scores of half a file with exit 0. The folder is locked
    while scores are written; the second is one line and writes nothing."""
    import os

    from ffcv_dp4tl.errors import DataError
    from ffcv_dp4tl.locks import directory_lock
    from ffcv_dp4tl.pipeline.score import SCORE_LOCK

    out = tmp_path / "fm"
    with directory_lock(out / SCORE_LOCK, "the test's scoring"):
        with pytest.raises(DataError, match=rf"another dp4tl process \(pid {os.getpid()}\) on host \S+ is "
                                            rf"using scores folder {out}"):
            score("fm", source_dir=source_dir, out_dir=out, target_dir=target_dir, k=4,
                  checkpoint=trained_run / "checkpoint.pt", fmt="wds", device="cpu",
                  progress=False)
    assert sorted(p.name for p in out.iterdir()) == [SCORE_LOCK]


def _kernel_users() -> list[str]:
    from ffcv_dp4tl.scoring.registry import BACKEND, scorers

    return [s.name for s in scorers() if BACKEND in s.kernels]


@pytest.mark.parametrize("method", _kernel_users())
def test_the_cuda_backend_without_a_gpu_is_refused_before_any_work(tmp_path, monkeypatch, method):
    """`score --method fm --backend cuda` on a machine without a GPU failed only after the
    features were extracted, advising backend='cpu' (review): refused first, naming the option.
    Every method that runs the kernels (ssp's k-means was not checked)."""
    import ffcv_dp4tl.kernels as kernels

    monkeypatch.setattr(kernels, "cuda_available", lambda: False)
    with pytest.raises(DP4TLError, match=r"backend='cuda' needs CuPy and a CUDA device.*"
                                         r"\(`--backend cpu`\)$"):
        score(method, source_dir=tmp_path / "nowhere", out_dir=tmp_path / "s", backend="cuda")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("kw,given", [({"train_recipe": "resnet18_tiny_cpu"}, "--recipe"),
                                      ({"train_overrides": ["train.epochs=3"]}, "--set"),
                                      ({"train_recipe": "x", "train_overrides": ["a=1"]},
                                       "--recipe and --set")])
def test_a_training_recipe_given_to_a_method_that_trains_nothing_is_named(tmp_path, kw, given):
    """`dp4tl score --method lm --recipe R` dropped R without a word (the user believed it
    changed the scores): a note names the methods that read it. The note comes before any work
    (here, the refusal of a missing source)."""
    with pytest.warns(UserWarning, match=rf"^{given} set the runs a method trains itself "
                                         r"\(el2n, [a-z, ]*forget[a-z, ]*\); lm trains none, so "
                                         "they are ignored$"):
        with pytest.raises(DP4TLError):
            score("lm", source_dir=tmp_path / "nowhere", out_dir=tmp_path / "s", **kw)


def test_a_method_that_trains_takes_its_recipe_without_a_note(tmp_path, recwarn):
    with pytest.raises(DP4TLError):
        score("forget", source_dir=tmp_path / "nowhere", out_dir=tmp_path / "s",
              train_recipe="resnet18_tiny_cpu")
    assert not [w for w in recwarn if "trains none" in str(w.message)]


def test_a_method_that_cannot_hold_the_source_in_memory_is_refused_when_scoring_starts(
        tmp_path, monkeypatch, source_dir, trained_run):
    """INFMAX/INFSUM hold every source train and val sample's logits and float64 softmax
    (ImageNet-21K: at least 3.7 TB): a source too big for the process's memory is refused in
    one line before the source is read, not killed by the kernel with no message. Every other
    method reads in batches or blocks (docs/scale.md): nothing of it grows with the source, so
    none is refused however little memory there is."""
    from ffcv_dp4tl import cpus
    from ffcv_dp4tl.data import load_manifest
    from ffcv_dp4tl.scoring.registry import check_memory, scorers

    monkeypatch.setattr(cpus, "memory_limit", lambda: 1 << 10)  # 1 KiB
    src = load_manifest(source_dir)
    n = src.split("train").num_samples + src.split("val").num_samples
    for scorer in scorers():
        if scorer.name in ("infmax", "infsum"):
            assert scorer.memory_bytes(src) == n * src.num_classes * 12
            with pytest.raises(DP4TLError, match=f"^--method {scorer.name} would hold"):
                check_memory(scorer, src)
        else:
            assert scorer.memory_bytes(src) == 0
            check_memory(scorer, src)
    out = tmp_path / "inf"
    with pytest.raises(DP4TLError, match=r"^--method infmax would hold about 0\.0 GiB in memory "
                                         r"for .*, more than the 0\.0 GiB this process may use"):
        score("infmax", source_dir=source_dir, out_dir=out,
              checkpoint=trained_run / "checkpoint.pt", fmt="wds", device="cpu", progress=False)
    assert not out.exists() or not any(out.iterdir())


def test_the_data_being_scored_is_held_against_a_rebuild(tmp_path, source_dir, monkeypatch):
    """``dp4tl score`` reads the source (and targets) while it scores: a ``build --overwrite``
    of it then is refused (the readers' lock), and the lock is let go at the end (review: only
    train, finetune and the pipeline held it)."""

    import ffcv_dp4tl.pipeline.score as score_mod
    from beton_builders.out_dir import LOCK_NAME


    seen = []
    real = score_mod.write_scores
    monkeypatch.setattr(score_mod, "write_scores",
                        lambda *a, **k: seen.append(exclusive_is_free(source_dir / LOCK_NAME)) or real(*a, **k))
    score("random", source_dir=source_dir, out_dir=tmp_path / "r", fmt="wds", device="cpu",
          progress=False)
    assert seen == [False]
    assert exclusive_is_free(source_dir / LOCK_NAME)


def test_score_asked_for_too_many_workers_names_its_argument(tmp_path, source_dir, trained_run,
                                                             capsys, monkeypatch):
    """`score(num_workers=N)` (`dp4tl score --workers N`) on a smaller machine: the note named
    the recipe key data.num_workers, which the caller never used (review)."""
    from ffcv_dp4tl.data import resources

    monkeypatch.setattr(resources, "_NOTED", set())
    score("random", source_dir=source_dir, out_dir=tmp_path / "r", fmt="wds", device="cpu",
          progress=False, num_workers=10_000)
    err = capsys.readouterr().err
    assert "[note] num_workers = 10000 but this machine gives the process" in err, err
    assert "data.num_workers" not in err
