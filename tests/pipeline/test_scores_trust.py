"""A cached scores directory is trusted only while its arrays are the ones `dp4tl score` wrote
(issue 21: a scores.npy replaced inside a cached score stage fed new ratios silently, so the
ratios' selections no longer nested)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ffcv_dp4tl.errors import DataError
from ffcv_dp4tl.pipeline.prune import prune
from ffcv_dp4tl.pipeline.scores_io import DIGESTS, load_scores, write_scores


def test_a_replaced_scores_file_is_refused_naming_it(index_dataset, tmp_path):
    sd = tmp_path / "score-abc"
    write_scores(sd, method="lm", unit="class", scores=np.arange(5, dtype=float),
                 tiebreak=np.ones(5), meta={})
    first = prune(sd, index_dataset.root, 0.4, tmp_path / "m1")
    assert first["kept_units"] == [2, 3, 4]
    np.save(sd / "scores.npy", np.arange(5, dtype=float)[::-1].copy())  # same shape and dtype
    with pytest.raises(DataError) as e:
        prune(sd, index_dataset.root, 0.6, tmp_path / "m2")
    assert str(e.value) == (f"{sd / 'scores.npy'} differs from the file `dp4tl score` wrote "
                            "(scores.json records its digest): it was replaced or edited; rerun "
                            f"`dp4tl score` into {sd} (a pipeline's cached score stage: delete the "
                            f"stage folder {sd} and rerun the pipeline)")
    assert not (tmp_path / "m2").exists()
    np.save(sd / "scores.npy", np.arange(5, dtype=float))  # the same values again: trusted
    assert prune(sd, index_dataset.root, 0.6, tmp_path / "m2")["kept_units"] == [3, 4]


def test_a_replaced_tiebreak_or_a_garbage_file_is_named_too(tmp_path):
    sd = tmp_path / "s"
    write_scores(sd, method="lm", unit="class", scores=np.zeros(3), tiebreak=np.ones(3), meta={})
    np.save(sd / "tiebreak.npy", np.zeros(3))
    with pytest.raises(DataError, match=r"tiebreak.npy differs from the file `dp4tl score` wrote"):
        load_scores(sd)
    (sd / "tiebreak.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"tiebreak.npy is not a readable .npy file"):
        load_scores(sd)


def test_scores_written_before_the_digests_still_load(tmp_path):
    sd = tmp_path / "s"
    write_scores(sd, method="random", unit="sample", scores=np.arange(4.0),
                 meta={"seed": 1, "source_fingerprint": "ab" * 32})
    meta = json.loads((sd / "scores.json").read_text())
    assert set(meta[DIGESTS]) == {"scores"}
    del meta[DIGESTS]  # as written then: format 1 (format 2 requires them: test_scores_fields)
    (sd / "scores.json").write_text(json.dumps({**meta, "format_version": 1}))
    np.save(sd / "scores.npy", np.arange(4.0) * 2)  # nothing recorded to check against
    assert load_scores(sd).scores.tolist() == [0, 2, 4, 6]


@pytest.mark.parametrize("edit", ["digest deleted", "all digests deleted", "array added"])
def test_an_array_without_its_recorded_digest_is_refused(tmp_path, edit):
    """Where scores.json records digests, every array file needs one: deleting a replaced
    file's entry (or adding a file) must not switch its check off (it did)."""
    sd = tmp_path / "s"
    write_scores(sd, method="lm", unit="class", scores=np.zeros(3), tiebreak=np.ones(3), meta={})
    meta = json.loads((sd / "scores.json").read_text())
    name = "tiebreak"
    if edit == "array added":
        name = "val_units"
        np.save(sd / "val_units.npy", np.zeros(4, dtype=np.int64))
    else:
        np.save(sd / "tiebreak.npy", np.zeros(3))
        meta[DIGESTS] = {} if edit == "all digests deleted" else {"scores": meta[DIGESTS]["scores"]}
        name = "scores" if edit == "all digests deleted" else name  # (the first named)
    (sd / "scores.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=rf"{name}\.npy has no digest in scores\.json"):
        load_scores(sd)


def test_a_string_higher_is_better_is_refused_not_read_as_true(index_dataset, tmp_path):
    """``"higher_is_better": "false"`` (a string) was read as true: prune kept the wrong end of
    the ranking with exit 0. A wrongly typed field of scores.json is one line naming it."""
    sd = tmp_path / "s"
    write_scores(sd, method="el2n", unit="sample", scores=np.arange(70.0),
                 meta={"seed": 0, "higher_is_better": False})
    kept = prune(sd, index_dataset.root, 0.5, tmp_path / "m")["train_kept"]
    assert kept == 35
    meta = json.loads((sd / "scores.json").read_text())
    (sd / "scores.json").write_text(json.dumps({**meta, "higher_is_better": "false"}))
    with pytest.raises(DataError) as e:
        prune(sd, index_dataset.root, 0.5, tmp_path / "m2")
    assert str(e.value).startswith(f"{sd / 'scores.json'}: field 'higher_is_better' must be true "
                                   "or false, got 'false'; rerun `dp4tl score` into")
    assert not (tmp_path / "m2").exists()


@pytest.mark.parametrize("bad", [99, -1])
def test_cluster_ids_outside_the_scored_units_are_refused_naming_the_file(index_dataset,
                                                                         tmp_path, bad):
    """A cluster id past ``num_units`` matched no score, so its samples were dropped in silence
    (exit 0); a negative one failed naming an internal parameter (``sample_labels``)."""
    units = np.arange(70) % 5
    units[0] = bad
    sd = tmp_path / "s"
    write_scores(sd, method="fm", unit="cluster", scores=np.arange(5.0), train_units=units,
                 meta={})
    with pytest.raises(DataError) as e:
        prune(sd, index_dataset.root, 0.4, tmp_path / "m")
    assert str(e.value).startswith(f"{sd / 'train_units.npy'}: 1 unit ids outside [0, 5) "
                                   f"(scores.npy scores 5 units; e.g. [{bad}]); rerun `dp4tl score`")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("arrays,needle", [
    ({"scores": np.array([np.nan, 1.0, 2.0])}, "scores.npy contains NaN/Inf (first at index 0)"),
    ({"scores": np.zeros((3, 1))}, "scores.npy must be 1-D, got shape (3, 1)"),
    ({"scores": np.array(list("abc"))}, "scores.npy must be numeric, got dtype <U1"),
    ({"scores": np.zeros(3), "tiebreak": np.ones(5)},
     "tiebreak.npy holds 5 entries but scores.npy holds 3 scores"),
    ({"scores": np.zeros(3), "train_units": np.zeros(4)},
     "train_units.npy must hold integer ids, got dtype float64"),
    ({"scores": np.zeros(3), "train_units": np.array([0, 3])}, "train_units.npy: 1 unit ids outside"),
])
def test_a_damaged_array_is_named_with_what_to_do(tmp_path, arrays, needle):
    """The selection functions' checks named their parameters (``scores must be 1-D``,
    ``tiebreak has 5 entries``, ``sample_labels must hold integer ids``) but not the file:
    the reader names it, and says to rescore."""
    sd = tmp_path / "s"
    write_scores(sd, method="fm", unit="cluster", meta={}, **arrays)  # digests match: content
    with pytest.raises(DataError) as e:
        load_scores(sd)
    assert str(e.value).startswith(f"{sd}/{needle}") and f"rerun `dp4tl score` into {sd}" in str(e.value)
    assert "\n" not in str(e.value)


def test_an_emptied_scores_file_is_one_line_naming_it(tmp_path):
    """A scores.npy emptied by a full disk: numpy raises EOFError, which click turned into a
    bare "aborted" (the pipeline's prune stage printed nothing else)."""
    sd = tmp_path / "s"
    write_scores(sd, method="random", unit="sample", meta={}, scores=np.zeros(4))
    (sd / "scores.npy").write_bytes(b"")
    with pytest.raises(DataError, match=rf"^{sd}/scores.npy is not a readable .npy file \(.*\); "
                                        rf"rerun `dp4tl score` into {sd}"):
        load_scores(sd)


def test_a_scores_file_declaring_more_than_it_holds_is_one_line(tmp_path):
    """numpy allocates the array a .npy header declares before reading it: a forged scores.npy
    of a few bytes declaring 2**40 values was a MemoryError traceback."""
    sd = tmp_path / "s"
    write_scores(sd, method="random", unit="sample", meta={}, scores=np.zeros(4))
    with open(sd / "scores.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False,
                                                 "shape": (1 << 40,)})
        f.write(b"\0" * 64)
    with pytest.raises(DataError, match=rf"^{sd}/scores.npy is not a readable .npy file \(its "
                                        r"header declares shape \(1099511627776,\)"):
        load_scores(sd)


