"""A few steps that must not be cut in half by SIGINT or SIGTERM: the signal is raised right after them.

The CLI turns those signals into exceptions raised in the main thread (``repfx_deploy.cli.output``), which can
land between any two bytecodes. Between creating a lock file or a temporary folder and registering it for
cleanup, such an exception would leave it behind; inside ``uninterrupted()`` the handler hands its exception
to ``defer`` instead, and it is raised when the block ends, where the cleanup is in place.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_depth = 0  # nesting of uninterrupted() blocks in the main thread (signal handlers run only there)
_pending: list[BaseException] = []


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Run the block to its end; an exception a signal handler deferred meanwhile is raised at the end."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are handled in the main thread only: nothing to defer here
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending:
            exc = _pending[0]
            _pending.clear()
            raise exc


def defer(exc: BaseException) -> bool:
    """For a signal handler: keep ``exc`` to raise when the current ``uninterrupted()`` block ends. Returns
    ``False`` (the handler raises it itself) when no such block is running."""
    if _depth == 0:
        return False
    _pending.append(exc)
    return True
