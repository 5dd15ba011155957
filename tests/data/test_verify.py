"""dp4tl verify: an intact build passes; damage in either format is found and named."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from cli_runner import run_cli
from ffcv_dp4tl.data import load_manifest
from beton_builders.beton import beton_images
from ffcv_dp4tl.data.verify import verify_dataset


@pytest.fixture
def copy(index_copy):
    return index_copy


def _split(root):
    return load_manifest(root).split("train")


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_intact_build_passes_quick_and_deep(copy):
    for deep in (False, True):
        report = verify_dataset(copy, deep=deep)
        assert report.ok, report.problems
        assert report.samples == {"train": 70}



def test_every_built_synth_split_set_passes_quick_and_deep(synth_root):
    """Targets hold train and test, hashed in that build order while manifest.json keeps its
    keys sorted (test, train): the fingerprint check must accept the builder's own order
    (it failed every synth target, whose order is not alphabetical)."""
    roots = [synth_root / "source", *sorted(p for p in (synth_root / "targets").iterdir() if p.is_dir())]
    assert any(list(load_manifest(r).contract.splits) != sorted(load_manifest(r).contract.splits)
               or "test" in load_manifest(r).contract.splits for r in roots)
    for root in roots:
        for deep in (False, True):
            report = verify_dataset(root, deep=deep)
            assert report.ok, (root, report.problems)

def test_flipped_shard_byte_fails_the_fingerprint_and_names_the_sample(copy):
    split = _split(copy)
    rec = split.load_index()[20]  # (samples 16..31 are shard 1; 20 lies past its first/last 4 KiB)
    _flip(split.shards[int(rec["shard"])], int(rec["offset"]) + int(rec["size"]) // 2)
    assert verify_dataset(copy).ok  # sizes and edges are unchanged: only --deep reads the rest
    problems = verify_dataset(copy, deep=True).problems
    shard = str(split.shards[int(rec["shard"])])
    # the shard is to blame (the beton's copy still hashes to its fingerprint), not the beton
    # ... and the advice is one that works: a rerun alone says "already built" (its repair runs
    # the loaders' cheap checks only), so the damaged file must go first
    assert problems == [
        f"train: the shards' bytes do not hash to the fingerprint in manifest.json (a shard was "
        f"modified or damaged: {shard}); delete {shard} and rerun the `dp4tl build` that made "
        f"{copy} (it makes the deleted file again from the inputs)",
        f"{shard}: shard bytes differ from the build's (the beton's copy is intact) at sample(s) 20"]


def test_quick_verify_reports_a_shard_edge_the_loader_refuses(copy):
    """One byte in a shard's first 4 KiB (its first member's JPEG header): the WebDataset loader
    refuses the shard at open, so the quick check (no image bytes read) must not say OK."""
    from ffcv_dp4tl.data import AugSpec, make_loader
    from ffcv_dp4tl.errors import DataError

    split = _split(copy)
    _flip(split.shards[2], 600)
    with pytest.raises(DataError) as e:
        make_loader(copy, "train", fmt="wds", aug=AugSpec.for_eval(), batch_size=8, resolution=16,
                    num_workers=0)
    assert "checksum of its first/last 4096 bytes differs" in str(e.value)
    want = (f"{split.shards[2]}: checksum of its first/last 4096 bytes differs from the one "
            "recorded at build time (split 'train'); rebuild the dataset")
    assert verify_dataset(copy).problems == [want]


def test_flipped_beton_byte_is_named_and_shards_stay_clean(copy):
    split = _split(copy)
    images = beton_images(split.beton)
    _flip(split.beton, int(images.data_ptr[33]) + 40)
    problems = verify_dataset(copy, deep=True).problems
    assert len(problems) == 1 and "sample(s) 33" in problems[0] and "train.beton" in problems[0], problems


def test_truncated_files_fail_the_quick_check(copy):
    split = _split(copy)
    last = split.shards[-1]
    size = last.stat().st_size
    with open(last, "r+b") as f:
        f.truncate(size // 2)
    images = beton_images(split.beton)
    with open(split.beton, "r+b") as f:
        f.truncate(int(images.data_ptr.max()) + 10)  # into the last image's bytes
    problems = verify_dataset(copy).problems
    assert any("past the end of its shard" in p for p in problems), problems
    assert any("train.beton" in p and ("past the end of the file" in p or "header points outside "
                                       "the file" in p) for p in problems), problems


def test_an_unreadable_beton_header_is_one_problem_not_two(copy):
    """The beton's structure and its recorded checksum both read its header: a version ffcv
    cannot read was listed twice, and counted as 2 problems."""
    split = _split(copy)
    with open(split.beton, "r+b") as f:
        f.write((3).to_bytes(2, "little"))
    problems = verify_dataset(copy).problems
    said = [p for p in problems if "ffcv format version 3" in p]
    assert len(said) == 1 and said[0].startswith(f"{split.beton}:"), problems


def test_bad_labels_and_missing_manifest(copy):
    split = _split(copy)
    labels = np.load(split.labels)
    labels[5] = 99
    np.save(split.labels, labels)
    problems = verify_dataset(copy).problems
    assert problems == [f"{split.labels}: label outside [0, 5) at sample(s) 5"]
    (copy / "manifest.json").unlink()
    problems = verify_dataset(copy).problems
    assert len(problems) == 1 and "no manifest.json" in problems[0]


def test_counts_differing_from_the_manifest(copy):
    m = json.loads((copy / "manifest.json").read_text())
    m["splits"]["train"]["class_counts"][0] += 1
    (copy / "manifest.json").write_text(json.dumps(m))
    assert verify_dataset(copy).problems == [f"{_split(copy).labels}: per-class counts differ from manifest.json; rebuild the dataset"]


def test_cli_exit_codes(copy):
    cmd = ["verify", str(copy), "--deep", "--no-progress"]
    ok = run_cli(*cmd)  # in-process (cli_runner): exit code, stdout, stderr
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr
    split = _split(copy)
    _flip(split.beton, int(beton_images(split.beton).data_ptr[3]) + 30)
    bad = run_cli(*cmd)
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert lines[0].startswith("problem: ") and "sample(s) 3" in lines[0] and "Traceback" not in bad.stderr
    assert lines[-1].endswith("1 problem(s) found (sizes and every sample's bytes (both formats))")


def test_permuted_labels_fail_the_quick_check_and_are_blamed_not_the_shards(copy):
    """Same size, same per-class counts: only the recorded digest tells (issue 21)."""
    from ffcv_dp4tl.errors import DataError

    split = _split(copy)
    labels = np.load(split.labels)
    np.save(split.labels, np.random.default_rng(1).permutation(labels))
    want = f"{split.labels}: labels differ from the ones the build wrote (same counts: permuted or edited); rebuild the dataset"
    assert verify_dataset(copy).problems == [want]
    assert verify_dataset(copy, deep=True).problems == [want]  # shards and beton are intact
    with pytest.raises(DataError, match=r"train.labels.npy: labels differ from the ones the build wrote .*"
                                        r"dp4tl verify .* --deep"):
        _split(copy).load_labels()  # what `mask classes`, prune and scoring read


def test_an_edited_index_is_named(copy):
    split = _split(copy)
    index = np.load(split.index)
    index["label"][[0, 1]] = index["label"][[1, 0]]  # (labels 0 and 1: every class is present)
    np.save(split.index, index)
    assert verify_dataset(copy).problems == [f"{split.index}: entries differ from the ones the build "
                                             "wrote (edited or replaced); rebuild the dataset"]


def _edit_manifest(root, edit):
    p = root / "manifest.json"
    m = json.loads(p.read_text())
    edit(m)
    p.write_text(json.dumps(m))


def test_checksums_of_the_wrong_type_are_one_line_for_verify_and_loaders(copy):
    """A hand-edited ``checksums`` record (``"beton": 5``) gave a TypeError traceback from deep
    inside the checksum comparison; verify and every loader now get one line naming the field."""
    from ffcv_dp4tl.errors import DataError

    _edit_manifest(copy, lambda m: m["splits"]["train"].update(checksums={
        "scheme": "size+blake2b-edges/1", "beton": 5, "shards": "x", "labels": 7, "index": [1]}))
    (problem,) = verify_dataset(copy).problems
    assert problem.startswith(f"{copy / 'manifest.json'} split 'train' 'checksums': field 'beton' "
                              "must be a JSON object"), problem
    with pytest.raises(DataError, match=r"manifest.json split 'train' 'checksums': field 'beton'"):
        _split(copy).check_files("wds")


def test_float_labels_are_one_line_naming_the_labels_file(copy):
    """Labels saved as float32 (whole values: their digest even matches the build's) crashed
    verify with a casting TypeError and ``mask classes`` with an IndexError."""
    from ffcv_dp4tl.data import mask_from_classes
    from ffcv_dp4tl.errors import DataError

    split = _split(copy)
    np.save(split.labels, np.load(split.labels).astype(np.float32))
    want = (f"{split.labels}: labels must be a 1-D array of integer class ids, got dtype float32")
    for deep in (False, True):
        (problem,) = verify_dataset(copy, deep=deep).problems
        assert problem.startswith(want), problem
    with pytest.raises(DataError, match=r"train.labels.npy: labels must be a 1-D array of integer"):
        mask_from_classes(split, [0, 1])


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m.update(splits={}), "manifest.json lists no splits"),
    (lambda m: m.update(fingerprint="0" * 64), "the dataset fingerprint 000000000000… does not "
                                               "match its splits"),
    # a two-split dataset whose second split was deleted: its fingerprint no longer matches
    (lambda m: m.update(fingerprint=hashlib.sha256((m["splits"]["train"]["fingerprint"] + "f" * 64)
                                                   .encode()).hexdigest()), "does not match its splits"),
])
def test_a_manifest_whose_fingerprint_does_not_match_its_splits_fails(copy, edit, needle):
    """verify said OK (quick and deep) about a manifest listing no split, one with a split
    deleted, or a dataset fingerprint replaced: the fingerprint masks, scores and stages trust."""
    _edit_manifest(copy, edit)
    for deep in (False, True):
        report = verify_dataset(copy, deep=deep)
        assert not report.ok and sum(needle in p for p in report.problems) == 1, report.problems


def test_an_unknown_checksum_scheme_is_said_not_skipped(copy):
    """A newer release's checksum scheme made verify skip every checksum in silence (and say OK);
    like a newer format_version (contracts/versions.py) it is refused, saying to upgrade."""
    _edit_manifest(copy, lambda m: m["splits"]["train"]["checksums"].update(scheme="future/9"))
    (problem,) = verify_dataset(copy).problems  # (the record itself loads: a newer shape is kept)
    assert "records checksums of scheme 'future/9', which this ffcv-dp4tl does not know" in problem
    assert "upgrade ffcv-dp4tl" in problem and "--overwrite" in problem


def _member(shard, name):
    import tarfile

    with tarfile.open(shard) as tar:
        return tar.getmember(name)


def test_a_damaged_tar_header_is_found_by_deep_verify(copy):
    """Garbage over a shard's tar header (away from its first/last 4 KiB): the index still finds
    every JPEG, so the byte hashes pass, but a standard tar reader (webdataset) stops there and
    loses every later sample of the shard. Deep verify reads each shard as tarfile does."""
    split = _split(copy)
    shard = split.shards[1]  # samples 16..31
    m = _member(shard, "000000020.jpg")
    with open(shard, "r+b") as f:
        f.seek(m.offset)
        f.write(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes())
    assert verify_dataset(copy).ok  # sizes and edges unchanged
    (problem,) = verify_dataset(copy, deep=True).problems
    assert problem.startswith(f"{shard}, sample 20 (key 000000020): a standard tar reader "
                              "(tarfile, webdataset) finds the archive ending early"), problem
    assert problem.endswith(f"delete {shard} and rerun the `dp4tl build` that made {copy} (it makes "
                            "the deleted file again from the inputs)")


def test_a_changed_cls_label_is_found_by_deep_verify(copy):
    """A ``.cls`` member is what a WebDataset user reads as the label; the random-access index
    never reads it, so a changed one gave a garbled label while deep verify said OK."""
    split = _split(copy)
    shard = split.shards[1]
    m = _member(shard, "000000021.cls")
    label = int(np.load(split.labels)[21])
    with open(shard, "r+b") as f:
        f.seek(m.offset_data)
        f.write(str((label + 1) % 5).encode())
    (problem,) = verify_dataset(copy, deep=True).problems
    assert problem.startswith(f"{shard}, sample 21 (key 000000021): a standard tar reader "
                              f"(tarfile, webdataset) finds label '{(label + 1) % 5}' in "
                              f"000000021.cls, but the build wrote {label}; delete {shard}"), problem


def _declare_size(shard, m, size, sparse):
    """Rewrite member ``m``'s tar header to declare ``size`` bytes (a GNU sparse member of that
    real size when ``sparse``: a few bytes of file that a reader expands to ``size`` zeros)."""
    with open(shard, "r+b") as f:
        f.seek(m.offset)
        h = bytearray(f.read(512))
        if sparse:
            h[156:157] = b"S"
            h[124:136] = b"%011o\0" % 0
            h[386:410] = b"%011o\0" % size + b"%011o\0" % 0  # one hole of ``size`` bytes
            h[483:495] = b"%011o\0" % size
        else:
            h[124:136] = b"%011o\0" % size
        h[148:156] = b" " * 8
        h[148:156] = b"%06o\0 " % sum(h)
        f.seek(m.offset)
        f.write(bytes(h))


@pytest.mark.parametrize("sparse", [False, True])
def test_a_cls_member_declaring_many_bytes_is_refused_not_read(copy, sparse):
    """A ``.cls`` member holds a label of a few digits; deep verify read each one whole, so a
    shard of a few KB whose header declares gigabytes (sparse: zeros made up by the reader) took
    that much memory. A member over the bound is that shard's problem, and nothing is read."""
    split = _split(copy)
    shard = split.shards[1]
    m = _member(shard, "000000021.cls")
    _declare_size(shard, m, 1 << 16, sparse)
    (problem,) = verify_dataset(copy, deep=True).problems
    assert problem.startswith(f"{shard}, sample 21 (key 000000021): a standard tar reader "
                              f"(tarfile, webdataset) finds 000000021.cls declaring 65536 bytes"
                              f"{' (sparse)' if sparse else ''}, more than a label's 32"), problem


