"""Loaders check their files at open and name the sample and file on a decode error.

* every build records per-file checksums (size + header/metadata digest of the beton, size +
  edge digests of each shard) and a beton content fingerprint; loaders refuse a file that no
  longer matches in one line, before any worker starts;
* a damaged JPEG inside a shard is one line naming split, sample, shard file and byte offset,
  from the WebDataset loader (with and without worker processes) and the device-decode loader;
* manifests written before these fields existed still load (structural beton check instead).
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from beton_builders.beton import beton_images
from ffcv_dp4tl.data import AugSpec, load_manifest, make_loader
from ffcv_dp4tl.data.verify import verify_dataset
from ffcv_dp4tl.errors import DataError


@pytest.fixture
def copy(index_copy):
    return index_copy


def _split(root):
    return load_manifest(root).split("train")


def _xor(path, offset, mask=0xFF):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def _strip_new_fields(root):
    """Make ``root`` look like a build from before checksums and beton fingerprints."""
    p = root / "manifest.json"
    m = json.loads(p.read_text())
    m.pop("beton_fingerprint", None)
    for s in m["splits"].values():
        s.pop("checksums", None)
        s.pop("beton_fingerprint", None)
    p.write_text(json.dumps(m))


def _damage_marker(root, i):
    """Flip the second byte of sample ``i``'s SOS marker in its shard (mid-shard sample)."""
    split = _split(root)
    rec = split.load_index()[i]
    path = split.shards[int(rec["shard"])]
    data = path.read_bytes()[int(rec["offset"]):int(rec["offset"]) + int(rec["size"])]
    _xor(path, int(rec["offset"]) + data.find(b"\xff\xda") + 1)
    return path, int(rec["offset"])


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def test_manifest_records_checksums_and_beton_fingerprint(index_dataset):
    m = load_manifest(index_dataset.root)
    s = m.split("train")
    assert s.checksums["beton"]["size"] == s.beton.stat().st_size
    assert [c["size"] for c in s.checksums["shards"]] == [p.stat().st_size for p in s.shards]
    assert len(s.beton_fingerprint) == 64 and len(m.contract.beton_fingerprint) == 64
    s.check_files("ffcv")
    s.check_files("wds")


@pytest.mark.parametrize("workers", [0, 1])
def test_damaged_jpeg_in_a_shard_names_sample_file_and_offset(copy, workers):
    # samples 16..31 are shard 1; 20 lies past the 4 KiB the open-time checksum reads
    path, offset = _damage_marker(copy, 20)
    loader = make_loader(copy, "train", fmt="wds", aug=AugSpec.for_eval(), batch_size=8, resolution=16,
                         num_workers=workers)
    with pytest.raises(DataError) as e:
        for _ in loader:
            pass
    msg = _one_line(e)
    assert "split 'train' sample 20" in msg and str(path) in msg, msg
    assert f"byte offset {offset}" in msg and f"dp4tl verify {copy} --deep" in msg, msg


def test_device_decode_names_sample_and_file(copy):
    pytest.importorskip("torchvision")
    path, offset = _damage_marker(copy, 20)
    loader = make_loader(copy, "train", fmt="wds", decode="gpu", aug=AugSpec.for_eval(), batch_size=8,
                         resolution=16, num_workers=0)
    with pytest.raises(DataError) as e:
        for _ in loader:
            pass
    msg = _one_line(e)
    assert "sample 20" in msg and str(path) in msg and f"byte offset {offset}" in msg, msg
    assert "dp4tl verify" in msg


@pytest.mark.parametrize("old_manifest", [False, True])
def test_truncated_beton_is_refused_at_open_in_one_line(copy, old_manifest):
    if old_manifest:
        _strip_new_fields(copy)
    split = _split(copy)
    images = beton_images(split.beton)
    with open(split.beton, "r+b") as f:
        f.truncate(int(images.data_ptr.max()) + 10)  # into the last image: "negative dimensions"
    for decode in ("cpu", "gpu"):
        with pytest.raises(DataError) as e:
            make_loader(copy, "train", fmt="ffcv", decode=decode, aug=AugSpec.for_eval(), batch_size=8,
                        resolution=16, num_workers=0)
        msg = _one_line(e)
        assert str(split.beton) in msg and "dp4tl verify" in msg, msg


