"""The checkpoint contract: typed fields, a format version, legacy (unversioned) dicts still
read, and the dict form other code reads."""
from __future__ import annotations

import os

import pytest
import torch

from ffcv_dp4tl.errors import DP4TLError, brief
from ffcv_dp4tl.training.checkpoint import (CHECKPOINT_VERSION, EPOCH_END_VERSION, Checkpoint,
                                            save_checkpoint)
from ffcv_dp4tl.training.finetune import load_pretrained
from ffcv_dp4tl.training.models import create_model

IDENTITY = {"arch": "resnet18", "recipe_fingerprint": "r" * 64, "dataset_fingerprint": "d" * 64,
            "mask_hash": "full", "num_classes": 5}


def _legacy_dict() -> dict:
    """A checkpoint as `dp4tl train` wrote it before the contract existed (no format_version)."""
    torch.manual_seed(0)
    model = create_model("resnet18", 5, width=8, small_input=True)
    return {"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []},
            "scaler": {}, "epoch": 3, "rng": {"torch": torch.get_rng_state()},
            "recipe": {"eval": {"resolution": 48}}, "recipe_name": "resnet18_tiny_cpu",
            "arch": "resnet18", "model_kwargs": {"width": 8, "small_input": True},
            "identity": IDENTITY, "dataset_fingerprint": "d" * 64, "mask_hash": "full",
            "classes": [f"c{i}" for i in range(5)], "num_classes": 5, "self_supervised": None,
            "objective": None, "timings": {"step": 1.5}, "world_size": 1, "format": "wds"}


def test_legacy_dict_loads_into_typed_fields(tmp_path):
    path = tmp_path / "old.pt"
    torch.save(_legacy_dict(), path)
    ck = Checkpoint.load(path)
    assert ck.format_version == 0 and ck.epoch == 3 and ck.arch == "resnet18"
    assert ck.dataset_fingerprint == "d" * 64 and ck.mask_hash == "full"
    assert ck.recipe_fingerprint == "r" * 64 and ck.eval_resolution == 48
    assert ck.model_kwargs == {"width": 8, "small_input": True} and ck.timings == {"step": 1.5}
    model, again = load_pretrained(path, torch.device("cpu"))  # rebuilds the same weights
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck.model[k]), k
    assert again.num_classes == 5 and again.self_supervised is None
    # the recipe it records, as the typed Recipe (defaults for what the old file lacks)
    recipe = again.training_recipe()
    assert recipe.eval.resolution == 48 and recipe.name == "resnet18_tiny_cpu"
    assert recipe.scoring.target_crop == "center"


def test_save_writes_the_epoch_end_version_and_the_old_keys(tmp_path):
    legacy = {**_legacy_dict(), "something_new": [1, 2]}
    torch.save(legacy, tmp_path / "old.pt")
    ck = Checkpoint.load(tmp_path / "old.pt")
    assert ck.extra == {"something_new": [1, 2]}  # unknown keys survive a round trip
    ck.save(tmp_path / "new.pt")
    raw = torch.load(tmp_path / "new.pt", weights_only=False)  # still a plain dict on disk
    assert isinstance(raw, dict) and raw["format_version"] == EPOCH_END_VERSION
    assert set(legacy) <= set(raw)
    assert raw["something_new"] == [1, 2] and raw["dataset_fingerprint"] == "d" * 64
    back = Checkpoint.load(tmp_path / "new.pt")
    assert back.epoch == 3 and back.identity == IDENTITY
    assert Checkpoint.load(tmp_path / "new.pt").format_version == EPOCH_END_VERSION


