"""One CLI shape: --version, recipe/model listings, choices refused before any work, one name
per concept (--data, --out/-o, --device auto) with the old spellings still accepted, and a
user's TOML path wherever a recipe name goes.

Commands run in-process through the console entry point (``ffcv_dp4tl.cli.main``) so the
one-line error formatting is what a user sees; the heavy work behind a command is replaced by a
recorder where only the parsing is under test.
"""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from ffcv_dp4tl.cli import main
from ffcv_dp4tl.training.recipe_files import list_recipes

REPO = Path(__file__).resolve().parents[2]


def cli(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["dp4tl", *map(str, args)])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # main() chains its own hooks
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    with pytest.raises(SystemExit) as e:
        main()
    out, err = capsys.readouterr()
    return e.value.code, out, err


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in err, err


def test_version(capsys, monkeypatch):
    import ffcv_dp4tl

    code, out, _ = cli(capsys, monkeypatch, "--version")
    assert code == 0 and out.strip() == f"dp4tl (ffcv-dp4tl) {ffcv_dp4tl.__version__}"
    py = tomllib.loads((REPO / "pyproject.toml").read_text())  # one source: __version__
    assert "version" in py["project"]["dynamic"] and "version" not in py["project"]
    assert py["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ffcv_dp4tl.__version__"}


def test_recipes_lists_every_name_with_its_description(capsys, monkeypatch):
    from ffcv_dp4tl.training.recipe_files import list_recipes, recipe_description

    code, out, _ = cli(capsys, monkeypatch, "recipes")
    assert code == 0
    lines = out.splitlines()
    names = list_recipes()
    assert names == sorted(p.stem for p in (REPO / "recipes").glob("*.toml"))
    for name in names:
        desc = recipe_description(name)
        assert desc and (REPO / "recipes" / f"{name}.toml").read_text().startswith("# " + desc[:20])
        assert any(line.split() and line.split()[0] == name and line.endswith(desc)
                   for line in lines), (name, out)


@pytest.mark.parametrize("name", list_recipes(sets=True))
def test_a_shown_recipe_saved_as_a_file_is_the_same_recipe(name, capsys, monkeypatch, tmp_path):
    """`dp4tl recipes NAME` shows a recipe "with every value resolved": saved as a .toml, it
    loads as the same kind of recipe with the same fingerprint (a training recipe's printout
    once carried a [finetune] section, which made the file a finetuning recipe that training
    refused)."""
    from ffcv_dp4tl.training.recipe import load_recipe

    code, out, err = cli(capsys, monkeypatch, "recipes", name)
    assert code == 0, err
    saved = tmp_path / "shown.toml"
    saved.write_text(out)
    shipped, loaded = load_recipe(name), load_recipe(str(saved))
    assert loaded.kind == shipped.kind
    assert loaded.fingerprint() == shipped.fingerprint()


def test_a_finetune_override_of_a_training_recipe_is_refused_not_dropped(capsys, monkeypatch):
    """A training recipe's printout leaves out [finetune] (above), so `--set finetune.KEY=...`
    with one was dropped without a word: the recipe shown as if the override were applied. It
    is refused in one line naming the override and where finetune settings go; a finetuning
    recipe still shows its override."""
    code, out, err = cli(capsys, monkeypatch, "recipes", "resnet18_tiny_cpu", "--set",
                         "finetune.resolution=128")
    one_line_error(code, err, "override finetune.resolution=128", "resnet18_tiny_cpu is a training "
                   "recipe", "no [finetune] section", "`dp4tl recipes lp --set "
                   "finetune.resolution=128`", "--set-finetune")
    assert out == ""
    code, out, err = cli(capsys, monkeypatch, "recipes", "lp", "--set", "finetune.resolution=128")
    assert code == 0, err
    assert "[finetune]" in out
    shown = out.split("[finetune]\n", 1)[1].split("\n[", 1)[0].splitlines()
    assert "resolution = 128" in shown, out


def test_models_lists_the_registry(capsys, monkeypatch):
    from ffcv_dp4tl.training.models import list_models

    code, out, _ = cli(capsys, monkeypatch, "models")
    assert code == 0
    listed = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert listed == list_models()
    assert "resnet34_tiny_cpu" in next(line for line in out.splitlines() if line.startswith("resnet34 "))