def test_the_open_time_check_reads_the_betons_header_and_metadata_once(index_dataset, monkeypatch):
    """A loader's open-time check takes the digest, the sample count and the image sides from
    one read of the beton's described regions: it read the header three times and the metadata
    (tens of MB at ImageNet's size) twice, which on a network mount costs as much again."""
    import os

    from beton_builders.beton_format import read_layout

    split = _split(index_dataset.root)
    layout = read_layout(split.beton)
    size = split.beton.stat().st_size
    ideal = layout.metadata_end + (size - int(layout.header["alloc_table_ptr"]))
    assert layout.metadata_end - layout.metadata_offset > 0  # (metadata there to read twice)
    got = []
    pread, fromfile = os.pread, np.fromfile

    def counting_pread(fd, n, offset):
        data = pread(fd, n, offset)
        if os.path.samefile(f"/proc/self/fd/{fd}", split.beton):
            got.append(len(data))
        return data

    def counting_fromfile(file, dtype=float, count=-1, sep="", offset=0, **kw):
        out = fromfile(file, dtype=dtype, count=count, sep=sep, offset=offset, **kw)
        if os.path.samefile(file, split.beton):
            got.append(out.nbytes)
        return out

    monkeypatch.setattr(os, "pread", counting_pread)
    monkeypatch.setattr(np, "fromfile", counting_fromfile)
    split.check_files("ffcv")
    assert got and sum(got) <= ideal + layout.metadata_offset, (got, ideal)


def test_changed_beton_metadata_is_refused(copy):
    split = _split(copy)
    _xor(split.beton, 200)  # inside the field descriptors / metadata, not an image
    with pytest.raises(DataError, match="checksum differs") as e:
        make_loader(copy, "train", fmt="ffcv", aug=AugSpec.for_eval(), batch_size=8, resolution=16,
                    num_workers=0)
    assert str(split.beton) in _one_line(e)
    assert any("checksum differs" in p for p in verify_dataset(copy).problems)


def _enlarge_in_metadata(root, i, over, sides=("height", "width")):
    """Record a square ``over`` pixels larger than the build's max_side as sample ``i``'s image
    size in the beton's metadata (only its ``sides`` enlarged), and the beton's new checksum in
    manifest.json (an edit the checksums cannot see)."""
    from ffcv.types import FieldDescType, HeaderType, get_handlers, get_metadata_type

    from beton_builders.integrity import beton_checksum

    path = _split(root).beton
    header = np.fromfile(path, dtype=HeaderType, count=1)[0]
    descs = np.fromfile(path, dtype=FieldDescType, count=int(header["num_fields"]),
                        offset=HeaderType.itemsize)
    meta = np.memmap(path, dtype=get_metadata_type(get_handlers(descs)), mode="r+",
                     offset=HeaderType.itemsize + descs.nbytes, shape=(int(header["num_samples"]),))
    m = json.loads((root / "manifest.json").read_text())
    for side in sides:
        meta[i]["f0"][side] = m["image"]["max_side"] + over
    meta.flush()
    del meta
    m["splits"]["train"]["checksums"]["beton"] = beton_checksum(path)
    (root / "manifest.json").write_text(json.dumps(m))
    return path, m["image"]["max_side"]


@pytest.mark.parametrize("old_manifest", [False, True])
def test_an_image_side_over_max_side_in_the_metadata_is_refused_at_open(copy, old_manifest):
    """ffcv sizes its decode buffers by the largest side the metadata records: an edited entry
    (20000x20000) made the loader allocate 96 GB, a raw traceback. The builder never stores a
    side over the manifest's max_side, so one is refused in one line, and verify says it."""
    path, max_side = _enlarge_in_metadata(copy, 5, 1)
    if old_manifest:
        _strip_new_fields(copy)
    for decode in ("cpu", "gpu"):
        with pytest.raises(DataError) as e:
            make_loader(copy, "train", fmt="ffcv", decode=decode, aug=AugSpec.for_eval(),
                        batch_size=8, resolution=16, num_workers=0)
        msg = _one_line(e)
        assert msg.startswith(f"{path}: image side over the build's max_side {max_side} (first "
                              f"{max_side + 1}x{max_side + 1}: metadata edited or damaged) at "
                              "sample(s) 5"), msg
        assert "dp4tl verify" in msg or "rebuild" in msg, msg
    assert any(f"image side over the build's max_side {max_side}" in p
               for p in verify_dataset(copy).problems)