def test_prune_before_score_says_to_run_score_into_that_folder(tmp_path):
    """A folder `dp4tl score` never wrote (prune before score, or the surrogate's folder):
    "scores metadata not found" alone left the user to guess that score comes first."""
    sd = tmp_path / "sur"
    sd.mkdir()
    with pytest.raises(DataError) as e:
        load_scores(sd)
    assert str(e.value) == (f"scores metadata not found: {sd / 'scores.json'}; {sd} holds no "
                            f"scores: run `dp4tl score ... --out {sd}` first, or pass the folder "
                            "`dp4tl score` wrote")
    write_scores(sd, method="random", unit="sample", meta={}, scores=np.zeros(4))
    with pytest.raises(DataError, match=rf"^{sd}/scores.json is a file, but the scores are a "
                                        rf"folder: pass the folder `dp4tl score --out` wrote \({sd}\)$"):
        load_scores(sd / "scores.json")


def test_a_truncated_scores_json_says_to_rescore_not_to_rebuild(tmp_path):
    """The JSON reader's default remedy ("rebuild or replace it") fits a file the user made;
    scores.json is rewritten by `dp4tl score`, as every other damaged file of the folder."""
    sd = tmp_path / "s"
    write_scores(sd, method="random", unit="sample", meta={}, scores=np.zeros(4))
    (sd / "scores.json").write_text((sd / "scores.json").read_text()[:40])
    with pytest.raises(DataError) as e:
        load_scores(sd)
    assert str(e.value).startswith(f"scores metadata {sd / 'scores.json'} is not valid JSON (")
    assert str(e.value).endswith(f"; rerun `dp4tl score` into {sd} (a pipeline's cached score "
                                 f"stage: delete the stage folder {sd} and rerun the pipeline)")
    assert "rebuild or replace" not in str(e.value)


