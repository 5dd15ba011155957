"""Dataset builder (beton_builders.writer/shards/beton/encode) on tiny generated inputs
(tiny_builds.py; repair: test_repair.py; what --out may hold: test_out_dir.py).

What users rely on: the output files exist and agree with each other (labels.npy, index,
shards, beton, manifest); stock tools (tar, webdataset, ffcv) read them; equal inputs give equal
fingerprints and byte-identical shards; bad images are skipped and reported, odd colour modes
converted; interrupted builds resume without redoing finished shards.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import beton_builders.writer as writer_mod
from beton_builders import BuildOptions, DatasetSpec, Sample, build_dataset
from ffcv_dp4tl.contracts import MANIFEST_NAME
from ffcv_dp4tl.data.manifest import INDEX_DTYPE
from ffcv_dp4tl.errors import DataError

try:  # rootdir-relative import (no tests/__init__.py) or package-relative
    from tiny_builds import (CLASSES, N, OPTS, SHARD, file_spec, image, labels_of, manifest_of,
                             mem_spec, shards_of)
except ImportError:  # pragma: no cover
    from .tiny_builds import (CLASSES, N, OPTS, SHARD, file_spec, image,  # type: ignore[no-redef]
                              labels_of, manifest_of, mem_spec, shards_of)

# numba's dispatcher finalizer may log a KeyError when ffcv's generated code is collected.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _shard_jpegs(d: Path, split: str = "train") -> list[bytes]:
    """JPEG bytes of every sample via the random-access index (as the wds loader reads them)."""
    index = np.load(d / "wds" / f"{split}.index.npy")
    shards = [d / s for s in manifest_of(d)["splits"][split]["shards"]]
    out = []
    for rec in index:
        with open(shards[rec["shard"]], "rb") as f:
            f.seek(int(rec["offset"]))
            out.append(f.read(int(rec["size"])))
    return out


def _decode(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def _temp_leftovers(d: Path) -> list[Path]:
    return [p for p in d.rglob(".*") if ".tmp" in p.name]


def _stock_ffcv_read(beton: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """All images and labels of a beton through a stock ffcv Loader, in file order."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    loader = Loader(str(beton), batch_size=16, num_workers=1, order=OrderOption.SEQUENTIAL,
                    drop_last=False, pipelines={
                        "image": [CenterCropRGBImageDecoder((size, size), ratio=1.0)],
                        "label": [IntDecoder()]})
    images, labels = zip(*[(im.copy(), lab.copy()) for im, lab in loader])
    return np.concatenate(images), np.concatenate(labels).ravel()


# ---------------------------------------------------------------------------------------------
# Outputs and their consistency
# ---------------------------------------------------------------------------------------------

