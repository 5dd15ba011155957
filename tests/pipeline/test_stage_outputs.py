"""A finished stage's file that a later stage reads, deleted by hand: one line saying which
stage folder to delete, never a silent substitute (issue 21: EL2N/GraNd fell back to the final
surrogate under the same stage key when the early checkpoint was missing)."""
from __future__ import annotations

import shutil

import pytest

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.pipeline.run import _trajectory
from ffcv_dp4tl.pipeline.stages import stage


def test_a_missing_early_checkpoint_is_an_error_not_a_fallback(tmp_path):
    sur = stage(tmp_path, "surrogate", {"x": 1})
    sur.dir.mkdir(parents=True)
    (sur.dir / "checkpoint.pt").write_bytes(b"final")
    (sur.dir / "checkpoint_e1.pt").write_bytes(b"early 1")
    logged: list[str] = []
    with pytest.raises(DP4TLError) as e:
        _trajectory("el2n", sur, [1, 2], 10, logged.append)
    assert str(e.value) == (f"{sur.dir / 'checkpoint_e2.pt'} is missing from the surrogate stage's "
                            f"folder, which a later stage reads; delete the stage folder {sur.dir} "
                            "and rerun to recompute it")
    assert logged == []  # no false "keeps no early checkpoint" line
    (sur.dir / "checkpoint_e2.pt").write_bytes(b"early 2")
    assert _trajectory("el2n", sur, [2, 1], 10, logged.append) == (sur.dir / "checkpoint_e1.pt",
                                                               sur.dir / "checkpoint_e2.pt")


def test_a_recipe_without_early_checkpoints_says_so_truthfully(tmp_path):
    sur = stage(tmp_path, "surrogate", {"x": 1})
    logged: list[str] = []
    assert _trajectory("grand", sur, [], 10, logged.append) == ()
    assert logged == ["[score] grand: the surrogate recipe keeps no early checkpoint "
                      "(train.keep_epochs); scoring the final surrogate instead"]


def test_early_epochs_past_a_shortened_surrogate_are_said_not_reported_missing(tmp_path):
    """--set-surrogate train.epochs=2 with a recipe keeping epoch 3: no checkpoint_e3.pt can
    exist, and "missing ... delete the stage folder and rerun" sent the user round in a circle."""
    sur = stage(tmp_path, "surrogate", {"x": 3})
    sur.dir.mkdir(parents=True)
    (sur.dir / "checkpoint_e1.pt").write_bytes(b"early 1")
    logged: list[str] = []
    assert _trajectory("el2n", sur, [3], 2, logged.append) == ()
    assert logged == ["[score] el2n: train.keep_epochs [3] lie past the surrogate's 2 epochs, so it "
                      "kept no checkpoint there; scoring the final surrogate instead"]
    logged.clear()
    assert _trajectory("el2n", sur, [1, 3], 2, logged.append) == (sur.dir / "checkpoint_e1.pt",)
    assert logged == ["[score] el2n: train.keep_epochs [3] lie past the surrogate's 2 epochs, so it "
                      "kept no checkpoint there"]


def test_a_deleted_cached_file_names_the_stage_folder(tmp_path):
    pr = stage(tmp_path, "prune", {"x": 2})
    pr.dir.mkdir(parents=True)
    (pr.dir / "train.npy").write_bytes(b"x")
    assert pr.output("train.npy") == pr.dir / "train.npy"
    with pytest.raises(DP4TLError, match=r"val.npy is missing from the prune stage's folder.*delete "
                                         r"the stage folder .*prune-.* and rerun"):
        pr.output("val.npy")



def test_a_torn_done_file_says_to_delete_the_stage_folder(tmp_path):
    """A DONE.json cut short (a disk filled, a hand edit) names the one step that rewrites it,
    not "rebuild or replace it", which fits a file the user made."""
    sc = stage(tmp_path, "score", {"x": 1})
    sc.dir.mkdir(parents=True)
    (sc.dir / "DONE.json").write_text('{"broken')
    with pytest.raises(DP4TLError, match=r"DONE.json is not valid JSON .*; delete the stage folder "
                                         r".*score-.* and rerun"):
        sc.result()