@pytest.mark.parametrize("method", ["randm", "LM"])
def test_a_scores_file_names_an_unregistered_method_as_the_command_line_does(tmp_path, method):
    """A ``scores.json`` whose method is not registered was refused in words of its own
    ("is not a scoring method", with the list) beside the command line's ("unknown scoring
    method", which also names the spelling of LM); the registry now words both
    (scoring.registry.unregistered_why), and the file's refusal names the file and the rescore.
    A file is told what is registered, not asked to "choose" (review)."""
    from ffcv_dp4tl.errors import DP4TLError
    from ffcv_dp4tl.scoring.registry import get_scorer, unregistered_why

    sd = tmp_path / "s"
    write_scores(sd, method="lm", unit="class", scores=np.arange(5, dtype=float), meta={})
    meta = json.loads((sd / "scores.json").read_text())
    (sd / "scores.json").write_text(json.dumps({**meta, "method": method}))
    with pytest.raises(DP4TLError) as said:
        get_scorer(method)
    with pytest.raises(DataError) as e:
        load_scores(sd)
    head = f"unknown scoring method {method!r}"
    assert str(said.value).startswith(head + "; ") and "choose" not in str(e.value)
    assert str(e.value) == (f"{sd / 'scores.json'}: {unregistered_why(method, given=False)} "
                            f"(the file was edited, or written "
                            f"by a version with other methods); rerun `dp4tl score` into {sd} (a "
                            f"pipeline's cached score stage: delete the stage folder {sd} and "
                            "rerun the pipeline)")


@pytest.mark.parametrize("field,value,needle", [
    ("method", "randm", "unknown scoring method 'randm' (registered: lm, fm, "),
    ("method", "LM", "unknown scoring method 'LM' (registered: 'lm')"),
    ("unit", "sample", "method 'lm' has unit 'class', but the file says 'sample'"),
    ("unit", "cluster", "says 'cluster' (edited by hand?), which prune would remove"),
])
def test_an_edited_method_or_unit_is_refused_before_masks_are_written(index_dataset, tmp_path,
                                                                      field, value, needle):
    """The digests cover the arrays, not scores.json's fields: an unknown method went into every
    mask's provenance, and LM's class scores relabelled as sample scores were pruned as samples
    (audit). Both are one line naming the file and how to rescore, and no mask is written."""
    sd = tmp_path / "s"
    write_scores(sd, method="lm", unit="class", scores=np.arange(5, dtype=float), meta={})
    meta = json.loads((sd / "scores.json").read_text())
    (sd / "scores.json").write_text(json.dumps({**meta, field: value}))
    with pytest.raises(DataError) as e:
        prune(sd, index_dataset.root, 0.4, tmp_path / "m")
    assert needle in str(e.value) and str(e.value).startswith(str(sd / "scores.json"))
    assert "rerun `dp4tl score`" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "m").exists()
