"""Everything a pipeline run can check from its inputs is checked before the first stage
(issue 21 item 4): a target without the split finetuning reads, the source given as target,
negative seeds, output roots that cannot be folders. Each is one line, no stage folder made."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from lock_probe import ReleaseOnWait, exclusive_is_free

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.pipeline.config import PipelineConfig
from ffcv_dp4tl.pipeline.run import run_pipeline


def validate(cfg):  # the run stops at its first check; nothing else may have happened
    run_pipeline(cfg, log=lambda m: None)


def resolve(cfg, _checked, log):
    run_pipeline(cfg, log=log)


def _another_dataset(m: dict, tag: str) -> dict:
    """Manifest ``m`` as another dataset's, as far as the pipeline can tell: each split's
    fingerprint made distinct (``tag``) and the dataset fingerprint recomputed from them, so it
    loads (``load_manifest`` refuses one that does not match its splits)."""
    import hashlib

    from ffcv_dp4tl.contracts import dataset_fingerprint

    for name, split in m["splits"].items():
        split["fingerprint"] = hashlib.sha256(f"{tag}/{name}".encode()).hexdigest()
    m["fingerprint"] = dataset_fingerprint([s["fingerprint"] for s in m["splits"].values()])
    return m


def _cfg(tmp_path, **kw):
    return PipelineConfig(**{"ratio": 0.5, "method": "random", "finetune": ("lp",),
                             "runs_root": tmp_path / "runs", "data_root": tmp_path / "data", **kw})


@pytest.mark.parametrize("kw,message", [
    ({"seeds": (0, -1)}, "--seeds: -1 is negative; seeds are integers >= 0"),
    ({"seed": -1}, "--seed (the scorer's seed, e.g. random's draw): -1 is negative; seeds are "
                   "integers >= 0"),
])
def test_negative_seeds_fail_before_any_work(tmp_path, kw, message):
    with pytest.raises(DP4TLError, match="^" + re.escape(message)):
        validate(_cfg(tmp_path, **kw))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


BAD_CONFIG = [
    # each failed only after the data were built (KeyError 'l' / 'xx' in resolve), late in a
    # stage (fmt, device, ratio as a string), with a raw TypeError (seeds=3), or not at all:
    # "01" ran seeds 0 and 1, (0.7,) ran seed 0, seed=1.5 reached the scorer
    ({"finetune": "lp"}, "finetune must be a tuple of modes such as ('lp', 'ff') or ('lp',), "
                         "got 'lp'"),
    ({"finetune": ("lp", "xx")}, "finetune must be one of lp, ff, got 'xx'"),
    ({"fmt": "tfrecord"}, "fmt must be one of ffcv, wds, got 'tfrecord'"),
    ({"device": "gpu"}, "device 'gpu' is not a device; use auto, cpu, cuda or cuda:N"),
    ({"ratio": "0.5"}, "ratio must be a number in [0, 1), got str '0.5'"),
    ({"ratio": True}, "ratio must be a number in [0, 1), got bool True"),
    ({"seeds": 3}, "--seeds must be a list of integers >= 0 such as (0, 1, 2), got 3"),
    ({"seeds": "01"}, "--seeds must be a list of integers >= 0 such as (0, 1, 2), got '01'"),
    ({"seeds": (0.7,)}, "--seeds: 0.7 is not an integer; seeds are integers >= 0"),
    ({"seed": 1.5}, "--seed (the scorer's seed, e.g. random's draw): 1.5 is not an integer"),
]


@pytest.mark.parametrize("kw,message", BAD_CONFIG, ids=[repr(kw) for kw, _ in BAD_CONFIG])
def test_bad_config_values_fail_in_one_line_before_any_work(tmp_path, kw, message):
    with pytest.raises(DP4TLError, match="^" + re.escape(message)):
        validate(_cfg(tmp_path, **kw))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("ratio, stored", [(0, 0.0), (np.float32(0.5), 0.5), (np.int64(0), 0.0),
                                           (0.6000004, 0.6), (np.float32(0.6), 0.6)])
def test_validate_stores_the_ratio_as_a_float(tmp_path, ratio, stored):
    """ratio=0 and --ratio 0 (a float) enter the stage keys alike, and a NumPy ratio (a sweep
    over np.linspace) becomes a float the JSON stage keys can hold. Ratios are kept to 6
    decimals, as the refusal of 1e-9 says: 0.6000004 and float32's 0.6000000238 are the run
    of 0.6 (same keys and labels), not a prune stage and report of their own (audit)."""
    from ffcv_dp4tl.pipeline.config import validate as check

    cfg = _cfg(tmp_path, ratio=ratio)
    check(cfg)
    assert type(cfg.ratio) is float and cfg.ratio == stored
    json.dumps({"ratio": cfg.ratio})


def test_roots_given_as_text_are_paths():
    """A script's ``PipelineConfig(runs_root="runs")`` (text, as most configs are written) ran
    every stage and then failed joining the report's folder to a str (a leak audit)."""
    cfg = PipelineConfig(runs_root="some/runs", data_root="some/data")
    assert cfg.runs_root == Path("some/runs") and cfg.data_root == Path("some/data")
    assert dataclasses.replace(cfg, runs_root="other").runs_root / "x" == Path("other/x")