def _folder(root, n=3):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_the_data_root_read_only_with_the_build_is_used_and_clashes_name_pipeline_options(
        tmp_path, monkeypatch):
    import errno

    import beton_builders.writer as writer
    from ffcv_dp4tl.errors import DataError
    from ffcv_dp4tl.pipeline import resolve

    src = _folder(tmp_path / "imgs")
    source = f"folder:{src}"
    logged: list[str] = []
    built = resolve.ensure_built(source, tmp_path / "data", logged.append)
    assert (built / "manifest.json").exists() and any("built" in m for m in logged)

    def erofs(path, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(path))
    monkeypatch.setattr(resolve, "directory_lock", erofs)  # as on a read-only mount: no lock file
    monkeypatch.setattr(writer, "build_lock", erofs)
    logged.clear()
    assert resolve.ensure_built(source, tmp_path / "data", logged.append) == built
    assert not any("built" in m for m in logged), logged  # reused, nothing rebuilt
    monkeypatch.undo()

    (src / "c").mkdir()  # another listing, same folder name in the data root
    (src / "a" / "0.png").rename(src / "c" / "0.png")
    with pytest.raises(DataError, match=r"already holds a different build \(other input listing "
                                        r"\(file names or labels\)\); delete .* to rebuild it "
                                        r"there, or pass another --data-root$"):
        resolve.ensure_built(source, tmp_path / "data", logged.append)


def test_a_read_only_data_root_without_the_build_names_data_root(tmp_path, monkeypatch):
    """`dp4tl pipeline --data-root /read-only/dir` said "choose a writable --out"; pipeline has
    no --out."""
    import errno

    import beton_builders.writer as writer
    from ffcv_dp4tl.errors import DataError
    from ffcv_dp4tl.pipeline import resolve

    src = _folder(tmp_path / "imgs")

    def erofs(path, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(path))
    monkeypatch.setattr(resolve, "directory_lock", erofs)  # as on a read-only mount
    monkeypatch.setattr(writer, "build_lock", erofs)
    with pytest.raises(DataError) as e:
        resolve.ensure_built(f"folder:{src}", tmp_path / "data", lambda m: None)
    assert str(e.value).endswith("(Read-only file system) and it holds no finished build of this "
                                 "source; choose a writable --data-root")


def test_a_stage_runs_again_when_its_upstream_was_computed_again(tmp_path):
    """Keys hold upstream *keys*: an upstream stage folder deleted and computed again (the
    advice for a damaged cached file) keeps its key but has another result. The stages
    computed from the old one (finished, or half-done with files a resume would trust) run
    again from an empty folder; with the upstream unchanged they are reused."""
    from ffcv_dp4tl.pipeline.stages import run_stage

    quiet = lambda s: None  # noqa: E731
    results = iter([1, 2])
    up = stage(tmp_path, "surrogate", {"x": 1}, kind="other")
    run_stage(up, lambda d: {"weights": next(results)}, log=quiet)
    down = stage(tmp_path, "score", {"surrogate": up.key}, kind="other")
    calls = []

    def score(d):
        calls.append(sorted(p.name for p in d.iterdir() if not p.name.startswith(".")))
        (d / "scores.npy").write_text(str(up.result().values["weights"]))
        return {}

    run_stage(down, score, log=quiet, upstream=[up])
    assert run_stage(down, score, log=quiet, upstream=[up]).ran is False  # same upstream
    shutil.rmtree(up.dir)
    run_stage(up, lambda d: {"weights": next(results)}, log=quiet)  # computed again: other result
    said = []
    assert run_stage(down, score, log=said.append, upstream=[up]).ran is True
    assert any("surrogate-" in s and "computed again" in s for s in said)
    assert calls[-1] == ["inputs.json", "upstream.json"]  # emptied before it ran again
    assert (down.dir / "scores.npy").read_text() == "2"
    assert run_stage(down, score, log=quiet, upstream=[up]).ran is False
    (down.dir / "upstream.json").write_text("{")  # damaged record: run again, no traceback
    assert run_stage(down, score, log=quiet, upstream=[up]).ran is True


def test_a_stage_finished_before_the_upstream_record_is_trusted_and_adopts_it(tmp_path):
    """A stage folder from before ``upstream.json`` existed is reused (nothing tells it is
    stale) and records its upstream, so a later recomputation upstream is noticed."""
    from ffcv_dp4tl.pipeline.stages import UPSTREAM, run_stage

    quiet = lambda s: None  # noqa: E731
    up = stage(tmp_path, "pretrain", {"x": 1}, kind="other")
    run_stage(up, lambda d: {"v": 1}, log=quiet)
    down = stage(tmp_path, "finetune-lp", {"pretrain": up.key}, kind="other")
    run_stage(down, lambda d: {"top1": 0.5}, log=quiet)  # (no upstream: as an older version ran it)
    assert not (down.dir / UPSTREAM).exists()
    assert run_stage(down, lambda d: pytest.fail("reused"), log=quiet, upstream=[up]).ran is False
    assert (down.dir / UPSTREAM).exists()
    shutil.rmtree(up.dir)
    run_stage(up, lambda d: {"v": 2}, log=quiet)
    assert run_stage(down, lambda d: {"top1": 0.7}, log=quiet, upstream=[up]).values == {"top1": 0.7}


