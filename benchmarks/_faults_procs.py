"""Processes and output folders for ``faults.py``: the real CLI in subprocesses, and what a run left behind.

Every CLI process is started in its own session (process group), so a kill reaches whatever it started too,
and is reaped before anything else looks at its output: a zombie's pid still names a "live" owner to anyone
reading ``/proc`` too early.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from repfx_deploy.atomic import list_temps
from repfx_deploy.outlock import lock_path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_MODEL = ROOT / "examples" / "fashion-mnist" / "model.pt"
EXAMPLE_RECIPE = ROOT / "examples" / "fashion-mnist" / "recipe.toml"
TOKEN_VARS = ("REPFX_RPC_TOKEN", "REPFX_RPC_TOKEN_FILE")
# Profiles for the runs. NO_TVM: no TVM build, and one runtime timed instead of two, so a compress of the
# example takes seconds and a campaign of dozens of them fits in minutes; the faults it meets (kills, locks, a
# full disk) are in the writing of the folder, which is the same for every profile. TVM_ONLY: for --rpc, so the
# only latency taken is the device's.
_PROFILE = (
    'name = "{name}"\ndescription = "{description}"\nruntimes = [{runtimes}]\nchannel_multiple = 4\n'
    '[tvm_target]\nkind = "llvm"\nmtriple = "detect"\nmcpu = "detect"\nnum-cores = "detect"\n'
)
NO_TVM = _PROFILE.format(name="faults-no-tvm", description="this machine, ONNX Runtime only", runtimes='"onnxruntime"')
TVM_ONLY = _PROFILE.format(name="faults-tvm", description="this machine, TVM only (for --rpc)", runtimes='"tvm"')


@dataclass
class Case:
    """One row of the table: the raw record of every run (each with ``ok`` and its ``problems``)."""

    name: str
    records: list[dict] = field(default_factory=list)
    detail: str = ""
    skipped: str | None = None
    reference: list[dict] = field(default_factory=list)  # runs without a fault, that the faulted ones are read by

    @property
    def passed(self) -> int:
        return sum(r["ok"] for r in self.records)

    @property
    def failed(self) -> int:
        return len(self.records) - self.passed

    def add(self, record: dict, problems: list[str]) -> None:
        record["problems"] = problems
        record["ok"] = not problems
        self.records.append(record)
        print(f"  {self.name} {len(self.records)}: {'ok' if not problems else '; '.join(problems)}", flush=True)

    def to_dict(self) -> dict:
        return {
            "case": self.name,
            "passed": self.passed,
            "failed": self.failed,
            "detail": self.detail,
            "skipped": self.skipped,
            "reference": self.reference,
            "runs": self.records,
        }


def cli_env(token_file: Path | None = None) -> dict[str, str]:
    """The environment of a CLI child: this one's, without token variables unless ``token_file`` is given."""
    env = {k: v for k, v in os.environ.items() if k not in TOKEN_VARS}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if token_file is not None:
        env["REPFX_RPC_TOKEN_FILE"] = str(token_file)
    return env


@dataclass
class Cli:
    """One ``python -m repfx_deploy.cli ARGS`` child; stdout and stderr go to files (a pipe nobody reads while
    the child runs could fill and stall it)."""

    args: list[str]
    logs: Path
    env: dict[str, str] = field(default_factory=cli_env)
    proc: subprocess.Popen | None = None
    started: float = 0.0
    ended: float | None = None

    def start(self) -> Cli:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / "stdout").open("w") as out, (self.logs / "stderr").open("w") as err:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "repfx_deploy.cli", *self.args],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _started.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def poll(self) -> int | None:
        assert self.proc is not None, "not started"
        rc = self.proc.poll()
        if rc is not None and self.ended is None:
            self.ended = time.monotonic()
        return rc

    def wait(self, timeout_s: float) -> int:
        """The exit status; a child still running after ``timeout_s`` is killed (and its status returned)."""
        deadline = time.monotonic() + timeout_s
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                break
            time.sleep(0.01)
        assert self.proc is not None
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL to the child's process group, then reap it."""
        assert self.proc is not None, "not started"
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.poll()

    @property
    def elapsed_s(self) -> float:
        return (self.ended if self.ended is not None else time.monotonic()) - self.started

    @property
    def stdout(self) -> str:
        return (self.logs / "stdout").read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return (self.logs / "stderr").read_text(errors="replace")

    def json(self) -> dict | None:
        """The JSON document printed on stdout (``--json``), or None when there is none."""
        try:
            doc = json.loads(self.stdout, parse_constant=_no_constant)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def last_step(self) -> str | None:
        """The last INFO message the run logged (its wrapped continuation lines joined)."""
        steps: list[str] = []
        for line in self.stderr.splitlines():
            if line.startswith("INFO"):
                steps.append(line[4:].strip())
            elif line.startswith(" ") and steps:
                steps[-1] += " " + line.strip()
            elif line.strip():
                break  # the error message
        return steps[-1] if steps else None

    def error_type(self) -> str | None:
        doc = self.json()
        error = doc.get("error") if doc else None
        return error.get("type") if isinstance(error, dict) else None


_started: list[Cli] = []  # every child this campaign started, so that an interrupted campaign leaves none


def kill_all() -> None:
    """SIGKILL (and reap) every child still running: the campaign is ending, however it ends."""
    for cli in _started:
        cli.kill()


def run_cli(args: list[str], logs: Path, timeout_s: float, env: dict[str, str] | None = None) -> Cli:
    cli = Cli(args, logs, env or cli_env()).start()
    cli.wait(timeout_s)
    return cli


def compress_args(out: Path, profile: Path, *extra: str, model: Path = EXAMPLE_MODEL, recipe: Path = EXAMPLE_RECIPE):
    return ["compress", str(model), "--recipe", str(recipe), "--target-file", str(profile), "-o", str(out), "--json", *extra]  # fmt: skip


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def files_under(folder: Path) -> set[str]:
    """Relative paths of every file under ``folder``."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def incomplete(out: Path, expected: set[str]) -> str | None:
    """Why ``out`` is not a complete result (None when it is): report.json must parse as strict JSON, every
    artifact it lists must be there, and so must every file a clean run wrote."""
    try:
        report = json.loads((out / "report.json").read_text(), parse_constant=_no_constant)
    except (OSError, ValueError) as e:
        return f"report.json unreadable ({type(e).__name__})"
    listed = [p for p in (report.get("artifacts") or {}).values() if p]
    missing = sorted({p for p in listed if not (out / p).is_file()} | (expected - files_under(out)))
    return f"missing {', '.join(missing)}" if missing else None


@dataclass(frozen=True)
class Leftovers:
    """What is at and beside an output path: the output, its temporaries (live or stale), its lock file."""

    exists: bool
    temps: tuple[str, ...]
    lock: bool

    @classmethod
    def of(cls, out: Path) -> Leftovers:
        return cls(
            os.path.lexists(out),
            tuple(p.name for p in list_temps(out)),
            os.path.lexists(lock_path(out)),
        )

    @property
    def stage(self) -> str:
        """How far a run had got, read from what it left: the folder is renamed into place last."""
        if self.exists:
            return "done"
        if self.temps:
            return "assembling"
        return "claimed" if self.lock else "starting"

    @property
    def clean(self) -> bool:
        return not self.temps and not self.lock


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"