@pytest.mark.parametrize("side", ["height", "width"])
def test_one_side_over_max_side_is_refused_whichever_it_is(copy, side):
    """ffcv sizes its buffers by the largest height and the largest width apart: a sample only
    as wide as 20000 pixels (its height as built) is as much an edit, and refused the same way,
    by the loader and by verify."""
    path, max_side = _enlarge_in_metadata(copy, 5, 1, sides=(side,))
    with pytest.raises(DataError) as e:
        make_loader(copy, "train", fmt="ffcv", aug=AugSpec.for_eval(), batch_size=8,
                    resolution=16, num_workers=0)
    big = max_side + 1
    shape = rf"{big}x\d+" if side == "height" else rf"\d+x{big}"
    assert re.match(rf"{re.escape(str(path))}: image side over the build's max_side {max_side} "
                    rf"\(first {shape}: metadata edited or damaged\) at sample\(s\) 5",
                    _one_line(e)), e.value
    assert any(f"image side over the build's max_side {max_side}" in p
               for p in verify_dataset(copy).problems)


@pytest.mark.parametrize("old_manifest", [False, True])
def test_a_side_over_4096_is_refused_when_the_manifest_records_no_max_side(copy, old_manifest):
    """The side limit came from the manifest.json whoever edits the beton can edit too: without
    ``image`` it was None and the check was skipped (a 20000x20000 entry passed). The builder's
    own top, 4096, holds whatever the manifest says."""
    path, max_side = _enlarge_in_metadata(copy, 5, 4097 - 32)  # (the index build's max_side: 32)
    assert max_side == 32
    m = json.loads((copy / "manifest.json").read_text())
    del m["image"]
    (copy / "manifest.json").write_text(json.dumps(m))
    if old_manifest:
        _strip_new_fields(copy)
    with pytest.raises(DataError) as e:
        make_loader(copy, "train", fmt="ffcv", aug=AugSpec.for_eval(), batch_size=8,
                    resolution=16, num_workers=0)
    assert _one_line(e).startswith(f"{path}: image side over the build's max_side 4096 (first "
                                   "4097x4097: metadata edited or damaged) at sample(s) 5"), e.value
    assert any("image side over the build's max_side 4096" in p
               for p in verify_dataset(copy).problems)


@pytest.mark.parametrize("max_side", [7, 4097, 10**9])
def test_a_manifest_max_side_outside_the_builders_range_is_refused_on_load(copy, max_side):
    """A manifest raised to ``max_side: 1e9`` let any side through: refused when read, one line
    naming manifest.json and the field."""
    p = copy / "manifest.json"
    m = json.loads(p.read_text())
    m["image"]["max_side"] = max_side
    p.write_text(json.dumps(m))
    with pytest.raises(DataError) as e:
        load_manifest(copy)
    msg = _one_line(e)
    assert msg.startswith(str(p)) and "'image.max_side' must be in [8, 4096]" in msg, msg
    assert f"got {max_side}" in msg, msg


def test_changed_or_truncated_shard_is_refused(copy):
    split = _split(copy)
    _xor(split.shards[2], 600)  # first member's JPEG header
    with pytest.raises(DataError, match="checksum of its first/last") as e:
        make_loader(copy, "train", fmt="wds", aug=AugSpec.for_eval(), batch_size=8, resolution=16,
                    num_workers=0)
    assert str(split.shards[2]) in _one_line(e)
    _xor(split.shards[2], 600)  # undone
    with open(split.shards[3], "r+b") as f:
        f.truncate(split.shards[3].stat().st_size - 1024)
    with pytest.raises(DataError, match="truncated or replaced"):
        make_loader(copy, "train", fmt="wds", aug=AugSpec.for_eval(), batch_size=8, resolution=16,
                    num_workers=0)


def test_old_manifest_without_new_fields_still_loads(copy, index_dataset):
    _strip_new_fields(copy)
    split = _split(copy)
    assert split.checksums is None and split.beton_fingerprint is None
    loader = make_loader(copy, "train", fmt="wds", aug=AugSpec.for_eval(), batch_size=32, resolution=16,
                         num_workers=0)
    assert sorted(int(i) for b in loader for i in b.indices) == list(range(len(index_dataset)))
    assert verify_dataset(copy, deep=True).ok


def test_deep_verify_checks_the_beton_fingerprint(copy):
    assert verify_dataset(copy, deep=True).ok
    m = json.loads((copy / "manifest.json").read_text())
    m["splits"]["train"]["beton_fingerprint"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(m))
    problems = verify_dataset(copy, deep=True).problems
    assert len(problems) == 1 and "beton fingerprint" in problems[0], problems