BAD = [
    (("pipeline", "--format", "xyz"), "--format"),
    (("pipeline", "--finetune", "lp,zz"), "--finetune"),
    (("pipeline", "--device", "gpu"), "--device"),
    (("pipeline", "--device", "cuda:x"), "--device"),
    (("pipeline", "--recipes", "huge"), "--recipes"),
    (("pipeline", "--arch", "resnet9"), "--arch"),
    (("pipeline", "--k", "0"), "--k"),
    # silently ignored before: no transfer result, seed 0 for '', one run counted twice, K for lm
    (("pipeline", "--finetune", ""), "--finetune"),
    (("pipeline", "--seeds", ""), "--seeds"),
    (("pipeline", "--seeds", "0,0"), "--seeds"),
    (("pipeline", "--method", "lm", "--k", "5"), "method lm does not cluster the source"),
    (("pipeline", "--target", "warm", "--target-weights", "2"), "--target-weights"),
    (("bench", "cost-table", "--target-weights", "1"), "--target-weights"),
    (("prune", "--scores", "DATA", "--data", "DATA", "--ratio", "0.5", "--order", "up",
      "--out", "OUT/p"), "--order"),
    (("pipeline", "--data", "synth:tiny", "--source", "synth:tiny"), "--source"),
    (("bench", "cost-table", "--format", "xyz"), "--format"),
    (("bench", "cost-table", "--finetune", "ff,xx"), "--finetune"),
    (("bench", "cost-table", "--ratios", "0,x"), "--ratios"),
    (("bench", "cost-table", "--seeds", "0,1.5"), "--seeds"),
    (("bench", "cost-table", "--methods", "grand@0.6/x"), "--methods"),
    # an empty or repeated list would overwrite a report with an empty or skewed table
    (("bench", "cost-table", "--seeds", ""), "--seeds"),
    (("bench", "cost-table", "--seeds", "0,0"), "--seeds"),
    (("bench", "cost-table", "--ratios", "0.2,0.2"), "--ratios"),
    (("bench", "cost-table", "--ratios", ""), "--ratios"),
    (("bench", "cost-table", "--finetune", ""), "--finetune"),
    (("bench", "cost-table", "--report", "DATA"), "--report"),
    (("bench", "embedded", "--seeds", "-1"), "--seeds"),
    (("bench", "embedded", "--reference-seeds", "x"), "--reference-seeds"),
    (("bench", "embedded", "--ratios", "0"), "--ratios"),
    (("bench", "embedded", "--report", "DATA"), "--report"),
    (("bench", "cost-table", "--report", "OUT/nodir/B.md"), "--report"),  # (a typo: made the folder)
    (("bench", "adversarial", "--seeds", ""), "--seeds"),
    (("bench", "surrogates", "--archs", ""), "--archs"),
    (("bench", "surrogates", "--seeds", "1,1"), "--seeds"),
    (("score", "--data", "DATA", "--out", "OUT/s", "--backend", "tpu"), "--backend"),
    # read by no part of these methods: ignored in silence before (K for lm, iterations for sp)
    (("score", "--method", "lm", "--data", "DATA", "--out", "OUT/s", "--k", "5"),
     "method lm does not cluster the source"),
    (("score", "--method", "sp", "--data", "DATA", "--out", "OUT/s", "--iters", "5"),
     "method sp runs no k-means (--iters is read by fm, ssp only)"),
    (("score", "--method", "fm-sup", "--data", "DATA", "--out", "OUT/s", "--iters", "5"), "--iters"),
    (("score", "--method", "ssp", "--data", "DATA", "--out", "OUT/s", "--k", "5"),
     "method ssp sets its clusters with --opt k=N, not --k"),
    (("score", "--method", "random", "--data", "DATA", "--out", "OUT/s", "--backend", "cpu"),
     "method random runs none of the scoring kernels"),
    # inputs a method never reads were accepted in silence, missing paths included (CLI audit)
    (("score", "--method", "random", "--data", "DATA", "--out", "OUT/s", "--checkpoint", "/no"),
     "method random uses no surrogate (--checkpoint is read by lm, fm, fm-sup, moderate, el2n, "
     "grand, sp, ssp, infmax, infsum only)"),
    # FORGET trains its own run from --recipe; it loads no checkpoint (review)
    (("score", "--method", "forget", "--data", "DATA", "--out", "OUT/s", "--checkpoint", "/no"),
     "method forget uses no surrogate"),
    (("score", "--method", "random", "--data", "DATA", "--out", "OUT/s", "--target", "/no"),
     "/no: method random reads no target (--target is read by lm, fm, fm-sup only)"),
    (("score", "--method", "moderate", "--data", "DATA", "--out", "OUT/s", "--target", "T1",
      "--target", "T2"), "T1,T2: method moderate reads no target"),
    (("score", "--method", "sp", "--data", "DATA", "--out", "OUT/s", "--target-crop", "none"),
     "none: method sp reads no target (--target-crop"),
    (("score", "--method", "random", "--data", "DATA", "--out", "OUT/s", "--resolution", "32"),
     "method random uses no surrogate (--resolution is read by"),
    (("score", "--method", "random", "--data", "DATA", "--out", "OUT/s", "--target-resolution",
      "0"), "--target-resolution"),
    (("score", "--method", "lm", "--data", "DATA", "--out", "OUT/s", "--source-resolution", "0"),
     "0: method lm reads no source features (--source-resolution is read by fm, fm-sup, "
     "moderate, sp, ssp, infmax, infsum only)"),
    (("score", "--method", "el2n", "--data", "DATA", "--out", "OUT/s", "--source-crop", "none"),
     "method el2n reads no source features"),
    (("score", "--out", "OUT/s"), "--data"),
    (("train", "resnet18_tiny_cpu", "--data", "DATA", "--out", "OUT/t", "--format", "zz"), "--format"),
    (("train", "resnet18_tiny_cpu", "--data", "DATA", "--out", "OUT/t", "--device", "tpu"), "--device"),
    (("finetune", "lp", "--checkpoint", "c.pt", "--data", "DATA", "--out", "OUT/f", "--mode", "zz"),
     "--mode"),
    (("build", "synth:tiny", "--out", "OUT/b", "--beton-mode", "zzz"), "--beton-mode"),
    (("mask", "classes", "--data", "DATA", "--classes", "1,x", "--out", "OUT/m.npy"), "--classes"),
    (("train", "no_such_recipe", "--data", "DATA", "--out", "OUT/t"), "no_such_recipe"),
]