def test_roots_that_cannot_be_folders_fail_before_any_work(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(DP4TLError, match=r"^--runs-root .*afile is a file, not a folder"):
        validate(_cfg(tmp_path, runs_root=afile))
    with pytest.raises(DP4TLError, match=r"^--data-root .*afile is a file, not a folder"):
        validate(_cfg(tmp_path, data_root=afile))
    with pytest.raises(DP4TLError, match=r"^--runs-root .*afile/runs: .*afile is a file"):
        validate(_cfg(tmp_path, runs_root=afile / "runs"))
    # a training run's folder as the runs root: its stage folders went inside it (audit)
    run = tmp_path / "trained"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(DP4TLError, match=rf"^--runs-root {run} holds a training run \(written by "
                                         r"`dp4tl train`\), not pipeline runs"):
        validate(_cfg(tmp_path, runs_root=run))
    # a runs root in (or inside) a built dataset: named as --runs-root, before any work (each
    # stage's folder would be refused as an --out the user never gave, after the data build)
    data = tmp_path / "ds"
    data.mkdir()
    (data / "manifest.json").write_text('{"format": "ffcv-dp4tl/1"}')
    for root in (data, data / "runs"):
        with pytest.raises(DP4TLError, match=rf"^--runs-root {root} lies inside the built "
                                             rf"dataset {data.resolve()}: keep runs outside "
                                             r"datasets; pass another --runs-root$"):
            validate(_cfg(tmp_path, runs_root=root))
        # ... and so is a data root: a whole build went into DATASET/synth-tiny/ (review)
        with pytest.raises(DP4TLError, match=rf"^--data-root {root} lies inside the built "
                                             rf"dataset {data.resolve()}: keep builds outside "
                                             r"datasets; pass another --data-root$"):
            validate(_cfg(tmp_path, data_root=root))


def _folder_of(kind: str, folder):
    """``folder`` made one of ``kind``'s, as :func:`ffcv_dp4tl.outputs.folder_kind` tells it:
    a build's manifest, a bench's ``results.json`` naming it, VTAB masks named by their sizes,
    else the kind's first signature file."""
    from ffcv_dp4tl.contracts.manifest import FORMAT
    from ffcv_dp4tl.outputs import BENCH_KINDS, KINDS

    folder.mkdir()
    if kind == "dataset":
        (folder / "manifest.json").write_text(json.dumps({"format": FORMAT}))
    elif kind in BENCH_KINDS:
        (folder / "results.json").write_text(json.dumps({"bench": kind}))
    elif kind == "vtab-splits":
        (folder / "train800val200.npy").write_bytes(b"x")
    else:
        (folder / KINDS[kind].signatures[0]).write_bytes(b"x")
    return folder


def _kinds():
    from ffcv_dp4tl.outputs import KINDS

    return list(KINDS)


@pytest.mark.parametrize("kind", _kinds())
def test_every_output_kind_is_a_runs_root_as_its_record_declares(tmp_path, kind):
    """Which command's folder ``--runs-root`` may be is declared once, in the output-kind
    registry (``OutputKind.runs_root``: a report's, where users keep runs), so a kind added
    there is covered: one command's own folder is refused before any work, naming what it
    holds and the command that wrote it; a report's is taken. (A dataset is refused as the
    folder runs must stay outside.)"""
    from ffcv_dp4tl.outputs import KINDS, folder_kind
    from ffcv_dp4tl.pipeline.config import validate as check

    root = _folder_of(kind, tmp_path / "root")
    assert folder_kind(root) == kind
    spec = KINDS[kind]
    if spec.runs_root:
        check(_cfg(tmp_path, runs_root=root))
    elif kind == "dataset":
        with pytest.raises(DP4TLError, match=rf"^--runs-root {root} lies inside the built dataset"):
            validate(_cfg(tmp_path, runs_root=root))
    else:
        with pytest.raises(DP4TLError, match="^" + re.escape(
                f"--runs-root {root} holds {spec.what} (written by `{spec.command}`), not "
                "pipeline runs: pass another --runs-root (e.g. runs/)") + "$"):
            validate(_cfg(tmp_path, runs_root=root))
        assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("runs,data,how", [
    ("data", "data", "is the same folder as"), ("data", "./data/", "is the same folder as"),
    ("link", "data", "is the same folder as"),
])
def test_runs_and_data_roots_in_one_folder_fail_before_any_work(tmp_path, monkeypatch, runs,
                                                                data, how):
    """`--runs-root data --data-root data` was taken by the pipeline and every bench, and the
    stage folders went in among the dataset builds (audit): one line
    naming both options, compared as resolved folders (``./data/``, a link), before anything
    is built (``config.validate``: the checks of a run's first step, which does nothing else)."""
    from ffcv_dp4tl.pipeline.config import validate as check

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    with pytest.raises(DP4TLError, match="^" + re.escape(
            f"--runs-root {Path(runs)} {how} --data-root {Path(data)}: the stage folders would "
            "mix with the dataset builds; pass two separate folders (e.g. --runs-root runs "
            "--data-root data)") + "$"):
        check(PipelineConfig(ratio=0.5, method="random", finetune=("lp",),
                             runs_root=Path(runs), data_root=Path(data)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "link"]
    assert not any((tmp_path / "data").iterdir())
    # one inside the other is taken (one scratch folder for both; --data-root . and its runs/)
    for runs_root, data_root in (("work", "work/data"), ("runs", "."), ("data/runs", "data")):
        check(PipelineConfig(ratio=0.5, method="random", finetune=("lp",),
                             runs_root=Path(runs_root), data_root=Path(data_root)))


@pytest.mark.parametrize("kind", _kinds())
def test_a_data_root_holding_another_commands_outputs_fails_before_any_work(tmp_path, kind):
    """A bench's report folder given as --data-root was taken and the datasets were built in
    among its files (audit `adv3`): every kind's folder but a dataset's is refused in one line
    naming what it holds (a dataset's: a data root must not lie inside one); a data root
    holding builds (in its sub-folders) or a new one is taken."""
    from ffcv_dp4tl.outputs import KINDS, folder_kind
    from ffcv_dp4tl.pipeline.config import validate as check

    root = _folder_of(kind, tmp_path / "root")
    before = sorted(p.name for p in root.iterdir())
    spec = KINDS[kind]
    message = (rf"^--data-root {root} lies inside the built dataset" if kind == "dataset" else
               "^" + re.escape(f"--data-root {root} holds {spec.what} (written by "
                               f"`{spec.command}`), not dataset builds: pass another --data-root "
                               "(e.g. data/)") + "$")
    with pytest.raises(DP4TLError, match=message):
        check(_cfg(tmp_path, data_root=root))
    assert sorted(p.name for p in root.iterdir()) == before and not (tmp_path / "runs").exists()
    builds = tmp_path / "builds"
    builds.mkdir()
    _folder_of("dataset", builds / "synth-tiny")  # (a root with builds: none of its own kind)
    assert folder_kind(builds) is None
    check(_cfg(tmp_path, data_root=builds))
    check(_cfg(tmp_path, data_root=tmp_path / "new"))


def test_the_source_as_target_fails_before_the_surrogate(tmp_path, index_dataset):
    cfg = _cfg(tmp_path, source=str(index_dataset.root), target=str(index_dataset.root))
    with pytest.raises(DP4TLError, match=r"is the source dataset .*: transfer needs another "
                                         r"dataset as target; pass the target's build or LAYOUT:PATH$"):
        resolve(cfg, None, print)
    assert not (tmp_path / "runs").exists()



def test_a_bad_target_or_source_names_its_option(tmp_path, index_dataset):
    """The SOURCE parser's words ("SOURCE '/x' is no such folder") and "target= is required"
    did not say which pipeline option was wrong."""
    src = str(index_dataset.root)
    with pytest.raises(DP4TLError, match=r"^--target: SOURCE '/no/such' is no such folder"):
        resolve(_cfg(tmp_path, source=src, target="/no/such"), None, print)
    with pytest.raises(DP4TLError, match=r"^--target is required with a real source"):
        resolve(_cfg(tmp_path, source=src, target=""), None, print)
    with pytest.raises(DP4TLError, match=r"^--data: SOURCE '/no/such' is no such folder"):
        resolve(_cfg(tmp_path, source="/no/such", target=src), None, print)
    assert not (tmp_path / "runs").exists()

def test_a_target_without_the_split_finetuning_reads_fails_before_the_surrogate(tmp_path,
                                                                                index_dataset):
    target = tmp_path / "tgt"
    shutil.copytree(index_dataset.root, target)
    m = json.loads((target / "manifest.json").read_text())
    (target / "manifest.json").write_text(json.dumps(_another_dataset(m, "target")))
    source = tmp_path / "src"  # (a source with the val split the surrogate reads)
    shutil.copytree(index_dataset.root, source)
    m = json.loads((source / "manifest.json").read_text())
    m["splits"]["val"] = dict(m["splits"]["train"])
    (source / "manifest.json").write_text(json.dumps(_another_dataset(m, "source")))
    cfg = _cfg(tmp_path, source=str(source), target=str(target))
    with pytest.raises(DP4TLError, match=r"target .*tgt has no 'test' split \(it has: train\), "
                                         r"which the LP recipe .* reads \(data.test_split\); "
                                         r"build the target with that split \(--set-finetune "
                                         r"data.test_split=NAME\)$"):
        resolve(cfg, None, print)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("method, names", [
    ("lm", r"the surrogate recipe .* reads \(data.val_split\); build the source with that split, "
           r"or validate on the train split \(--set-surrogate data.val_split=NAME --set "
           r"data.val_split=NAME\)$"),
    ("random", r"the pretraining recipe .* reads \(data.val_split\); build the source with that "
               r"split, or validate on the train split \(--set data.val_split=NAME\)$")])
def test_a_source_without_a_val_split_fails_before_the_surrogate(tmp_path, index_dataset, method,
                                                                 names):
    """A source built from a flat image folder has a train split only: the surrogate stopped
    on "no split 'val'" after its stage folder was made, with no word on the fix (review).
    Only the recipes that train are named: RANDOM trains no surrogate."""
    source = tmp_path / "src"
    shutil.copytree(index_dataset.root, source)
    m = json.loads((source / "manifest.json").read_text())
    assert "val" not in m["splits"]
    (source / "manifest.json").write_text(json.dumps(_another_dataset(m, "source")))
    cfg = _cfg(tmp_path, source=str(source), target=str(index_dataset.root), method=method)
    with pytest.raises(DP4TLError, match=r"^source .*src has no 'val' split \(it has: train\), "
                                         r"which " + names):
        resolve(cfg, None, print)
    assert not (tmp_path / "runs").exists()


def test_a_source_without_a_val_split_is_fine_where_nothing_trains_on_it(tmp_path, index_dataset):
    """Brought source weights: nothing trains on the source, so its splits are not checked (the
    check refused such a pipeline at first, review); and validating on train is accepted."""
    from ffcv_dp4tl.pipeline.config import validate as check
    from ffcv_dp4tl.pipeline.resolve import resolve as resolve_only

    source = tmp_path / "src"
    shutil.copytree(index_dataset.root, source)
    m = json.loads((source / "manifest.json").read_text())
    (source / "manifest.json").write_text(json.dumps(_another_dataset(m, "source")))
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")  # (resolve reads no weights; the import stage would)
    target = tmp_path / "tgt"  # (a target with the test split finetuning reads)
    shutil.copytree(index_dataset.root, target)
    m["splits"]["test"] = dict(m["splits"]["train"])
    (target / "manifest.json").write_text(json.dumps(_another_dataset(m, "target")))
    for kw in ({"source_weights": str(weights), "ratio": 0.0},
               {"overrides": ("data.val_split=train", "train.batch_size=16")}):
        cfg = _cfg(tmp_path, source=str(source), target=str(target), **kw)
        resolve_only(cfg, check(cfg), lambda m: None)


def test_built_data_folders_of_distinct_sources_never_clash():
    """``--data SOURCE`` is built under ``data_root/<slug>``: a short spec keeps its readable name
    (existing folders stay found); two long specs that agree on their first 60 characters get
    different folders (they used to be cut to the same name and share one dataset)."""
    from ffcv_dp4tl.pipeline.resolve import _slug

    assert _slug("synth:tiny") == "synth-tiny"
    base = "synth:tiny,num_superclasses=4,classes_per_superclass=2,train_per_class=12"
    a, b = _slug(base + ",val_per_class=2"), _slug(base + ",val_per_class=3")
    assert a != b and len(a) <= 60 and len(b) <= 60 and a.startswith("synth-tiny-num_superclasses")
    assert _slug(base + ",val_per_class=2") == a  # stable: the same spec finds its folder again


def test_two_sources_with_one_folder_name_build_side_by_side(tmp_path, monkeypatch):
    """``folder:D/t/x`` and ``folder:D/t-x`` have the same readable folder name: the second
    was refused, its error advising to delete the first one's build (review). It now builds
    beside it, and each finds its own build again; ``folder:t/x/`` is ``folder:t/x``'s."""
    from PIL import Image

    from ffcv_dp4tl.pipeline.resolve import ensure_built

    for i, where in enumerate(("t/x", "t-x")):
        for c in ("a", "b"):
            (tmp_path / where / c).mkdir(parents=True)
            for j in range(2):
                Image.new("RGB", (12, 12), (40 * i, 60 * j, 90)).save(tmp_path / where / c / f"{j}.png")
    monkeypatch.chdir(tmp_path)  # (short specs: a long one's name is cut and hashed anyway)
    logs, root = [], tmp_path / "droot"
    first = ensure_built("folder:t/x", root, logs.append)
    second = ensure_built("folder:t-x", root, logs.append)
    assert first == root / "folder-t-x" and second.parent == root
    assert second.name.startswith("folder-t-x-") and len(second.name) == len("folder-t-x-") + 11
    assert f"[data] {first} holds the build of 'folder:t/x': 'folder:t-x' builds in {second}" in logs
    assert json.loads((second / "manifest.json").read_text())["fingerprint"] != \
        json.loads((first / "manifest.json").read_text())["fingerprint"]
    assert ensure_built("folder:t/x", root, logs.append) == first
    assert ensure_built("folder:t-x", root, logs.append) == second
    # the same folder spelled otherwise is its build, not a second copy (review)
    logs.clear()
    assert ensure_built("folder:t/x/", root, logs.append) == first
    assert not any("built" in m for m in logs), logs
    # a rerun's log names the data it reads (it said nothing of it: review)
    assert logs[-1] == f"[data] folder:t/x: reusing its build in {first}", logs
    # ... and so is its absolute path, whose readable name is another (review)
    logs.clear()
    assert ensure_built(f"folder:{tmp_path}/t/x", root, logs.append) == first
    assert logs[0] == (f"[data] 'folder:{tmp_path}/t/x' reads the input of 'folder:t/x': its "
                       f"build in {first} is used"), logs
    assert not any("built" in m for m in logs), logs
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted([first.name, second.name])
    assert ensure_built(f"folder:{tmp_path}/t-x", root, logs.append) == second
    # a pipeline of the other spelling still building it (its pipeline lock and the build's
    # own lock held): waited for, not refused by the build lock (review)
    # The holder keeps both locks until told (its stdin closed): told when the waiting line is
    # logged, a moment later (a build that went on without waiting would return before that);
    # or, should no waiting line come, after a minute, so that the test fails instead of hanging.
    # (It held them 2 s: a busy machine could reach the locks after that, and see no holder.)
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys\n"
        "from ffcv_dp4tl.locks import directory_lock\n"
        f"with directory_lock({str(root / '.folder-t-x.pipeline.lock')!r}, 'data'), "
        f"directory_lock({str(first / '.build.lock')!r}, 'build'):\n"
        "    print('held', flush=True); sys.stdin.read()\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    probe = ReleaseOnWait(holder)
    logs = probe.logs
    try:
        assert holder.stdout.readline().strip() == "held"
        logs.clear()
        assert ensure_built(f"folder:{tmp_path}/t/x/", root, probe.log) == first
        waited = probe.released.is_set()  # (before release(): returned while the holder held on)
    finally:
        probe.end()
    assert any("waiting" in m for m in logs), logs
    assert waited and holder.returncode == 0
    (tmp_path / "link").symlink_to(tmp_path / "t" / "x")  # a link to it: listed under the link
    logs.clear()
    assert ensure_built("folder:link", root, logs.append) == first, logs
    assert not any("built" in m for m in logs), logs


def test_a_target_of_one_class_is_refused_before_the_surrogate(small_synth, tmp_path):
    """A one-class target finetuned to "top-1 1.0000" for LP and FF, without a word (review):
    every prediction is right. Refused before any work (and by `dp4tl finetune`, same rule)."""
    from PIL import Image

    from ffcv_dp4tl.data.manifest import load_manifest
    from ffcv_dp4tl.pipeline.config import validate as check
    from ffcv_dp4tl.pipeline.resolve import ensure_built, resolve
    from ffcv_dp4tl.data.manifest import check_target_classes

    for split in ("train", "test"):
        (tmp_path / "one" / split / "only").mkdir(parents=True)
        for j in range(3):
            Image.new("RGB", (12, 12), (30 * j, 9, 9)).save(tmp_path / "one" / split / "only" / f"{j}.png")
    target = ensure_built(f"folder:{tmp_path / 'one'}", tmp_path / "d", print)
    cfg = PipelineConfig(source=str(small_synth / "source"), target=str(target), ratio=0.5,
                         method="random", finetune=("lp",), fmt="wds", runs_root=tmp_path / "r",
                         data_root=tmp_path / "d")
    with pytest.raises(DP4TLError, match=r"^the target .* has 1 class: finetuning needs at "
                                         r"least 2 \(with one, top-1 is 100 % whatever the model\)"):
        resolve(cfg, check(cfg), print)
    assert not (tmp_path / "r").exists()
    check_target_classes(load_manifest(small_synth / "targets" / "paper"))  # 3 classes: fine


@pytest.mark.parametrize("method, kw, unit", [("lm", {}, "8 classes"),
                                             ("fm", {"k": 3}, "3 clusters")])
def test_a_ratio_that_keeps_no_unit_is_refused_before_the_surrogate(small_synth, tmp_path,
                                                                   method, kw, unit):
    """``--ratio 0.99`` of 32 classes trained the surrogate and scored before prune refused it
    (review): refused before any work, in the prune stage's words."""
    cfg = PipelineConfig(source=str(small_synth / "source"),
                         target=str(small_synth / "targets" / "paper"), ratio=0.95,
                         method=method, finetune=("lp",), fmt="wds", runs_root=tmp_path / "r",
                         data_root=tmp_path / "d", **kw)
    with pytest.raises(DP4TLError, match=rf"^--ratio 0.95: keeping a fraction 0.05 of {unit} "
                                         r"keeps none of them"):
        resolve(cfg, None, print)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("method, kw, ratio, said", [
    ("lm", {}, 0.05, "keeps all 8 classes of LM (round((1 - 0.05) x 8) = 8)"),
    ("fm", {"k": 3}, 0.1, "keeps all 3 clusters of FM (round((1 - 0.1) x 3) = 3)"),
    ("lm", {}, 0.25, None)])
def test_a_ratio_that_keeps_every_unit_is_said_before_the_surrogate(small_synth, tmp_path,
                                                                   method, kw, ratio, said):
    """A ratio that rounds to keeping every class or cluster (any ratio below 0.5 of a one-class
    source) prunes nothing: the run is the unpruned pretraining behind a surrogate and scores,
    which it ran without a word (audit). It is said by the checks before any work, in the log and
    as a warning; a ratio that prunes says nothing."""
    import warnings

    cfg = PipelineConfig(source=str(small_synth / "source"),
                         target=str(small_synth / "targets" / "paper"), ratio=ratio,
                         method=method, finetune=("lp",), fmt="wds", runs_root=tmp_path / "r",
                         data_root=tmp_path / "d", **kw)
    from ffcv_dp4tl.data.manifest import load_manifest
    from ffcv_dp4tl.pipeline.resolve import check_source
    from ffcv_dp4tl.scoring import get_scorer

    src = load_manifest(small_synth / "source")
    logs: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_source(cfg, get_scorer(method), src, logs.append)
    notes = [str(w.message) for w in caught if "nothing is pruned" in str(w.message)]
    if said is None:
        assert notes == [] and not any("nothing is pruned" in line for line in logs)
    else:
        assert len(notes) == 1 and notes[0].startswith(f"--ratio {ratio:g} {said}: nothing is pruned")
        assert f"[warning] {notes[0]}" in logs


def test_a_memory_check_is_not_made_before_the_surrogate(small_synth, tmp_path, monkeypatch):
    """The memory check of INFMAX/INFSUM runs when scoring starts (pipeline.score.score), not in
    the pipeline's checks before any stage: a score stage computed on a large node is reused by
    a rerun on a small one (another ratio, another finetuning), which reads no source (review).
    Here the pipeline's checks pass under a 1 KiB limit."""
    from ffcv_dp4tl import cpus

    monkeypatch.setattr(cpus, "memory_limit", lambda: 1 << 10)  # 1 KiB
    cfg = PipelineConfig(source=str(small_synth / "source"),
                         target=str(small_synth / "targets" / "paper"), ratio=0.25,
                         method="infsum", finetune=("lp",), fmt="wds", runs_root=tmp_path / "r",
                         data_root=tmp_path / "d")
    try:
        resolve(cfg, None, print)
    except DP4TLError as e:  # (another check may refuse the tiny data; not the memory one)
        assert "in memory" not in str(e)


@pytest.mark.parametrize("method, budget, exact", [("lm", "units", False),
                                                    ("lm", "samples", False),
                                                    ("random", "units", True)])
def test_a_ratio_whose_pruned_set_fills_no_pretraining_batch_is_refused_before_any_stage(
        small_synth, tmp_path, method, budget, exact):
    """A pruned set smaller than one pretraining batch (train.drop_last) was refused when the
    pretraining started, after the surrogate, the scores and the mask (carried item). The most
    a ratio can keep is known before scoring for sample and class methods: a batch above it is
    refused before any stage folder is made, one at it runs."""
    from ffcv_dp4tl.data import load_manifest
    from ffcv_dp4tl.pipeline.resolve import most_kept

    src = load_manifest(small_synth / "source")
    labels = np.asarray(src.split("train").load_labels())
    sizes = sorted(np.bincount(labels), reverse=True)
    n, most = len(labels), most_kept(src, "class" if method == "lm" else "sample", 0.5, budget)
    assert most == (round(0.5 * n) if exact else
                    sum(sizes[:4]) if budget == "units" else round(0.5 * n) + sizes[0])

    def cfg(batch, root):
        return PipelineConfig(source=str(small_synth / "source"),
                              target=str(small_synth / "targets" / "paper"), ratio=0.5,
                              method=method, budget=budget, finetune=("lp",), fmt="wds",
                              runs_root=tmp_path / root, data_root=tmp_path / "d",
                              overrides=(f"train.batch_size={batch}", "train.drop_last=true"))

    with pytest.raises(DP4TLError, match=(
            rf"^ratio 0.5 keeps {'' if exact else 'at most '}{most} of the {n} samples of split "
            rf"'train' of .*, fewer than one pretraining batch of {most + 1} \(.*: "
            r"train.batch_size, train.drop_last\): no step would run; use a lower ratio")):
        resolve(cfg(most + 1, "r"), None, lambda m: None)
    assert not (tmp_path / "r").exists()
    from ffcv_dp4tl.pipeline.resolve import check_pretrain_size
    from ffcv_dp4tl.training.recipe import load_recipe

    rec = load_recipe("resnet18_tiny_cpu", [f"train.batch_size={most}", "train.drop_last=true"])
    check_pretrain_size(cfg(most, "r"), "class" if method == "lm" else "sample", src, "x", rec)
    check_pretrain_size(cfg(10 ** 6, "r"), "cluster", src, "x", rec)  # (sizes unknown: later)
    # ratio 0 keeps every sample, exactly, and a lower ratio is no advice (review)
    big = load_recipe("resnet18_tiny_cpu", [f"train.batch_size={n + 1}", "train.drop_last=true"])
    with pytest.raises(DP4TLError, match=rf"^ratio 0 keeps {n} of the {n} samples .*: no step "
                                         r"would run; lower train.batch_size or set "
                                         r"train.drop_last=false \(--set KEY=VALUE\)$"):
        check_pretrain_size(dataclasses.replace(cfg(n + 1, "r"), ratio=0.0),
                            "class" if method == "lm" else "sample", src, "x", big)


def test_preflight_checks_every_distinct_config_once(monkeypatch):
    """A bench's plan goes through the checks run_pipeline makes before its first stage
    (validate, then resolve), each distinct config once, a repeated one skipped, not the end."""
    from ffcv_dp4tl.pipeline import run
    from ffcv_dp4tl.pipeline.config import PipelineConfig

    checked = []
    monkeypatch.setattr(run, "validate", lambda cfg: ("ok", cfg.method))
    monkeypatch.setattr(run, "resolve", lambda cfg, ok, log: checked.append((ok[1], cfg.ratio)))
    a, b = PipelineConfig(method="random", ratio=0.0), PipelineConfig(method="lm", ratio=0.6)
    run.preflight([a, a, b, a], log=lambda m: None)
    assert checked == [("random", 0.0), ("lm", 0.6)]


@pytest.mark.parametrize("recipes,method,warned", [("full", "lm", "likewise"), ("full", "random", "alone"),
                                                   ("tiny", "lm", None)])
def test_real_data_recipes_on_the_cpu_are_announced_before_the_surrogate(
        tmp_path, monkeypatch, source_dir, target_dir, recipes, method, warned):
    """A login node without a GPU: `--device auto` is the CPU, and the full recipes would train
    for days. The pipeline says so before the first stage (here stopped at the surrogate)."""
    from ffcv_dp4tl.pipeline import run as run_mod

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop

    monkeypatch.setattr(run_mod, "surrogate_stage", stop)
    lines: list[str] = []
    cfg = _cfg(tmp_path, source=str(source_dir), target=str(target_dir), method=method,
               recipes=recipes, device="cpu", overrides=("train.batch_size=16",))
    with pytest.raises(Stop):
        run_pipeline(cfg, log=lines.append)
    warning = [ln for ln in lines if ln.startswith("[warning] full recipes on the CPU")]
    assert bool(warning) == bool(warned), lines
    if warned:  # the surrogate is named only where one trains (RANDOM needs none)
        assert ("(the surrogate likewise)" in warning[0]) == (warned == "likewise")
        assert "resnet50_16ep trains resnet50 for 16 epochs over up to 96 images" in warning[0]
        assert "run on a GPU (--device cuda)" in warning[0]


def test_a_synth_build_folder_as_data_says_which_folders_to_pass(small_synth, tmp_path):
    """A synth build holds source/ and targets/<name>/: given as --data, the line names the two
    folders to pass (it said "not a built dataset; build it with dp4tl build", wrong advice)."""
    with pytest.raises(DP4TLError) as e:
        validate(PipelineConfig(source=str(small_synth), ratio=0.5, runs_root=tmp_path / "r",
                                data_root=tmp_path / "d"))
    msg = str(e.value)
    assert f"--data {small_synth / 'source'}" in msg and "(NAME: paper)" in msg, msg
    assert "\n" not in msg and not (tmp_path / "r").exists()


def test_a_source_head_finetuning_that_cannot_run_is_refused_before_any_work(small_synth,
                                                                            tmp_path):
    """finetune.head = "source" (paper_code LP/FF) needs a source classifier with room for the
    target's classes: a self-supervised source is refused before the surrogate trains (it used
    to fail at finetuning, after the pretraining); under paper-code such a source is finetuned
    with the paper's FF instead (no released SSL code), which trains a new head."""
    from types import SimpleNamespace

    from ffcv_dp4tl.pipeline.resolve import _check_source_head, resolve
    from ffcv_dp4tl.pipeline.config import validate as check
    from ffcv_dp4tl.training.recipe import load_recipe

    base = dict(source=str(small_synth / "source"), target=str(small_synth / "targets" / "paper"),
                ratio=0.5, method="fm", k=3, fmt="wds", finetune=("ff",),
                runs_root=tmp_path / "r", data_root=tmp_path / "d",
                recipe="moco_v2_tiny_cpu", overrides=("train.keep_best=true",))
    with pytest.raises(DP4TLError, match="self-supervised .* has none; use finetune.head"):
        validate(PipelineConfig(**base, ff_recipe="paper_code/ff"))
    assert not (tmp_path / "r").exists()
    cfg = PipelineConfig(**base, protocol="paper-code")
    r = resolve(cfg, check(cfg), lambda m: None)
    assert r.finetune[0]["ff"][0] == "paper/ff"
    assert set(r.recipe_names) == {"surrogate", "pretrain", "ff"}  # (report.md named an LP one)
    # an LP recipe named by hand leaves FF's rule alone (it fell back to paper_code/ff, refused)
    cfg = PipelineConfig(**{**base, "finetune": ("lp", "ff")}, protocol="paper-code",
                         lp_recipe="paper/lp")
    r = resolve(cfg, check(cfg), lambda m: None)
    assert r.finetune[0]["ff"][0] == "paper/ff" and r.finetune[0]["lp"][0] == "paper/lp"
    # a source with fewer outputs than the target's classes
    ff = load_recipe("paper_code/ff")
    sup = load_recipe("paper_code/resnet101_16ep")
    with pytest.raises(DP4TLError, match="its 3 outputs cannot hold the 5 classes"):
        _check_source_head("paper_code/ff", ff, "p", sup, SimpleNamespace(num_classes=3),
                           SimpleNamespace(num_classes=5, root="T"), "")
    _check_source_head("paper_code/ff", ff, "p", sup, SimpleNamespace(num_classes=5),
                       SimpleNamespace(num_classes=5, root="T"), "")


def test_a_cifar_normalised_finetuning_on_ffcv_is_told_the_resampling_differs(small_synth,
                                                                             tmp_path):
    """paper_code/*_cifar10 match the released loader's bilinear Resize on WebDataset only:
    ffcv upsamples with INTER_AREA, so a run on ffcv is told (once per recipe and target)."""
    from ffcv_dp4tl.pipeline.config import validate as check
    from ffcv_dp4tl.pipeline.resolve import resolve

    base = dict(source=str(small_synth / "source"), target=str(small_synth / "targets" / "paper"),
                ratio=0.5, method="random", finetune=("lp",), runs_root=tmp_path / "r",
                data_root=tmp_path / "d", finetune_overrides=("finetune.normalize=cifar10",),
                overrides=("train.batch_size=16",))
    for fmt, told in (("ffcv", True), ("wds", False)):
        logs = []
        cfg = PipelineConfig(**base, fmt=fmt)
        resolve(cfg, check(cfg), logs.append)
        notes = [m for m in logs if "INTER_AREA" in m]
        assert len(notes) == (1 if told else 0), logs


@pytest.mark.parametrize("kw,message", [
    ({"lp_recipe": "resnet18_tiny_cpu"}, r"resnet18_tiny_cpu is a pretraining recipe .* LP \(--lp-recipe\)"),
    ({"surrogate_recipe": "lp_tiny_cpu"}, r"lp_tiny_cpu is a finetuning recipe .* the surrogate"),
    ({"recipe": "ff_tiny_cpu"}, r"ff_tiny_cpu is a finetuning recipe .* pretraining \(--recipe\)"),
])
def test_a_recipe_for_the_other_job_is_refused_before_any_work(small_synth, tmp_path, kw, message):
    """--lp-recipe resnet18_tiny_cpu finetuned with every [finetune] default, and
    --surrogate-recipe lp_tiny_cpu trained a default model for 50 epochs, in silence."""
    cfg = PipelineConfig(source=str(small_synth / "source"),
                         target=str(small_synth / "targets" / "paper"), ratio=0.5,
                         method="random", finetune=("lp",), fmt="wds", runs_root=tmp_path / "r",
                         data_root=tmp_path / "d", **kw)
    with pytest.raises(DP4TLError, match=message):
        validate(cfg)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("arch", ["vgg2", "resnet18"])
def test_arch_and_a_set_model_arch_together_are_refused_before_any_work(tmp_path, arch):
    """--arch resnet18 with --set model.arch=vgg2 pretrained resnet18 in silence (--arch was
    applied last) while a bench's header listed both (audit); given both, even equal, it is
    one line before any work, the data's build included (review: it came after the build)."""
    cfg = PipelineConfig(source="synth:tiny", target="paper", ratio=0.5,
                         method="random", finetune=("lp",), fmt="wds", runs_root=tmp_path / "r",
                         data_root=tmp_path / "d", arch="resnet18",
                         overrides=("train.epochs=1", f"model.arch={arch}"))
    with pytest.raises(DP4TLError) as e:
        validate(cfg)
    assert str(e.value) == (f"--arch resnet18 and --set model.arch={arch} both choose the "
                            "pretraining model: give one of them")
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()


def test_a_vit_source_finetuned_at_another_size_is_refused_before_any_stage(small_synth,
                                                                           tmp_path):
    """A ViT pretrained at 16 px (model.image_size=16) with the LP recipe's 32 px died at the
    first finetuning batch, after the surrogate, scores and pretraining (review): one line
    before any stage, naming the recipes and finetune.resolution."""
    cfg = PipelineConfig(source=str(small_synth / "source"),
                         target=str(small_synth / "targets" / "paper"), ratio=0.5,
                         method="random", finetune=("lp",), fmt="wds", runs_root=tmp_path / "r",
                         data_root=tmp_path / "d", arch="vit_b_16",
                         overrides=("train.epochs=1", "train.min_res=16", "train.max_res=16",
                                    "eval.resolution=16", "model.image_size=16"))
    with pytest.raises(DP4TLError, match=r"^finetune recipe lp_tiny_cpu with the source model "
                                         r"of the pretraining recipe resnet34_tiny_cpu: .* fed "
                                         r"finetune\.resolution = 32; set finetune\.resolution "
                                         r"to 16$"):
        validate(cfg)
    assert not (tmp_path / "r").exists()


def test_a_built_synth_source_folder_finds_its_targets_by_name(tmp_path, synth_root, target_dir):
    """``--data ROOT/source`` (the built synth data's source) finds a target named like
    ``warm`` as its sibling ``ROOT/targets/warm``, as the SOURCE ``synth:...`` does (it was
    "--target: SOURCE 'warm' is no such folder": the benches' default target on synth data).
    A target folder as --data is refused naming --data."""
    from ffcv_dp4tl.pipeline.resolve import resolve_data

    name = target_dir.name
    cfg = PipelineConfig(source=str(synth_root / "source"), target=name,
                         data_root=tmp_path / "data", runs_root=tmp_path / "runs")
    assert resolve_data(cfg, print) == (synth_root / "source", target_dir)
    cfg = PipelineConfig(source=str(target_dir), target=name, data_root=tmp_path / "data")
    with pytest.raises(DP4TLError, match=rf"^--data {target_dir} is a target of the built data "
                                         rf"{synth_root}, not a source; pass --data {synth_root}"):
        resolve_data(cfg, print)
    assert not (tmp_path / "data").exists()


def test_a_kind_added_to_the_registry_is_refused_as_a_runs_root_unless_it_says_so(tmp_path,
                                                                                 monkeypatch):
    """The refused kinds were a hand list beside the registry, so a kind added there was taken
    as a runs root without a word; now the registry's default refuses it."""
    from ffcv_dp4tl import outputs

    monkeypatch.setitem(outputs.KINDS, "new", outputs.OutputKind("a new report", "dp4tl new",
                                                                 ("new.json",), ("new.json",)))
    root = tmp_path / "root"
    root.mkdir()
    (root / "new.json").write_text("{}")
    with pytest.raises(DP4TLError, match=rf"^--runs-root {root} holds a new report \(written by "
                                         r"`dp4tl new`\), not pipeline runs"):
        validate(_cfg(tmp_path, runs_root=root))



BEFORE_THE_DATA = [
    # each was refused only after the default synth:tiny data was built (audit: 67 files,
    # 14-37 s; hours with ImageNet as the source): wrong for every recipe, or a named recipe
    (["--set", "nope.x=1"], "--set nope.x=1: unknown section [nope]; valid sections: model,"),
    (["--recipes", "tiny", "--set", "nope.x=1"], "--set nope.x=1: unknown section [nope]"),
    (["--set-finetune", "optim.lr=1"], "--set-finetune optim.lr=1: unknown key optim.lr; valid "
                                       "keys in [optim]:"),
    (["--set-surrogate", "train.epochs=abc"], "--set-surrogate train.epochs=abc: train.epochs "
                                              "must be int, got str 'abc'"),
    (["--set", "finetune.head=new"], "override finetune.head=new: the pretraining recipe "
                                     "(--recipe) is a training recipe"),
    (["--surrogate-recipe", "nope"], "--surrogate-recipe nope: unknown recipe 'nope'"),
    (["--recipe", "nope"], "--recipe nope: unknown recipe 'nope'"),
    (["--surrogate-recipe", "lp_tiny_cpu"], "lp_tiny_cpu is a finetuning recipe"),
    (["--recipes", "tiny", "--set", "train.epochs=-1"], "train.epochs must be > 0"),
    # a range, in the recipes the data's scale chooses (known from the spec: synth:tiny's tiny
    # set, synth:hard's bench set), was refused only after the build (left from the audit)
    (["--set", "train.epochs=-1"], "resnet34_tiny_cpu.toml (with overrides ['train.epochs=-1'])"
                                   ": train.epochs must be > 0"),
    (["--data", "synth:hard", "--set", "train.epochs=-1"], "resnet18_bench_cpu.toml (with "
                                                           "overrides ['train.epochs=-1'])"),
    (["--set-surrogate", "train.batch_size=0"], "resnet18_tiny_cpu.toml (with overrides "
                                                "['train.batch_size=0'])"),
    (["--set-finetune", "train.epochs=0"], "lp_tiny_cpu.toml (with overrides ['train.epochs=0'])"),
    # a recipe for a mode that does not run was accepted and ignored (--ff-methods' rule)
    (["--finetune", "lp", "--ff-recipe", "nope"], "--ff-recipe nope sets the FF recipe, but "
                                                  "--finetune lp runs no FF; drop --ff-recipe or add ff"),
    (["--finetune", "ff", "--lp-recipe", "lp"], "--lp-recipe lp sets the LP recipe, but "
                                                "--finetune ff runs no LP; drop --lp-recipe or add lp"),
]


@pytest.mark.parametrize("args,needle", BEFORE_THE_DATA, ids=[" ".join(a) for a, _ in BEFORE_THE_DATA])
def test_what_needs_no_data_is_refused_before_the_data_is_built(tmp_path, capsys, monkeypatch,
                                                                args, needle):
    from cli_runner import cli, one_line

    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, monkeypatch, "pipeline", *args, "--runs-root", tmp_path / "runs",
                       "--data-root", tmp_path / "data")
    one_line(code, err, needle)
    assert not any((tmp_path / d).exists() for d in ("runs", "data"))


def test_a_range_in_the_recipes_a_built_sources_scale_chooses_is_refused_before_any_stage(
        tmp_path, capsys, monkeypatch, small_synth):
    """A built source folder's scale is its manifest's (the embedded data's: the tiny set), read
    before anything runs: its recipes' ranges are checked there too, not after the targets are
    built and the data checked."""
    from cli_runner import cli, one_line

    code, _, err = cli(capsys, monkeypatch, "pipeline", "--data", small_synth / "source",
                       "--target", "synth:tiny", "--set-finetune", "train.epochs=-2",
                       "--runs-root", tmp_path / "runs", "--data-root", tmp_path / "data")
    one_line(code, err, "lp_tiny_cpu.toml (with overrides ['train.epochs=-2']): train.epochs "
                        "must be > 0")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("make,needle", [
    (lambda p: p.write_text("not weights\n"), "--surrogate-weights: {p} is not a state dict torch "
                                              "can read safely"),
    (lambda p: p.mkdir(), "--surrogate-weights {p} is a folder; give the weights file, a state "
                          "dict saved with torch.save(model.state_dict(), PATH)"),
    (lambda p: None, "--surrogate-weights {p}: surrogate weights not found (no such file)"),
])
def test_brought_weights_torch_cannot_read_are_refused_before_any_stage(
        tmp_path, capsys, monkeypatch, small_synth, make, needle):
    """A text file as --surrogate-weights: refused inside the surrogate stage in torch's words,
    never naming the option, leaving runs/surrogate-*/ with inputs.json and its lock; a folder
    was "not found" (audit). Now one line naming the option, before any stage folder."""
    from cli_runner import cli, one_line

    weights = tmp_path / "afile.txt"
    make(weights)
    code, _, err = cli(capsys, monkeypatch, "pipeline", "--data", small_synth / "source",
                       "--target", small_synth / "targets" / "blur", "--method", "lm",
                       "--surrogate-weights", weights, "--runs-root", tmp_path / "runs",
                       "--data-root", tmp_path / "data")
    one_line(code, err, needle.format(p=weights))
    assert "PyTorch" not in err and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("option", ["--surrogate-weights", "--source-weights"])
def test_brought_weights_of_another_model_are_refused_before_any_stage(
        tmp_path, capsys, monkeypatch, small_synth, option):
    """A state dict of another architecture was refused inside its stage, after the stage had
    made its folder (inputs.json, its lock, a segment), which stayed behind (docs audit): one
    line naming the option now, before any stage folder."""
    import torch

    from cli_runner import cli

    weights = tmp_path / "other.pt"
    torch.save({"features.0.weight": torch.zeros(4, 3, 3, 3), "classifier.weight":
                torch.zeros(10, 4)}, weights)
    ratio = ("--ratio", "0") if option == "--source-weights" else ("--set", "train.drop_last=false")
    code, _, err = cli(capsys, monkeypatch, "pipeline", "--data", small_synth / "source",
                       "--target", small_synth / "targets" / "paper", "--method", "lm",
                       option, weights, *ratio, "--runs-root", tmp_path / "runs",
                       "--data-root", tmp_path / "data")
    assert code == 2 and err.startswith(f"error: {option}: ") and err.count("\n") == 1, err
    assert not list((tmp_path / "runs").glob("*-*")), list((tmp_path / "runs").iterdir())


def test_brought_source_weights_are_checked_as_surrogate_weights_are(tmp_path):
    (tmp_path / "w.pt").write_text("text")
    with pytest.raises(DP4TLError, match=r"^--source-weights: .*w\.pt is not a state dict"):
        validate(_cfg(tmp_path, ratio=0.0, source_weights=str(tmp_path / "w.pt")))  # (run_pipeline)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_preflight_validates_every_config_before_it_resolves_any(monkeypatch):
    """A bench's plan: a bad value of its last run was refused only after the first run's
    resolve had built the data (audit); every config is validated first, and a refusal of an
    item ``(what, cfg)`` names ``what``."""
    from ffcv_dp4tl.pipeline import run
    from ffcv_dp4tl.pipeline.config import PipelineConfig

    calls = []

    def check(cfg):
        calls.append(("validate", cfg.method))
        if cfg.method == "bad":
            raise DP4TLError("bad method")
        return cfg.method

    monkeypatch.setattr(run, "validate", check)
    monkeypatch.setattr(run, "resolve", lambda cfg, ok, log: calls.append(("resolve", ok)))
    good, bad = PipelineConfig(method="random", ratio=0.0), PipelineConfig(method="bad")
    with pytest.raises(DP4TLError, match="^the second run: bad method$"):
        run.preflight([good, ("the second run", bad)], log=lambda m: None)
    assert calls == [("validate", "random"), ("validate", "bad")]
    calls.clear()
    run.preflight([good, ("x", PipelineConfig(method="lm"))], log=lambda m: None)
    assert calls == [("validate", "random"), ("validate", "lm"), ("resolve", "random"),
                     ("resolve", "lm")]


def test_a_full_disk_in_the_pipelines_build_names_its_data_root(tmp_path, monkeypatch):
    """The builder checks the free space before a beton; inside a pipeline its message said
    "choose another --out", an option the pipeline has not (audit, a full tmpfs): it says
    --data-root now. `dp4tl build`'s own message still names --out."""
    from PIL import Image

    from ffcv_dp4tl import fsutil
    from ffcv_dp4tl.errors import DataError
    from ffcv_dp4tl.pipeline.resolve import ensure_built

    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (12, 12), (60 * j, 40, 90)).save(tmp_path / "imgs" / c / f"{j}.png")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(fsutil.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(DataError) as e:
        ensure_built(f"folder:{tmp_path / 'imgs'}", tmp_path / "droot", lambda s: None)
    assert "free some space or choose another --data-root, then rerun" in str(e.value), e.value
    assert "--out" not in str(e.value)
    with pytest.raises(DataError, match="choose another --out, then rerun"):
        fsutil.check_free_space(tmp_path, 10**6, "x.beton")


def test_a_pipeline_holds_its_data_for_its_whole_run_and_shares_it_with_another(
        small_synth, tmp_path, monkeypatch):
    """A pipeline reads its data from resolve to report (its stages' keys hold the data's
    fingerprint): ``dp4tl build --overwrite`` is refused for all that time. A second pipeline
    (or a plain build) finding the data built changes nothing: it is not refused while the
    first one reads (it needed the build's exclusive lock)."""
    import ffcv_dp4tl.pipeline.run as run_mod
    from beton_builders.out_dir import LOCK_NAME
    from ffcv_dp4tl.pipeline.resolve import ensure_built

    import fcntl
    import os

    from PIL import Image

    src = small_synth / "source"
    for c in ("a", "b"):
        (tmp_path / "t" / c).mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (12, 12), (60 * j, 9, 90)).save(tmp_path / "t" / c / f"{j}.png")
    built = ensure_built(f"folder:{tmp_path / 't'}", tmp_path / "d", print)
    fd = os.open(built / LOCK_NAME, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a pipeline reading it, as flock sees it
    try:
        logs: list[str] = []
        assert ensure_built(f"folder:{tmp_path / 't'}", tmp_path / "d", logs.append) == built
        assert logs[-1].endswith(f"reusing its build in {built}"), logs
    finally:
        os.close(fd)
    held = []

    class Seen(Exception):
        pass

    def first_stage(cfg, ok, r, res, log):
        held.append([exclusive_is_free(d / LOCK_NAME) for d in (r.source_dir, *r.target_dirs)])
        raise Seen

    monkeypatch.setattr(run_mod, "surrogate_stage", first_stage)
    with pytest.raises(Seen):
        run_pipeline(_cfg(tmp_path, source=str(src), target=str(small_synth / "targets" / "paper"),
                          fmt="wds", overrides=("train.batch_size=8",)))
    assert held == [[False, False]]  # (held while the stages ran)
    assert exclusive_is_free(src / LOCK_NAME)  # (and let go when the run ended)


@pytest.mark.parametrize("who", ["pipeline", "build"])
def test_a_pipeline_waits_for_whoever_builds_its_data_then_reuses_it(tmp_path, monkeypatch, who):
    """In a job array one task builds the data (``dp4tl build``, or a pipeline) while the others
    start: a pipeline waits for either, saying who holds it (pid and host, the time) and what
    ("the data build D", not "data D"), then reuses the build. A standalone build's lock used
    to refuse it ("another dp4tl process ... use another folder", rc 2)."""
    import socket
    import subprocess
    import sys

    from PIL import Image

    from ffcv_dp4tl.pipeline.resolve import ensure_built

    for c in ("a", "b"):
        (tmp_path / "t" / c).mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (12, 12), (60 * j, 9, 90)).save(tmp_path / "t" / c / f"{j}.png")
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "droot"
    built = ensure_built("folder:t", root, print)
    # the holder: a build under way (its manifest not yet written, written as it ends), or a
    # pipeline building it (its pipeline lock)
    manifest = built / "manifest.json"
    if who == "build":
        manifest.rename(built / "m.json")
    lock = built / ".build.lock" if who == "build" else root / f".{built.name}.pipeline.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import os, sys\n"
        "from ffcv_dp4tl.locks import directory_lock\n"
        f"with directory_lock({str(lock)!r}, 'x'):\n"
        "    print('held', flush=True); sys.stdin.read()\n"
        f"    if {who == 'build'}: os.rename({str(built / 'm.json')!r}, {str(manifest)!r})\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    probe = ReleaseOnWait(holder)
    logs = probe.logs
    try:
        assert holder.stdout.readline().strip() == "held"
        assert ensure_built("folder:t", root, probe.log) == built
        waited = probe.released.is_set()
    finally:
        probe.end()
    what = f"dataset folder {built}" if who == "build" else f"the data build {built}"
    assert re.fullmatch(
        rf"\[data\] another dp4tl run \(pid {holder.pid}\) on host {re.escape(socket.gethostname())}, "
        rf"since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d is using {re.escape(what)}; waiting for it "
        rf"\(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\)", next(m for m in logs if "waiting" in m)), logs
    assert waited and holder.returncode == 0
    assert logs[-1] == f"[data] folder:t: reusing its build in {built}", logs