def test_unreadable_foreign_and_newer_files_are_refused(tmp_path):
    with pytest.raises(DP4TLError, match="checkpoint not found"):
        Checkpoint.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(DP4TLError, match="not a readable checkpoint .*delete it and rerun what "
                                         "wrote it .*delete its stage folder"):
        Checkpoint.load(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(DP4TLError, match="not an ffcv-dp4tl checkpoint"):
        Checkpoint.load(tmp_path / "foreign.pt")
    no_arch = {k: v for k, v in _legacy_dict().items() if k != "arch"}
    save_checkpoint(tmp_path / "no_arch.pt", no_arch)
    with pytest.raises(DP4TLError, match="lacks 'arch'"):
        Checkpoint.load(tmp_path / "no_arch.pt")
    save_checkpoint(tmp_path / "future.pt", {**_legacy_dict(), "format_version": CHECKPOINT_VERSION + 1})
    with pytest.raises(DP4TLError, match=f"format {CHECKPOINT_VERSION + 1}.*upgrade"):
        Checkpoint.load(tmp_path / "future.pt")


def test_a_truncated_checkpoint_quotes_torchs_error_to_a_sentence_end(tmp_path):
    """torch's zip error runs on ("... This is an internal miniz error. If you think this is a
    bug ..."); cut at 120 characters it ended mid-word ("If yo")."""
    save_checkpoint(tmp_path / "full.pt", _legacy_dict())
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:len(data) // 2])
    with pytest.raises(DP4TLError) as e:
        Checkpoint.load(tmp_path / "cut.pt")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'cut.pt'} is not a readable checkpoint (RuntimeError: ")
    why = msg.split("(RuntimeError: ", 1)[1].split("); it is damaged", 1)[0]
    assert "miniz" not in why and not why.endswith(".") and "\n" not in msg, msg


def test_brief_cuts_another_librarys_text_at_a_sentence_or_word_end():
    assert brief("failed finding central directory. This is an internal miniz error. If you "
                 "think") == "failed finding central directory"
    assert brief("first line\nsecond") == "first line"
    assert brief("see e.g. version 1.2 here") == "see e.g. version 1.2 here"
    assert brief("word " * 40, limit=22) == "word word word word …"
    assert brief("") == ""


def test_a_directory_given_as_the_checkpoint_names_the_file_expected(tmp_path):
    """A run folder passed as --checkpoint read as torch's IsADirectoryError: "a file is where a
    folder should be (or the reverse)"."""
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(DP4TLError) as e:
        Checkpoint.load(run)
    assert str(e.value) == (f"checkpoint {run} is a directory, but a checkpoint is a file: pass "
                            f"the checkpoint file in it (`dp4tl train --out {run}` writes "
                            f"{run / 'checkpoint.pt'})")
    save_checkpoint(run / "checkpoint.pt", _legacy_dict())
    with pytest.raises(DP4TLError) as e:
        Checkpoint.load(run)
    assert str(e.value) == (f"checkpoint {run} is a directory, but a checkpoint is a file: pass "
                            f"{run / 'checkpoint.pt'}")


def test_trained_run_writes_a_versioned_checkpoint(trained_run):
    ck = Checkpoint.load(trained_run / "checkpoint.pt")
    assert ck.format_version == EPOCH_END_VERSION and ck.epoch == 2 and ck.extra == {}
    assert ck.identity["arch"] == ck.arch == "resnet18" and ck.self_supervised is None
    assert ck.eval_resolution == 16 and ck.recipe_name == "resnet18_tiny_cpu"


def test_finetune_state_is_a_versioned_contract_resumed_by_the_one_rule(tmp_path):
    from ffcv_dp4tl.training.checkpoint import (FINETUNE_STATE_VERSION, FinetuneState,
                                                resume_from)

    ident = {"mode": "lp", "recipe_fingerprint": "r" * 64}
    st = FinetuneState(identity=ident, epoch=2, net={"w": torch.ones(2)}, optimizer={},
                       scaler={}, rng={"torch": torch.get_rng_state()}, rows=[{"epoch": 0}],
                       seconds=1.5)
    path = tmp_path / "finetune_state.pt"
    st.save(path)
    raw = torch.load(path, weights_only=False)  # a plain dict on disk, with its version
    assert raw["format_version"] == FINETUNE_STATE_VERSION and raw["epoch"] == 2
    back = resume_from(FinetuneState, path, ident, what="finetune run")
    assert back.epoch == 2 and back.rows == [{"epoch": 0}] and back.seconds == 1.5
    assert torch.equal(back.net["w"], torch.ones(2))
    assert resume_from(FinetuneState, path, ident, resume=False) is None
    assert resume_from(FinetuneState, tmp_path / "none.pt", ident) is None
    # another run's state, an old unversioned dict, a newer version and junk
    with pytest.raises(DP4TLError, match="different finetune run.*mode: checkpoint has lp"):
        resume_from(FinetuneState, path, {**ident, "mode": "ff"}, what="finetune run")
    old = {k: v for k, v in raw.items() if k != "format_version"}
    torch.save(old, tmp_path / "old.pt")
    assert FinetuneState.load(tmp_path / "old.pt").format_version == 0
    torch.save({**raw, "format_version": FINETUNE_STATE_VERSION + 1}, tmp_path / "new.pt")
    with pytest.raises(DP4TLError, match="upgrade ffcv-dp4tl"):
        FinetuneState.load(tmp_path / "new.pt")
    torch.save({"identity": ident}, tmp_path / "part.pt")
    with pytest.raises(DP4TLError, match="not a finetune state.*'epoch'"):
        FinetuneState.load(tmp_path / "part.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(DP4TLError, match="not a readable finetune state"):
        FinetuneState.load(tmp_path / "junk.pt")


def test_a_text_file_as_the_finetune_state_is_one_line_with_the_unpicklers_reason(tmp_path):
    """torch's weights_only refusal is a paragraph on its PyTorch 2.6 default ("Weights only
    load failed ... Re-running torch.load with weights_only set to False ..."), which told the
    user to load the file unsafely: the line quotes the unpickler's own reason alone."""
    from ffcv_dp4tl.training.checkpoint import FinetuneState

    path = tmp_path / "finetune_state.pt"
    path.write_bytes(b"not a state\n")
    with pytest.raises(DP4TLError) as e:
        FinetuneState.load(path)
    msg = str(e.value)  # (the reason's words are torch's: "Unsupported operand 110" in 2.14)
    assert msg.startswith(f"{path} is not a readable finetune state (UnpicklingError: ")
    assert msg.endswith("); delete it to start over") and "\n" not in msg
    assert "Weights only load failed" not in msg and "weights_only" not in msg


class _RunsCode:
    """An object whose unpickling runs code (here it only makes a folder, so the test sees it)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("kind", ["checkpoint", "finetune state"])
def test_a_file_that_would_run_code_when_loaded_is_refused_and_runs_none(tmp_path, kind):
    """Checkpoints come from shared folders and other people's runs (`dp4tl finetune
    --checkpoint`, `evaluate`), and unpickling an object is running its author's code: they
    were read with ``weights_only=False`` ("only load your own runs"). Read with weights_only
    (numpy arrays allowed, the RNG states): refused in one line naming what the file names, and
    nothing ran."""
    from ffcv_dp4tl.training.checkpoint import FinetuneState

    marker = tmp_path / "code-ran"
    if kind == "checkpoint":
        good, load = _legacy_dict(), Checkpoint.load
    else:
        good = FinetuneState(identity={"mode": "lp"}, epoch=1, net={"w": torch.ones(2)},
                             optimizer={}, scaler={}, rng={}, rows=[], seconds=0.0).to_dict()
        load = FinetuneState.load
    import numpy as np
    import random

    good["rng"] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                   "python": random.getstate()}  # what a run writes: numpy arrays load
    torch.save(good, tmp_path / "good.pt")
    assert load(tmp_path / "good.pt").rng["numpy"][1].dtype == np.uint32
    torch.save({**good, "note": _RunsCode(marker)}, tmp_path / "shared.pt")
    with pytest.raises(DP4TLError) as e:
        load(tmp_path / "shared.pt")
    assert not marker.exists()
    line = str(e.value)
    assert line.startswith(f"{tmp_path / 'shared.pt'} holds Python objects a {kind} never holds "
                           f"(it names {os.mkdir.__module__}.mkdir): not loaded, since "
                           "unpickling them would run code from the file")
    assert "\n" not in line and "\x1b" not in line


@pytest.mark.parametrize("numpy_module", ["numpy.core", "numpy._core"])
def test_a_checkpoint_pickled_under_either_numpy_loads(tmp_path, numpy_module):
    """A run saved under numpy 1.x names ``numpy.core.multiarray._reconstruct`` for its RNG
    states, one under numpy 2 ``numpy._core...``: both load after a numpy upgrade (or downgrade),
    with weights_only. Allowing only the running numpy's name refused the other as a file that
    would run code (review)."""
    import zipfile

    import numpy as np

    d = _legacy_dict()
    d["rng"]["numpy"] = np.random.get_state()
    save_checkpoint(tmp_path / "now.pt", d)
    with zipfile.ZipFile(tmp_path / "now.pt") as z, \
            zipfile.ZipFile(tmp_path / "then.pt", "w", zipfile.ZIP_STORED) as out:
        for info in z.infolist():
            data = z.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", numpy_module.encode() + b".multiarray")
                assert numpy_module.encode() + b".multiarray" in data
            out.writestr(info, data)
    back = Checkpoint.load(tmp_path / "then.pt")
    assert np.array_equal(back.rng["numpy"][1], d["rng"]["numpy"][1])


def test_resume_on_fewer_gpus_restores_the_states_it_can(monkeypatch):
    """A checkpoint saved where 2 GPUs were visible resumes where 1 is: device 0 gets its RNG
    state, the missing device is skipped (``set_rng_state_all`` would fail). No GPU here: the
    CUDA calls are recorded."""
    import torch

    from ffcv_dp4tl.training import checkpoint

    st = checkpoint.rng_states()
    st["cuda"] = [torch.ByteTensor([1]), torch.ByteTensor([2])]
    set_calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: set_calls.append((int(s[0]), i)))
    checkpoint.set_rng_states(st)
    assert set_calls == [(1, 0)]
    set_calls.clear()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # as many as saved: each its own
    checkpoint.set_rng_states(st)
    assert set_calls == [(1, 0), (2, 1)]


def test_a_resume_refusal_names_the_differing_entries_of_a_dict_field(tmp_path):
    """The source's identity is a dict: the refusal names its entries that differ with their
    values (it used to cut both dicts at 16 characters, e.g. ``{'arch': 'resnet``)."""
    from ffcv_dp4tl.training.checkpoint import check_identity

    found = {"mode": "lp", "source_identity": {"arch": "resnet18", "recipe_fingerprint": "ab12"}}
    want = {"mode": "lp", "source_identity": {"arch": "resnet50", "recipe_fingerprint": "ab12"}}
    with pytest.raises(DP4TLError) as e:
        check_identity(tmp_path / "finetune_state.pt", found, want, "finetune run")
    assert ("source_identity.arch: checkpoint has resnet18, this run has resnet50"
            in str(e.value)) and "recipe_fingerprint" not in str(e.value)


def test_every_truncation_of_a_checkpoint_names_the_file_and_what_to_do(tmp_path):
    """torch.load raises a bare OSError (EINVAL, "Invalid argument", no file name) for many
    truncations (about 4-70 KB into this file): it read as "error: Invalid argument; check the
    path and its permissions", naming no file. Every cut is the damaged-checkpoint line."""
    full = tmp_path / "full.pt"
    Checkpoint.from_dict(_legacy_dict()).save(full)
    data = full.read_bytes()
    cut = tmp_path / "checkpoint.pt"
    for size in range(0, len(data), 997):
        cut.write_bytes(data[:size])
        with pytest.raises(DP4TLError) as e:
            Checkpoint.load(cut)
        msg = str(e.value)
        assert msg.startswith(f"{cut} is not a readable checkpoint (") and "\n" not in msg, (size, msg)
        assert "it is damaged (truncated?) or not a checkpoint: delete it and rerun" in msg, (size, msg)


def test_an_oserror_reading_a_checkpoint_is_about_its_bytes_or_its_path(tmp_path, monkeypatch):
    """An OSError about the bytes (torch's EINVAL, one without an errno) is the damaged-file
    line; one about the path or the machine keeps its own advice and names the file even where
    the error carries no file name."""
    import errno

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _legacy_dict())
    raised: list[OSError] = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(raised[-1]))
    for err in (OSError(errno.EINVAL, "Invalid argument"), OSError("bad data")):
        raised.append(err)
        with pytest.raises(DP4TLError, match=rf"^{path} is not a readable checkpoint \(OSError: "
                                             r".*delete it and rerun"):
            Checkpoint.load(path)
    raised.append(PermissionError(errno.EACCES, "Permission denied"))
    with pytest.raises(DP4TLError) as e:
        Checkpoint.load(path)
    assert str(e.value).startswith(f"cannot read {path} (Permission denied)"), str(e.value)
    raised.append(OSError(errno.EMFILE, "Too many open files"))
    with pytest.raises(DP4TLError, match=rf"too many open files opening {path} .*ulimit"):
        Checkpoint.load(path)
    # a network file system's error on a good checkpoint (review): never "damaged, delete it"
    for code in (errno.EREMOTEIO, errno.ENOTCONN, errno.EOVERFLOW, errno.EIO):
        raised.append(OSError(code, os.strerror(code)))
        with pytest.raises(DP4TLError) as e:
            Checkpoint.load(path)
        assert str(path) in str(e.value) and "delete it" not in str(e.value), str(e.value)


def _changed(recipe, **values):
    """A copy of ``recipe`` with ``section__key=value`` set."""
    from ffcv_dp4tl.training.recipe import Recipe

    out = Recipe.from_dict(recipe.to_dict())
    for name, value in values.items():
        section, key = name.split("__")
        setattr(getattr(out, section), key, value)
    return out


def test_a_refused_resume_names_the_recipe_keys_that_differ(trained_run):
    """A changed recipe was refused naming only two hashes (``recipe_fingerprint: checkpoint has
    8a03a71a125a3ac3, this run has 277ebbbfcf8641e6``): it names the keys the training
    fingerprint covers that differ, with both values, keeping the rest of the refusal."""
    from ffcv_dp4tl.training.checkpoint import resume_from

    path = trained_run / "checkpoint.pt"
    ck = Checkpoint.load(path)
    made_with = ck.training_recipe()
    assert made_with.training_fingerprint() == ck.recipe_fingerprint  # what the test relies on
    seed = made_with.data.seed
    # scoring (not in the training fingerprint) and train.tensorboard (not in any) not named
    this_run = _changed(made_with, data__seed=seed + 1, scoring__target_crop="none",
                        train__tensorboard=not made_with.train.tensorboard)
    identity = {**ck.identity, "recipe_fingerprint": this_run.training_fingerprint()}
    with pytest.raises(DP4TLError) as e:
        resume_from(Checkpoint, path, identity, recipe=this_run)
    msg = str(e.value)
    assert (f"belongs to a different run (recipe_fingerprint: checkpoint has "
            f"{ck.recipe_fingerprint[:16]}, this run has {this_run.training_fingerprint()[:16]}; "
            f"recipe keys that differ: data.seed: checkpoint {seed}, this run "
            f"{seed + 1}). Use another --out directory, or delete checkpoint.pt to start over "
            "(or pass --no-resume).") in msg, msg
    # many keys: the first four (sorted), then how many more
    this_run = _changed(made_with, data__seed=seed + 1, train__seed=1234,
                        train__epochs=made_with.train.epochs + 5, lr__lr=0.123,
                        model__arch="resnet50", optim__label_smoothing=0.37)
    identity = {**ck.identity, "recipe_fingerprint": this_run.training_fingerprint(),
                "arch": "resnet50"}
    with pytest.raises(DP4TLError) as e:
        resume_from(Checkpoint, path, identity, recipe=this_run)
    msg = str(e.value)
    assert "arch: checkpoint has resnet18, this run has resnet50; recipe_fingerprint: " in msg, msg
    assert (f"; recipe keys that differ: data.seed: checkpoint {seed}, this run "
            f"{seed + 1}; lr.lr: checkpoint {made_with.lr.lr}, this run 0.123; model.arch: "
            "checkpoint resnet18, this run resnet50; optim.label_smoothing: checkpoint "
            f"{made_with.optim.label_smoothing}, this run 0.37; and 2 more). "
            "Use another --out") in msg, msg


def test_a_checkpoint_hashed_under_an_earlier_rule_resumes(trained_run, tmp_path):
    """A run begun before data.num_workers was hashed as its default records a fingerprint of
    the old rule: it was refused with two hashes and no key that differs (review). Its recorded
    recipe hashes to this run's under today's rule, so it resumes; a recorded recipe that
    differs in a key that trains is still refused, naming it."""
    import hashlib
    import json

    from ffcv_dp4tl.training.checkpoint import resume_from
    from ffcv_dp4tl.training.recipe import NOT_IN_FINGERPRINT, NOT_IN_TRAINING

    ck = Checkpoint.load(trained_run / "checkpoint.pt")
    made_with = _changed(ck.training_recipe(), data__num_workers=1)
    d = {k: v for k, v in made_with.to_dict().items() if k not in NOT_IN_TRAINING}
    for sec, key in NOT_IN_FINGERPRINT:
        d.get(sec, {}).pop(key, None)
    old_rule = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()
    assert old_rule != made_with.training_fingerprint()  # (what the test relies on)
    ck.recipe = made_with.to_dict()
    ck.identity = {**ck.identity, "recipe_fingerprint": old_rule}
    path = tmp_path / "checkpoint.pt"
    ck.save(path)
    this_run = _changed(made_with, data__num_workers=2)
    identity = {**ck.identity, "recipe_fingerprint": this_run.training_fingerprint()}
    assert resume_from(Checkpoint, path, identity, recipe=this_run).epoch == ck.epoch
    other = _changed(made_with, train__epochs=made_with.train.epochs + 1)
    with pytest.raises(DP4TLError, match=r"recipe keys that differ: train.epochs"):
        resume_from(Checkpoint, path, {**identity, "recipe_fingerprint":
                                       other.training_fingerprint()}, recipe=other)


def test_a_checkpoint_without_its_recipe_is_refused_with_the_fingerprints_alone(tmp_path):
    """Older checkpoints (and imported weights) record no recipe: the refusal stays as it was."""
    from ffcv_dp4tl.training.checkpoint import resume_from
    from ffcv_dp4tl.training.recipe import load_recipe

    path = tmp_path / "checkpoint.pt"
    Checkpoint.from_dict({**_legacy_dict(), "recipe": {}}).save(path)
    recipe = load_recipe("resnet18_tiny_cpu")
    identity = {**IDENTITY, "recipe_fingerprint": recipe.training_fingerprint()}
    with pytest.raises(DP4TLError) as e:
        resume_from(Checkpoint, path, identity, recipe=recipe)
    assert str(e.value) == (f"{path} belongs to a different run (recipe_fingerprint: checkpoint "
                            f"has {'r' * 16}, this run has {recipe.training_fingerprint()[:16]}). "
                            "Use another --out directory, or delete checkpoint.pt to start over "
                            "(or pass --no-resume).")
