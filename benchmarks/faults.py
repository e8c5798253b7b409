"""Fault campaign (issue 19): the real CLI killed, raced, starved of disk and robbed of its device server.

Four cases, each run several times, then one table (case, runs, passed, failed, detail):

- ``kill``: ``compress`` of the embedded example SIGKILLed at a random time, uniform over the duration of a clean
  run measured first (seeded). After each kill the output either does not exist or is complete (report.json
  parses, every file it lists and every file a clean run writes is there); then ``compress`` again to the same
  output must succeed and leave no temporary ``.<name>.*.tmp`` and no lock file.
- ``rpc``: a tracker and two device servers on loopback under one key, with a token. ``bench --rpc`` with the
  server measuring it SIGKILLed mid-session: the measurement is retried on the other server, and the record
  lists both. ``compress --rpc`` (two device measurements, the compressed model's then the baseline's) with the
  server of the second SIGKILLed: the first is kept as measured, the second is retried on the other server.
- ``concurrent``: several ``compress`` to one folder at once, several rounds: one succeeds, the others fail at
  once (before loading the model) with ``OutputLockedError`` (exit 2), and the folder holds the winner's result.
- ``diskfull``: a small tmpfs as the output's parent (root only; skipped with a note where mount fails):
  ``compress`` exits 2 with ``DiskFullError`` and leaves nothing on it, whether the disk is too small from the
  start or fills up mid-run.

    python benchmarks/faults.py [--runs 20] [--seed 0] [--rounds 3] [--concurrent 4] [--rpc-runs 2]
                                [--cases kill,rpc,concurrent,diskfull] [--json PATH] [--keep]

Exits 1 when any run of any case failed. The device server case is in ``_faults_rpc.py``, the process and
output-folder helpers in ``_faults_procs.py``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _faults_procs import (  # noqa: E402
    NO_TVM,
    Case,
    Cli,
    Leftovers,
    compress_args,
    files_under,
    incomplete,
    kill_all,
    loadavg,
    run_cli,
)

CASES = ("kill", "rpc", "concurrent", "diskfull")
RUN_TIMEOUT_S = 600.0
PAGE = 4096


@dataclass(frozen=True)
class Clean:
    """A clean run of the example: how long it took and what it wrote (files and their sizes)."""

    seconds: float
    files: dict[str, int]

    @property
    def pages(self) -> int:
        return sum(-(-size // PAGE) for size in self.files.values())


def clean_run(work: Path, profile: Path) -> Clean:
    """Two clean runs; the duration is the shorter one's (the first pays for cold caches)."""
    seconds = []
    for name in ("warm-up", "res"):
        out = work / "clean" / name
        cli = run_cli(compress_args(out, profile), work / "clean" / f"logs-{name}", RUN_TIMEOUT_S)
        if cli.proc is None or cli.proc.returncode != 0 or incomplete(out, set()):
            sys.exit(f"the clean run failed (exit {cli.proc and cli.proc.returncode}):\n{cli.stderr[-3000:]}")
        seconds.append(cli.elapsed_s)
    return Clean(round(min(seconds), 2), {rel: (out / rel).stat().st_size for rel in sorted(files_under(out))})


def _stale_named(rerun: Cli, pid: int) -> bool:
    """Whether the rerun's log says it removed a temporary of ``pid`` (the log wraps long lines)."""
    return f"left by process {pid}" in " ".join(rerun.stderr.split())