@pytest.mark.parametrize("args,field", BAD, ids=[" ".join(a[:3]) for a, _ in BAD])
def test_bad_values_are_refused_before_any_work(args, field, capsys, monkeypatch, tmp_path):
    """One line naming the option, exit 2, and no folder created (data, runs, outputs)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "DATA").mkdir()
    args = tuple(a.replace("OUT", str(tmp_path / "out")) for a in args)
    if args[0] in ("pipeline", "bench"):
        args += ("--data-root", str(tmp_path / "data"), "--runs-root", str(tmp_path / "runs"))
        if args[0] == "bench":
            args += ("--out", str(tmp_path / "out"))
    code, _, err = cli(capsys, monkeypatch, *args)
    one_line_error(code, err, field)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DATA"], list(tmp_path.iterdir())


DEVICE_CASES = [
    ("gpu", True, "{what} 'gpu' is not a device; use auto, cpu, cuda or cuda:N (e.g. cuda:1)"),
    ("cuda", False, "{what} 'cuda': no CUDA device is visible on this machine"),
    ("cuda:0", False, "{what} 'cuda:0': no CUDA device is visible on this machine"),
    ("cuda:2", True, "{what} 'cuda:2': this machine has 2 CUDA device(s); use cuda:0 .. cuda:1"),
]


@pytest.mark.parametrize("device,gpus,message", DEVICE_CASES, ids=[d for d, _, _ in DEVICE_CASES])
def test_one_device_rule_for_the_cli_and_the_python_api(device, gpus, message, capsys,
                                                         monkeypatch, tmp_path):
    """``--device`` and the Python API's ``device=`` (train, finetune, ...: through
    ``resolve_device``) refuse the same values in one line naming the value and the choices.
    Before, the API gave torch's 'Expected one of cpu, cuda, ipu, xpu, ...' for "gpu" and
    'Found no NVIDIA driver' for cuda on a CPU machine."""
    import re

    import torch

    from ffcv_dp4tl.errors import DP4TLError
    from ffcv_dp4tl.training import finetune, train
    from ffcv_dp4tl.training.distributed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if gpus else 0)
    monkeypatch.chdir(tmp_path)
    api = re.escape(message.format(what="device"))
    with pytest.raises(DP4TLError, match=api):
        resolve_device(device)
    with pytest.raises(DP4TLError, match=api):
        resolve_device(torch.device(device) if device != "gpu" else device)
    with pytest.raises(DP4TLError, match=api):
        train("resnet18_tiny_cpu", tmp_path / "DATA", out_dir=tmp_path / "run", device=device,
              progress=False)
    with pytest.raises(DP4TLError, match=api):
        finetune("lp_tiny_cpu", tmp_path / "c.pt", tmp_path / "DATA", tmp_path / "ft",
                 device=device, progress=False)
    code, _, err = cli(capsys, monkeypatch, "pipeline", "--device", device, "--data-root",
                       tmp_path / "data", "--runs-root", tmp_path / "runs")
    one_line_error(code, err, message.format(what="--device"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())


def test_the_device_rule_lets_every_documented_value_through(monkeypatch):
    import torch

    from ffcv_dp4tl.cli.options import check_device
    from ffcv_dp4tl.training.distributed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for value, dev in [("auto", "cuda"), ("cpu", "cpu"), ("cuda", "cuda"), ("cuda:1", "cuda:1"),
                       (None, "cuda"), (torch.device("cuda", 1), "cuda:1")]:
        assert resolve_device(value) == torch.device(dev)
        if isinstance(value, str):
            assert check_device(value) == value
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


@pytest.fixture
def record(monkeypatch):
    """Replace the work behind pipeline/bench/score/prune/train/finetune by a recorder."""
    from importlib import import_module

    # modules, not the same-named functions some package __init__ files re-export
    ct, pr, run, sc = (import_module(f"ffcv_dp4tl.{m}")
                       for m in ("bench.cost_table", "pipeline.prune", "pipeline.run",
                                 "pipeline.score"))
    ft, tr = (import_module(f"ffcv_dp4tl.training.{m}") for m in ("finetune", "trainer"))

    seen: dict = {}

    class Stop(Exception):
        pass

    def stop(name):
        def fake(*a, **kw):
            seen[name] = (a, kw)
            raise Stop
        return fake

    monkeypatch.setattr(run, "run_pipeline", stop("pipeline"))
    monkeypatch.setattr(ct, "run_cost_table", stop("bench"))
    monkeypatch.setattr(sc, "score", stop("score"))
    monkeypatch.setattr(pr, "prune", stop("prune"))
    monkeypatch.setattr(tr, "train", stop("train"))
    monkeypatch.setattr(ft, "finetune", stop("finetune"))

    def call(capsys, *args):
        seen.clear()
        monkeypatch.setattr(sys, "argv", ["dp4tl", *map(str, args)])
        monkeypatch.setattr(sys, "excepthook", sys.excepthook)
        monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
        with pytest.raises(Stop):
            main()
        capsys.readouterr()
        (name, (a, kw)), = seen.items()
        return name, a, kw
    return call


def test_new_names_and_old_aliases_reach_the_same_call(record, capsys, tmp_path):
    d, t1, t2 = tmp_path / "src", tmp_path / "t1", tmp_path / "t2"
    # pipeline: --data, defaults: embedded data, auto device, K by the data (None: the
    # pipeline resolves it from the source's manifest, contracts.default_k, as the API does)
    _, (cfg,), _ = record(capsys, "pipeline")
    assert (cfg.source, cfg.device, cfg.k, cfg.finetune, cfg.fmt, cfg.recipes) == \
        ("synth:tiny", "auto", None, ("lp", "ff"), "ffcv", "")
    _, (cfg,), _ = record(capsys, "pipeline", "--data", "imagenet:/x", "--target", "t",
                         "--finetune", " lp ,", "--recipes", "full", "--format", "wds")
    assert (cfg.source, cfg.k, cfg.finetune, cfg.recipes, cfg.fmt) == \
        ("imagenet:/x", None, ("lp",), "full", "wds")
    _, (cfg,), _ = record(capsys, "pipeline", "--data", "imagenet:/x", "--method", "fm", "--k", "500")
    assert (cfg.source, cfg.k) == ("imagenet:/x", 500)
    # bars by default, as every command that trains; --no-progress turns them off
    assert record(capsys, "pipeline")[1][0].progress is True
    assert record(capsys, "pipeline", "--no-progress")[1][0].progress is False
    # bench: same K rule
    _, (base, _out), kw = record(capsys, "bench", "cost-table", "-o", tmp_path / "o")
    assert (base.source, base.k, base.device, _out) == ("synth:tiny", 64, "auto", tmp_path / "o")
    assert "--data synth:tiny" in kw["command"] and "--k 64" in kw["command"]
    assert base.target == "warm"  # the published table's target, on the embedded data only
    _, (base, _), _ = record(capsys, "bench", "cost-table", "--data", "imagenet:/x")
    assert (base.source, base.k, base.target) == ("imagenet:/x", 2000, "")  # pipeline's default
    # score: --data, targets comma-separated or repeated, device auto → concrete
    _, (method,), kw = record(capsys, "score", "--method", "fm", "--data", d, "--target",
                              f"{t1},{t2}", "-o", tmp_path / "s")
    assert method == "fm" and kw["source_dir"] == d and kw["target_dir"] == [t1, t2]
    assert kw["device"] in ("cpu", "cuda") and kw["k"] == 2000 and kw["fmt"] == "ffcv"
    embedded = tmp_path / "synth-built"  # score: the same K rule as pipeline and bench
    embedded.mkdir()
    (embedded / "manifest.json").write_text('{"extra": {"generator": "synth"}}')
    _, _, kw = record(capsys, "score", "--method", "fm", "--data", embedded, "-o", tmp_path / "s2")
    assert kw["k"] == 64
    _, _, kw = record(capsys, "score", "--method", "fm", "--data", embedded, "--k", "16", "-o",
                      tmp_path / "s3")
    assert kw["k"] == 16
    _, _, kw = record(capsys, "score", "--data", d, "--target", t1, "--target", t2, "-o", tmp_path)
    assert kw["target_dir"] == [t1, t2]
    # prune: --data
    _, a, kw = record(capsys, "prune", "--scores", tmp_path, "--data", d, "--ratio", "0.5",
                      "-o", tmp_path / "m")
    assert a[1] == d and a[3] == tmp_path / "m" and kw["reverse"] is False
    _, _, kw = record(capsys, "prune", "--scores", tmp_path, "--data", d, "--ratio", "0.5",
                      "--order", "reversed", "-o", tmp_path / "m")  # pipeline's spelling
    assert kw["reverse"] is True
    # train: -o; finetune: --data, --mode enum → plain string
    _, (r, data), kw = record(capsys, "train", "resnet18_tiny_cpu", "--data", d, "-o", tmp_path / "r",
                              "--format", "wds")
    assert r.name == "resnet18_tiny_cpu" and data == d and kw["fmt"] == "wds" and kw["device"] == "auto"
    _, (r, ckpt, target, out), kw = record(capsys, "finetune", "lp_tiny_cpu", "--checkpoint",
                                           tmp_path / "c.pt", "--data", t1, "-o", tmp_path / "f",
                                           "--mode", "ff")
    assert target == t1 and out == tmp_path / "f" and kw["mode"] == "ff" and kw["fmt"] == "ffcv"


def test_the_dataset_is_always_data(capsys, monkeypatch, tmp_path):
    """info / mask read the dataset from --data, one spelling: a missing --data and the old
    spellings (a positional DATASET, --source, --target) are one-line usage errors."""
    import ffcv_dp4tl.data.manifest as manifest
    from ffcv_dp4tl.errors import DP4TLError

    seen = []

    def fake(path):
        seen.append(Path(path))
        raise DP4TLError("stop")
    monkeypatch.setattr(manifest, "load_manifest", fake)
    ds = tmp_path / "ds"  # (the mask is written beside it: never inside the dataset it reads)
    for args in (("info", "--data", ds),
                 ("mask", "classes", "--data", ds, "--classes", "1", "-o", tmp_path / "m.npy")):
        code, _, err = cli(capsys, monkeypatch, *args)
        one_line_error(code, err, "stop")
    assert seen == [ds] * 2
    code, _, err = cli(capsys, monkeypatch, "info")
    one_line_error(code, err, "Missing option '--data'")
    for args in (("info", tmp_path), ("prune", "--scores", tmp_path, "--source", tmp_path, "--ratio", "0.5",
                                      "-o", tmp_path / "m"),
                 ("finetune", "lp_tiny_cpu", "--checkpoint", tmp_path / "c.pt", "--target", tmp_path,
                  "-o", tmp_path / "f")):
        code, _, err = cli(capsys, monkeypatch, *args)
        assert code == 2 and seen == [ds] * 2, err  # typer's usage error, before any work


def test_user_toml_path_works_where_a_name_does(record, capsys, monkeypatch, tmp_path):
    base_dir = tmp_path / "bases"
    base_dir.mkdir()
    (base_dir / "base.toml").write_text('# my base\nextends = "resnet18_tiny_cpu"\n'
                                        "[train]\nepochs = 7\n")
    mine = tmp_path / "mine.toml"
    mine.write_text('# my recipe\nextends = "bases/base.toml"\n[model]\nwidth = 4\n')
    # shown by `dp4tl recipes PATH` with the extends chain applied
    code, out, err = cli(capsys, monkeypatch, "recipes", mine, "--set", "lr.lr=0.3")
    assert code == 0, err
    assert out.startswith(f"# mine: {mine}\n# my recipe\n")
    assert "epochs = 7" in out and "width = 4" in out and "lr = 0.3" in out
    # train / finetune take it in place of a name (relative to the working directory too)
    monkeypatch.chdir(tmp_path)
    _, (r, _), _ = record(capsys, "train", "mine.toml", "--data", tmp_path, "-o", tmp_path / "r")
    assert (r.name, r.train.epochs, r.model.width, r.model.arch) == ("mine", 7, 4, "resnet18")
    (tmp_path / "lp_mine.toml").write_text('extends = "lp_tiny_cpu"\n[lr]\nlr = 0.05\n')
    _, (r, *_), _ = record(capsys, "finetune", "lp_mine.toml", "--checkpoint", "c.pt", "--data",
                           tmp_path, "-o", tmp_path / "f")
    assert r.lr.lr == 0.05 and r.finetune.mode == "lp"
    # a broken path or base is one line naming the file
    (tmp_path / "bad.toml").write_text('extends = "no_such_base"\n')
    code, _, err = cli(capsys, monkeypatch, "recipes", "bad.toml")
    one_line_error(code, err, "no_such_base")
    code, _, err = cli(capsys, monkeypatch, "train", "missing.toml", "--data", tmp_path, "-o",
                       tmp_path / "r")
    one_line_error(code, err, "missing.toml")
    assert not (tmp_path / "r").exists()


def test_disk_full_anywhere_is_one_line(monkeypatch, capsys):
    """A full disk in any command (not only the places that check space first) ends in one line."""
    import errno
    import importlib

    app_mod = importlib.import_module("ffcv_dp4tl.cli.app")  # (the package exports the Typer app too)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoint.pt")

    monkeypatch.setattr(app_mod, "app", full)
    with pytest.raises(SystemExit) as exc:
        app_mod.run()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: disk full writing /runs/x/checkpoint.pt (No space left on device); free some "
                   "space, then rerun the same command: finished work is kept and it resumes"]


@pytest.mark.parametrize("bench", ["cost-table", "embedded", "surrogates", "adversarial"])
def test_a_bench_out_that_is_a_file_is_refused_first(bench, capsys, monkeypatch, tmp_path):
    """--out naming a file is one line before any data is built or run trained (it used to
    fail only when the report was written, after all the work)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("a file")
    code, _, err = cli(capsys, monkeypatch, "bench", bench, "--out", str(tmp_path / "taken"),
                       "--data-root", str(tmp_path / "data"), "--runs-root", str(tmp_path / "runs"))
    one_line_error(code, err, "--out", "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_list_callbacks_and_report_blank(tmp_path):
    """The shared callbacks on their own: a required list refuses '' (bench --finetune), an
    optional one takes it; --report '' means no report (None) in every bench; seeds '' is
    allowed only where it has a meaning (--reference-seeds: every seed)."""
    import typer

    from ffcv_dp4tl.cli.options import list_callback, report_callback, seeds_callback

    with pytest.raises(typer.BadParameter, match="give at least one"):
        list_callback(("lp", "ff"), "a finetuning mode", required=True)("")
    assert list_callback(("lp", "ff"), "a finetuning mode")("") == ""
    assert report_callback("") is None and report_callback("  ") is None and report_callback(None) is None
    assert report_callback(str(tmp_path / "B.md")) == str(tmp_path / "B.md")
    assert seeds_callback("--reference-seeds", required=False)("") == ""
    with pytest.raises(typer.BadParameter, match="give at least one"):
        seeds_callback()("")


REPORT_INTO_OUTPUTS = [
    (("bench", "render", "rr", "--report", "rr/results.json"), "is not a Markdown file (.md)"),
    (("bench", "render", "emb0", "--report", "emb0/rows.jsonl"), "is not a Markdown file (.md)"),
    (("bench", "render", "rr", "--report", "rr/report.md"), "which holds a cost table"),
    (("bench", "render", "rr", "--report", "rr/notes.md"), "which holds a cost table"),
    (("bench", "embedded-pool", "emb0", "emb1", "--out", "pooled", "--report", "emb1/B.md"),
     "which holds an embedded-benchmark run"),
    (("bench", "cost-table", "--out", "empty", "--report", "empty/B.md"), "the bench's own --out"),
    (("bench", "embedded", "--out", "empty", "--report", "empty/B.md"), "the bench's own --out"),
    (("bench", "surrogates", "--out", "empty", "--report", "empty/B.md"), "the bench's own --out"),
    (("bench", "adversarial", "--out", "empty", "--report", "empty/B.md"), "the bench's own --out"),
]


@pytest.mark.parametrize("args,why", REPORT_INTO_OUTPUTS, ids=[" ".join(a[1:]) for a, _ in
                                                              REPORT_INTO_OUTPUTS])
def test_a_report_into_a_commands_own_files_is_refused_before_any_work(args, why, capsys,
                                                                       monkeypatch, tmp_path):
    """--report naming a bench's results.json or an embedded run's rows.jsonl answered "wrote
    section" and replaced them with Markdown, and the next render failed (audit): a report that
    is not Markdown, a command's output or inside one's folder, the bench's own --out included,
    is one line before anything is run or written."""
    import ffcv_dp4tl.bench.adversarial as adversarial
    import ffcv_dp4tl.bench.cost_table as cost_table
    import ffcv_dp4tl.bench.separation as separation
    import ffcv_dp4tl.bench.surrogates as surrogates
    from ffcv_dp4tl.errors import DP4TLError

    def ran(*args, **kwargs):
        raise DP4TLError("the bench ran")

    for module, name in ((cost_table, "run_cost_table"), (separation, "run_separation"),
                         (surrogates, "run_surrogate_bench"), (adversarial, "run_adversarial")):
        monkeypatch.setattr(module, name, ran)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rr").mkdir()
    (tmp_path / "rr" / "results.json").write_text('{"bench": "cost-table"}')
    for run in ("emb0", "emb1"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "rows.jsonl").write_text('{"seed": 0}\n')
    (tmp_path / "empty").mkdir()
    before = sorted((str(p), p.read_bytes() if p.is_file() else b"") for p in tmp_path.rglob("*"))
    roots = ("--data-root", "data", "--runs-root", "runs") if "--out" in args[2:3] else ()
    code, _, err = cli(capsys, monkeypatch, *args, *roots)
    one_line_error(code, err, "--report", why, "BENCHMARKS.md")
    assert sorted((str(p), p.read_bytes() if p.is_file() else b"")
                  for p in tmp_path.rglob("*")) == before


def test_help_marks_data_required_wherever_it_is():
    """A command that cannot run without --data says [required] in its --help (info, score,
    prune, finetune and the mask commands showed it as optional, then stopped without it);
    --data with a default (pipeline, bench: the embedded data) or one a command reads only in
    some cases (mask overlap) stays optional."""
    import typer.main

    from ffcv_dp4tl.cli import app

    def walk(command, path):
        yield path, command
        for name, sub in (getattr(command, "commands", None) or {}).items():
            yield from walk(sub, [*path, name])

    optional = {("mask", "overlap")}
    seen = 0
    for path, command in walk(typer.main.get_command(app), []):
        for p in command.params:
            if "--data" in getattr(p, "opts", ()) and p.default in (None, "") and tuple(path) not in optional:
                if p.default == "" and "default" in (p.help or ""):
                    continue  # the embedded data by default
                seen += 1
                assert p.required, f"dp4tl {' '.join(path)}: --data is optional in --help"
    assert seen >= 8


@pytest.mark.parametrize("data,synth", [("synth", True), ("synth:tiny", True),
                                        ("synth:costtable,image_size=48", True),
                                        ("synthetic-cars", False), ("folder:synth", False)])
def test_synth_is_the_specs_layout_not_a_prefix(data, synth, tmp_path, monkeypatch):
    """The CLI's K default tested the spec's first letters: a folder named synthetic-cars got
    the embedded data's K of 64 (review)."""
    from ffcv_dp4tl.cli.options import is_synth

    monkeypatch.chdir(tmp_path)
    assert is_synth(data) is synth


def test_train_names_kept_epochs_past_the_run_when_it_starts(record, capsys, tmp_path):
    """A recipe keeping epoch 3 for EL2N (resnet18_tiny_cpu), shortened to one epoch: `dp4tl
    train` kept nothing for it without a word. It trains (a shortened run is legitimate) and
    says so when the run starts, not on each resume."""
    import warnings

    from ffcv_dp4tl.training.recipe import load_recipe
    from ffcv_dp4tl.training.trainer import keep_epochs_note

    args = ("train", "resnet18_tiny_cpu", "--data", tmp_path, "-o", tmp_path / "r",
            "--set", "train.epochs=1")
    with pytest.warns(UserWarning, match=r"^resnet18_tiny_cpu: train\.keep_epochs \[3\] lies past "
                                         r"train\.epochs 1, so checkpoint_e3\.pt will not be kept$"):
        name, _, _ = record(capsys, *args)
    assert name == "train"
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"")  # a run to resume: said no more
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        record(capsys, *args)
    assert not [w for w in ws if "keep_epochs" in str(w.message)]
    with pytest.warns(UserWarning, match="keep_epochs"):  # started over: said again
        record(capsys, *args, "--no-resume")
    assert keep_epochs_note(load_recipe("resnet18_tiny_cpu")) is None  # (3 epochs or more)
    assert "[5, 6] lie past train.epochs 4, so checkpoint_e5.pt, checkpoint_e6.pt will not" in \
        keep_epochs_note(load_recipe("resnet18_tiny_cpu", ["train.epochs=4",
                                                           "train.keep_epochs=[6, 5, 1]"]))


