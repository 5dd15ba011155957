"""scores.json format 2 (2026-12-05): ``source_fingerprint`` and ``array_sha256`` are required.

They were optional on read, so deleting one from a scores.json by hand switched its check off
in silence: prune no longer refused scores of another dataset, or a replaced scores.npy. A file
of format 2 lacking one is now one line naming the file and the field; a format-1 file (or one
without ``format_version``: a scores folder cached before) is read as before, so nothing reruns.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from ffcv_dp4tl.contracts import ScoresMeta
from ffcv_dp4tl.data import load_manifest
from ffcv_dp4tl.errors import DataError, MaskError
from ffcv_dp4tl.pipeline.prune import prune
from ffcv_dp4tl.pipeline.scores_io import DIGESTS, load_scores, write_scores


def _scored(sd, fingerprint: str) -> dict:
    """A scores folder as `dp4tl score` writes it (its source's fingerprint recorded); returns
    its scores.json."""
    write_scores(sd, method="lm", unit="class", scores=np.arange(5, dtype=float),
                 tiebreak=np.ones(5), meta={"source_fingerprint": fingerprint})
    return json.loads((sd / "scores.json").read_text())


def _rewrite(sd, meta: dict) -> None:
    (sd / "scores.json").write_text(json.dumps(meta))


def test_a_fresh_scores_json_is_format_2_with_both_fields(index_dataset, tmp_path):
    fp = load_manifest(index_dataset.root).fingerprint
    meta = _scored(tmp_path / "s", fp)
    assert meta["format_version"] == ScoresMeta.VERSION == 2
    assert meta["source_fingerprint"] == fp and set(meta[DIGESTS]) == {"scores", "tiebreak"}
    assert load_scores(tmp_path / "s").meta.format_version == 2


@pytest.mark.parametrize("field", ["source_fingerprint", DIGESTS])
@pytest.mark.parametrize("how", ["deleted", "null"])
def test_a_required_field_deleted_from_a_format_2_file_is_refused(index_dataset, tmp_path,
                                                                  field, how):
    """Deleting the field switched its check off (prune kept scores of another dataset, or a
    replaced scores.npy): now load and prune refuse, naming the file, the field and the fix."""
    sd = tmp_path / "s"
    meta = _scored(sd, load_manifest(index_dataset.root).fingerprint)
    if how == "deleted":
        del meta[field]
    else:
        meta[field] = None
    _rewrite(sd, meta)
    want = (f"{sd / 'scores.json'} lacks field {field!r}; rerun `dp4tl score` into {sd} (a "
            f"pipeline's cached score stage: delete the stage folder {sd} and rerun the pipeline)")
    with pytest.raises(DataError) as e:
        load_scores(sd)
    assert str(e.value) == want
    with pytest.raises(DataError) as e:
        prune(sd, index_dataset.root, 0.4, tmp_path / "m")
    assert str(e.value) == want
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("version", [1, None])
def test_a_format_1_file_without_them_still_loads(index_dataset, tmp_path, version):
    """A scores folder written before the fields existed (format 1, or no format_version) is
    read as before: there was nothing recorded to check against. The same file claiming
    format 2 is refused: only the current format is held to the rule."""
    sd = tmp_path / "s"
    meta = _scored(sd, load_manifest(index_dataset.root).fingerprint)
    assert meta.pop("format_version") == 2
    del meta["source_fingerprint"], meta[DIGESTS]
    _rewrite(sd, meta if version is None else {**meta, "format_version": version})
    got = load_scores(sd)
    assert got.meta.format_version == 1 and got.meta.source_fingerprint is None
    assert got.scores.tolist() == [0, 1, 2, 3, 4]
    assert prune(sd, index_dataset.root, 0.4, tmp_path / "m")["kept_units"] == [2, 3, 4]
    _rewrite(sd, {**meta, "format_version": 2})
    with pytest.raises(DataError, match=r"scores\.json lacks field 'source_fingerprint'; rerun"):
        load_scores(sd)


@pytest.mark.parametrize("version", [1, None])
def test_a_cached_format_1_folder_with_both_fields_is_reused_and_still_checked(
        index_dataset, tmp_path, version):
    """A score stage cached yesterday (format 1, fingerprint and digests recorded) feeds a new
    ratio without rescoring, and its recorded fields are still checked."""
    sd = tmp_path / "score-abc"
    fp = load_manifest(index_dataset.root).fingerprint
    meta = _scored(sd, fp)
    assert meta.pop("format_version") == 2
    old = meta if version is None else {**meta, "format_version": version}
    _rewrite(sd, old)
    assert load_scores(sd).meta.format_version == 1
    assert prune(sd, index_dataset.root, 0.4, tmp_path / "m1")["kept_units"] == [2, 3, 4]
    assert json.loads((sd / "scores.json").read_text()) == old  # reused as it is
    np.save(sd / "scores.npy", np.arange(5, dtype=float)[::-1].copy())  # the digest still counts
    with pytest.raises(DataError, match=r"scores\.npy differs from the file `dp4tl score` wrote"):
        prune(sd, index_dataset.root, 0.6, tmp_path / "m2")
    np.save(sd / "scores.npy", np.arange(5, dtype=float))
    _rewrite(sd, {**old, "source_fingerprint": "ab" * 32})  # and so does the fingerprint
    with pytest.raises(MaskError, match="computed for another source dataset"):
        prune(sd, index_dataset.root, 0.6, tmp_path / "m2")


def test_a_writer_without_a_source_writes_format_1(tmp_path):
    """`dp4tl score` always records the source's fingerprint; a caller of write_scores that
    knows no source writes format 1, the format that may lack it, never a format-2 file its
    own reader would refuse."""
    sd = tmp_path / "s"
    write_scores(sd, method="random", unit="sample", scores=np.zeros(4), meta={"seed": 1})
    assert json.loads((sd / "scores.json").read_text())["format_version"] == 1
    assert load_scores(sd).meta.seed == 1
    with pytest.raises(ValueError, match="format version 2 must hold 'source_fingerprint'"):
        ScoresMeta(method="lm", unit="class", num_units=1, meta={DIGESTS: {}})
