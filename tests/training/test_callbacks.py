"""RecordSeen's record of an epoch resumed mid-epoch, on as many ranks or another number, driven
by hand (its callbacks as the trainer calls them, ranks simulated with ``rank``/``world_size``;
no training, no process group): the epoch's files cover the whole epoch, or say they do not."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.training.callbacks import RecordSeen, read_seen

B = 8  # global batch
ORDER = np.arange(100, 164)  # an epoch's global order: 8 global steps


def _batches(rec: RecordSeen, rank: int, world: int, steps: range, epoch: int = 1) -> None:
    """Rank ``rank`` of ``world`` trains global steps ``steps``: its strided share of each
    (``shard_for_rank`` of the epoch's order, ``B / world`` samples a step)."""
    for j in steps:
        rec.on_batch(epoch, SimpleNamespace(indices=torch.from_numpy(ORDER[j * B:(j + 1) * B][rank::world])))


def _ranks(out, world: int) -> list[RecordSeen]:
    return [RecordSeen(out, rank=r, world_size=world) for r in range(world)]


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2), (2, 4), (4, 2), (2, 2)])
def test_an_epoch_resumed_on_another_number_of_ranks_is_recorded_whole(tmp_path, before, after):
    """3 steps on ``before`` ranks, a checkpoint, a kill; the rest on ``after`` ranks. Each
    rank's file is what it would hold had the whole epoch run on ``after`` ranks, so their
    union is the epoch; no part is left and nothing is marked partial."""
    for rank, rec in enumerate(_ranks(tmp_path, before)):
        _batches(rec, rank, before, range(3))
        rec.on_checkpoint(1, 3)
        _batches(rec, rank, before, range(3, 4))  # trained, then killed before the next one
    resumed = _ranks(tmp_path, after)
    for rec in resumed:  # (every rank resumes before any ends the epoch: DDP steps together)
        rec.on_resume(1, 3)
    for rank, rec in enumerate(resumed):
        _batches(rec, rank, after, range(3, 8))
        rec.on_epoch_end({"epoch": 1})
        assert not rec.partial
    for rec in resumed:  # (the epoch's checkpoint is saved)
        rec.on_epoch_saved(1)
    seen = read_seen(tmp_path, 1)
    assert list(seen) == list(range(after))
    for rank in range(after):
        np.testing.assert_array_equal(seen[rank], ORDER[rank::after])
    assert sorted(np.concatenate(list(seen.values()))) == list(ORDER)
    assert not list((tmp_path / "seen").glob("*_step*"))


def test_parts_of_a_run_on_more_ranks_at_the_same_step_are_not_mistaken_for_this_runs(tmp_path):
    """Four ranks wrote their parts at step 3 and no checkpoint followed; two ranks then reach
    step 3 again and checkpoint: the parts of ranks 2 and 3 are removed (a later resume reads
    the two ranks' parts, not a mix), and so are the epoch files of ranks 2, 3 at the epoch's
    end."""
    for rank, rec in enumerate(_ranks(tmp_path, 4)):
        _batches(rec, rank, 4, range(3))
        rec.on_checkpoint(1, 3)
    (tmp_path / "seen" / "rank3_epoch1.npy").write_bytes(b"stale")
    for rank, rec in enumerate(_ranks(tmp_path, 2)):
        _batches(rec, rank, 2, range(3))
        rec.on_checkpoint(1, 3)
    assert sorted(p.name for p in (tmp_path / "seen").glob("*_step3.npy")) == [
        "rank0_epoch1_step3.npy", "rank1_epoch1_step3.npy"]
    (one,) = _ranks(tmp_path, 1)
    one.on_resume(1, 3)
    _batches(one, 0, 1, range(3, 8))
    one.on_epoch_end({"epoch": 1})
    one.on_epoch_saved(1)
    np.testing.assert_array_equal(read_seen(tmp_path, 1)[0], ORDER)
    assert sorted(p.name for p in (tmp_path / "seen").iterdir()) == ["rank0_epoch1.npy"]