def test_a_stage_an_older_version_recorded_by_its_upstreams_done_bytes_is_reused(tmp_path):
    """Versions before 2026-12-06 recorded an upstream stage by the sha256 of its DONE.json
    bytes; this one by the digest of its result files. Each read the other's record as "computed
    again", so an old and a new version taking turns on one runs folder emptied and reran the
    finished score, prune, LP and FF stages every time (upgrade audit). The old form still names
    the same upstream: the stage is reused and its record left as written; an upstream computed
    again since is still noticed."""
    import hashlib
    import json

    from ffcv_dp4tl.pipeline.stages import DONE, UPSTREAM, run_stage

    quiet = lambda s: None  # noqa: E731
    up = stage(tmp_path, "pretrain", {"x": 1}, kind="train")

    def train(d, content=b"w1"):
        (d / "checkpoint.pt").write_bytes(content)
        return {"epoch": 1}

    run_stage(up, train, log=quiet)
    down = stage(tmp_path, "finetune-lp", {"pretrain": up.key}, kind="other")
    run_stage(down, lambda d: {"top1": 0.5}, log=quiet, upstream=[up])
    old_form = {up.dir.name: hashlib.sha256((up.dir / DONE).read_bytes()).hexdigest()}
    (down.dir / UPSTREAM).write_text(json.dumps(old_form))  # as a version of 2026-12-05 wrote it
    said = []
    assert run_stage(down, lambda d: pytest.fail("ran again"), log=said.append,
                     upstream=[up]).ran is False, said
    assert json.loads((down.dir / UPSTREAM).read_text()) == old_form
    from ffcv_dp4tl.pipeline.stages import _stale

    assert _stale(down, {"other": "x"}, {}) == ["other"]  # (a record without it: stale, review)
    shutil.rmtree(up.dir)
    run_stage(up, lambda d: train(d, b"w2"), log=quiet)  # computed again: another result
    assert run_stage(down, lambda d: {"top1": 0.7}, log=quiet, upstream=[up]).ran is True


@pytest.mark.parametrize("kind,files,values", [
    ("train", ("checkpoint.pt", "best.pt", "checkpoint_e2.pt"), {"epoch": 1}),
    ("score", ("scores.npy", "tiebreak.npy"), {"method": "lm", "unit": "class"}),
    ("prune", ("train.npy",), {"unit": "class", "train_kept": 3}),
])
def test_a_finished_stage_run_again_with_the_same_result_files_keeps_the_stages_after_it(
        tmp_path, kind, files, values):
    """Audit: a finished pretraining whose DONE.json was deleted ran again (it resumes with
    nothing to train), wrote a DONE.json with other times, and LP and FF ran again from the same
    weights. A stage's identity to the stages after it is the digest of its result files
    (RESULT_FILES): the same files keep them, another file (computed again) runs them again."""
    from fnmatch import fnmatch
    from time import time_ns

    from ffcv_dp4tl.pipeline.stages import DONE, RESULT_DIGEST, RESULT_FILES, run_stage

    assert all(any(fnmatch(f, pat) for pat in RESULT_FILES[kind]) for f in files)
    quiet = lambda s: None  # noqa: E731
    up = stage(tmp_path, "up", {"x": 1}, kind=kind)

    def compute(d, content=b"one"):
        for f in files:
            (d / f).write_bytes(content + f.encode())
        (d / "notes.txt").write_text(str(time_ns()))  # not a result file: does not count
        return values

    run_stage(up, compute, log=quiet)
    assert len(up.result().values[RESULT_DIGEST]) == 64
    down = stage(tmp_path, "down", {"up": up.key}, kind="other")
    runs = []
    run_stage(down, lambda d: runs.append(1) or {}, log=quiet, upstream=[up])
    (up.dir / DONE).unlink()  # the audit's step: the stage runs again (resumes: same files)
    run_stage(up, lambda d: (d / "notes.txt").write_text(str(time_ns())) and values, log=quiet)
    assert run_stage(down, lambda d: runs.append(2) or {}, log=quiet, upstream=[up]).ran is False
    (up.dir / DONE).unlink()  # run again with other result files (not bit-deterministic)
    run_stage(up, lambda d: compute(d, b"two"), log=quiet)
    said = []
    assert run_stage(down, lambda d: runs.append(3) or {}, log=said.append, upstream=[up]).ran
    assert runs == [1, 3] and any("computed again" in s for s in said)


