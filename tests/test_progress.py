"""Progress bars in a log file: timestamped lines, never carriage-return redraws."""
from __future__ import annotations

import io
import re

import pytest

from ffcv_dp4tl import progress


class _FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_a_bar_in_a_log_file_is_plain_lines_a_minute_apart(monkeypatch):
    """Where stderr is no terminal (a batch job's log) a bar was tqdm's carriage-return redraws
    without a newline: a training stage became one line of 65 kB (review). It is now a
    timestamped line at most every LOG_EVERY_S seconds, none before the first LOG_EVERY_S, and
    nothing when the bar is cleared."""
    import tqdm.std

    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    clock = _FakeClock()
    monkeypatch.setattr(tqdm.std, "time", clock)  # (tqdm's own clock)
    b = progress.bar(total=100, desc="epoch 1/3 res 32")
    for step in range(100):
        clock.t += 3.0  # 300 s in all: about five lines, not a hundred redraws
        b.update(1)
    b.close()
    text = err.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert 3 <= len(lines) <= 6, lines
    assert all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d epoch 1/3 res 32: +\d+%\|", ln)
               for ln in lines), lines
    # a bar that ends within the first minute writes nothing at all
    err.truncate(0), err.seek(0)
    b = progress.bar(total=5, desc="short")
    for _ in range(5):
        clock.t += 1.0
        b.update(1)
    b.close()
    assert err.getvalue() == ""


def test_a_bar_on_a_terminal_is_tqdms_and_show_false_draws_nothing(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    monkeypatch.setattr("sys.stderr", tty)
    b = progress.bar(total=3, desc="t")
    b.update(3)
    b.close()
    assert "\r" in tty.getvalue()  # redrawn in place, as on any terminal
    quiet = Tty()
    monkeypatch.setattr("sys.stderr", quiet)
    b = progress.bar(range(3), desc="q", show=False)
    assert list(b) == [0, 1, 2] and quiet.getvalue() == ""


@pytest.mark.parametrize("written, line", [("\r  epoch 2: 50%|#####     | 5/10\r", "epoch 2: 50%|#####     | 5/10"),
                                          ("\r" + " " * 40 + "\r", None), ("\x1b[A\n", None)])
def test_log_lines_keep_the_text_and_drop_the_redraw_controls(written, line):
    out = io.StringIO()
    progress.LogLines(out).write(written)
    got = out.getvalue()
    assert (got == "") if line is None else re.fullmatch(
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d {re.escape(line)}\n", got)
