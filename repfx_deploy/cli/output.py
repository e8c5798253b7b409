"""How commands talk: one JSON document on stdout with --json, people-facing text otherwise, logs on stderr.

Every ``RepfxError`` becomes a one-paragraph message and exit code 2; an unexpected exception becomes a short
"internal error" line (the traceback only with REPFX_DEBUG=1), since a user should never see a traceback.
SIGINT and SIGTERM unwind the command like an exception (temporary files removed, locks released) and exit
130 and 143 with one line.

Nothing printed is read as rich markup or emoji codes: messages and tables carry user-supplied text (paths,
layer names, device keys) in which ``[data]`` or ``[/bold]`` is plain text. Styles are given as ``Text``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from repfx_deploy.errors import RepfxError
from repfx_deploy.interrupts import defer
from repfx_deploy.report import strict_json

stderr = Console(stderr=True, highlight=False, markup=False, emoji=False)
stdout = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)

P = ParamSpec("P")
R = TypeVar("R")

# The stream JSON goes to: the real stdout as it was when the command started, before any redirection.
_json_stream: list[Any] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that ``finally`` blocks and context managers run.

    A ``KeyboardInterrupt``: the library's ``except Exception`` clauses must not take it for a failure of what
    they tried, and code that saves its work on Ctrl-C (a distillation's checkpoint) saves it on SIGTERM too."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


class Interrupted(KeyboardInterrupt):
    """SIGINT. A subclass so that ``except KeyboardInterrupt`` still takes it, and so that CPython 3.11, which
    marks a plain ``KeyboardInterrupt`` raised inside ``exec`` of a string (dataclasses do that) as unhandled
    and then exits by SIGINT however it was handled, leaves the exit code to us."""


# Exit codes of a run stopped by a signal: 128 + the signal's number, as shells report it.
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def install_signal_handlers() -> None:
    """SIGINT raises ``Interrupted`` (a ``KeyboardInterrupt``) and SIGTERM ``Terminated`` in the main thread; a second signal while
    the first unwinds exits at once with the same code (what was left is stale and the next run removes it).
    A signal that this process was started with ignored stays ignored."""
    stopping: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        if stopping:
            os._exit(SIGNAL_EXIT.get(signal.Signals(stopping[0]), 128 + signum))
        stopping.append(signum)
        exc = Interrupted() if signum == signal.SIGINT else Terminated(signum)
        if not defer(exc):  # inside a step that must finish (a lock taken, a temporary made) it comes right after
            raise exc

    for signum in SIGNAL_EXIT:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # one ignored by whoever started us (nohup, `&`) stays so
            signal.signal(signum, on_signal)


def report_stopped(json_out: bool, exc: BaseException) -> int:
    """Say, in one line, that a signal stopped the run; returns the exit code (130 or 143)."""
    signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
    name = signal.Signals(signum).name
    kind = "Interrupted" if signum == signal.SIGINT else "Terminated"
    _report(json_out, kind, f"Stopped by {name}; nothing partial was kept.", None)
    return SIGNAL_EXIT.get(signal.Signals(signum), 128 + signum)


def setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.INFO
    handler = RichHandler(console=stderr, show_path=False, show_time=False, markup=False)
    root = logging.getLogger("repfx_deploy")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Library chatter (exporters, compilers) goes to stderr so stdout stays one JSON document."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def emit_json(doc: Any) -> None:
    stream = _json_stream[-1] if _json_stream else sys.stdout
    stream.write(strict_json.dumps(doc) + "\n")
    stream.flush()


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Run a command, turning errors into messages and exit codes. Commands take a ``json_out`` keyword."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        json_out = bool(kwargs.get("json_out"))
        _json_stream.append(sys.stdout)
        try:
            with stdout_to_stderr() if json_out else contextlib.nullcontext():
                return fn(*args, **kwargs)
        except RepfxError as e:
            _report(json_out, type(e).__name__, e.problem, e.fix)
            raise typer.Exit(e.exit_code) from None
        except (KeyboardInterrupt, Terminated) as e:
            raise typer.Exit(report_stopped(json_out, e)) from None
        except typer.Exit:
            raise
        except OSError as e:  # a write that failed halfway (disk full, permissions): artifacts were not put in place
            from repfx_deploy.diskfull import disk_full_error, is_disk_full

            if is_disk_full(e):
                named = isinstance(e.filename, (str, bytes, os.PathLike))
                full = disk_full_error(Path(os.fsdecode(e.filename)).parent if named else Path.cwd(), e)
                _report(json_out, type(full).__name__, full.problem, full.fix)
                raise typer.Exit(full.exit_code) from None
            _report(
                json_out,
                "OSError",
                f"A file operation failed: {e}. Nothing half-written was kept.",
                "Check free disk space and write permissions of the output folder, then rerun.",
            )
            raise typer.Exit(2) from None
        except Exception as e:  # a bug: keep the user-facing contract, offer the traceback on request
            if os.environ.get("REPFX_DEBUG"):
                raise
            _report(
                json_out,
                "InternalError",
                f"Internal error: {type(e).__name__}: {e}",
                "This is a bug in repfx-deploy; rerun with REPFX_DEBUG=1 for the traceback and report it.",
            )
            raise typer.Exit(3) from None
        finally:
            _json_stream.pop()

    return wrapper


def _report(json_out: bool, kind: str, problem: str, fix: str | None) -> None:
    message = Text.assemble(("error:", "bold red"), " ", problem)
    if fix:
        message.append_text(Text.assemble("\n", ("fix:", "bold"), " ", fix))
    stderr.print(message)
    if json_out:
        emit_json({"error": {"type": kind, "problem": problem, "fix": fix}})


def run_cli(app: typer.Typer, argv: list[str] | None = None) -> None:
    """The console script: run ``app`` on ``argv`` (default ``sys.argv[1:]``) and exit with its code.

    Signals become exceptions (``install_signal_handlers``). With ``--json`` among the arguments, a bad flag or
    value is one JSON error document on stdout (type ``UsageError``, exit 2) instead of typer's usage box, so a
    caller parsing stdout always gets JSON; ``--help`` still prints help.
    """
    install_signal_handlers()
    args = sys.argv[1:] if argv is None else list(argv)
    json_out = "--json" in args
    try:
        if not json_out:
            app(args=args)  # standalone: typer prints help and usage errors, and exits itself
            return
        usage_error, click_error = _click_errors()
        try:
            code = app(args=args, standalone_mode=False)
        except click_error as e:  # parsing failed (commands report their own errors)
            usage = isinstance(e, usage_error)
            ctx = getattr(e, "ctx", None)
            command = ctx.command_path if ctx is not None else "repfx-deploy"
            fix = f"See `{command} --help` for the options and their values." if usage else None
            emit_json(
                {"error": {"type": "UsageError" if usage else type(e).__name__, "problem": _message(e), "fix": fix}}
            )
            sys.exit(getattr(e, "exit_code", 2))
        except typer.Abort:
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)
    except (KeyboardInterrupt, Terminated) as e:  # outside a command: while parsing, or before one started
        sys.exit(report_stopped(json_out, e))


def _click_errors() -> tuple[type[Exception], type[Exception]]:
    """click's ``UsageError`` and ``ClickException`` as this typer has them (newer typers vendor click, so
    ``import click`` would name other classes): found among ``typer.BadParameter``'s bases."""
    bases = {c.__name__: c for c in typer.BadParameter.__mro__}
    return bases["UsageError"], bases["ClickException"]


def _message(e: Exception) -> str:
    format_message = getattr(e, "format_message", None)
    return format_message() if callable(format_message) else str(e)