#: every command that runs pipelines: (its words, the module and function that take its config)
_RUNNERS = {
    "pipeline": (["pipeline"], "pipeline.run", "run_pipeline"),
    "cost-table": (["bench", "cost-table"], "bench.cost_table", "run_cost_table"),
    "embedded": (["bench", "embedded", "--report", ""], "bench.separation", "run_separation"),
    "surrogates": (["bench", "surrogates"], "bench.surrogates", "run_surrogate_bench"),
    "adversarial": (["bench", "adversarial"], "bench.adversarial", "run_adversarial"),
}


@pytest.mark.parametrize("command", list(_RUNNERS))
def test_every_command_that_runs_pipelines_takes_no_progress(command, monkeypatch, capsys,
                                                              tmp_path):
    """``--no-progress`` quiets the bars of ``dp4tl pipeline``; the benches, which run many
    pipelines, refused it ("No such option"). Each passes it to its pipelines' config, bars on
    by default."""
    from importlib import import_module

    words, module, name = _RUNNERS[command]
    seen = []

    class Stop(Exception):
        pass

    def fake(base, *a, **kw):
        seen.append(base)
        raise Stop
    monkeypatch.setattr(import_module(f"ffcv_dp4tl.{module}"), name, fake)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.chdir(tmp_path)
    for extra, want in (([], True), (["--no-progress"], False)):
        monkeypatch.setattr(sys, "argv", ["dp4tl", *words, *extra])
        with pytest.raises(Stop):
            main()
        assert seen.pop().progress is want, capsys.readouterr().err


