"""The typer application object and the error handling shared by every command."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any, Callable, Iterator, NoReturn, Optional

import typer
import typer.core

from .. import __version__, stopping
from ..errors import DP4TLError, PeerStopped

class Group(typer.core.TyperGroup):
    """typer's command group (``typer.Typer(cls=Group)``, every group of the CLI), whose flags'
    help shows no value: typer (0.29) prints a flag's type where an option's value goes
    (``--classes <bool>``, ``--progress --no-progress <bool>``), which reads as an option
    taking true/false, and ``--classes true`` is refused ("unexpected extra argument"; docs
    audit). Set on a command as it is looked up (its help, its group's list) and on the
    group's own options before its help is written."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _flags_show_no_value(command, ctx)
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _flags_show_no_value(self, ctx)
        super().format_help(ctx, formatter)


def _flags_show_no_value(command: Any, ctx: Any) -> None:
    for param in command.get_params(ctx):  # (with its --help)
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # (shown as is: nothing)


app = typer.Typer(
    name="dp4tl",
    cls=Group,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# click's exception classes (typer vendors click in recent versions, so they are found through
# a public name): the base of every usage error, and the one a refusal of a whole option raises
_ClickException, UsageError = (next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)
                               for name in ("ClickException", "UsageError"))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dp4tl (ffcv-dp4tl) {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit"),
) -> None:
    """Dataset pruning for transfer learning on FFCV betons and WebDataset shards.

    Commands read a built dataset from --data, write to --out/-o and run on --device
    (auto | cpu | cuda | cuda:N, default auto); lists are comma-separated. `dp4tl recipes` and
    `dp4tl models` list what a recipe name and --arch can be; `dp4tl docs` lists and prints the
    docs.
    """
    from .options import check_path_params

    check_path_params(ctx.command)  # ('' or a line break in any path option: before it is parsed)
    _quiet_thread_noise()
    if "WORLD_SIZE" in os.environ and "--help" not in sys.argv[1:]:
        _refuse_torchrun(ctx.invoked_subcommand)  # (help is still given)
    # (locks.LOCK_TIMEOUT_ENV, named here without importing the lock code: a typo imports nothing)
    if os.environ.get("DP4TL_LOCK_TIMEOUT", "").strip() and "--help" not in sys.argv[1:]:
        from ..locks import lock_timeout

        lock_timeout()  # a bad value is one line as the command starts, not when a wait first
        #                 comes, hours into a pipeline (audit: it ran the whole pipeline)


def _refuse_torchrun(command: str | None) -> None:
    """Under torchrun only the DDP commands run: any other would run once per rank, every copy
    writing the same folder. Rank 0 says so; the other ranks exit with the same status quietly,
    handing the line to torchrun's report (its entry for them said only "To enable traceback
    see: ...")."""
    from ..training.distributed import DDP_COMMANDS, launch_env

    rank, world = launch_env()
    if world <= 1 or command in DDP_COMMANDS:
        return
    error = DP4TLError(f"dp4tl {command} runs in one process; launch it without torchrun (here "
                       f"WORLD_SIZE={world}). Under torchrun only "
                       f"{', '.join(f'`dp4tl {c}`' for c in DDP_COMMANDS)} uses the ranks (DDP); "
                       "the other commands use one device (--device cuda:N)")
    if rank:
        _tell_launcher(f"error: {error}")
        raise typer.Exit(2)
    raise error


def _usage_error_line(e: Exception) -> str:
    """One line for a click usage error: what is wrong with which option, and where help is."""
    ctx = getattr(e, "ctx", None)
    if getattr(e, "possibilities", None) and ctx is not None:  # (click's "Possible options")
        hidden = {o for p in ctx.command.params if getattr(p, "hidden", False)
                  for o in (*p.opts, *p.secondary_opts)}  # (`pipeline --output`: not "--out")
        e.possibilities = [o for o in e.possibilities if o not in hidden]
    msg = " ".join(e.format_message().split()).replace("Value error, ", "")
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return f"error: {msg}{where}"


def _is_numba_finalizer_noise(kind: type | None, tb) -> bool:
    last = None
    while tb is not None:
        last, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return kind is KeyError and last is not None and last.endswith("numba/core/dispatcher.py")


def _quiet_numba_exit_noise() -> None:
    """Hide numba's harmless ``KeyError`` from dispatcher finalizers at interpreter exit.

    ffcv compiles pipelines with numba; when they are collected at exit numba's finalizer can
    raise a KeyError that Python prints as a traceback although nothing went wrong. (Its
    ``sys.excepthook`` side is :func:`_quiet_thread_noise`'s.)
    """
    previous_unraisable = sys.unraisablehook

    def unraisable(info):
        if not _is_numba_finalizer_noise(info.exc_type, info.exc_traceback):
            previous_unraisable(info)

    sys.unraisablehook = unraisable


def _quiet_thread_noise() -> None:
    """Wrap ``sys.excepthook`` with the filters above: numba's finalizer noise and the
    resource-sharer's dead peer (:func:`_quiet_dead_peer`).

    Called from the app's callback, as each command starts: typer replaces ``sys.excepthook``
    as it calls the app with a hook that hands every exception to the hook typer found when
    it was imported, so filters set before the call never saw one (a SIGTERMed training job
    printed the resource-sharer's BrokenPipeError traceback above its stop line). ``run()``
    puts the hook it found back when the command ends."""
    previous = sys.excepthook
    if getattr(previous, "dp4tl_filters", False):  # (a second command in the same process)
        return

    def numba(kind, value, tb):
        if not _is_numba_finalizer_noise(kind, tb):
            previous(kind, value, tb)

    sys.excepthook = _quiet_dead_peer(numba)
    sys.excepthook.dp4tl_filters = True


#: what gloo raises on the ranks left behind when one rank's process ended
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer")


def _peer_stopped_line(e: RuntimeError) -> str | None:
    """Under torchrun, the collective error of a rank whose peer stopped first: one line
    instead of a gloo traceback, still quoting the error (a firewall resets connections too);
    None otherwise, so any other backend failure (an NCCL or network setup error every rank
    hits) keeps its traceback. The peer's own error is above only if it printed one: a rank
    the system killed (SIGKILL: out of memory, a lost node) prints nothing, so the line says
    where to look then."""
    if os.environ.get("WORLD_SIZE", "1") in ("", "0", "1"):
        return None
    said = next((line for line in str(e).splitlines() if any(p in line for p in _PEER_GONE)), None)
    if said is None:
        return None
    return (f"rank {os.environ.get('RANK', '?')}: another rank stopped first "
            f"({_clipped(said.strip(), 160)}): its error, if it printed one, is above; a rank the "
            "system killed (out of memory, node lost) prints none: check the job's log or dmesg; "
            "fix that and rerun the same command: it resumes")


def _follows_another_rank(e: BaseException | None) -> bool:
    """Whether ``e`` ends this rank only because another rank failed first: a check another
    rank failed (:class:`~ffcv_dp4tl.errors.PeerStopped`), a collective whose peer is gone
    (:func:`_peer_stopped_line`). Its line is not the root cause (:func:`_tell_launcher`)."""
    return isinstance(e, PeerStopped) or (isinstance(e, RuntimeError)
                                          and _peer_stopped_line(e) is not None)


def _clipped(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, with "…" when cut (a
    quote cut mid-word read as the whole message: "This is typically caused by a rem")."""
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:.") + "…"


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning as one ``warning: ...`` line, like the errors: Python's default format adds the
    warning's source file and the code line that raised it, which tell a user nothing."""
    kind = "" if category is UserWarning else f" ({category.__name__})"
    return f"warning: {message}{kind}\n"


#: what a file that ends early (EOFError from numpy, pickle, torch) says when no reader named it
_CUT_SHORT = ("a file this command reads ended early ({why}): it is empty or was cut short (a "
              "run killed while writing, a full disk); find it with `dp4tl verify` for data, or "
              "rerun the step that wrote it")


def _interrupts_are_not_lost(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    """An unraisable-exception hook: a Ctrl-C that lands where Python cannot raise it (an
    at-fork hook while a data loader forks its workers, a ``__del__`` run by the garbage
    collector) printed "Exception ignored in ..." with a traceback, and the command ran on
    (training carried on to the next epoch; a finished run exited 0). Here the signal is
    raised again, so the handler raises KeyboardInterrupt at the next point where it can
    propagate, and the command stops with its one line. Any other unraisable error is
    reported as before. (Sent from a thread a moment later: raised now, it would land in this
    hook, which cannot raise either; swallowed again, it is sent again.)

    Once a stop signal came (:func:`ffcv_dp4tl.stopping.received`), a data-loader worker that
    the same SIGTERM ended (a scheduler signals every process of the job) is not reported
    either: torch says so from its iterator's ``__del__`` while the command unwinds, with a
    traceback, above the line that names the stop."""
    import signal
    import threading

    pid = os.getpid()

    def resend(main_id: int) -> None:
        threading.Event().wait(0.05)
        signal.pthread_kill(main_id, stopping.resend_signal())  # (SIGTERM where SIGINT is ignored)

    def hook(unraisable) -> None:
        if (isinstance(unraisable.exc_value, KeyboardInterrupt) and os.getpid() == pid
                and threading.current_thread() is threading.main_thread()):
            threading.Thread(target=resend, args=(threading.main_thread().ident,),
                             name="dp4tl-interrupt-resend", daemon=True).start()
            return
        if stopping.received() is not None and _worker_stopped_too(unraisable.exc_value):
            return
        previous(unraisable)
    return hook


def _worker_stopped_too(e: BaseException | None) -> bool:
    """torch's error for a data-loader worker ended by a signal (its SIGCHLD handler's)."""
    return isinstance(e, RuntimeError) and "DataLoader worker" in str(e) and "signal" in str(e)


def _quiet_dead_peer(previous: Callable[..., None]) -> Callable[..., None]:
    """A ``sys.excepthook`` wrapper: multiprocessing's resource-sharer thread (which hands file
    descriptors to data-loader workers) reports a worker that died mid-handshake with a
    traceback (BrokenPipeError) of its own. The workers die with the command on Ctrl-C (the
    signal reaches the whole process group), whose one line follows; a worker that crashed
    is reported by the loader in the main thread. Everything else goes to ``previous``."""
    def hook(kind, value, tb) -> None:
        if issubclass(kind, (BrokenPipeError, ConnectionResetError, EOFError)):
            files, frame = [], tb
            while frame is not None:
                files.append(frame.tb_frame.f_code.co_filename)
                frame = frame.tb_next
            if any(f.endswith(os.path.join("multiprocessing", "resource_sharer.py"))
                   for f in files):
                return
        previous(kind, value, tb)
    return hook


def reflow_help(group: typer.Typer) -> None:
    """Join the wrapped lines of every help paragraph of ``group``'s commands and sub-groups
    (docstrings and ``help=``), so the terminal wraps them. Typer (0.29) keeps a docstring's
    line breaks in all but the first paragraph and in a sub-group's command list, so wrapped
    source lines showed as broken lines ("run on --device" / "(auto | cpu …"). A paragraph
    that is a list or holds indented lines (or ``\\b``, click's keep-as-is mark) is kept."""
    import inspect

    def reflow(text: Any) -> Any:
        if not isinstance(text, str):  # (typer's DefaultPlaceholder: no help given)
            return text
        out = []
        for para in inspect.cleandoc(text).split("\n\n"):
            rest = para.splitlines()[1:]
            keep = ("\b" in para or "\f" in para
                    or any(ln.startswith((" ", "-", "*", "•", "|")) for ln in rest))
            out.append(para if keep else " ".join(ln.strip() for ln in para.splitlines()))
        return "\n\n".join(out)

    def doc(info: Any) -> Any:
        given = info.help if isinstance(info.help, str) else None
        return reflow(given or (inspect.getdoc(info.callback) if info.callback else None)) or info.help

    if group.registered_callback is not None:
        group.registered_callback.help = doc(group.registered_callback)
    group.info.help = reflow(group.info.help)
    for command in group.registered_commands:
        command.help = doc(command)
    for sub in group.registered_groups:
        sub.help = reflow(sub.help)
        if sub.typer_instance is not None:
            reflow_help(sub.typer_instance)


def run() -> None:
    """Console entry point: user errors become one clear line and exit status 2; Ctrl-C and
    SIGTERM (a scheduler's time limit or preemption) stop the command with one line and
    130 / 143 (:mod:`ffcv_dp4tl.stopping`)."""
    previous = sys.unraisablehook, sys.excepthook
    sys.unraisablehook = _interrupts_are_not_lost(previous[0])
    outcome: SystemExit | None = None  # how the command ended, once decided
    try:
        try:
            with stopping.sigterm_raises():
                try:
                    _run()
                except KeyboardInterrupt as e:  # a stop signal (one typer caught included)
                    outcome = _ending_interrupted(e)
                except SystemExit as e:
                    outcome = e
                    if e.code not in stopping.STOP_STATUSES:  # (a stop's line is printed: it is no outcome
                        stopping.settle(stopping.status_of(e.code))  # a later signal could cut short)
        except KeyboardInterrupt as e:  # it landed as the block ended (its deadline watcher stopping)
            if outcome is None:
                outcome = _ending_interrupted(e)
            elif outcome.code not in stopping.STOP_STATUSES:  # (a stop has printed its line already)
                outcome = _late_signal(e, stopping.status_of(outcome.code))
        if outcome is not None:
            raise outcome from None
    finally:
        stopping.forget_interrupt()
        sys.unraisablehook, sys.excepthook = previous
        _no_worker_reports_at_exit()


def _no_worker_reports_at_exit() -> None:
    """Once the command has ended, the interpreter's exit reports no data-loader worker.

    At exit, multiprocessing ends the worker processes still alive (an iterator a stop left
    behind, or one forked as the signal came) and waits for each; every child that ends
    meanwhile runs torch's SIGCHLD handler, which raises for any of its workers a signal
    ended ("DataLoader worker (pid N) is killed by signal: Terminated": the job's own
    SIGTERM), and Python prints that as a traceback after the command's one line (seen once
    in CI, a SIGTERMed training job with WebDataset workers). The outcome is decided by then,
    so SIGCHLD is quieted first (:func:`ffcv_dp4tl.stopping.quiet_children`): this hook is
    (re)registered last, and atexit runs the last registered first, before multiprocessing's."""
    import atexit

    atexit.unregister(stopping.quiet_children)
    atexit.register(stopping.quiet_children)


def _ending_interrupted(interrupt: KeyboardInterrupt) -> SystemExit:
    """How a command ends that a stop signal (``interrupt``: Ctrl-C's, SIGTERM's) reached: the
    stop's line and 128 + the signal, unless the command's outcome came first. One rule, for
    every stop that leaves ``_run`` (typer turns one into exit code 130 and drops it: ``_run``
    raises it on, :func:`ffcv_dp4tl.stopping.last_interrupt`):

    * Its outcome was settled (:func:`_fail`, the end of ``_run``): the signal came after it,
      and is named as such (:func:`_late_signal`); the status stays the command's own.
    * The stop was raised while one of dp4tl's own errors (a :class:`DP4TLError`, which the
      code raises to end a command) was unwinding: the stop's ``__context__``, which Python sets to the exception
      being handled where it is raised (a ``finally`` or ``__exit__`` the error runs through on
      its way out: loader threads joined, a temporary file removed; or ``_run``'s own handling
      before :func:`_fail`). That error is the outcome, as if the signal had come just after it:
      its line, its status, then the signal as a late one. A SIGTERM there replaced it with the
      stop's line and 143, and a rerun met the error again unexplained. (The stop did cut the
      rest of that cleanup short, as it cuts any; the command's writes are atomic.)

    Decided here, once the stop has reached ``_run``, and not in the signal handler: neither
    can tell an error that unwinds from one the command catches to go on (``sys.exc_info()``
    in a handler is the same ``__context__``), but here the stop has ended the command anyway,
    so the error it met is the better report. Only a :class:`DP4TLError` counts: the code
    catches those only to return or re-raise at once, while an ``OSError`` is often caught to
    go on, and work inside its handler (a lock wait: ``BlockingIOError``, then a blocking
    ``flock``) would turn a Ctrl-C there into that error. A stop during a bug's traceback, an
    OS error's, a stop's own cleanup, or with nothing unwinding is the stop."""
    status = stopping.settled()
    if status is None:
        unwinding = interrupt.__context__
        failure = _failure(unwinding) if isinstance(unwinding, DP4TLError) else None
        if failure is None:
            return _stop_status()
        status = _settle_saying(*failure, follows=_follows_another_rank(unwinding))
    return _late_signal(interrupt, status)


def _late_signal(interrupt: KeyboardInterrupt, status: int) -> SystemExit:
    """A stop signal that came after the command's outcome (``status``) was decided.

    It names the signal that came: under torchrun, a rank whose peer had failed printed its
    own error line, then torchrun's SIGTERM landed as it exited, and it printed Ctrl-C's
    "interrupted while exiting" and exited 130 (cluster audit). A command that failed keeps
    its status (the error's 2, not 130 or 143: the error is why it failed, and its line says
    so); one that had succeeded exits with 128 + the signal, as before for Ctrl-C (130) and
    now 143 for SIGTERM (it was 130 for both): a shell and Slurm report a process a signal
    reached so, and its exit (atexit hooks, workers joined) was cut. Either way the line says
    that nothing the command did was cut short."""
    signum = signal.SIGTERM if isinstance(interrupt, stopping.Terminated) else signal.SIGINT
    _say(stopping.late_line(signum, status))
    return SystemExit(stopping.late_status(signum, status))


def _quiet_rank() -> bool:
    """Under torchrun, this process is not rank 0 (``WORLD_SIZE`` > 1, ``RANK`` > 0) and has
    torchrun's report to hand its lines to (``TORCHELASTIC_ERROR_FILE`` set): it may leave
    printing what every rank would print alike to rank 0. Without that file (a shell that
    inherited RANK from a job, another launcher) it prints, or the line would reach no one
    (review). Read torch-free from the environment; a value torchrun would never set counts as
    rank 0 here (the command itself then names it: ``training.distributed.launch_env``)."""
    if not os.environ.get(stopping.LAUNCHER_FILE_ENV):
        return False
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) > 0
    except ValueError:
        return False


@contextlib.contextmanager
def _copies_quieted(argv: list[str]) -> Iterator[None]:
    """Under torchrun, ``--help`` and ``--version`` print from rank 0 only: every rank parses
    the same argv, so 8 ranks printed the help 8 times (a torchrun audit)."""
    if not (_quiet_rank() and any(a in ("--help", "--version") for a in argv)):
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def _settle_saying(message: str | None, status: int, follows: bool = False,
                   every_rank: bool = False) -> int:
    """Decide a failed command's outcome: ``message`` (if any) on stderr (and in torchrun's
    failure report: :func:`_tell_launcher`) and exit ``status``
    (:func:`ffcv_dp4tl.stopping.settle`), in one step that no stop signal cuts into
    (:func:`ffcv_dp4tl.stopping.deferred`): one landing between the two dropped the line (the
    stop's own printed instead) or printed it twice. A signal that came meanwhile is raised as
    the step ends, after the outcome: a late one (:func:`_late_signal`; a torchrun rank whose
    peer failed gets torchrun's SIGTERM as it prints its own error). ``every_rank``: the same
    failure on every torchrun rank (a usage error: they all parse the same argv), printed by
    rank 0 only and handed to torchrun's report by every rank (one line per rank was 8 copies
    of it on an 8-GPU node; a torchrun audit)."""
    with stopping.deferred():
        stopping.settle(status)
        if message is not None:
            if not (every_rank and _quiet_rank()):
                _say(message)
            if status != 0:  # (in the block: torchrun's SIGTERM to a rank whose peer failed
                _tell_launcher(message, follows)  # lands as it prints; the file is written first)
    return status


def _say(line: str) -> None:
    """``line`` on stderr, where it can go. A stderr whose reader is gone (``dp4tl verify X
    2>&1 | reader`` that stopped reading) raised EPIPE here, and the command exited 1 instead
    of its own status (verify's 2, "not a built dataset", read as 1, "damaged"; environment
    audit): the line is dropped then, stderr pointed at the null device (what is still
    buffered for it raises nothing at exit), and the status stays the command's."""
    try:
        sys.stderr.write(f"{line}\n")
        sys.stderr.flush()
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())


def _fail(message: str | None, status: int, follows: bool = False,
          every_rank: bool = False) -> NoReturn:
    """End a command that failed: ``message`` (if any) on stderr, and exit ``status``
    (``follows``: :func:`_follows_another_rank`; ``every_rank``: :func:`_settle_saying`)."""
    raise SystemExit(_settle_saying(message, status, follows, every_rank)) from None


def _stop_status() -> SystemExit:
    """A command a signal stopped: its one line printed; its exit, 128 + the signal."""
    line = stopping.line()
    _say(line)
    _tell_launcher(line, follows=True)  # (torchrun's SIGTERM after another rank failed, often)
    return SystemExit(stopping.exit_status())


def _tell_launcher(said: str, follows: bool = False) -> None:
    """Under torchrun, hand the line a failed or stopped rank printed (``said``; a bug's
    traceback) to torchrun's failure report too, through the error file torchrun gives every
    rank (``TORCHELASTIC_ERROR_FILE``, written in the format of torch's ``ErrorHandler``).

    Without it the report's entry for each failed rank said only "To enable traceback see:
    https://pytorch.org/docs/stable/elastic/errors.html", and its "Root Cause" named a rank,
    not why: a line that one rank printed among eight ranks' output, or that
    ``torchrun --local-ranks-filter 0`` hid, was nowhere in it. Best effort: the line is on
    stderr already, so a file that cannot be written is left unwritten, silently.

    torchrun's root cause is the failure with the earliest timestamp, in whole seconds, a tie
    going to the rank it noticed first: a rank that stopped only because another failed
    (``follows``: a stop signal, :func:`_follows_another_rank`), within the same second, was
    named the root cause with its "another rank stopped first" line (review). Such a line is
    dated a second later (:func:`~ffcv_dp4tl.stopping.launcher_error`, the format the forced
    exit of a rank the grace ended writes too)."""
    path = os.environ.get(stopping.LAUNCHER_FILE_ENV, "")
    if not path:  # (not under torchrun, or torchrun without a log folder: it sets "")
        return
    from ..fsutil import atomic_write_json

    try:  # (readable by others, as torch's own handler's: a log collector may read it)
        atomic_write_json(path, stopping.launcher_error(said, follows))
    except OSError:
        pass


def _stopped() -> None:
    """End a command a signal stopped: its one line, and 128 + the signal as exit status."""
    raise _stop_status() from None


def _failure(e: BaseException | None) -> tuple[str | None, int] | None:
    """The line and exit status of a command that failed with ``e``: an error the user can act
    on, told in one line (a usage error, a DP4TLError, an environment error); None for
    anything else (a stop, a bug: its traceback). One place for both ways an error ends a
    command: reaching ``_run``, and unwinding when a stop signal came (:func:`_ending_interrupted`).
    The line is shown :func:`~beton_builders.spec.printable`: it quotes names from files others
    wrote (a split name holding an escape sequence reached the terminal; review)."""
    failure = _failure_line(e)
    if failure is None or failure[0] is None or type(e).__name__ == "NoArgsIsHelpError":
        return failure  # (the help: a page of its own text)
    from ..contracts.names import printable

    return printable(failure[0]), failure[1]


def _failure_line(e: BaseException | None) -> tuple[str | None, int] | None:
    """:func:`_failure` before its line is made printable."""
    if isinstance(e, _ClickException):  # bad option / choice / missing value: refused before any work
        if type(e).__name__ == "NoArgsIsHelpError":  # `dp4tl` or `dp4tl mask` alone: the help
            return (e.format_message() if e.format_message().strip() else None), e.exit_code
        return _usage_error_line(e), e.exit_code
    if isinstance(e, typer.Abort):
        # click turns an EOFError escaping a command into Abort ("aborted", naming nothing); the
        # readers name their file, this is the last resort for one that does not
        eof = e.__cause__ or e.__context__
        if isinstance(eof, EOFError):
            return f"error: {_CUT_SHORT.format(why=f'EOFError: {eof}'.rstrip(': '))}", 2
        return "aborted", 1
    if isinstance(e, DP4TLError):
        return f"error: {e}", 2
    from ..fsutil import environment_error_line

    # (no errno: not an environment error but a bug, which keeps its traceback) every
    # write is atomic (temp file + rename), so nothing finished was damaged
    line = environment_error_line(e)
    if line is not None:
        return f"error: {line}", 2
    if isinstance(e, RuntimeError) and stopping.received() is None:
        line = _peer_stopped_line(e)
        return None if line is None else (f"error: {line}", 2)
    return None


def _broken_pipe(e: BaseException) -> BrokenPipeError | None:
    """The EPIPE error that ended the command, or None: typer (as click's ``main``) catches an
    ``OSError`` with errno EPIPE from any command itself, wraps ``sys.stdout``/``sys.stderr``
    in click's ``PacifyFlushWrapper`` (no flush error at exit) and exits 1, silently, so it
    reaches ``_run`` as that ``SystemExit(1)``, raised while handling the error (its
    ``__context__``), with the wrapper in place. A typer that let it through raises it as is."""
    if isinstance(e, SystemExit):
        typers = e.code == 1 and (type(sys.stdout).__name__ == "PacifyFlushWrapper"
                                  or _rich_gave_up(e))
        e = e.__context__ if typers else None
    return e if isinstance(e, BrokenPipeError) else None


def _rich_gave_up(e: SystemExit) -> bool:
    """Whether ``e`` is rich's exit on EPIPE (``Console.on_broken_pipe``: stdout pointed at the
    null device, then ``SystemExit(1)``), which typer's help pages meet: `dp4tl --help | head
    -1` exited 1 where `dp4tl recipes | head -1` exits 141 (environment audit)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code if tb is not None else None
    return code is not None and code.co_name == "on_broken_pipe" and \
        f"{os.sep}rich{os.sep}" in code.co_filename


def _reader_had_enough(pipe: BrokenPipeError, stdout_gone: bool = False) -> NoReturn:
    """End a command that wrote into a pipe whose reader is gone (``pipe``).

    Our stdout's (or stderr's) reader closed it (`dp4tl recipes | head -1`: it had enough):
    exit 141 (128 + SIGPIPE, as a shell reports a piped tool that SIGPIPE ended) with no
    word; typer's exit 1, silent too, looked like the command's own failure, while 141 is
    the status a script already tells apart (``yes | head -1`` gives it too). Any other pipe
    (a data-loader worker's, a socket) is not the user's doing and typer's silent 1 hid it: it
    is raised again, so it keeps its traceback."""
    if stdout_gone:  # (rich found it so, and pointed stdout at the null device: _rich_gave_up)
        stopping.settle(141)
        raise SystemExit(141) from None
    gone = [s for s in (sys.stdout, sys.stderr) if _reader_gone(getattr(s, "wrapped", s))]
    if not gone:
        sys.stdout, sys.stderr = (getattr(s, "wrapped", s) for s in (sys.stdout, sys.stderr))
        raise pipe from None  # (typer's flush-quieting wrappers undone: the streams are fine)
    stopping.settle(141)
    for stream in gone:  # (what is still buffered for it raises no flush error at exit)
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    raise SystemExit(141) from None


def _reader_gone(stream: Any) -> bool:
    """Whether ``stream`` is a pipe (or socket) whose reading end is closed: poll reports an
    error for its descriptor (Linux: POLLERR on a pipe without readers). False where it cannot
    tell (no descriptor: a test's captured stream; no ``poll``)."""
    import select

    try:
        fd = stream.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, ValueError, OSError):
        return False


def _run() -> None:
    import warnings

    _quiet_numba_exit_noise()
    warnings.formatwarning = _warning_line
    try:
        try:
            with _copies_quieted(sys.argv[1:]):
                code = app(standalone_mode=False)
        except (SystemExit, BrokenPipeError) as e:
            pipe = _broken_pipe(e)
            if pipe is None:
                raise
            _reader_had_enough(pipe, stdout_gone=isinstance(e, SystemExit) and _rich_gave_up(e))
    except Exception as e:
        failure = _failure(e)
        if failure is not None:
            _fail(*failure, follows=_follows_another_rank(e),
                  every_rank=isinstance(e, _ClickException))
        if isinstance(e, RuntimeError) and stopping.received() is not None:
            # a data-loader worker the same SIGTERM ended first ("DataLoader worker ... killed
            # by signal"), reported before this process's own stop: it is that stop
            _stopped()
        import traceback

        _tell_launcher(traceback.format_exc())  # (a bug: its traceback, which Python prints too)
        raise
    if code == 130:  # typer turns Ctrl-C (and SIGTERM's Terminated) into exit code 130 itself:
        raise stopping.last_interrupt() or KeyboardInterrupt()  # (run() ends the command for it)
    code = code if isinstance(code, int) else 0
    stopping.settle(code)
    raise SystemExit(code)
