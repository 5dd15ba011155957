"""Progress bars: the project's one rule for them (a stdlib + tqdm leaf, like ``stopping``).

Where stderr is a terminal a bar is tqdm's, redrawn in place. Where it is not (a Slurm or
Kubernetes job's log file, a pipe) tqdm's in-place redraws are carriage returns without a
newline: a whole training stage became one line of 65 kB in the log, thousands of redraws
long, that ``grep`` and ``less`` could not use and container log pipelines split (review). There
the same bar is written as a plain, timestamped line at most every :data:`LOG_EVERY_S` seconds,
after the first :data:`LOG_EVERY_S` (a bar that ends sooner writes nothing): a heartbeat a
job's log can be read and tailed by, and the per-epoch summary lines stay the log's content.

``show``: ``False`` draws nothing; ``True`` or ``None`` draws in the form stderr suits.
``TQDM_DISABLE=1`` in the environment silences every bar, as tqdm documents.

A training's or finetuning's own lines (its start, epoch and resume lines) go through
:func:`say`, to stdout unless the caller of ``train``/``finetune`` passed its own ``log``
(the pipeline's, so ``run_pipeline(log=...)`` receives them; ``None``: silent) for the call
(:func:`saying_to`): a script could neither capture nor silence them (Python API review).
"""
from __future__ import annotations

import contextlib
import contextvars
import io
import re
import sys
import time
from typing import Any, Callable, Iterable, Iterator

#: seconds between two progress lines in a log file (and before the first)
LOG_EVERY_S = 60.0
_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|[\r\n]")


class LogLines(io.TextIOBase):
    """A file for tqdm where stderr is no terminal: each redraw becomes one newline-ended line
    with the time of day in front; the blank redraws that clear a bar are dropped."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__()
        self._stream = stream

    @property
    def stream(self) -> Any:
        return self._stream if self._stream is not None else sys.stderr  # (a redirected stderr too)

    def write(self, s: str) -> int:
        text = _CONTROL.sub("", s).strip()
        if text:
            self.stream.write(f"{now()} {text}\n")
            self.stream.flush()
        return len(s)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def now() -> str:
    """The date and time a log line carries (a bar's, a pipeline stage's): when it was said."""
    return time.strftime("%Y-%m-%d %H:%M:%S")


def to_terminal(stream: Any = None) -> bool:
    """``stream`` (default stderr) is a terminal, where bars redraw in place."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # (a closed or replaced stream)
        return False


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
        unit: str = "it", initial: int = 0, leave: bool = False, show: bool | None = True) -> Any:
    """A tqdm bar on stderr in the form stderr suits (see the module doc); ``show=False``: a
    disabled one (every tqdm method still works). Cleared when done unless ``leave``."""
    from tqdm import tqdm

    common = dict(iterable=iterable, total=total, desc=desc, unit=unit, initial=initial,
                  leave=leave)
    if show is False:
        return tqdm(**common, disable=True)
    if to_terminal():
        return tqdm(**common)
    # (leave=False: a kept bar's close repeated the last line; the callers' own summary follows)
    return tqdm(**{**common, "leave": False}, file=LogLines(), ascii=True, ncols=100,
                mininterval=LOG_EVERY_S, delay=LOG_EVERY_S, miniters=1)


def console(line: str) -> None:
    """The default place of a run's lines: stdout, flushed (a job's log has each line as it is
    said; a stop that follows finds it written)."""
    print(line, flush=True)


Log = Callable[[str], None]
_LOG: contextvars.ContextVar[Log | None] = contextvars.ContextVar("dp4tl_log", default=console)


class _Inherit:
    def __repr__(self) -> str:
        return "INHERIT"


#: a ``log`` argument's default: where the caller's lines go already (stdout at the top; the
#: pipeline's ``log`` inside ``run_pipeline``, for the trainings a scorer runs too)
INHERIT: Any = _Inherit()


def say(line: str) -> None:
    """Say one line of the current run where its caller asked (:func:`saying_to`)."""
    log = _LOG.get()
    if log is not None:
        log(line)


@contextlib.contextmanager
def saying_to(log: Log | None) -> Iterator[None]:
    """Within the block, :func:`say` calls ``log`` (``None``: says nothing; :data:`INHERIT`:
    where it went already)."""
    if log is INHERIT:
        yield
        return
    token = _LOG.set(log)
    try:
        yield
    finally:
        _LOG.reset(token)