def test_a_missing_shard_is_one_problem_in_deep_mode_too(copy):
    """--deep used to stop at the missing shard (exit 2, 'check the path', no report; in Python a
    FileNotFoundError): it reports what the quick check reports and still checks the rest."""
    split = _split(copy)
    split.shards[0].unlink()
    for deep in (False, True):
        problems = verify_dataset(copy, deep=deep).problems
        assert problems == [f"{split.shards[0]}: missing; rebuild the dataset (or restore the file)"], deep
    res = run_cli("verify", str(copy), "--deep", "--no-progress")
    assert res.returncode == 1 and "missing; rebuild" in res.stderr and "Traceback" not in res.stderr


def test_deep_verify_of_more_shards_than_open_files_allowed(tmp_path):
    """A deep check opened every shard of a split at once, so a split with more shards than
    the open-file limit (ImageNet-1K: 1,282 train shards against the usual soft 1,024) failed
    with "Too many open files". It reads shard by shard, holding a few files open."""
    import os
    import resource

    from beton_builders import BuildOptions, DatasetSpec, Sample, build_dataset

    samples = [Sample(np.full((16, 16, 3), 5 * i, np.uint8), i % 3, name=f"s/{i:03d}")
               for i in range(48)]
    root = tmp_path / "many"
    build_dataset(DatasetSpec("many", ["a", "b", "c"], {"train": samples}), root,
                  BuildOptions(max_side=16, shard_size=1, workers=1, progress=False))
    assert len(_split(root).shards) == 48
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 24, hard))
    try:
        report = verify_dataset(root, deep=True, progress=False)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert report.ok, report.problems