def test_pretrain_length_reaches_the_pipeline_and_the_cost_table(record, capsys):
    _, (cfg,), _ = record(capsys, "pipeline")
    assert cfg.pretrain_length == "epochs"  # the paper's
    _, (cfg,), _ = record(capsys, "pipeline", "--pretrain-length", "steps")
    assert cfg.pretrain_length == "steps"
    _, (base, _), kw = record(capsys, "bench", "cost-table", "--pretrain-length", "steps")
    assert base.pretrain_length == "steps" and "--pretrain-length steps" in kw["command"]
    _, (base, _), kw = record(capsys, "bench", "cost-table")
    assert base.pretrain_length == "epochs" and "--pretrain-length" not in kw["command"]


def _no_bench_runs(monkeypatch) -> dict:
    """Every bench's work replaced by a recorder that stops the command: what it was given
    (``seen``), and proof a refused command did no work."""
    import ffcv_dp4tl.bench.adversarial as adversarial
    import ffcv_dp4tl.bench.cost_table as cost_table
    import ffcv_dp4tl.bench.separation as separation
    import ffcv_dp4tl.bench.surrogates as surrogates
    from ffcv_dp4tl.errors import DP4TLError

    seen: dict = {}

    def ran(base, *args, **kwargs):
        seen["base"] = base
        raise DP4TLError("the bench ran")

    for module, name in ((cost_table, "run_cost_table"), (separation, "run_separation"),
                         (surrogates, "run_surrogate_bench"), (adversarial, "run_adversarial")):
        monkeypatch.setattr(module, name, ran)
    return seen