def case_kill(work: Path, profile: Path, clean: Clean, runs: int, seed: int) -> Case:
    case = Case("kill -9 mid-compress, then rerun")
    rng = random.Random(seed)
    out = work / "kill" / "res"
    expected = set(clean.files)
    for i in range(runs):
        at = round(rng.uniform(0.0, clean.seconds), 3)
        cli = Cli(compress_args(out, profile), work / "kill" / f"logs-{i}").start()
        while cli.poll() is None and time.monotonic() - cli.started < at:
            time.sleep(0.005)
        before = Leftovers.of(out)  # how far it got: an instant before the kill
        finished_first = cli.poll() is not None
        cli.kill()
        after = Leftovers.of(out)
        problems = []
        if after.exists and (why := incomplete(out, expected)):
            problems.append(f"partial output after the kill: {why}")
        if finished_first and cli.proc is not None and cli.proc.returncode != 0:
            problems.append(f"the run ended by itself before the kill, with exit {cli.proc.returncode}")
        rerun = run_cli(
            compress_args(out, profile, *(["--force"] if after.exists else [])),
            work / "kill" / f"logs-{i}-rerun",
            RUN_TIMEOUT_S,
        )
        final = Leftovers.of(out)
        if rerun.proc is None or rerun.proc.returncode != 0:
            problems.append(f"the rerun failed (exit {rerun.proc and rerun.proc.returncode}, {rerun.error_type()})")
        elif why := incomplete(out, expected):
            problems.append(f"the rerun's output is incomplete: {why}")
        if not final.clean:
            problems.append(f"left after the rerun: {', '.join(final.temps) or ''}{' lock file' if final.lock else ''}")
        if after.temps and not _stale_named(rerun, cli.pid):
            problems.append("the rerun did not say it removed the killed run's temporary")
        case.add(
            {
                "run": i,
                "kill_at_s": at,
                "stage": "finished" if finished_first else before.stage,
                "left_after_kill": {"output": after.exists, "temps": list(after.temps), "lock": after.lock},
                "rerun_exit": rerun.proc.returncode if rerun.proc else None,
                "rerun_clean": final.clean,
                "rerun_s": round(rerun.elapsed_s, 2),
            },
            problems,
        )
        shutil.rmtree(out, ignore_errors=True)
    stages: dict[str, int] = {}
    for r in case.records:
        stages[r["stage"]] = stages.get(r["stage"], 0) + 1
    times = sorted(r["kill_at_s"] for r in case.records)
    temps = sum(bool(r["left_after_kill"]["temps"]) for r in case.records)
    locks = sum(r["left_after_kill"]["lock"] and not r["left_after_kill"]["temps"] for r in case.records)
    case.detail = (
        f"kills at {times[0]:.2f}-{times[-1]:.2f} s of a {clean.seconds:.1f} s run (seed {seed}); at the kill: "
        f"{', '.join(f'{v} {k}' for k, v in sorted(stages.items()))}; {temps} left a temporary, {locks} only "
        f"the lock file; {sum(r['rerun_clean'] for r in case.records)} of {len(case.records)} reruns left neither"
    )
    return case