def _images(folder, n=2, ext=".jpg"):
    """``n`` files the folder layout lists as images (by extension: their bytes are not read)."""
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"{i}{ext}").write_bytes(b"")


def test_an_input_image_folder_is_named_and_built_elsewhere(tmp_path):
    """`dp4tl verify RAW_FOLDER` (the images, not a build) advised `dp4tl build SOURCE --out
    RAW_FOLDER`, which `dp4tl build` refuses (an --out inside its input folder). It now says
    the folder is an input folder and how to build it into another one: class folders are the
    folder layout's."""
    root = tmp_path / "raw"
    for sub in ("a", "b"):
        _images(root / sub, ext=".JPEG")
    (root / "README.txt").write_text("not an image")
    assert verify_dataset(root).problems == [
        f"{root} is not a built dataset but an input folder (class folders of images; no "
        f"manifest.json): build a dataset from it into another folder with `dp4tl build "
        f"folder:{root} --out OTHER_DIR` (OTHER_DIR outside {root}), then pass OTHER_DIR"]
    run = run_cli("verify", root)  # (no dataset at all: a usage error, as for every --data)
    assert run.returncode == 2 and f"--out {root}" not in run.stderr
    assert run.stderr.startswith(f"error: {root} is not a built dataset but an input folder")
    run = run_cli("info", "--data", root)  # (every command reading --data: one rule)
    assert run.returncode == 2 and run.stderr.startswith(
        f"error: {root} is not a built dataset but an input folder")