@pytest.mark.parametrize("note", ["x\n## Adversarial pretraining (Tab. 5)", "x\r\n## y",
                                  "x\u2028## y", ""])
def test_a_note_that_is_not_one_line_is_refused_before_any_work(note, capsys, monkeypatch,
                                                                tmp_path):
    """``--note $'x\\n## Adversarial pretraining (Tab. 5)'`` put that heading into report.md
    and the --report file, and a rerun left the first run's tables under it (audit): a note is
    one line, as a --section title is, refused before anything is built or written."""
    _no_bench_runs(monkeypatch)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, monkeypatch, "bench", "surrogates", "--out", "sur", "--data-root",
                       "data", "--runs-root", "runs", "--report", "B.md", "--note", "fine",
                       "--note", note)
    one_line_error(code, err, "--note", "one non-empty line")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bench", ["cost-table", "embedded", "surrogates", "adversarial"])
@pytest.mark.parametrize("out,root,how", [("Z", "Z", "is"), ("Z", "Z/data", "lies inside")])
def test_a_data_root_beside_the_out_is_refused_first(bench, out, root, how, capsys, monkeypatch,
                                                     tmp_path):
    """``--out Z --runs-root Z --data-root Z`` on an empty Z built the data into Z; after a
    kill the rerun was refused (--out Z holds the built dataset), so the run could not resume
    (audit). A --data-root that is the --out or lies in it: one line, first. An --out inside
    the data root is taken (the builds go to folders of their own beside it; review)."""
    from ffcv_dp4tl.cli.options import check_data_root_beside

    _no_bench_runs(monkeypatch)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, monkeypatch, "bench", bench, "--out", out, "--runs-root", out,
                       "--data-root", root, "--report", "")
    one_line_error(code, err, "--data-root", f"{root} {how} the bench's --out {out}")
    assert list(tmp_path.iterdir()) == []
    check_data_root_beside(Path("data"), Path("data/Z"))
    check_data_root_beside(Path("."), Path("docs/x"))