def test_build_writes_all_outputs(builds):
    d = builds["a"]
    for name in ["train.beton", "train.labels.npy", "wds/train.index.npy", "manifest.json",
                 "rejects.txt"]:
        assert (d / name).is_file(), name
    assert [p.name for p in shards_of(d)] == [f"train-{i:06d}.tar" for i in range(5)]
    assert not _temp_leftovers(d)

    labels = np.load(d / "train.labels.npy")
    assert labels.dtype == np.int64 and labels.tolist() == labels_of().tolist()
    index = np.load(d / "wds" / "train.index.npy")
    assert index.dtype == INDEX_DTYPE
    assert index["key"].tolist() == list(range(N))
    assert index["shard"].tolist() == [i // SHARD for i in range(N)]
    assert (index["label"] == labels).all()

    m = manifest_of(d)
    s = m["splits"]["train"]
    assert m["classes"] == CLASSES and m["name"] == "tiny"
    assert s["num_samples"] == N and s["num_rejected"] == 0
    assert s["class_counts"] == np.bincount(labels_of(), minlength=3).tolist()
    assert s["shards"] == [f"wds/train-{i:06d}.tar" for i in range(5)]
    assert m["image"]["max_side"] == 32 and m["image"]["color"] == "RGB"
    assert (d / "rejects.txt").read_text().splitlines() == ["# split\tinput\treason"]

    summary = builds["summary"]
    assert not summary.skipped
    assert [(x.name, x.num_samples, x.num_rejected) for x in summary.splits] == [("train", N, 0)]
    assert "train: 40 samples, 0 rejected" in summary.lines()[0]


def test_equal_inputs_equal_fingerprints_and_identical_shards(builds):
    a, b = builds["a"], builds["b"]
    assert manifest_of(a)["fingerprint"] == manifest_of(b)["fingerprint"]
    assert manifest_of(a)["splits"]["train"]["fingerprint"] == manifest_of(b)["splits"]["train"]["fingerprint"]
    for sa, sb in zip(shards_of(a), shards_of(b), strict=True):
        assert sa.read_bytes() == sb.read_bytes(), sa.name
    assert (a / "wds/train.index.npy").read_bytes() == (b / "wds/train.index.npy").read_bytes()
    assert (a / "train.labels.npy").read_bytes() == (b / "train.labels.npy").read_bytes()


def test_changed_image_changes_fingerprint_and_only_its_shard(builds):
    a, c = builds["a"], builds["c"]
    assert manifest_of(a)["fingerprint"] != manifest_of(c)["fingerprint"]
    assert manifest_of(a)["splits"]["train"]["fingerprint"] != manifest_of(c)["splits"]["train"]["fingerprint"]
    same = [sa.read_bytes() == sc.read_bytes() for sa, sc in zip(shards_of(a), shards_of(c))]
    assert same == [True, True, False, True, True]  # sample 21 lives in shard 2


def test_same_images_other_labels_or_class_names_are_other_data(tmp_path):
    """Two builds of the same images that differ only in their labels, or only in their class
    names, are different datasets: their manifest fingerprints differ, so a mask (and any
    score or stage keyed by the fingerprint) made on one is refused on the other instead of
    being silently reused."""
    from ffcv_dp4tl.data import load_manifest, load_mask, make_mask, save_mask
    from ffcv_dp4tl.errors import MaskError

    n, opts = 6, BuildOptions(max_side=32, quality=90, shard_size=8, workers=1, progress=False)

    def build(name: str, labels: list[int], classes: list[str]) -> Path:
        samples = [Sample(image(i), labels[i], name=f"mem/{i:03d}") for i in range(n)]
        build_dataset(DatasetSpec("tiny", classes, {"train": samples}), tmp_path / name, opts,
                      source="mem")
        return tmp_path / name

    base = build("base", [0, 1, 2, 0, 1, 2], list(CLASSES))
    builds = {"labels": build("labels", [1, 2, 0, 1, 2, 0], list(CLASSES)),
              "class names": build("names", [0, 1, 2, 0, 1, 2], ["ant", "bee", "cow"])}
    split = load_manifest(base).split("train")
    npy = save_mask(tmp_path / "mask", make_mask([0, 2, 4], split, method="manual"))
    for what, d in builds.items():
        assert _shard_jpegs(d) == _shard_jpegs(base), what  # the very same image bytes
        assert manifest_of(d)["splits"]["train"]["fingerprint"] \
            != manifest_of(base)["splits"]["train"]["fingerprint"], what
        assert manifest_of(d)["fingerprint"] != manifest_of(base)["fingerprint"], what
        with pytest.raises(MaskError, match="made for another dataset"):
            load_mask(npy, load_manifest(d).split("train"))
    assert load_mask(npy, split).indices.tolist() == [0, 2, 4]


# ---------------------------------------------------------------------------------------------
# Stock tools read the outputs
# ---------------------------------------------------------------------------------------------

def test_shards_are_plain_tars(builds):
    d = builds["a"]
    names = []
    for shard in shards_of(d):
        with tarfile.open(shard) as tar:
            names += tar.getnames()
    assert names == [f"{i:09d}.{ext}" for i in range(N) for ext in ("jpg", "cls")]
    if shutil.which("tar"):
        out = subprocess.run(["tar", "tf", str(shards_of(d)[0])], capture_output=True, text=True,
                             check=True).stdout.split()
        assert out == [f"{i:09d}.{ext}" for i in range(SHARD) for ext in ("jpg", "cls")]
    with tarfile.open(shards_of(d)[1]) as tar:
        assert tar.extractfile(f"{SHARD:09d}.cls").read() == str(labels_of()[SHARD]).encode()


def test_webdataset_reads_all_samples(builds):
    import webdataset as wds

    d = builds["a"]
    ds = wds.WebDataset([str(p) for p in shards_of(d)], shardshuffle=False, empty_check=True).decode("pil")
    samples = list(ds)
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(N)]
    assert [int(s["cls"]) for s in samples] == labels_of().tolist()
    jpegs = _shard_jpegs(d)
    for s, jpeg in zip(samples, jpegs):
        assert s["jpg"].mode == "RGB" and s["jpg"].size == (32, 32)
        assert np.array_equal(np.asarray(s["jpg"]), _decode(jpeg))


def test_stock_ffcv_loader_reads_beton(builds):
    d = builds["a"]
    images, labels = _stock_ffcv_read(d / "train.beton", 32)
    assert labels.tolist() == np.load(d / "train.labels.npy").tolist()
    assert images.shape == (N, 32, 32, 3)
    ref = np.stack([_decode(j) for j in _shard_jpegs(d)]).astype(int)
    diff = np.abs(images.astype(int) - ref)
    assert diff.mean() < 2.0 and diff.max() <= 10, (diff.mean(), diff.max())  # decoder differences
    # and every decoded image is nearest to its own original input (right image, right order)
    orig = np.stack([image(i) for i in range(N)]).astype(int)
    dist = np.abs(images.astype(int)[:, None] - orig[None]).mean(axis=(2, 3, 4))
    assert dist.argmin(axis=1).tolist() == list(range(N))


