"""dp4tl verify: an intact build passes; damage in either format is found and named."""
from __future__ import annotations

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


def test_flipped_shard_byte_fails_the_fingerprint_and_names_the_sample(copy):
    split = _split(copy)
    rec = split.load_index()[20]  # (samples 16..31 are shard 1; 20 lies past its first/last 4 KiB)
    _flip(split.shards[int(rec["shard"])], int(rec["offset"]) + int(rec["size"]) // 2)
    assert verify_dataset(copy).ok  # sizes and edges are unchanged: only --deep reads the rest
    problems = verify_dataset(copy, deep=True).problems
    shard = str(split.shards[int(rec["shard"])])
    # the shard is to blame (the beton's copy still hashes to its fingerprint), not the beton
    assert problems == [
        f"train: the shards' bytes do not hash to the fingerprint in manifest.json (a shard was "
        f"modified or damaged: {shard}); rebuild the dataset",
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
    assert any("train.beton" in p and ("past the end of the file" in p or "cannot read" in p) for p in problems), problems


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
