"""benchmarks/bench_scale.py at a tiny size: every step runs and the section is written."""
from __future__ import annotations


from repo_scripts import load_script


def test_bench_scale_smoke(tmp_path, capsys):
    mod = load_script("benchmarks/bench_scale.py")
    report = tmp_path / "B.md"
    report.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    assert mod.main(["--smoke", "--report", str(report), "--out", str(tmp_path / "ds")]) == 0
    text = report.read_text()
    assert "## Other\n\nkept" in text and "## Scale (CPU)" in text
    section = text.split("## Scale (CPU)")[1]
    for what in ("reduced size", "Build of `synth:imagenet", "| beton |", "| shards |",
                 "class mask", "epoch plan", "LM selection", "FM selection",
                 "k-means assignment pass", "Command: `python benchmarks/bench_scale.py"):
        assert what in section, what
    assert (tmp_path / "ds" / "manifest.json").is_file()