def test_beton_stores_exactly_the_shard_jpegs(builds):
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.reader import Reader

    d = builds["a"]
    reader = Reader(str(d / "train.beton"))
    assert reader.num_samples == N and list(reader.handlers) == ["image", "label"]
    meta = reader.metadata
    assert (meta["f0"]["mode"] == IMAGE_MODES["jpg"]).all()
    assert meta["f1"].tolist() == labels_of().tolist()
    sizes = dict(zip(reader.alloc_table["ptr"].tolist(), reader.alloc_table["size"].tolist()))
    raw = np.fromfile(d / "train.beton", dtype=np.uint8)
    for i, jpeg in enumerate(_shard_jpegs(d)):
        ptr = int(meta["f0"]["data_ptr"][i])
        assert sizes[ptr] == len(jpeg)
        assert raw[ptr:ptr + len(jpeg)].tobytes() == jpeg, i
        assert (int(meta["f0"]["height"][i]), int(meta["f0"]["width"][i])) == (32, 32)


def test_proportion_mode_beton_read_by_stock_ffcv(builds, tmp_path):
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.reader import Reader

    d = tmp_path / "prop"
    opts = BuildOptions(**{**OPTS.__dict__, "beton_mode": "proportion", "raw_fraction": 0.5})
    build_dataset(mem_spec(), d, opts, source="mem")
    modes = Reader(str(d / "train.beton")).metadata["f0"]["mode"]
    n_raw = int((modes == IMAGE_MODES["raw"]).sum())
    assert 5 <= n_raw <= N - 5, n_raw  # a real mix (deterministic per sample index)
    # Same samples, same content fingerprint as the all-JPEG build: masks carry over.
    assert manifest_of(d)["fingerprint"] == manifest_of(builds["a"])["fingerprint"]
    assert [p.read_bytes() for p in shards_of(d)] == [p.read_bytes() for p in shards_of(builds["a"])]

    images, labels = _stock_ffcv_read(d / "train.beton", 32)
    assert labels.tolist() == labels_of().tolist()
    ref = np.stack([_decode(j) for j in _shard_jpegs(d)]).astype(int)
    diff = np.abs(images.astype(int) - ref)
    assert diff.mean() < 2.0 and diff.max() <= 10, (diff.mean(), diff.max())  # decoder differences


def test_invalid_options_rejected(tmp_path):
    for bad in [dict(quality=0), dict(max_side=4), dict(shard_size=0), dict(beton_mode="png"),
                dict(raw_fraction=0.5), dict(beton_mode="proportion", raw_fraction=1.0)]:
        with pytest.raises(DataError, match="--"):
            build_dataset(mem_spec(n=3), tmp_path / "x", BuildOptions(**{**OPTS.__dict__, **bad}))
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------
# Bad and unusual inputs
# ---------------------------------------------------------------------------------------------

