"""Several processes on one study: ``--workers N`` on one machine, or one per machine on a shared PostgreSQL.

    argv, env = worker_command("repfx_deploy.pipeline.search:worker_objective", config, out_dir, payload)
    run_workers(config.workers, argv, env=env, study=study, config=config, progress=True)

Processes, not Optuna's ``n_jobs`` threads: a candidate's export, compile and evaluation hold the GIL for long
stretches, and a crash (out of memory in a compile) takes one worker down, not the search. Each worker opens the
same study and runs trials until the study holds ``config.trials`` (``objective.run_study``), so the work is
shared as it comes, whichever worker is faster, and the total is the target whatever the number of workers.

The worker (``python -m repfx_deploy.search.worker``) builds its objective with a *factory*, named
``module:function``: ``function(config: SearchConfig, out_dir: Path, payload: dict) -> Objective``. The config
and the payload travel in the environment (``REPFX_SEARCH_CONFIG``, ``REPFX_SEARCH_PAYLOAD``, strict JSON), not
on the command line, where any user's ``ps`` would show a storage URL's password.

Whoever starts the workers enqueues the seeds and, when it owns the storage, calls ``study.recover_orphans``
first: the workers themselves never fail another's running trial.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repfx_deploy.errors import InputError, SearchError
from repfx_deploy.report import strict_json
from repfx_deploy.search.config import SearchConfig

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

CONFIG_ENV = "REPFX_SEARCH_CONFIG"
PAYLOAD_ENV = "REPFX_SEARCH_PAYLOAD"
WORKER_ENV = "REPFX_SEARCH_WORKER"  # the worker's index, 0 .. n-1
# A worker asked to stop (SIGTERM) gets this long to hand its trial back before it is killed.
STOP_GRACE_S = 30.0
LOG_TAIL_CHARS = 2000


def worker_command(
    factory: str, config: SearchConfig, out_dir: Path, payload: Mapping[str, Any] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command line and the extra environment of one worker of this search (see the module docstring).
    ``payload`` is whatever the factory needs (paths, flags), JSON-ready."""
    if factory.count(":") != 1 or not all(factory.split(":")):
        raise InputError(f"A worker factory is named module:function, got {factory!r}.")
    argv = [sys.executable, "-m", "repfx_deploy.search.worker", "--factory", factory, "--out", str(out_dir)]
    env = {
        CONFIG_ENV: strict_json.dumps(config.to_dict(), indent=None),
        PAYLOAD_ENV: strict_json.dumps(dict(payload or {}), indent=None),
    }
    return argv, env


def run_workers(
    n: int,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    study: optuna.Study | None = None,
    config: SearchConfig | None = None,
    progress: bool = False,
    log_dir: Path | None = None,
    poll_s: float = 1.0,
) -> None:
    """Start ``n`` processes running ``argv`` (``env`` added to this one's environment, ``REPFX_SEARCH_WORKER``
    set to each one's index) and wait for all of them.

    With ``study`` and ``config``, a progress bar follows the study while they run (``progress``), and a worker
    that failed is only a warning when the others brought the study to its target anyway. Each worker's output
    goes to ``log_dir/worker-<i>.log`` (a temporary folder when None). ``SearchError`` names a worker that
    failed, with the end of its log. A ``KeyboardInterrupt`` here (SIGINT, SIGTERM) stops every worker (each
    hands its trial back to the study) and goes on to the caller."""
    if n < 1:
        raise InputError(f"A search needs at least one worker, got {n}.", "Use --workers 1 or more.")
    with tempfile.TemporaryDirectory(prefix="repfx-workers-") as scratch:
        logs = Path(log_dir) if log_dir is not None else Path(scratch)
        logs.mkdir(parents=True, exist_ok=True)
        procs = _start(n, argv, env, logs)
        try:
            _wait(procs, study, config, progress, poll_s)
        except BaseException:
            _stop(procs)
            raise
        failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
        if not failed:
            return
        tails = "; ".join(f"worker {i} exited {code}: {_tail(logs / f'worker-{i}.log')}" for i, code in failed)
        if study is not None and config is not None:
            from repfx_deploy.search.study import trials_done

            if trials_done(study) >= config.trials:
                log.warning("The study reached its %d trials, but %s", config.trials, tails)
                return
        raise SearchError(
            f"{len(failed)} of {n} search workers failed: {tails}",
            "Fix the cause and run the same command again: the study keeps every finished trial.",
        )


def _start(n: int, argv: Sequence[str], env: Mapping[str, str] | None, logs: Path) -> list[subprocess.Popen[bytes]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(n):
            worker_env = {**os.environ, **(env or {}), WORKER_ENV: str(i)}
            with open(logs / f"worker-{i}.log", "wb") as out:
                # the child holds its own copy of the file; a new session, so a Ctrl-C at the terminal reaches
                # this process alone, which then stops the workers in order (_stop)
                procs.append(
                    subprocess.Popen(
                        list(argv),
                        env=worker_env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                    )
                )
    except OSError as e:
        _stop(procs)
        raise SearchError(f"A search worker could not be started ({argv[0]}): {e}.", "Check the command.") from e
    return procs


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when this process dies, even by SIGKILL. A worker left running
    after its parent was killed would go on writing to the study while a rerun recovers it as orphaned."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, 15)  # 15: SIGTERM


def _wait(
    procs: list[subprocess.Popen[bytes]],
    study: optuna.Study | None,
    config: SearchConfig | None,
    progress: bool,
    poll_s: float,
) -> None:
    if study is None or config is None:
        for p in procs:
            p.wait()
        return
    from repfx_deploy.search.objective import progress_bar

    with progress_bar(study, config, time.monotonic(), enabled=progress) as update:
        while any(p.poll() is None for p in procs):
            time.sleep(poll_s)
            update()


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every worker still running, then SIGKILL those that do not end within ``STOP_GRACE_S``."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "(no log)"
    text = " ".join(text[-LOG_TAIL_CHARS:].split())
    return text or "(empty log)"