@pytest.mark.parametrize("tree", [("train/n01", "train/n02", "val"), ("jpg",),
                                  ("train/a", "test/a")], ids=["imagenet", "flowers", "splits"])
def test_images_one_level_down_leave_the_layout_to_the_user(tmp_path, tree):
    """ImageNet's train/<wnid>/ with a flat val/, or Flowers' one jpg/ folder, are no class
    folders: the folder layout was suggested for them (review). The layout is left open."""
    root = tmp_path / "raw"
    for sub in tree:
        _images(root / sub)
    problems = verify_dataset(root).problems
    assert problems == [
        f"{root} is not a built dataset but a folder of input images (no manifest.json): build a "
        f"dataset from it into another folder with `dp4tl build LAYOUT:{root} --out OTHER_DIR` "
        f"(OTHER_DIR outside {root}; LAYOUT `folder` for one folder per class, optionally under "
        "train/ val/ test/, else the dataset's own, e.g. imagenet, flowers102: README, SOURCE), "
        "then pass OTHER_DIR"], problems


def test_loose_images_are_an_input_folder_too_but_a_folder_without_images_is_not(copy, tmp_path):
    """A class folder given to verify (images, no sub-folders): building it in place is refused,
    and the folder layout reads images from class folders, so both are said. Not an input
    folder, with the advice as before: an empty folder (build it there), a build that lost its
    manifest (an interrupted build: rerun it), a folder whose only images are hidden."""
    root = tmp_path / "cls"
    _images(root, ext=".png")
    problems = verify_dataset(root).problems
    assert len(problems) == 1 and problems[0].startswith(
        f"{root} is not a built dataset but a folder of images (no manifest.json): ")
    assert "`dp4tl build folder:DIR --out OTHER_DIR`" in problems[0] and f"--out {root}" not in problems[0]
    (tmp_path / "empty").mkdir()
    _images(tmp_path / "hidden" / ".thumbs")
    (copy / "manifest.json").unlink()
    for root in (tmp_path / "empty", tmp_path / "hidden", copy):
        problems = verify_dataset(root).problems
        assert problems == [f"{root} is not a built dataset (no manifest.json); build it with "
                            f"`dp4tl build SOURCE --out {root}` or finish an interrupted build by "
                            "rerunning it"], problems
