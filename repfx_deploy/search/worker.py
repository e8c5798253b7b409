"""One search worker process: ``python -m repfx_deploy.search.worker --factory MODULE:FUNCTION --out DIR``.

Started by ``workers.run_workers`` (see ``workers.py`` for the factory and the environment it reads). It opens
the study, builds its objective with the factory, and runs trials until the study holds its target. SIGTERM
stops it like Ctrl-C: the trial in flight is handed back to the study (enqueued again) before it exits 143.
Exit codes: 0 done, 2 (a ``RepfxError``'s code) a problem the message names, 130/143 stopped by a signal.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repfx_deploy.errors import InputError, RepfxError
from repfx_deploy.search.config import SearchConfig
from repfx_deploy.search.workers import CONFIG_ENV, PAYLOAD_ENV, WORKER_ENV


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that the trial in flight is handed back like on Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise _Terminated()


def load_factory(name: str) -> Callable[..., Any]:
    """The function ``module:function`` names; ``InputError`` when it cannot be imported."""
    module_name, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise InputError(f"The worker factory {name!r} cannot be imported: {e}.", "Name it module:function.") from e
    if not callable(fn):
        raise InputError(f"The worker factory {name!r} is not a function.", "Name it module:function.")
    return fn


def _json_env(name: str) -> Any:
    try:
        return json.loads(os.environ[name])
    except (KeyError, json.JSONDecodeError) as e:
        raise InputError(f"The worker's {name} is missing or not JSON.", "Start workers with run_workers().") from e


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repfx_deploy.search.worker")
    parser.add_argument("--factory", required=True, help="module:function that builds the objective")
    parser.add_argument("--out", required=True, type=Path, help="the search's output folder")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    worker = os.environ.get(WORKER_ENV, "0")
    try:
        from repfx_deploy.search.objective import run_study
        from repfx_deploy.search.study import open_study

        config = SearchConfig.from_dict(_json_env(CONFIG_ENV))
        payload = _json_env(PAYLOAD_ENV)
        study = open_study(config, args.out)
        objective = load_factory(args.factory)(config, args.out, payload)
        run = run_study(study, objective, config, progress=False)
    except RepfxError as e:
        print(f"worker {worker}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print(f"worker {worker}: stopped by {'SIGTERM' if isinstance(e, _Terminated) else 'SIGINT'}", file=sys.stderr)
        return 143 if isinstance(e, _Terminated) else 130
    print(f"worker {worker}: ran {run.ran} trials; the study holds {run.trials_done}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