def test_a_resume_whose_start_cannot_be_rebuilt_is_marked_partial_and_read_seen_refuses_it(
        tmp_path):
    """A part is missing (deleted by hand, or written by a version without the barrier): the
    epoch holds only the batches after the resume, and a warning, ``partial`` and the marker
    file say so in one line; ``read_seen`` refuses the epoch with that line. The epoch trained
    again from its start drops the marker."""
    for rank, rec in enumerate(_ranks(tmp_path, 2)):
        _batches(rec, rank, 2, range(3))
        rec.on_checkpoint(1, 3)
    (tmp_path / "seen" / "rank1_epoch1_step3.npy").unlink()
    (one,) = _ranks(tmp_path, 1)
    with pytest.warns(UserWarning, match="epoch 1 is partial: .*missing"):
        one.on_resume(1, 3)
    _batches(one, 0, 1, range(3, 8))
    one.on_epoch_end({"epoch": 1})
    assert "rank1_epoch1_step3.npy" not in one.partial[1] and "ranks [0] found" in one.partial[1]
    marker = tmp_path / "seen" / "epoch1.partial"
    assert marker.read_text().count("\n") == 1
    np.testing.assert_array_equal(np.load(tmp_path / "seen" / "rank0_epoch1.npy"), ORDER[24:])
    with pytest.raises(DP4TLError, match="epoch1.partial: .*only the batches after the resume"):
        read_seen(tmp_path, 1)
    (again,) = _ranks(tmp_path, 1)  # the epoch again, from its start
    _batches(again, 0, 1, range(8))
    again.on_epoch_end({"epoch": 1})
    assert not marker.exists()
    np.testing.assert_array_equal(read_seen(tmp_path, 1)[0], ORDER)


@pytest.mark.parametrize("after", [2, 1])
def test_a_damaged_part_marks_the_epoch_partial_instead_of_a_traceback(tmp_path, after):
    """A step part cut short (a kill or a full disk while it was written; `truncate -s 10`)
    raised numpy's "EOF: reading array header" traceback on the resume. It is read as a part
    that cannot be used: the epoch is marked partial in one line naming the file, as README
    promises for a start that cannot be rebuilt; a rank whose own part is intact keeps it."""
    for rank, rec in enumerate(_ranks(tmp_path, 2)):
        _batches(rec, rank, 2, range(3))
        rec.on_checkpoint(1, 3)
    part = tmp_path / "seen" / "rank1_epoch1_step3.npy"
    part.write_bytes(part.read_bytes()[:10])
    resumed = _ranks(tmp_path, after)
    with pytest.warns(UserWarning, match=r"epoch 1 is partial: .*unreadable: "
                                         r"rank1_epoch1_step3\.npy \(.*only the batches after"):
        for rec in resumed:
            rec.on_resume(1, 3)
    hit = resumed[-1]  # rank 1, or the one rank reading both parts
    assert "\n" not in hit.partial[1]
    assert (tmp_path / "seen" / "epoch1.partial").read_text().count("\n") == 1
    if after == 2:  # rank 0's own part is intact: its record of the epoch stays whole
        assert not resumed[0].partial
        np.testing.assert_array_equal(resumed[0]._so_far(), ORDER[:24][0::2])
    with pytest.raises(DP4TLError, match=r"epoch1\.partial: .*unreadable"):
        read_seen(tmp_path, 1)


def test_a_part_declaring_more_than_it_holds_marks_the_epoch_partial(tmp_path):
    """A part's header declaring 2**40 indices in a few bytes: ``np.load`` allocated the
    declared array first (a MemoryError traceback past the resume's handling, or the memory).
    It is read through ``fsutil.load_npy``, refused unread, and the epoch marked partial."""
    (rec,) = _ranks(tmp_path, 1)
    _batches(rec, 0, 1, range(3))
    rec.on_checkpoint(1, 3)
    part = tmp_path / "seen" / "rank0_epoch1_step3.npy"
    with open(part, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False,
                                                 "shape": (1 << 40,)})
        f.write(b"\0" * 64)
    (resumed,) = _ranks(tmp_path, 1)
    with pytest.warns(UserWarning, match=r"epoch 1 is partial: .*unreadable: "
                                         r"rank0_epoch1_step3\.npy \(its header declares shape"):
        resumed.on_resume(1, 3)


def test_read_seen_of_a_damaged_epoch_file_is_one_line(tmp_path):
    """A finished epoch's file cut short gave numpy's traceback from ``read_seen``: it is one
    line naming the file, like a damaged step part on a resume."""
    (rec,) = _ranks(tmp_path, 1)
    _batches(rec, 0, 1, range(8))
    rec.on_epoch_end({"epoch": 1})
    rec.on_epoch_saved(1)
    np.testing.assert_array_equal(read_seen(tmp_path, 1)[0], ORDER)
    f = tmp_path / "seen" / "rank0_epoch1.npy"
    f.write_bytes(f.read_bytes()[:10])
    with pytest.raises(DP4TLError, match=r"the record of epoch 1 cannot be read "
                                         r"\(rank0_epoch1\.npy \(.*\)\); train the epoch again"):
        read_seen(tmp_path, 1)


