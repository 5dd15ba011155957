"""Reading recipe files (:mod:`ffcv_dp4tl.training.recipe_files`): a file that cannot be a recipe
is a one-line DP4TLError naming it, never a traceback nor a silent all-defaults recipe."""
from __future__ import annotations

import pytest

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.training.recipe import load_recipe
from ffcv_dp4tl.training.recipe_files import recipe_description, recipe_tables


def test_non_utf8_recipe_is_a_clear_error(tmp_path):
    p = tmp_path / "latin1.toml"
    p.write_bytes(b"# lr f\xfcr\n[train]\nepochs = 2\n")
    for read in (load_recipe, recipe_description):
        with pytest.raises(DP4TLError, match=r"latin1\.toml: not UTF-8.*save the recipe as UTF-8"):
            read(p)


@pytest.mark.parametrize("text", ["", "  \n\n", "# just a comment\n"])
def test_empty_recipe_is_refused_not_all_defaults(tmp_path, text):
    p = tmp_path / "empty.toml"
    p.write_text(text)
    with pytest.raises(DP4TLError, match=r"empty\.toml: the recipe file sets nothing"):
        load_recipe(p)


def test_a_recipe_we_may_not_read_names_the_file_and_what_to_do(tmp_path, monkeypatch):
    from pathlib import Path

    p = tmp_path / "theirs.toml"
    p.write_text("[train]\nepochs = 2\n")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DP4TLError) as e:
        load_recipe(p)
    assert str(e.value) == (f"recipe file: cannot read {p} (Permission denied); fix its "
                            "permissions, or run as a user who may read it")


def test_an_unknown_extends_names_the_file_and_its_extends_key(tmp_path):
    """``extends = "nosuch"`` said "unknown recipe 'nosuch' ..." without the file that held it
    (`dp4tl recipes bad2.toml`: which file, which key?)."""
    bad = tmp_path / "bad2.toml"
    bad.write_text('extends = "nosuch"\n[train]\nepochs = 2\n')
    for read in (load_recipe, recipe_tables):
        with pytest.raises(DP4TLError) as e:
            read(bad)
        assert str(e.value).startswith(f"{bad}: extends = 'nosuch': unknown recipe 'nosuch': not a "
                                       ".toml file and not a shipped recipe (available: ")
    bad.write_text('extends = "nothere.toml"\n')
    with pytest.raises(DP4TLError) as e:
        load_recipe(bad)
    assert str(e.value).startswith(f"{bad}: extends = 'nothere.toml': recipe file not found: "
                                   f"{tmp_path / 'nothere.toml'} (pass an existing .toml file")


def test_a_recipe_sets_member_named_without_its_set_is_told_its_full_name():
    """`ff_cifar10` is `paper/ff_cifar10` (and `paper_code/ff_cifar10`): the refusal listed
    only the top-level recipes, so the name a user had read in the paper's tables looked
    absent (audit). It names the members; another unknown name also points at the sets."""
    from ffcv_dp4tl.errors import DP4TLError
    from ffcv_dp4tl.training.recipe_files import resolve_recipe_path

    with pytest.raises(DP4TLError) as e:
        resolve_recipe_path("ff_cifar10")
    assert str(e.value) == ("unknown recipe 'ff_cifar10': it is a member of a recipe set, named "
                            "with its set: paper/ff_cifar10 or paper_code/ff_cifar10")
    assert resolve_recipe_path("paper/ff_cifar10").name == "ff_cifar10.toml"
    with pytest.raises(DP4TLError, match=r"and the recipe sets' paper/NAME, paper_code/NAME: "
                                         r"`dp4tl recipes` lists them"):
        resolve_recipe_path("nosuch")