def _write_inputs(root: Path) -> tuple[list[Sample], dict[str, tuple], list[str]]:
    """Files of every awkward kind. Returns samples, expected colours, names of bad inputs."""
    root.mkdir(parents=True, exist_ok=True)
    expect: dict[str, tuple] = {}

    def save(name, img, color=None, **kw):
        img.save(root / name, **kw)
        if color is not None:
            expect[name] = color

    save("rgb.jpg", Image.new("RGB", (32, 32), (200, 40, 40)), (200, 40, 40))
    save("gray.jpg", Image.new("L", (32, 32), 100), (100, 100, 100))
    save("cmyk.jpg", Image.new("CMYK", (32, 32), (0, 255, 255, 0)), (255, 0, 0))
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 255] + [0, 255, 0] * 255)
    save("palette_transparent.png", pal, (255, 255, 255), transparency=0)  # index 0 transparent
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 1] = 255  # green, fully transparent -> composited on white
    save("rgba.png", Image.fromarray(rgba, "RGBA"), (255, 255, 255))
    save("i16.png", Image.fromarray(np.full((32, 32), 20000, np.uint16)), (78, 78, 78))  # /257
    save("large.png", Image.new("RGB", (80, 60), (10, 120, 240)), (10, 120, 240))

    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(root / "full.jpg")
    data = (root / "full.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "full.jpg").unlink()
    (root / "text.jpg").write_text("this is not an image\n")
    (root / "empty.jpg").write_bytes(b"")
    bad = ["truncated.jpg", "text.jpg", "missing.jpg", "empty.jpg"]

    order = ["rgb.jpg", "truncated.jpg", "gray.jpg", "text.jpg", "cmyk.jpg", "missing.jpg",
             "palette_transparent.png", "rgba.png", "empty.jpg", "i16.png", "large.png"]
    samples = [Sample(root / name, k % 2) for k, name in enumerate(order)]
    return samples, expect, bad


def test_bad_inputs_skipped_and_odd_modes_converted(tmp_path):
    samples, expect, bad = _write_inputs(tmp_path / "in")
    spec = DatasetSpec("odd", ["even", "odd"], {"train": samples})
    out = tmp_path / "out"
    summary = build_dataset(spec, out, BuildOptions(**{**OPTS.__dict__, "shard_size": 4}))

    assert [(s.num_samples, s.num_rejected) for s in summary.splits] == [(7, 4)]
    m = manifest_of(out)
    assert m["splits"]["train"]["num_samples"] == 7 and m["splits"]["train"]["num_rejected"] == 4

    rows = [line.split("\t") for line in (out / "rejects.txt").read_text().splitlines()[1:]]
    reasons = {Path(name).name: reason for split, name, reason in rows}
    assert {split for split, _, _ in rows} == {"train"}
    assert sorted(reasons) == sorted(bad)
    assert reasons["missing.jpg"] == "file not found"
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["text.jpg"]
    assert "not an image" in reasons["empty.jpg"]

    kept = [k for k, s in enumerate(samples) if Path(s.ref).name not in bad]
    index = np.load(out / "wds" / "train.index.npy")
    assert index["key"].tolist() == kept  # keys keep the source ordinal
    labels = np.load(out / "train.labels.npy")
    assert labels.tolist() == [samples[k].label for k in kept]
    # where each sample came from: line i = sample i (rejects have no line), absolute paths
    origins = (out / "train.files.txt").read_text().splitlines()
    assert origins == [str(Path(samples[k].ref).resolve()) for k in kept]

    for k, jpeg in zip(kept, _shard_jpegs(out)):
        name = Path(samples[k].ref).name
        img = Image.open(io.BytesIO(jpeg))
        assert img.format == "JPEG" and img.mode == "RGB", name
        px = np.asarray(img).astype(int)
        if name == "large.png":
            assert img.size == (32, 24)  # shrunk to max_side, aspect kept
        else:
            assert img.size == (32, 32)
        assert np.abs(px - np.array(expect[name])).max() <= 6, (name, px[5, 5])


def test_16_bit_samples_keep_their_brightness():
    """16-bit images map value / 257, as OpenCV and 16-bit RGB do: a per-image stretch to the
    brightest pixel made a flat mid-grey white (255) and one hot pixel darkened the rest."""
    from beton_builders.encode import to_rgb

    flat = np.full((8, 8), 20000, np.uint16)
    hot = flat.copy()
    hot[0, 0] = 65535
    for arr in (flat, hot):
        rgb = np.asarray(to_rgb(Image.fromarray(arr)))
        assert rgb.shape == (8, 8, 3) and int(np.median(rgb)) == 78
    dark = np.asarray(to_rgb(Image.fromarray(np.full((8, 8), 4000, np.uint16))))
    assert int(dark.max()) == 16  # not stretched to 255
    wide = np.asarray(to_rgb(Image.fromarray(np.array([[-5, 200000]], np.int32), "I")))
    assert wide[0, :, 0].tolist() == [0, 255]  # 32-bit: no fixed range, stretched


def test_float_and_flat_wide_images_keep_their_content():
    """Float images in [0, 1] map value * 255 (a dark image stays dark); other ranges are
    stretched; a constant image is mid-grey, not black; NaN pixels read as 0 without turning
    the whole image black; an image with no finite pixel is a one-line reject."""
    from beton_builders.encode import encode_sample, to_rgb

    def grey(arr, mode=None):
        return np.asarray(to_rgb(Image.fromarray(arr, mode)))[..., 0]

    assert grey(np.full((4, 4), 0.5, np.float32)).tolist() == [[128] * 4] * 4
    assert int(grey(np.full((4, 4), 0.1, np.float32)).max()) == 26  # fixed scale, not stretched
    holes = np.array([[0.0, 0.5], [1.0, np.nan]], np.float32)
    assert grey(holes).tolist() == [[0, 128], [255, 0]]
    assert grey(np.array([[-3.0, 7.0], [np.inf, 2.0]], np.float32)).tolist() == [[0, 255], [0, 128]]
    assert set(grey(np.full((4, 4), 7.5, np.float32)).ravel().tolist()) == {128}
    assert set(grey(np.full((4, 4), 100000, np.int32), "I").ravel().tolist()) == {128}
    blank = lambda: Image.fromarray(np.full((16, 16), np.nan, np.float32))  # noqa: E731
    assert encode_sample(blank, 32, 90) == "unreadable: float image has no finite pixel (all NaN or infinite)"


def test_empty_split_is_an_error(tmp_path):
    spec = DatasetSpec("e", ["a"], {"train": [Sample(image(0), 0, "x")], "val": []})
    with pytest.raises(DataError, match="split 'val' of dataset 'e' is empty"):
        build_dataset(spec, tmp_path / "o", OPTS)


def test_all_inputs_bad_is_an_error(tmp_path):
    (tmp_path / "t.jpg").write_text("nope")
    spec = DatasetSpec("bad", ["a"], {"train": [Sample(tmp_path / "t.jpg", 0),
                                                Sample(tmp_path / "gone.jpg", 0)]})
    with pytest.raises(DataError, match="every input was rejected"):
        build_dataset(spec, tmp_path / "o", OPTS)
    assert not (tmp_path / "o" / "manifest.json").exists()


@pytest.mark.parametrize("label", [3, -1])
def test_label_out_of_range_is_an_error(tmp_path, label):
    spec = DatasetSpec("lab", ["a", "b", "c"], {"train": [Sample(image(0), 0, "ok"),
                                                          Sample(image(1), label, "img/bad")]})
    with pytest.raises(DataError, match=r"img/bad: label -?\d outside \[0, 3\)"):
        build_dataset(spec, tmp_path / "o", OPTS)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# Interruption and resume
# ---------------------------------------------------------------------------------------------

class _InterruptOnce:
    """Image ref that raises KeyboardInterrupt while ``flag`` exists (a Ctrl-C mid-encode)."""

    def __init__(self, flag: Path, i: int):
        self.flag, self.i = flag, i

    def __call__(self) -> Image.Image:
        if self.flag.exists():
            raise KeyboardInterrupt
        return Image.fromarray(image(self.i))


INTERRUPT_AT = 20  # in shard 2


def _interruptible_spec(flag: Path) -> DatasetSpec:
    spec = mem_spec()
    samples = list(spec.splits["train"])
    samples[INTERRUPT_AT] = Sample(_InterruptOnce(flag, INTERRUPT_AT), samples[INTERRUPT_AT].label,
                                   name=samples[INTERRUPT_AT].name)
    return DatasetSpec(spec.name, spec.classes, {"train": samples})


@pytest.fixture
def shard_calls(monkeypatch):
    """Record the first ordinal of every shard the writer encodes (workers=1: in-process)."""
    calls: list[int] = []
    real = writer_mod.write_shard

    def counting(path, samples, first, *args):
        calls.append(first)
        return real(path, samples, first, *args)

    monkeypatch.setattr(writer_mod, "write_shard", counting)
    return calls


def _interrupted_build(tmp_path: Path) -> tuple[Path, DatasetSpec, Path]:
    """Start a build that a KeyboardInterrupt stops in shard 2; unlink the flag to let it pass."""
    flag = tmp_path / "interrupt"
    flag.touch()
    spec = _interruptible_spec(flag)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        build_dataset(spec, out, OPTS, source="mem")
    return flag, spec, out


def test_interrupted_encode_resumes_without_reencoding(tmp_path, shard_calls, builds):
    flag, spec, out = _interrupted_build(tmp_path)

    assert shard_calls == [0, 8, 16]
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("*.beton")) and not list(out.glob("*.labels.npy"))
    assert [p.name for p in shards_of(out)] == ["train-000000.tar", "train-000001.tar"]
    assert not _temp_leftovers(out)  # the half-written shard 2 is gone, not renamed
    mtimes = {p.name: p.stat().st_mtime_ns for p in shards_of(out)}
    with pytest.raises(DataError, match="not a built dataset"):
        from ffcv_dp4tl.data import load_manifest
        load_manifest(out)

    flag.unlink()
    shard_calls.clear()
    summary = build_dataset(spec, out, OPTS, source="mem")
    assert not summary.skipped
    assert shard_calls == [16, 24, 32]  # finished shards 0 and 1 were not re-encoded
    assert {p.name: p.stat().st_mtime_ns for p in shards_of(out)[:2]} == mtimes
    ref = builds["a"]  # uninterrupted build of the same content
    assert manifest_of(out)["fingerprint"] == manifest_of(ref)["fingerprint"]
    assert [p.read_bytes() for p in shards_of(out)] == [p.read_bytes() for p in shards_of(ref)]
    assert (out / "train.beton").is_file() and not _temp_leftovers(out)

    shard_calls.clear()
    again = build_dataset(spec, out, OPTS, source="mem")
    assert again.skipped and shard_calls == []
    assert [(s.name, s.num_samples, s.num_rejected) for s in again.splits] == [("train", N, 0)]