def case_concurrent(work: Path, profile: Path, clean: Clean, rounds: int, count: int) -> Case:
    case = Case(f"{count} compresses to one folder at once")
    out = work / "concurrent" / "res"
    expected = set(clean.files)
    for r in range(rounds):
        shutil.rmtree(out, ignore_errors=True)
        clis = [Cli(compress_args(out, profile), work / "concurrent" / f"logs-{r}-{k}") for k in range(count)]
        for cli in clis:
            cli.start()
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while None in [c.poll() for c in clis] and time.monotonic() < deadline:  # a list: poll every one, each time
            time.sleep(0.01)
        for cli in clis:
            cli.kill()  # reaps; kills only a child past the deadline
        codes = [c.proc.returncode if c.proc else None for c in clis]
        winners = [c for c in clis if c.proc is not None and c.proc.returncode == 0]
        losers = [c for c in clis if c not in winners]
        problems = []
        if len(winners) != 1:
            problems.append(f"{len(winners)} runs succeeded (exits {codes})")
        for c in losers:
            kind = c.error_type()
            if c.proc is None or c.proc.returncode != 2 or kind != "OutputLockedError":
                problems.append(f"a loser exited {c.proc and c.proc.returncode} with {kind}")
            if "INFO     loaded " in c.stderr:
                problems.append("a loser loaded the model before it was refused")
            named = re.search(r"being written by process (\d+)", json.dumps(c.json() or {}))
            if winners and named and int(named.group(1)) != winners[0].pid:
                problems.append(f"a loser named process {named.group(1)}, not the winner {winners[0].pid}")
        if winners:
            winner = winners[0]
            if why := incomplete(out, expected):
                problems.append(f"the result is incomplete: {why}")
            elif json.loads((out / "report.json").read_text()) != winner.json():
                problems.append("report.json is not the one the winner printed (clobbered)")
            if any(c.elapsed_s >= winner.elapsed_s for c in losers):
                problems.append("a loser was refused only after the winner had finished")
        left = Leftovers.of(out)
        if not left.clean:
            problems.append(f"left behind: {', '.join(left.temps)}{' lock file' if left.lock else ''}")
        case.add(
            {
                "round": r,
                "exits": codes,
                "winner_s": round(winners[0].elapsed_s, 2) if winners else None,
                "refused_after_s": [round(c.elapsed_s, 2) for c in losers],
                "loser_errors": [c.error_type() for c in losers],
            },
            problems,
        )
    refused = [t for rec in case.records for t in rec["refused_after_s"]]
    winner_s = [rec["winner_s"] for rec in case.records if rec["winner_s"] is not None]
    if refused and winner_s:
        case.detail = (
            f"{rounds} rounds; losers refused after {min(refused):.1f}-{max(refused):.1f} s (OutputLockedError), "
            f"the winner took {min(winner_s):.1f}-{max(winner_s):.1f} s"
        )
    return case


def _mount(folder: Path, pages: int) -> str | None:
    """Mount a tmpfs of ``pages`` pages on ``folder``; the reason when it cannot be done."""
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={pages * PAGE // 1024}k", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"mount failed: {e}"
    return None if done.returncode == 0 else f"mount failed: {' '.join((done.stderr or done.stdout).split())}"


def _umount(folder: Path) -> None:
    if subprocess.run(["umount", str(folder)], capture_output=True, timeout=60).returncode != 0:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=60)


def _fill(folder: Path) -> int:
    """Write a file under ``folder`` until the disk is full; returns the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with (folder / "filler").open("wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return written
                chunk = chunk[: len(chunk) // 2]


def _where(relative: str | None) -> str:
    """A folder on the tmpfs as the table shows it: the run's temporary as ``<temp>``."""
    if relative is None:
        return "?"
    return (
        "the tmpfs (the output's parent)"
        if relative == "."
        else re.sub(r"^\.res\.\d+\.[0-9a-f]+\.tmp", "<temp>", relative)
    )