def test_beton_fingerprint_is_layout_independent(tmp_path):
    """Rebuilds of the same content give the same beton fingerprint whatever page order ffcv's
    writer workers produced; a different storage mode gives another one (same content fp)."""
    from beton_builders import BuildOptions, DatasetSpec, Sample, build_dataset

    rng = np.random.default_rng(1)
    spec = DatasetSpec("t", ["a", "b"], {"train": [
        Sample(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8), k % 2, name=f"s{k}")
        for k in range(24)]})
    fps = {}
    for name, opts in {"w1": dict(workers=1), "w2": dict(workers=2),
                       "prop": dict(workers=1, beton_mode="proportion", raw_fraction=0.5)}.items():
        build_dataset(spec, tmp_path / name, BuildOptions(max_side=24, shard_size=8, progress=False,
                                                          **opts))
        m = load_manifest(tmp_path / name).contract
        fps[name] = (m.fingerprint, m.beton_fingerprint)
    assert fps["w1"] == fps["w2"]
    assert fps["prop"][0] == fps["w1"][0] and fps["prop"][1] != fps["w1"][1]
    assert verify_dataset(tmp_path / "prop", deep=True).ok


def _fake_shards(tmp_path, n):
    """``n`` small files with the checksums a build records for shards."""
    from beton_builders.integrity import SCHEME, shard_checksum

    paths = [tmp_path / f"train-{i:06d}.tar" for i in range(n)]
    for i, p in enumerate(paths):
        p.write_bytes(bytes([i % 251]) * 9000)
    return paths, {"scheme": SCHEME, "shards": [shard_checksum(p) for p in paths]}


def test_many_shards_are_checked_at_once_and_the_first_problem_is_the_first_in_order(
        tmp_path, monkeypatch):
    """A loader checks every shard at open: one by one, ImageNet-21K's ~14,200 shards on a
    network mount waited for their round trips in a row (the checks now overlap). What it
    reports is unchanged: the first damaged shard in shard order, and `verify`'s list of all
    of them in order."""
    import threading

    from beton_builders import integrity

    paths, rec = _fake_shards(tmp_path, 80)
    for i in (70, 9, 40):
        _xor(paths[i], 8000)  # in the last SHARD_EDGE bytes
    with pytest.raises(DataError, match="checksum of its first/last") as e:
        integrity.check_split_files(tmp_path, "train", None, paths, rec, 80)
    assert _one_line(e).startswith(f"{paths[9]}:")
    found = list(integrity.recorded_problems(tmp_path / "none.beton", paths, rec, "train", "h"))
    assert [p for p, _ in found] == [paths[9], paths[40], paths[70]]

    together = threading.Barrier(2, timeout=20)  # (one check at a time never meets a second)
    checked = integrity.shard_problem

    def waits_for_another(path, *args):
        if path in (paths[0], paths[60]):  # (blocks of 16: the first and the fourth)
            together.wait()
        return checked(path, *args)

    monkeypatch.setattr(integrity, "shard_problem", waits_for_another)
    with pytest.raises(DataError, match=re.escape(str(paths[9]))):
        integrity.check_split_files(tmp_path, "train", None, paths, rec, 80)


def test_an_error_checking_one_shard_is_raised_at_its_turn_and_stops_the_rest(tmp_path):
    """``in_order`` raises what a check raised when the caller reaches that item, after the
    results before it, and checks not yet begun are not run."""
    from beton_builders.integrity import in_order

    import time

    from beton_builders.integrity import CHECK_THREADS

    ran = []

    def check(i):
        ran.append(i)
        if i == 50:
            raise PermissionError(f"item {i}")
        time.sleep(0.02)  # (a check waits on the file system: all 2,000 take 2.5 s)
        return i

    got = []
    with pytest.raises(PermissionError, match="item 50"):
        for x in in_order(check, list(range(2000))):
            got.append(x)
    assert got == list(range(50))
    assert len(ran) < 1000, len(ran)  # (the blocks not begun are cancelled: ~270 ran, not 1,987)

    # The others wait SLOW seconds on the file system each: the blocks already running stop
    # after their current item (Ctrl-C, or the first problem, waits for one check, not for each
    # running block's 16), so each runs about one item, a few if this thread is kept from
    # running for a while after the first problem (a busy CI machine kept it ~1 s: with 50 ms
    # checks, 321 ran); without the stop, the 16 running blocks run all their 256 items.
    slow, bound = 0.5, 4 * CHECK_THREADS
    ran.clear()

    def first_fails(i):
        ran.append(i)
        if i == 0:
            raise PermissionError("item 0")
        time.sleep(slow)
        return i

    with pytest.raises(PermissionError, match="item 0"):
        next(in_order(first_fails, list(range(2000))))
    assert len(ran) <= bound, len(ran)

    ran.clear()

    def first_is_a_problem(i):  # (a problem is a result, as check_split_files' checks return)
        ran.append(i)
        if i:
            time.sleep(slow)
        return f"item {i} is damaged" if i == 0 else None

    found = in_order(first_is_a_problem, list(range(2000)), last=lambda r: r is not None)
    assert next(found) == "item 0 is damaged"
    found.close()
    assert not set(range(1, 16)) & set(ran)  # (its block stopped there: not 15 checks more)
    assert len(ran) <= bound, len(ran)