def test_the_result_files_names_are_the_trainers_and_the_score_folders():
    """RESULT_FILES names the trainer's files literally (this module imports no torch): they
    must stay the trainer's names."""
    from ffcv_dp4tl.pipeline.stages import RESULT_FILES
    from ffcv_dp4tl.training.trainer import (BEST_CHECKPOINT_NAME, CHECKPOINT_NAME,
                                             EARLY_CHECKPOINT_GLOB)

    assert RESULT_FILES["train"] == (CHECKPOINT_NAME, BEST_CHECKPOINT_NAME, EARLY_CHECKPOINT_GLOB)


def test_a_finetune_done_file_that_disagrees_with_its_result_json_is_refused(tmp_path):
    """Audit B6: a finetune stage's DONE.json holds its result.json's values; a ``final_test_top1``
    edited to 0.99 in DONE.json went into the report while result.json said 0.1667. A top-1 of
    one that the other does not hold is refused in one line naming the folder to delete."""
    import json

    from ffcv_dp4tl.contracts import StageResult
    from ffcv_dp4tl.errors import DataError
    from ffcv_dp4tl.pipeline.stages import DONE

    ft = stage(tmp_path, "finetune-lp", {"x": 1})
    ft.dir.mkdir(parents=True)
    result = {"mode": "lp", "test_top1": 0.1667, "final_test_top1": 0.1667, "best_test_top1": 0.25,
              "best_epoch": 2}
    (ft.dir / "result.json").write_text(json.dumps(result))
    done = StageResult("finetune-lp", "finetune", 1.0, result).to_json()
    (ft.dir / DONE).write_text(json.dumps(done))
    assert ft.result().values["final_test_top1"] == 0.1667  # (they agree: read as it is)
    (ft.dir / DONE).write_text(json.dumps({**done, "final_test_top1": 0.99}))
    with pytest.raises(DataError) as e:
        ft.result()
    assert str(e.value) == (f"{ft.dir / DONE}: field 'final_test_top1' is 0.99, but the stage's "
                            f"result.json says 0.1667; delete the stage folder {ft.dir} and rerun")
    (ft.dir / DONE).write_text(json.dumps(done))
    (ft.dir / "result.json").write_text(json.dumps({**result, "test_top1": None}))
    with pytest.raises(DataError, match="field 'test_top1' is 0.1667, but the stage's result.json "
                                        "says None; delete the stage folder"):
        ft.result()
    # every field of the contract's finetune schema that both files hold, not only the top-1s
    # (the review: the compared fields were a second list beside STAGE_FIELDS)
    result = {**result, "train_top1": 0.5}
    (ft.dir / "result.json").write_text(json.dumps(result))
    done = StageResult("finetune-lp", "finetune", 1.0, result).to_json()
    for name, edited in (("best_epoch", 5), ("train_top1", 0.75)):
        (ft.dir / DONE).write_text(json.dumps({**done, name: edited}))
        with pytest.raises(DataError, match=f"field '{name}' is {edited}, but the stage's "
                                            f"result.json says {result[name]};"):
            ft.result()


def test_a_prune_done_file_whose_train_kept_is_not_its_masks_is_refused(tmp_path):
    """Audit B5: a prune stage's DONE.json edited to ``"train_kept": 999`` made the report say
    "kept 999 train samples" beside a mask of 13; the count is read against train.npy."""
    import json

    import numpy as np

    from ffcv_dp4tl.contracts import StageResult
    from ffcv_dp4tl.errors import DataError
    from ffcv_dp4tl.pipeline.stages import DONE

    pr = stage(tmp_path, "prune", {"x": 1})
    pr.dir.mkdir(parents=True)
    np.save(pr.dir / "train.npy", np.arange(13, dtype=np.int64))
    done = StageResult("prune", "prune", 1.0, {"train_kept": 13, "ratio": 0.6,
                                                 "unit": "class"}).to_json()
    (pr.dir / DONE).write_text(json.dumps(done))
    assert pr.result().values["train_kept"] == 13
    (pr.dir / DONE).write_text(json.dumps({**done, "train_kept": 999}))
    with pytest.raises(DataError) as e:
        pr.result()
    assert str(e.value) == (f"{pr.dir / DONE}: field 'train_kept' is 999, but the stage's "
                            f"train.npy keeps 13 samples; delete the stage folder {pr.dir} and rerun")