def test_interrupted_beton_write_resumes(tmp_path, shard_calls, monkeypatch, builds):
    out = tmp_path / "out"

    def crash(path, *args, **kwargs):
        Path(path).write_bytes(b"half a beton")
        raise KeyboardInterrupt

    monkeypatch.setattr(writer_mod, "write_beton", crash)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(mem_spec(), out, OPTS, source="mem")
    assert len(shards_of(out)) == 5
    assert not (out / "manifest.json").exists() and not list(out.glob("*.beton"))
    assert not _temp_leftovers(out)

    monkeypatch.undo()  # restores write_beton and write_shard
    calls: list[int] = []
    real = writer_mod.write_shard
    monkeypatch.setattr(writer_mod, "write_shard", lambda p, s, first, *a: calls.append(first) or real(p, s, first, *a))
    build_dataset(mem_spec(), out, OPTS, source="mem")
    assert calls == []  # every shard was already done
    assert manifest_of(out)["fingerprint"] == manifest_of(builds["a"])["fingerprint"]
    assert (out / "train.beton").is_file()


def test_a_resumed_build_encodes_again_the_shards_whose_inputs_changed(tmp_path, monkeypatch):
    """Inputs edited between a kill and the rerun (same names, other pixels): the finished
    shards made from the old files are encoded again, and the result equals a clean build of
    the new files (it used to keep the old pixels in the finished shards, silently)."""
    import os

    src = tmp_path / "src"
    spec = file_spec(src)
    out = tmp_path / "out"
    real = writer_mod.write_shard

    def stop_at_shard_2(path, samples, first, *a):
        if first == 2 * SHARD:
            raise KeyboardInterrupt
        return real(path, samples, first, *a)

    monkeypatch.setattr(writer_mod, "write_shard", stop_at_shard_2)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(spec, out, OPTS, source="folder:src")
    monkeypatch.undo()
    assert len(shards_of(out)) == 2
    new = file_spec(src, salt=1)  # the same files rewritten with other pixels
    for i, sample in enumerate(new.splits["train"]):  # (and a later mtime, even on coarse clocks)
        os.utime(sample.ref, ns=(10**18 + i, 10**18 + i))
    build_dataset(new, out, OPTS, source="folder:src")
    clean = tmp_path / "clean"
    build_dataset(new, clean, OPTS, source="folder:src")
    assert [p.read_bytes() for p in shards_of(out)] == [p.read_bytes() for p in shards_of(clean)]
    assert manifest_of(out)["fingerprint"] == manifest_of(clean)["fingerprint"]


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_resumed_build_encodes_again_a_damaged_or_missing_shard(tmp_path, shard_calls, builds,
                                                                  damage):
    """A finished shard of a killed build that was truncated or deleted before the rerun is
    encoded again (a truncated one was checksummed as it was and the build declared complete;
    a deleted one hung ffcv's beton writer)."""
    flag, spec, out = _interrupted_build(tmp_path)
    shard = shards_of(out)[1]
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:1000])
    else:
        shard.unlink()
    flag.unlink()
    shard_calls.clear()
    build_dataset(spec, out, OPTS, source="mem")
    assert shard_calls == [8, 16, 24, 32]  # shard 1 again, then the unfinished ones
    assert [p.read_bytes() for p in shards_of(out)] == [p.read_bytes() for p in shards_of(builds["a"])]
    assert manifest_of(out)["fingerprint"] == manifest_of(builds["a"])["fingerprint"]