def test_a_report_in_a_pipeline_stage_folder_is_refused(capsys, monkeypatch, tmp_path):
    """``--report runs/report-KEY/report.md`` (the pipeline's report folder) was written into
    (audit); so could a finished or running stage's folder be. A folder of that shape the
    pipeline did not make is the user's."""
    from ffcv_dp4tl.cli.options import report_callback

    _no_bench_runs(monkeypatch)
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    for name, marker in (("report-0123456789ab", "results.json"), ("pretrain-0123456789ab", "DONE.json"),
                         ("finetune-lp-0123456789ab", ".stage.lock"), ("mine-0123456789ab", "x.txt")):
        (runs / name / "sub").mkdir(parents=True)
        (runs / name / marker).write_text("{}")
        (runs / name / "report.md").write_text("# r\n")
    for report in ("runs/report-0123456789ab/report.md", "runs/pretrain-0123456789ab/notes.md",
                   "runs/finetune-lp-0123456789ab/sub/notes.md"):
        before = (tmp_path / report).read_bytes() if (tmp_path / report).exists() else None
        code, _, err = cli(capsys, monkeypatch, "bench", "surrogates", "--out", "sur",
                           "--data-root", "data", "--runs-root", "runs", "--report", report)
        one_line_error(code, err, "--report", "lies in the pipeline's stage folder", "BENCHMARKS.md")
        after = (tmp_path / report).read_bytes() if (tmp_path / report).exists() else None
        assert after == before
    assert report_callback("runs/mine-0123456789ab/report.md") == "runs/mine-0123456789ab/report.md"