def test_the_parts_outlive_the_epochs_end_until_its_checkpoint_is_saved(tmp_path):
    """A kill after the epoch's end was recorded but before its checkpoint was saved resumes
    from the last mid-epoch checkpoint, which needs the step parts: they stay through
    ``on_epoch_end`` and ``on_train_end`` (a stopped run), and go once the epoch's checkpoint
    is saved (``on_epoch_saved``); those an earlier run left go as a later epoch starts."""
    (rec,) = _ranks(tmp_path, 1)
    _batches(rec, 0, 1, range(3))
    rec.on_checkpoint(1, 3)
    _batches(rec, 0, 1, range(3, 8))
    rec.on_epoch_end({"epoch": 1})
    rec.on_train_end()  # stopped as the epoch's checkpoint was being saved
    (again,) = _ranks(tmp_path, 1)
    again.on_resume(1, 3)
    _batches(again, 0, 1, range(3, 8))
    again.on_epoch_end({"epoch": 1})
    assert not again.partial
    np.testing.assert_array_equal(read_seen(tmp_path, 1)[0], ORDER)
    assert (tmp_path / "seen" / "rank0_epoch1_step3.npy").exists()
    again.on_epoch_saved(1)
    assert not list((tmp_path / "seen").glob("*_step*"))
    _batches(rec, 0, 1, range(3))  # an earlier run's leftovers go as a later epoch starts
    rec.on_checkpoint(1, 3)
    (later,) = _ranks(tmp_path, 1)
    _batches(later, 0, 1, range(1), epoch=2)
    assert not list((tmp_path / "seen").glob("*_step*"))


def test_in_memory_a_resume_in_the_same_process_keeps_the_steps_before_it_once():
    """In memory, the same process resumed at step 3 after training steps 0..4: the record
    keeps steps 0..2 once (steps 3, 4 are trained again), not 0..4 and then 3..7."""
    rec = RecordSeen()
    _batches(rec, 0, 1, range(5))
    rec.on_resume(1, 3)
    _batches(rec, 0, 1, range(3, 8))
    rec.on_epoch_end({"epoch": 1})
    assert not rec.partial
    np.testing.assert_array_equal(rec.seen[1], ORDER)


def test_in_memory_only_a_resumed_epoch_says_it_is_partial():
    """Without ``out_dir`` nothing of the steps before the resume is kept: said, not silent."""
    rec = RecordSeen()
    with pytest.warns(UserWarning, match="without out_dir: the 3 steps of epoch 1"):
        rec.on_resume(1, 3)
    _batches(rec, 0, 1, range(3, 8))
    rec.on_epoch_end({"epoch": 1})
    assert 1 in rec.partial
    np.testing.assert_array_equal(rec.seen[1], ORDER[24:])


def test_one_epoch_line_rule_for_training_and_finetuning():
    """Training and finetuning say their epochs by one rule (ConsoleLogger; finetuning had a
    copy of it): epochs counted from 1 of E, the held-out split named, '-' where it was not
    evaluated, throughput where the row has it."""
    from ffcv_dp4tl.progress import saying_to
    from ffcv_dp4tl.training.callbacks import ConsoleLogger

    said: list[str] = []
    train_row = {"epoch": 2, "loss": 1.23456, "top1_train": 0.5, "top1_val": 0.625,
                 "img_per_s": 1234.4, "epoch_seconds": 2.06}
    tune_row = {"epoch": 0, "loss": 0.5, "top1_train": 0.75, "top1_test": None}
    with saying_to(said.append):
        ConsoleLogger(16).on_epoch_end(train_row)
        ConsoleLogger().on_epoch_end({**train_row, "top1_val": None})
        ConsoleLogger(50, label="lp", held_out="test").on_epoch_end(tune_row)
        ConsoleLogger(50, label="ff", held_out="test").on_epoch_end({**tune_row, "top1_test": 0.8})
    assert said == ["epoch 3/16: loss 1.235 train 0.500 val 0.625 1234 img/s 2.1s",
                    "epoch 3: loss 1.235 train 0.500 val - 1234 img/s 2.1s",
                    "lp epoch 1/50: loss 0.500 train 0.750 test -",
                    "ff epoch 1/50: loss 0.500 train 0.750 test 0.800"]


def test_an_output_folder_deleted_mid_run_is_said_to_have_disappeared(tmp_path):
    """A run's --out deleted while it trained: appending the epoch's metrics row read "not
    found: .../metrics.jsonl (No such file or directory); check the path" (audit), a path the
    user never typed. It says the folder disappeared during the run, and what a rerun does."""
    import shutil

    from ffcv_dp4tl.training.callbacks import MetricsWriter

    out = tmp_path / "run"
    out.mkdir()
    w = MetricsWriter(out / "metrics.jsonl")
    w.on_epoch_end({"epoch": 0})
    shutil.rmtree(out)
    with pytest.raises(DP4TLError) as e:
        w.on_epoch_end({"epoch": 1})
    assert str(e.value) == (f"the folder {out} disappeared during the run (deleted or unmounted) "
                            "while metrics.jsonl was written in it; rerun the same command: it "
                            "resumes from what is left, or starts over where nothing is")
    assert not out.exists()  # (not made again, half empty)