def test_partial_dir_with_other_options_is_refused_then_overwritten(tmp_path):
    flag, spec, out = _interrupted_build(tmp_path)
    flag.unlink()

    other = BuildOptions(**{**OPTS.__dict__, "quality": 80})
    with pytest.raises(DataError, match="interrupted build with different quality 90 -> 80;"):
        build_dataset(spec, out, other, source="mem")
    with pytest.raises(DataError, match="interrupted build with different source 'mem' -> 'elsewhere';"):
        build_dataset(spec, out, OPTS, source="elsewhere")
    with pytest.raises(DataError, match=r"different input listing \(file names or labels\)"):
        build_dataset(mem_spec(n=N - 1), out, OPTS, source="mem")

    summary = build_dataset(spec, out, other, source="mem", overwrite=True)
    assert not summary.skipped
    assert manifest_of(out)["image"]["quality"] == 80
    assert len(shards_of(out)) == 5


def test_complete_dir_with_other_options_is_refused_then_overwritten(tmp_path):
    out = tmp_path / "out"
    build_dataset(mem_spec(n=12), out, OPTS)
    other = BuildOptions(**{**OPTS.__dict__, "shard_size": 5})
    with pytest.raises(DataError, match=r"already holds a different build \(other shard_size 8 -> 5\); .*--overwrite"):
        build_dataset(mem_spec(n=12), out, other)
    build_dataset(mem_spec(n=12), out, other, overwrite=True)
    assert [p.name for p in shards_of(out)] == [f"train-{i:06d}.tar" for i in range(3)]
    assert manifest_of(out)["shard_size"] == 5
    assert not (out / ".build" / "train-000003.json").exists()  # old shard metadata removed


def test_ffcv_progress_is_labelled_or_silenced_for_one_write_only(tmp_path):
    """ffcv's writer has no progress switch and an unlabelled bar: its tqdm is patched for the
    duration of the write only, silenced with progress=False or labelled like the build's own
    bars (a user saw bare ``0/1920`` bars), and restored (also when the write fails)."""
    import ffcv.writer

    from beton_builders.beton import _ffcv_progress

    original = ffcv.writer.tqdm
    with _ffcv_progress(False):
        assert ffcv.writer.tqdm is not original and ffcv.writer.tqdm(total=3).disable
    assert ffcv.writer.tqdm is original
    with _ffcv_progress(True, "beton synth-tiny:train"):
        bar = ffcv.writer.tqdm(total=3)  # (ffcv's one call; the form follows stderr: progress.py)
        assert bar.desc == "beton synth-tiny:train" and not bar.disable
        bar.close()
    assert ffcv.writer.tqdm is original
    with pytest.raises(RuntimeError), _ffcv_progress(False):
        raise RuntimeError("write failed")
    assert ffcv.writer.tqdm is original