def test_labels_hashed_once_a_file_however_often_it_changes(tmp_path, monkeypatch):
    """Labels are hashed once per file state (repeated loads cost a ``stat``) and again when the
    file changes, so a permuted rewrite is still caught; the cache kept one entry per version
    of a file, growing without bound in a long-lived process: now one entry a file."""
    import os

    from beton_builders import integrity

    monkeypatch.setattr(integrity, "_LABELS_SEEN", {})
    path = tmp_path / "train.labels.npy"
    labels = np.arange(6) % 3
    want = {"scheme": integrity.SCHEME, "labels": integrity.array_digest(labels)}
    for k in range(5):
        np.save(path, labels)
        os.utime(path, ns=(k * 10**9, k * 10**9))
        assert integrity.labels_intact(path, labels, want) is True
    assert len(integrity._LABELS_SEEN) == 1
    permuted = labels[::-1].copy()
    np.save(path, permuted)
    os.utime(path, ns=(9 * 10**9, 9 * 10**9))
    assert integrity.labels_intact(path, permuted, want) is False


@pytest.mark.parametrize("where", ["allocation table", "last byte"])
def test_changed_allocation_table_is_refused(copy, where):
    """The beton's checksum covers its allocation table (where every sample's bytes lie) to the
    file's last byte, not only its header and metadata: a damaged table is refused at open in
    one line, and verify says the same, before ffcv reads samples from the wrong place."""
    from beton_builders.beton_format import ALLOC_TABLE, read_layout

    split = _split(copy)
    size = split.beton.stat().st_size
    table = int(read_layout(split.beton).header["alloc_table_ptr"])
    assert size - table >= 2 * ALLOC_TABLE.itemsize  # (a table there to damage)
    # the second entry's data pointer; or the file's last byte (the last entry's size)
    _xor(split.beton, table + ALLOC_TABLE.itemsize + 8 if where == "allocation table" else size - 1)
    with pytest.raises(DataError, match="checksum differs") as e:
        make_loader(copy, "train", fmt="ffcv", aug=AugSpec.for_eval(), batch_size=8, resolution=16,
                    num_workers=0)
    assert str(split.beton) in _one_line(e)
    problems = verify_dataset(copy).problems
    assert any("checksum differs" in p and str(split.beton) in p for p in problems), problems


def test_a_labels_check_against_another_digest_fails_on_every_call(tmp_path, monkeypatch):
    """The labels check's per-file cache holds the file's digest, not a verdict: a file that does
    not match the build's digest fails the second (cached) check as it failed the first, and
    one that matches passes both."""
    from beton_builders import integrity

    monkeypatch.setattr(integrity, "_LABELS_SEEN", {})
    path = tmp_path / "train.labels.npy"
    labels = np.arange(6) % 3
    np.save(path, labels)
    wrong = {"scheme": integrity.SCHEME, "labels": integrity.array_digest(labels[::-1].copy())}
    right = {"scheme": integrity.SCHEME, "labels": integrity.array_digest(labels)}
    assert integrity.labels_intact(path, labels, wrong) is False
    assert integrity.labels_intact(path, labels, wrong) is False  # (cached)
    assert len(integrity._LABELS_SEEN) == 1
    assert integrity.labels_intact(path, labels, right) is True
    assert integrity.labels_intact(path, labels, right) is True
    assert integrity.labels_intact(path, labels, wrong) is False
