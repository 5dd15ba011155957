"""A path's leading ``~`` is the user's home folder for every command (audit): the shell expands
it only at the start of a word, so ``--out=~/x``, a quoted ``"~/d"`` and a value a script or
``just`` passes on arrive as typed. ``build synth --out=~/x`` built into a folder named ``~`` in
the working folder and ``verify "~/d"`` / ``info --data=~/d`` found no dataset, while
``pipeline --data ~/d``, SOURCE paths, recipe files and weights read the home folder's."""
from __future__ import annotations

import pytest

from cli_runner import cli

#: values for the required parameters other than the one under test (a path: a folder under
#: the test's tmp_path; anything else not named here: "x")
FILL = {"source": "synth:tiny", "ratio": "0.5", "classes": "0", "recipe": "tiny"}


def _commands():
    """(command words, click command) for every command that runs (no group)."""
    import typer

    from ffcv_dp4tl.cli import app

    found = []

    def walk(command, words):
        subs = getattr(command, "commands", None) or {}
        for name, sub in sorted(subs.items()):
            walk(sub, [*words, name])
        if not subs:
            found.append((words, command))

    walk(typer.main.get_command(app), [])
    return found


def _params(which):
    """(command words, parameter name) for every parameter ``which(param)`` picks."""
    return [(words, p.name) for words, command in _commands() for p in command.params if which(p)]


def _is_path(param) -> bool:
    from ffcv_dp4tl.cli.options import _is_path_annotation

    return _is_path_annotation(param.type_descriptor.annotation)


def _is_report(param) -> bool:
    return param.name == "report"


def _argv(words, name, value, tmp_path) -> list[str]:
    """``dp4tl WORDS`` with ``value`` for the parameter ``name`` (``--opt=VALUE`` for an option,
    where no shell expands a ``~``) and a value for each other required parameter."""
    from ffcv_dp4tl.cli.options import option_name

    command = dict((tuple(w), c) for w, c in _commands())[tuple(words)]
    args, opts = [], []
    for p in command.params:
        if p.name == name:
            given = value
        elif p.required:
            given = str(tmp_path / p.name) if _is_path(p) else FILL.get(p.name, "x")
        else:
            continue
        if p.param_type_name == "argument":
            args.append(given)
        else:
            opts.append(f"{option_name(p)}={given}")
    return [*words, *args, *opts]


@pytest.fixture
def home(monkeypatch, tmp_path):
    """A fake home folder ($HOME), and a working folder in which nothing may appear; what each
    command is called with (its parsed parameters) is recorded instead of run."""
    import typer
    import typer.core

    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir()
    here.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    seen: dict = {}

    def reached(self, ctx):
        seen.update(ctx.params)
        raise typer.Exit(0)

    monkeypatch.setattr(typer.core.TyperCommand, "invoke", reached)
    yield home, here, seen


def _ids(x):
    return " ".join(x) if isinstance(x, list) else x


@pytest.mark.parametrize("words,name", _params(_is_path), ids=_ids)
def test_every_path_parameter_reads_a_leading_tilde_as_the_home_folder(words, name, home,
                                                                        capsys, monkeypatch,
                                                                        tmp_path):
    """Every Path (or List[Path]) option and argument of every command: the rule is the app's
    (``check_path_params``), so a command added later has it too."""
    home_dir, here, seen = home
    code, _, err = cli(capsys, monkeypatch, *_argv(words, name, "~/p", tmp_path))
    assert code == 0, err
    value = seen[name]
    assert (list(value) if isinstance(value, (list, tuple)) else value) in (
        home_dir / "p", [home_dir / "p"]), value
    assert list(here.iterdir()) == []


@pytest.mark.parametrize("words,name", _params(_is_report), ids=_ids)
def test_a_report_file_reads_a_leading_tilde_as_the_home_folder(words, name, home, capsys,
                                                                monkeypatch, tmp_path):
    """``--report`` is a str option (its '' means "no report"), checked by its own callback:
    ``--report=~/B.md`` was refused as "its folder ~ does not exist"."""
    home_dir, here, seen = home
    code, _, err = cli(capsys, monkeypatch, *_argv(words, name, "~/B.md", tmp_path))
    assert code == 0, err
    assert seen[name] == str(home_dir / "B.md")
    assert list(here.iterdir()) == []


def test_every_item_of_a_comma_separated_path_list_reads_the_home_folder(capsys, monkeypatch,
                                                                         tmp_path):
    """``score --target=~/a,~/b``: the parameter's text starts with one ``~``, its second item
    would have stayed ``~/b``."""
    import ffcv_dp4tl.pipeline.score as score_mod

    home_dir = tmp_path / "home"
    home_dir.mkdir()
    monkeypatch.setenv("HOME", str(home_dir))
    monkeypatch.chdir(tmp_path)
    seen = {}

    class Stop(Exception):
        pass

    def score(method, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(score_mod, "score", score)
    with pytest.raises(Stop):
        cli(capsys, monkeypatch, "score", "--method", "lm", "--data", tmp_path / "d", "--out",
            tmp_path / "s", "--target=~/a,~/b")
    assert seen["target_dir"] == [home_dir / "a", home_dir / "b"]


TINY = ("synth:tiny,num_superclasses=2,classes_per_superclass=2,train_per_class=4,"
        "val_per_class=2,image_size=16,num_targets=0")


def test_build_out_under_a_tilde_builds_into_the_home_folder(capsys, monkeypatch, tmp_path):
    """`dp4tl build synth --out=~/x` (bash leaves a '~' after '=' alone) built into ./~/x; the
    built data is then found as ~/x by `info` and `verify`, whose own error text suggests
    `dp4tl build SOURCE --out ~/d`."""
    home_dir, here = tmp_path / "home", tmp_path / "here"
    home_dir.mkdir()
    here.mkdir()
    monkeypatch.setenv("HOME", str(home_dir))
    monkeypatch.chdir(here)
    code, _, err = cli(capsys, monkeypatch, "build", TINY, "--out=~/x", "--no-progress")
    assert code == 0, err
    assert (home_dir / "x" / "source" / "manifest.json").is_file()
    assert list(here.iterdir()) == []
    code, out, err = cli(capsys, monkeypatch, "info", "--data=~/x/source")
    assert code == 0, err
    code, out, err = cli(capsys, monkeypatch, "verify", "~/x/source")
    assert code == 0, err
    assert str(home_dir / "x" / "source") in out
