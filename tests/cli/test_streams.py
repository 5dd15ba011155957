"""The console entry point's output streams: any locale, a closed or gone stderr, a help page
piped into a reader that stops (environment audit). Each runs ``python -m ffcv_dp4tl`` in a
process of its own, as a shell would, since the fixes belong to the process's entry point."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def test_a_character_the_locale_cannot_encode_prints_as_a_question_mark():
    """The error handler behind it: → becomes ``?``, and an undecodable byte of a file name
    (Python's surrogate escape) goes out as the byte it was, as ``surrogateescape`` did."""
    from ffcv_dp4tl.__main__ import text_errors

    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii", errors=text_errors())
    out.write("a → b é /data/\udcff.jpg\n")
    out.flush()
    assert raw.getvalue() == b"a ? b ? /data/\xff.jpg\n"
    raw = io.BytesIO()  # (a lone byte is no UTF-16 text: '?' there, not an error)
    out = io.TextIOWrapper(raw, encoding="utf-16-le", errors=text_errors())
    out.write("a\udcff\n")
    out.flush()
    assert raw.getvalue().decode("utf-16-le") == "a?\n"


def test_help_pages_print_under_a_locale_that_is_not_utf8():
    """`LC_ALL=C PYTHONUTF8=0 dp4tl pipeline --help` (as under an ISO-8859-1 locale) ended in a
    UnicodeEncodeError traceback at the page's first →: it now prints, → as ``?``."""
    r = subprocess.run([sys.executable, "-m", "ffcv_dp4tl", "pipeline", "--help"],
                       capture_output=True, env=_env(LC_ALL="C", LANG="C", PYTHONUTF8="0",
                                                     PYTHONCOERCECLOCALE="0", PYTHONIOENCODING=""),
                       timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    assert b"Traceback" not in r.stderr and b"--ratio" in r.stdout
    assert b"?" in r.stdout and "→".encode() not in r.stdout


def test_a_closed_or_gone_stderr_keeps_the_commands_own_status(tmp_path):
    """`dp4tl verify X 2>&-`, or its stderr a pipe whose reader stopped: writing the error line
    failed and verify exited 1 ("damaged") instead of 2 ("not a built dataset")."""
    missing = str(tmp_path / "none")
    closed = subprocess.run([sys.executable, "-m", "ffcv_dp4tl", "verify", missing],
                            stdout=subprocess.DEVNULL, env=_env(), timeout=300,
                            preexec_fn=lambda: os.close(2))
    r, w = os.pipe()
    os.close(r)  # (no reader: the error line meets EPIPE)
    try:
        gone = subprocess.run([sys.executable, "-m", "ffcv_dp4tl", "verify", missing],
                              stdout=subprocess.DEVNULL, stderr=w, env=_env(), timeout=300)
    finally:
        os.close(w)
    assert (closed.returncode, gone.returncode) == (2, 2)


def test_a_help_page_piped_into_a_reader_that_had_enough_exits_as_sigpipe_would():
    """`dp4tl --help | head -1` exited 1 (rich's own exit on EPIPE) where `dp4tl recipes |
    head -1` exits 141: now 141, and not a word on stderr."""
    p = subprocess.Popen([sys.executable, "-m", "ffcv_dp4tl", "pipeline", "--help"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    p.stdout.close()  # (no reader: its first write meets EPIPE)
    _, err = p.communicate(timeout=300)
    assert (p.returncode, err.decode()) == (141, "")