def test_a_damaged_manifest_is_refused_with_the_flag_that_rebuilds(tmp_path):
    """Rerunning the build over a finished build whose manifest.json was cut short names the
    way this command rebuilds (``--overwrite``), not "rebuild or replace it", which sent the
    user back to the same refusal; ``--overwrite`` then rebuilds."""
    out = tmp_path / "out"
    build_dataset(mem_spec(n=12), out, OPTS)
    manifest = out / MANIFEST_NAME
    manifest.write_text(manifest.read_text()[:100])
    with pytest.raises(DataError, match=r"manifest .* is not valid JSON .*; pass --overwrite "
                                        r"to replace it, or choose another --out$"):
        build_dataset(mem_spec(n=12), out, OPTS)
    assert not build_dataset(mem_spec(n=12), out, OPTS, overwrite=True).skipped
    assert manifest_of(out)["splits"]


def test_a_rerun_over_a_manifest_with_a_split_added_by_hand_is_one_line(tmp_path):
    """A split added to manifest.json by hand (a copy of another): the rerun took the build for
    "already built" and crashed with KeyError writing that split's files.txt (audit). It is
    refused in one line naming manifest.json, also when the fingerprint was recomputed to
    match; ``--overwrite`` rebuilds what the inputs make."""
    import json

    from ffcv_dp4tl.contracts import dataset_fingerprint

    out = tmp_path / "out"
    build_dataset(mem_spec(n=12), out, OPTS)
    path = out / MANIFEST_NAME
    m = json.loads(path.read_text())
    m["splits"]["test"] = dict(m["splits"]["train"])
    path.write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"manifest\.json: the dataset fingerprint .* does not "
                                        r"match its splits \((test, train|train, test):") as e:
        build_dataset(mem_spec(n=12), out, OPTS)
    assert "\n" not in str(e.value)
    m["splits"]["test"]["fingerprint"] = "ab" * 32
    m["fingerprint"] = dataset_fingerprint([x["fingerprint"] for x in m["splits"].values()])
    path.write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"manifest\.json lists splits test, train but this build "
                                        r"makes train \(edited by hand\?\); restore manifest\.json, "
                                        r"or pass --overwrite to replace it, or choose another --out$"):
        build_dataset(mem_spec(n=12), out, OPTS)
    assert not build_dataset(mem_spec(n=12), out, OPTS, overwrite=True).skipped
    assert list(manifest_of(out)["splits"]) == ["train"]


def test_same_names_other_pixels_is_not_taken_for_already_built(tmp_path):
    """A generator that gives the same names other pixels (synth's light_background) declares it
    in ``DatasetSpec.content``: a build of the old pixels is refused, never reused as "already
    built" (the stale-pixels hole when a preset's light_background changed)."""
    import dataclasses

    out = tmp_path / "out"
    build_dataset(mem_spec(n=12), out, OPTS)
    assert build_dataset(mem_spec(n=12), out, OPTS).skipped  # same spec: already built
    light = dataclasses.replace(mem_spec(n=12), content={"light_background": 30})
    with pytest.raises(DataError, match="already holds a different build"):
        build_dataset(light, out, OPTS)
    assert not build_dataset(light, out, OPTS, overwrite=True).skipped
    assert build_dataset(light, out, OPTS).skipped


def test_a_class_whose_inputs_were_all_rejected_is_a_warning(tmp_path):
    """A class left without images (every input rejected) still builds, with ``class_counts``
    0, but the summary says so (it used to say only "1 inputs skipped")."""
    (tmp_path / "t.jpg").write_text("not an image")
    spec = DatasetSpec("half", ["ok", "broken"], {"train": [Sample(image(0), 0, "a"),
                                                            Sample(image(1), 0, "b"),
                                                            Sample(tmp_path / "t.jpg", 1)]})
    summary = build_dataset(spec, tmp_path / "o", OPTS)
    assert manifest_of(tmp_path / "o")["splits"]["train"]["class_counts"] == [2, 0]
    assert summary.warnings == [f"split 'train': class 'broken' has no image left (its 1 input(s) "
                                f"were all rejected; reasons in {tmp_path / 'o' / 'rejects.txt'})"]


def test_rejects_txt_keeps_one_line_per_reject_for_names_with_tabs_and_newlines(tmp_path):
    """File names may hold a tab or a line break (POSIX allows both): ``rejects.txt`` escapes
    them, so each line is still one reject of three tab-separated fields."""
    odd = tmp_path / "in"
    odd.mkdir()
    names = ["tab\there.jpg", "line\nbreak.jpg"]
    for n in names:
        (odd / n).write_text("not an image")
    spec = DatasetSpec("odd", ["a"], {"train": [Sample(image(0), 0, "ok")]
                                      + [Sample(odd / n, 0) for n in names]})
    build_dataset(spec, tmp_path / "o", OPTS)
    rows = [line.split("\t") for line in (tmp_path / "o" / "rejects.txt").read_text().splitlines()[1:]]
    assert [len(r) for r in rows] == [3, 3]
    assert sorted(Path(r[1]).name for r in rows) == ["line\\nbreak.jpg", "tab\\there.jpg"]