def test_a_report_through_a_link_is_checked_by_its_target(capsys, monkeypatch, tmp_path):
    """A link is judged by the file it names, which is the one written: one into a stage
    folder is refused, one to the user's BENCHMARKS.md is taken (and kept a link: reporting)."""
    from ffcv_dp4tl.cli.options import report_callback

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "report-0123456789ab").mkdir(parents=True)
    (tmp_path / "runs" / "report-0123456789ab" / "results.json").write_text("{}")
    (tmp_path / "bad.md").symlink_to("runs/report-0123456789ab/report.md")
    (tmp_path / "docs").mkdir()
    (tmp_path / "ok.md").symlink_to("docs/BENCHMARKS.md")
    assert report_callback("ok.md") == "ok.md"
    import typer
    with pytest.raises(typer.BadParameter, match="stage folder"):
        report_callback("bad.md")
    (tmp_path / "gone.md").symlink_to("nowhere/B.md")
    with pytest.raises(typer.BadParameter, match="does not exist"):
        report_callback("gone.md")


@pytest.mark.parametrize("bench", ["cost-table", "surrogates", "adversarial"])
def test_a_report_holding_the_section_twice_or_a_hashed_title_is_refused_first(bench, capsys,
                                                                                monkeypatch, tmp_path):
    """A --report with two ``## Cost`` sections (only the first was replaced, the stale second
    stayed) and ``--section "## Cost"`` (it wrote ``## ## Cost``): one line, before any work."""
    _no_bench_runs(monkeypatch)
    monkeypatch.chdir(tmp_path)
    text = "# B\n\n## Cost\n\nold\n\n## Cost\n\nolder\n"
    (tmp_path / "B.md").write_text(text)
    roots = ("--data-root", "data", "--runs-root", "runs", "--out", "o")
    code, _, err = cli(capsys, monkeypatch, "bench", bench, *roots, "--report", "B.md",
                       "--section", "Cost")
    one_line_error(code, err, "--report", "B.md holds section '## Cost' 2 times")
    code, _, err = cli(capsys, monkeypatch, "bench", bench, *roots, "--report", "",
                       "--section", "## Cost")
    one_line_error(code, err, "--section", "without '#'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["B.md"]
    assert (tmp_path / "B.md").read_text() == text


def test_the_cli_reads_a_synth_datas_targets_by_the_pipelines_rule(tmp_path):
    """One rule for the targets a synth SOURCE or build has (``pipeline.targets.synth_targets``):
    the CLI's own copy read ``SYNTH:tiny``, which the pipeline builds, as no synth data
    (review)."""
    import json

    from ffcv_dp4tl.cli.options import synth_target_names
    from ffcv_dp4tl.pipeline.targets import synth_targets

    built = tmp_path / "built"
    for sub in ("source", "targets/paper", "targets/warm"):
        (built / sub).mkdir(parents=True)
        (built / sub / "manifest.json").write_text(json.dumps({"extra": {"generator": "synth"}}))
    for data in ("synth:tiny", "SYNTH:tiny", "synth:tiny,num_targets=1", "synth:nonsense",
                 str(built), str(built / "source"), str(tmp_path / "none"), "imagenet:/x"):
        assert synth_target_names(data) == (sorted(synth_targets(data)) or None), data
    assert synth_target_names("SYNTH:tiny") == ["blur", "paper", "warm"]
    assert synth_target_names(str(built / "source")) == ["paper", "warm"]


def test_the_default_bench_target_is_warm_only_where_the_data_has_it(capsys, monkeypatch,
                                                                     tmp_path):
    """On synth data of one target (``paper``), the default ``warm`` was refused after the
    data was built ("unknown target 'warm'"; audit): the help promises warm on the embedded
    data, else the alphabetically first (the pipeline's rule, target "")."""
    import json

    from ffcv_dp4tl.cli.options import bench_target

    assert bench_target("", "synth:tiny") == "warm"
    assert bench_target("", "synth:tiny,num_targets=1") == ""
    assert bench_target("blur", "synth:tiny,num_targets=1") == "blur"
    assert bench_target("", "imagenet:/x") == ""
    built = tmp_path / "built"
    for sub in ("source", "targets/paper"):
        (built / sub).mkdir(parents=True)
        (built / sub / "manifest.json").write_text(json.dumps({"extra": {"generator": "synth"}}))
    assert bench_target("", str(built)) == "" and bench_target("", str(built / "source")) == ""
    (built / "targets" / "warm").mkdir()
    (built / "targets" / "warm" / "manifest.json").write_text("{}")
    assert bench_target("", str(built)) == "warm"
    seen = _no_bench_runs(monkeypatch)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, monkeypatch, "bench", "surrogates", "--data", "synth:tiny,num_targets=1",
                       "--out", "sur", "--data-root", "data", "--runs-root", "runs")
    assert "the bench ran" in err and seen["base"].target == ""
