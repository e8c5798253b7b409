"""How commands talk: one JSON document on stdout with --json, people-facing text otherwise, logs on stderr.

Every ``RepfxError`` becomes a one-paragraph message and exit code 2; an unexpected exception becomes a short
"internal error" line (the traceback only with REPFX_DEBUG=1), since a user should never see a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console

from repfx_deploy.errors import RepfxError

stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False, soft_wrap=True)

P = ParamSpec("P")
R = TypeVar("R")

# The stream JSON goes to: the real stdout as it was when the command started, before any redirection.
_json_stream: list[Any] = []


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
    stream.write(json.dumps(doc, indent=2, default=str) + "\n")
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
        except KeyboardInterrupt:
            _report(json_out, "Interrupted", "Interrupted; nothing partial was kept.", None)
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except OSError as e:  # a write that failed halfway (disk full, permissions): artifacts were not put in place
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
    stderr.print(f"[bold red]error:[/bold red] {problem}" + (f"\n[bold]fix:[/bold] {fix}" if fix else ""))
    if json_out:
        emit_json({"error": {"type": kind, "problem": problem, "fix": fix}})
