"""CoOp splits by default: a split_zhou_*.json beside the data is used (and said), unless
--split official; the layout readers themselves still only use a JSON they are given."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from beton_builders.layouts.coop import COOP_FILES, find_split_json
from beton_builders.sources import resolve_source, split_note
from ffcv_dp4tl.errors import DataError

try:  # rootdir-relative import (no tests/__init__.py) or package-relative
    import layout_fakes as F
except ImportError:  # pragma: no cover
    from . import layout_fakes as F  # type: ignore[no-redef]


def _dtd_with_json(root: Path, where: Path) -> Path:
    F.make_dtd(root)
    sj = where / COOP_FILES["dtd"]
    sj.write_text(json.dumps({"train": [["banded/banded_0000.jpg", 0, "banded"]],
                              "val": [["banded/banded_0001.jpg", 0, "banded"]],
                              "test": [["banded/banded_0002.jpg", 0, "banded"]]}))
    return sj


@pytest.mark.parametrize("beside", ["root", "parent"])
def test_coop_json_beside_the_data_is_the_default(tmp_path, beside):
    root = tmp_path / "dtd"
    sj = _dtd_with_json(root, root if beside == "root" else tmp_path)
    assert find_split_json("dtd", root) == sj
    (spec,) = resolve_source(f"dtd:{root}").values()
    assert {k: len(v) for k, v in spec.splits.items()} == {"train": 1, "val": 1, "test": 1}
    assert spec.extra["split"] == f"coop ({sj})"
    note = split_note(spec)
    assert "CoOp" in note and str(sj) in note and "--split official" in note


def test_coop_json_in_the_dataset_folder_below_the_given_one_is_found(tmp_path):
    """The layouts accept the folder that contains the dataset (dtd:$DATA for $DATA/dtd), and
    CoOp keeps its JSON in the dataset folder: it was looked for in $DATA and its parent only,
    so the build used the official splits in silence and --split coop said 'not found'."""
    data = tmp_path / "data"
    sj = _dtd_with_json(data / "dtd", data / "dtd")
    assert find_split_json("dtd", data) == sj
    (spec,) = resolve_source(f"dtd:{data}", split="coop").values()
    assert {k: len(v) for k, v in spec.splits.items()} == {"train": 1, "val": 1, "test": 1}
    assert spec.extra["split"] == f"coop ({sj})"


def test_every_coop_layout_says_which_folders_may_hold_its_dataset():
    """find_split_json looks in the folders each reader accepts below the root: one list per
    layout (SUBDIRS), read by both (a second list could drift from the reader's)."""
    import importlib

    for layout in COOP_FILES:
        module = importlib.import_module(f"beton_builders.layouts.{layout}")
        if layout in ("sun397", "ucf101"):  # (CoOp's JSON lies beside their image folder)
            continue
        assert module.SUBDIRS and all(isinstance(d, str) for d in module.SUBDIRS), layout


def test_split_official_opts_out_and_coop_requires_the_file(tmp_path):
    root = tmp_path / "dtd"
    _dtd_with_json(root, root)
    (spec,) = resolve_source(f"dtd:{root}", split="official").values()
    assert {k: len(v) for k, v in spec.splits.items()} == {"train": 3, "val": 3, "test": 6}
    assert split_note(spec) == "splits: the dataset's official splits"
    (root / COOP_FILES["dtd"]).unlink()
    (spec,) = resolve_source(f"dtd:{root}").values()  # nothing beside the data: official
    assert spec.extra["split"] == "official"
    with pytest.raises(DataError, match="--split coop: no split_zhou_DescribableTextures.json"):
        resolve_source(f"dtd:{root}", split="coop")
    with pytest.raises(DataError, match="split must be one of"):
        resolve_source(f"dtd:{root}", split="zhou")


def test_explicit_split_json_wins(tmp_path):
    root = tmp_path / "dtd"
    _dtd_with_json(root, root)
    other = tmp_path / "mine.json"
    other.write_text(json.dumps({"train": [["banded/banded_0000.jpg", 0, "banded"],
                                           ["banded/banded_0001.jpg", 0, "banded"]],
                                 "test": [["banded/banded_0002.jpg", 0, "banded"]]}))
    (spec,) = resolve_source(f"dtd:{root}", other).values()
    assert len(spec.splits["train"]) == 2 and split_note(spec).endswith(str(other))


def test_split_coop_is_refused_for_synth_data():
    """``--split coop`` means "require the CoOp split": synth data has none, and it was ignored
    in silence (a build of other splits than asked for)."""
    with pytest.raises(DataError) as e:
        resolve_source("synth:tiny", split="coop")
    assert str(e.value) == ("--split coop: synth data has no CoOp split (the generator makes its "
                            "own splits); drop --split")