def test_files_txt_names_each_sample_and_a_rerun_adds_it_to_an_older_build(tmp_path):
    """``S.files.txt`` holds one line per sample (a name with a line break stays one line), so
    ``dp4tl mask files`` can map a mask's indices to inputs; a finished build made before the
    file existed gets it from the same build command (nothing else is written again), and
    ``--overwrite`` removes it with the build's other files."""
    odd = tmp_path / "in"
    odd.mkdir()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(odd / "line\nbreak.png")
    spec = DatasetSpec("odd", ["a"], {"train": [Sample(image(0), 0, "first"),
                                                Sample(odd / "line\nbreak.png", 0)]})
    out = tmp_path / "o"
    build_dataset(spec, out, OPTS)
    files = out / "train.files.txt"
    assert files.read_text().splitlines() == ["first", str(odd.resolve() / "line\\nbreak.png")]
    files.unlink()  # as a build from before 2026-12-04
    beton_mtime = (out / "train.beton").stat().st_mtime_ns
    assert build_dataset(spec, out, OPTS).skipped
    assert files.read_text().splitlines()[0] == "first"
    assert (out / "train.beton").stat().st_mtime_ns == beton_mtime
    writer_mod.remove_build(out)
    assert not files.exists()




def test_files_txt_keeps_control_characters_that_only_the_display_escapes(tmp_path):
    """``printable`` (what messages and ``rejects.txt`` show) escapes ESC, DEL and C1 for the
    terminal; it also wrote ``S.files.txt``, whose lines are the paths other tools open: a
    valid U+0085 came out ``\\x85``, the same as an undecodable byte 0x85. The list keeps its
    own rule (only a tab or line break, and undecodable bytes, are escaped)."""
    odd = tmp_path / "in"
    odd.mkdir()
    names = ["esc\x1b[31m.png", "nel\u0085.png", "del\x7f.png", os.fsdecode(b"bad\x85.png"),
             "tab\there.png"]
    for n in names:
        Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(os.fsencode(odd) + b"/" + os.fsencode(n))
    spec = DatasetSpec("odd", ["a"], {"train": [Sample(odd / n, 0) for n in names]})
    out = tmp_path / "o"
    build_dataset(spec, out, OPTS)
    lines = (out / "train.files.txt").read_text(encoding="utf-8").split("\n")[:-1]
    base = str(odd.resolve())
    assert lines == [f"{base}/esc\x1b[31m.png", f"{base}/nel\u0085.png", f"{base}/del\x7f.png",
                     f"{base}/bad\\x85.png", f"{base}/tab\\there.png"], lines
    # what is shown escapes them all (a terminal never acts on a name)
    shown = [Sample(odd / n, 0).display_name() for n in names]
    assert [x.rsplit("/", 1)[1] for x in shown] == [
        "esc\\x1b[31m.png", "nel\\x85.png", "del\\x7f.png", "bad\\x85.png", "tab\\there.png"]


def test_a_class_missing_from_train_is_a_warning(tmp_path):
    """A folder dataset whose test/ has a class that train/ lacks builds, but says so: no
    model trained on this build can learn that class (it used to build without a word)."""
    spec = DatasetSpec("gap", ["ok", "only_test"], {"train": [Sample(image(0), 0, "a")],
                                                    "test": [Sample(image(1), 0, "b"),
                                                             Sample(image(2), 1, "c")]})
    summary = build_dataset(spec, tmp_path / "o", OPTS)
    assert summary.warnings == ["split 'train': class 'only_test' has no input at all (it is only "
                                "in the other splits); check the input layout"]


def test_default_workers_are_the_cores_this_process_may_use(monkeypatch):
    """A build on a Slurm node or in a container limited to 4 of 128 cores starts 4 encoders, not
    128: the default follows the affinity mask (`dp4tl build` showed os.cpu_count() instead)."""
    import os

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity masks on this platform")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    assert BuildOptions().workers == 1
    assert BuildOptions(workers=5).workers == 5
    # and, as the loaders, within the cgroup CPU quota (a container on a 128-core host, --cpus 4)
    from ffcv_dp4tl import cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(128)))
    monkeypatch.setattr(cpus, "cpu_quota", lambda: 4.0)
    assert BuildOptions().workers == 4


def test_rejects_txt_names_inputs_by_their_absolute_path(tmp_path, monkeypatch):
    """``rejects.txt`` lists a skipped input by its absolute path, as ``S.files.txt`` lists the
    kept ones: a path as typed (relative to the folder the build ran in) meant nothing later."""
    (tmp_path / "in").mkdir()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "in" / "ok.jpg")
    monkeypatch.chdir(tmp_path)
    samples = [Sample(Path("in/ok.jpg"), 0), Sample(Path("in/missing.jpg"), 1)]
    out = tmp_path / "out"
    build_dataset(DatasetSpec("rel", ["a", "b"], {"train": samples}), out, OPTS)
    rows = [line.split("\t") for line in (out / "rejects.txt").read_text().splitlines()[1:]]
    assert rows == [["train", str(tmp_path / "in" / "missing.jpg"), "file not found"]]
    assert (out / "train.files.txt").read_text() == f"{tmp_path / 'in' / 'ok.jpg'}\n"