def case_diskfull(work: Path, profile: Path, clean: Clean) -> Case:
    case = Case("disk full (tmpfs as the output's parent)")
    mnt = work / "tmpfs"
    mnt.mkdir(parents=True, exist_ok=True)
    total = clean.pages + 1  # and the lock file's page
    plans = [
        (f"{max(1, total // 10)} pages (10 % of a result)", max(1, total // 10), None),
        (f"{total // 2} pages (50 %)", total // 2, None),
        ("filled mid-run (once baseline/model.onnx appeared)", 4 * total, "baseline/model.onnx"),
    ]
    for i, (what, pages, fill_at) in enumerate(plans):
        if reason := _mount(mnt, pages):
            case.skipped = f"{reason} (needs root and tmpfs)"
            case.detail = f"skipped: {case.skipped}"
            return case
        try:
            out = mnt / "res"
            cli = Cli(compress_args(out, profile), work / "diskfull" / f"logs-{i}").start()
            filled = None
            if fill_at is not None:
                while cli.poll() is None and not any((mnt / t / fill_at).exists() for t in Leftovers.of(out).temps):
                    time.sleep(0.005)
                filled = _fill(mnt) if cli.poll() is None else None
            cli.wait(RUN_TIMEOUT_S)
            left = sorted(set(os.listdir(mnt)) - {"filler"})
            error = (cli.json() or {}).get("error") or {}
            where = re.search(r"under '([^']+)'", str(error.get("problem", "")))
            problems = []
            if cli.proc is None or cli.proc.returncode != 2 or error.get("type") != "DiskFullError":
                problems.append(
                    f"exit {cli.proc and cli.proc.returncode} with {error.get('type')}, not 2 DiskFullError"
                )
            if left:
                problems.append(f"left on the tmpfs: {', '.join(left)}")
            if fill_at is not None and filled is None:
                problems.append("the run ended before the disk could be filled")
            case.add(
                {
                    "run": i,
                    "tmpfs": what,
                    "exit": cli.proc.returncode if cli.proc else None,
                    "error": error.get("type"),
                    "failed_writing_under": os.path.relpath(where.group(1), mnt) if where else None,
                    "after_step": cli.last_step(),
                    "filler_bytes": filled,
                    "left": left,
                },
                problems,
            )
        finally:
            _umount(mnt)
    places = sorted({_where(r["failed_writing_under"]) for r in case.records})
    sizes = [str(p) for _, p, fill in plans if fill is None]
    case.detail = (
        f"tmpfs of {' and '.join(sizes)} pages, and one filled mid-run; failed writing under {', '.join(places)}"
    )
    return case


def print_table(cases: list[Case]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="Fault campaign")
    for column in ("case", "runs", "passed", "failed", "detail"):
        table.add_column(column, overflow="fold")
    for c in cases:
        # Text, not str: a detail holds paths and brackets that rich would read as markup
        table.add_row(*(Text(x) for x in (c.name, str(len(c.records)), str(c.passed), str(c.failed), c.detail)))
    Console(width=160).print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="kills of compress (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of concurrent compresses")
    parser.add_argument("--concurrent", type=int, default=4, help="compresses started at once in each round")
    parser.add_argument("--rpc-runs", type=int, default=2, help="server kills for bench --rpc and for compress --rpc")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--json", type=Path, help="write the raw record of every run here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs of every run)")
    args = parser.parse_args()
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    if unknown := set(chosen) - set(CASES):
        parser.error(f"unknown case(s) {sorted(unknown)}; choose from {', '.join(CASES)}")
    if min(args.runs, args.rounds, args.rpc_runs) < 1 or args.concurrent < 2:
        parser.error("--runs, --rounds and --rpc-runs must be at least 1, --concurrent at least 2")

    started, load_before = time.monotonic(), loadavg()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load {load_before}: {' '.join(sys.argv)}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="repfx-faults-"))
    cases: list[Case] = []
    try:
        profile = work / "no-tvm.toml"
        profile.write_text(NO_TVM)
        clean = clean_run(work, profile)
        print(f"clean run: {clean.seconds:.1f} s, {len(clean.files)} files, {clean.pages} pages", flush=True)
        if "kill" in chosen:
            cases.append(case_kill(work, profile, clean, args.runs, args.seed))
        if "rpc" in chosen:
            from _faults_rpc import case_rpc

            cases.extend(case_rpc(work, clean_dir=work / "clean" / "res", runs=args.rpc_runs, seed=args.seed))
        if "concurrent" in chosen:
            cases.append(case_concurrent(work, profile, clean, args.rounds, args.concurrent))
        if "diskfull" in chosen:
            cases.append(case_diskfull(work, profile, clean))
    finally:
        kill_all()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_table(cases)
    elapsed = time.monotonic() - started
    print(f"{elapsed / 60:.1f} min; load before {load_before}, after {loadavg()}")
    if args.json:
        doc = {
            "command": sys.argv,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "elapsed_s": round(elapsed, 1),
            "clean_run": {"seconds": clean.seconds, "files": clean.files} if cases else None,
            "cases": [c.to_dict() for c in cases],
        }
        args.json.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return 1 if any(c.failed for c in cases) else 0


if __name__ == "__main__":
    sys.exit(main())
