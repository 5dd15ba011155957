"""The paths a pipeline's report records do not depend on the working directory of the run.

An audit: ``cd /a && dp4tl pipeline --runs-root runs --data data/source ...`` and ``cd / &&
dp4tl pipeline --runs-root /a/runs --data /a/data/source ...`` (the same data, the same runs
root) wrote the same report folder (``runs/report-<key>``) with other paths each time, and the
relative ones (``runs/prune-…``, ``data/…/source``) named nothing once read from another folder.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tiny_data import FINETUNE, TRAIN

from ffcv_dp4tl.pipeline.config import PipelineConfig
from ffcv_dp4tl.pipeline.result import PipelineResult
from ffcv_dp4tl.pipeline.run import run_pipeline


def _cfg(data: str, runs: str, builds: str) -> PipelineConfig:
    return PipelineConfig(ratio=0.5, source=f"{data}/source", target=f"{data}/targets/paper",
                          method="lm", fmt="wds", device="cpu", finetune=("lp",),
                          data_root=builds, runs_root=runs, overrides=TRAIN,
                          surrogate_overrides=TRAIN, finetune_overrides=FINETUNE, progress=False)


def _files(res: PipelineResult) -> tuple[str, str]:
    folder = Path(res.report).parent
    return (folder / "report.md").read_text(), (folder / "results.json").read_text()


@pytest.mark.slow
def test_two_working_directories_write_one_report_of_paths_that_hold_anywhere(
        small_synth, tmp_path, monkeypatch):
    work, elsewhere, reader = tmp_path / "work", tmp_path / "elsewhere", tmp_path / "reader"
    for d in (work, elsewhere, reader):
        d.mkdir()
    (work / "data").symlink_to(small_synth)  # the built data, inside the project folder

    monkeypatch.chdir(work)  # relative spellings, from the project folder
    first = run_pipeline(_cfg("data", "runs", "builds"), log=lambda s: None)
    assert all(run.ran for run in first.stages.values())
    report, results = _files(first)

    monkeypatch.chdir(elsewhere)  # absolute spellings of the same folders, from another one
    second = run_pipeline(_cfg(str(work / "data"), str(work / "runs"), str(work / "builds")),
                          log=lambda s: None)
    # the spelling changes no stage key: every stage is found done, none runs again
    assert not any(run.ran for run in second.stages.values())
    assert ({n: r.dir.name for n, r in second.stages.items()}
            == {n: r.dir.name for n, r in first.stages.items()})
    # ... and rewrites the same report folder with the same report, to the byte
    assert _files(second) == (report, results)
    assert Path(second.report) == Path(first.report) and Path(first.report).is_absolute()

    # what the files name holds from any folder (a later reader, a job with another cwd)
    monkeypatch.chdir(reader)
    data = json.loads(results)
    res = PipelineResult.from_json(data, "results.json")
    assert Path(res.source) == work / "data" / "source"
    assert (Path(res.source) / "manifest.json").is_file()
    assert (Path(res.target) / "manifest.json").is_file()
    for name, run in res.stages.items():
        assert run.dir.is_absolute() and (run.dir / "DONE.json").is_file(), name
    assert Path(data["config"]["runs_root"]) == work / "runs"
    assert Path(data["config"]["data_root"]) == work / "builds"
    sel = data["selection"]
    assert Path(sel["mask"]).is_file() and Path(sel["scores"]).is_dir()
    assert (Path(sel["source"]) / "manifest.json").is_file()
    assert (Path(sel["target"]) / "manifest.json").is_file()
    said = dict(re.findall(r"^- (source|target): `([^`]*)`$", report, re.M))
    assert set(said) == {"source", "target"}
    assert all((Path(p) / "manifest.json").is_file() for p in said.values())


def test_validate_makes_the_paths_absolute_but_not_specs_or_target_names(tmp_path, monkeypatch):
    """What :func:`~ffcv_dp4tl.pipeline.config.validate` leaves in the config: the roots, a
    brought weights file and a built folder given by path (a name holding a ``:`` too, read as a
    folder before any SOURCE kind, review), absolute; a synth spec and a synth target's plain
    name (``warm``, even beside a folder of that name) as given."""
    from ffcv_dp4tl.pipeline.config import validate

    monkeypatch.chdir(tmp_path)
    for d in ("warm", "built/t"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "manifest.json").write_text("{}")
    cfg = PipelineConfig(source="synth:tiny", targets=("warm", "./built/t"), runs_root="runs",
                         data_root="./data", device="cpu", finetune=("lp",))
    validate(cfg)
    assert (cfg.runs_root, cfg.data_root) == (tmp_path / "runs", tmp_path / "data")
    assert cfg.source == "synth:tiny"
    assert cfg.targets == ("warm", str(tmp_path / "built" / "t"))
    first = validate(cfg)  # (again, as a bench's preflight and then its run do: nothing moves)
    assert first.target_specs == ("warm", str(tmp_path / "built" / "t"))
    (tmp_path / "ds:v2").mkdir()
    (tmp_path / "ds:v2" / "manifest.json").write_text("{}")
    cfg = PipelineConfig(source="ds:v2", target="./built/t", device="cpu", finetune=("lp",))
    validate(cfg)
    assert cfg.source == str(tmp_path / "ds:v2")


def _two_projects(root: Path) -> None:
    """``root/a/raw/imgs`` and ``root/b/raw/imgs``: the same file names, other pixels."""
    import numpy as np
    from PIL import Image

    for project, grey in (("a", 10), ("b", 200)):
        for c in ("x", "y"):
            d = root / project / "raw" / "imgs" / c
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8, 3), grey + i, np.uint8)).save(d / f"{i}.png")


def _built_in(project: Path, builds: Path, said: list[str], monkeypatch) -> Path:
    """The build a pipeline started in ``project`` reads for ``folder:raw/imgs``."""
    from ffcv_dp4tl.pipeline.config import absolute_paths
    from ffcv_dp4tl.pipeline.resolve import ensure_built

    monkeypatch.chdir(project)
    cfg = PipelineConfig(source="folder:raw/imgs", data_root=str(builds))
    absolute_paths(cfg)
    assert cfg.source == f"folder:{project / 'raw' / 'imgs'}"
    return ensure_built(cfg.source, cfg.data_root, said.append, progress=False)


def test_a_relative_layout_path_typed_in_two_folders_builds_each_input(tmp_path, monkeypatch):
    """Two runs sharing a data root, each typing ``folder:raw/imgs`` in its own folder (a job
    array's jobs in their projects): the spec was recorded as typed, so the second run found
    "its" build and reused the first one's images, warning only that its inputs had "changed
    size or modification time" (review; reproduced). A ``LAYOUT:PATH`` is now made absolute
    when the config is checked: each input gets its own build, and a rerun finds its own."""
    from ffcv_dp4tl.data.manifest import load_manifest

    _two_projects(tmp_path)
    builds, said = tmp_path / "builds", []
    a, b = (_built_in(tmp_path / p, builds, said, monkeypatch) for p in "ab")
    assert _built_in(tmp_path / "a", builds, said, monkeypatch) == a != b
    assert load_manifest(a).fingerprint != load_manifest(b).fingerprint, said
    assert not any("changed size or modification time" in line for line in said), said


def test_a_build_recorded_with_a_relative_path_is_reused_only_where_its_inputs_are(
        tmp_path, monkeypatch):
    """A data root built before paths were made absolute records ``folder:raw/imgs`` as typed.
    Read against today's folder, another project with the same file names took that build for
    its own (review). It is reused from the project whose files it holds, with a line saying
    so; elsewhere the data is built again."""
    from ffcv_dp4tl.data.manifest import load_manifest
    from ffcv_dp4tl.pipeline.resolve import ensure_built

    _two_projects(tmp_path)
    builds, said = tmp_path / "builds", []
    monkeypatch.chdir(tmp_path / "a")
    old = ensure_built("folder:raw/imgs", builds, said.append, progress=False)  # (as before)
    b = _built_in(tmp_path / "b", builds, said, monkeypatch)
    assert b != old and load_manifest(b).fingerprint != load_manifest(old).fingerprint
    said.clear()
    assert _built_in(tmp_path / "a", builds, said, monkeypatch) == old
    assert any("reads the input of 'folder:raw/imgs'" in line for line in said), said
