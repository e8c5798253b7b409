"""``faults.py``'s device server case: a server SIGKILLed while it measures, under ``bench --rpc`` and ``compress --rpc``.

A loopback tracker and two ``device serve`` processes under one key, all with one token. A watcher thread sees
each session as the forked child a server starts for it; when the session planned for the kill has run for a
random delay (uniform over half of that session's length in a clean run, seeded), it freezes the server
(SIGSTOP: the session cannot finish under it, so the kill lands mid-session for certain, or the run is marked
missed), then SIGKILLs its process group. The killed server is replaced before the next run, so every run
starts with two free servers.

What each run must show: ``bench --rpc`` exits 0 with ``rpc.servers`` = [the killed one, dropped; the other,
measured] and 2 attempts, its outputs still checked against ONNX Runtime. ``compress --rpc`` measures the
compressed model, then the baseline, each in its own session; with the second session's server killed it exits
0, the compressed model's record is the first measurement, kept (1 attempt, one server), and the baseline's
lists the killed server and the one that measured it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from _faults_procs import TVM_ONLY, Case, Cli, Leftovers, cli_env, compress_args, files_under, incomplete

from repfx_deploy.measure.rpc.endpoint import RpcEndpoint
from repfx_deploy.measure.rpc.tracker import device_queues

KEY = "faults-native"
START_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 600.0
VERIFY_TOLERANCE = 1e-3  # float model, same kernels: the device's outputs match ONNX Runtime's far closer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Device:
    """A started ``device tracker`` / ``device serve`` and the JSON it printed once listening."""

    cli: Cli
    doc: dict

    @classmethod
    def start(cls, args: list[str], logs: Path) -> Device:
        cli = Cli(["device", *args, "--json"], logs, cli_env()).start()
        return cls(cli, {})

    def ready(self) -> Device:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.cli.poll() is None:
            try:
                self.doc, _ = json.JSONDecoder().raw_decode(self.cli.stdout.lstrip())
                return self
            except ValueError:
                time.sleep(0.1)
        self.cli.kill()
        raise RuntimeError(f"`device {' '.join(self.cli.args[1:])}` did not start:\n{self.cli.stderr[-2000:]}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.doc['port']}"

    @property
    def alive(self) -> bool:
        return self.cli.poll() is None


class Loopback:
    """A tracker and two device servers under ``KEY``, with a token; ``replace`` swaps a killed server."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.token = work / "rpc-token"
        made = Cli(["device", "token", str(self.token)], work / "logs-token", cli_env())
        made.start().wait(60)
        if not self.token.exists():
            raise RuntimeError(f"`device token` failed:\n{made.stderr[-2000:]}")
        self.tracker = Device.start(
            ["tracker", "--port", str(_free_port()), "--token-file", str(self.token)], work / "logs-tracker"
        ).ready()
        self.endpoint = RpcEndpoint("127.0.0.1", int(self.tracker.doc["port"]))
        self.started = 0
        self.servers: list[Device] = []
        self.servers = [s.ready() for s in [self._serve(), self._serve()]]
        self.wait_free(2)

    def _serve(self) -> Device:
        self.started += 1
        args = ["serve", "--tracker", str(self.endpoint), "--key", KEY, "--port", str(_free_port()), "--token-file", str(self.token)]  # fmt: skip
        return Device.start(args, self.work / f"logs-server-{self.started}")

    def replace_dead(self) -> None:
        for i, server in enumerate(self.servers):
            if not server.alive:
                server.cli.kill()  # reaps it
                self.servers[i] = self._serve().ready()
        self.wait_free(len(self.servers))

    def wait_free(self, count: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            queue = device_queues(self.endpoint, token_file=self.token).get(KEY)
            if queue is not None and queue.servers == count and queue.free == count:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the tracker never listed {count} free servers under {KEY!r}")

    def close(self) -> None:
        for device in [*self.servers, self.tracker]:
            device.cli.kill()


@dataclass
class Session:
    server: str
    pid: int
    start: float
    end: float | None = None


@dataclass
class Watcher:
    """Sees the sessions of ``servers`` as they start and end; kills the server of session ``kill_nth``
    (1-based) once it has run ``delay_s``, freezing it first so the kill is known to land mid-session."""

    servers: list[Device]
    kill_nth: int | None = None
    delay_s: float = 0.0
    sessions: list[Session] = field(default_factory=list)
    killed: dict | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Watcher:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)

    def _watch(self) -> None:
        seen: set[int] = set()
        while not self._stop.is_set():
            now = time.monotonic()
            for server in self.servers:
                for child in _children(server.cli.pid):
                    if child.pid not in seen and _running(child):
                        seen.add(child.pid)
                        self.sessions.append(Session(server.address, child.pid, now))
            for s in self.sessions:
                if s.end is None and not _running(s.pid):
                    s.end = now
            if self.kill_nth is not None and self.killed is None and len(self.sessions) >= self.kill_nth:
                target = self.sessions[self.kill_nth - 1]
                if now - target.start >= self.delay_s:
                    self._kill(target)
            time.sleep(0.005)

    def _kill(self, target: Session) -> None:
        server = next(s for s in self.servers if s.address == target.server)
        os.killpg(server.cli.pid, signal.SIGSTOP)
        mid = _running(target.pid)
        if mid:
            server.cli.kill()
        else:  # the session ended before the freeze: let the server go on, and say the kill missed
            os.killpg(server.cli.pid, signal.SIGCONT)
        self.killed = {
            "server": target.server,
            "session": self.kill_nth,
            "after_s": round(time.monotonic() - target.start, 3),
            "mid_session": mid,
        }


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children()
    except psutil.Error:
        return []


def _running(proc: psutil.Process | int) -> bool:
    try:
        p = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        return p.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return False


def _durations(sessions: list[Session]) -> list[float]:
    return [round(s.end - s.start, 3) for s in sessions if s.end is not None]


def _bench(loop: Loopback, onnx: Path, profile: Path, logs: Path, watcher: Watcher) -> Cli:
    args = ["bench", str(onnx), "--rpc", str(loop.endpoint), "--rpc-key", KEY, "--target-file", str(profile), "--json"]
    with watcher:
        cli = Cli(args, logs, cli_env(loop.token)).start()
        cli.wait(RUN_TIMEOUT_S)
    return cli


def _compress(loop: Loopback, out: Path, profile: Path, logs: Path, watcher: Watcher) -> Cli:
    with watcher:
        cli = Cli(
            compress_args(out, profile, "--rpc", str(loop.endpoint), "--key", KEY), logs, cli_env(loop.token)
        ).start()
        cli.wait(RUN_TIMEOUT_S)
    return cli


def _check_retried(servers: list[dict], attempts: int, killed: str) -> list[str]:
    """The record of a measurement whose server ``killed`` dropped: it, then another one that measured."""
    if attempts != 2 or len(servers) != 2:
        return [f"{attempts} attempts on {servers}, not 2: the killed server, then another"]
    dropped, measured = servers
    problems = []
    if dropped.get("address") != killed or not str(dropped.get("outcome")).startswith("dropped"):
        problems.append(f"first server {dropped}, not {killed} dropped")
    if measured.get("outcome") != "measured" or measured.get("address") in (killed, None):
        problems.append(f"then {measured}, not another server measuring")
    return problems


def _bench_problems(cli: Cli, killed: dict | None) -> list[str]:
    doc = cli.json() or {}
    if cli.proc is None or cli.proc.returncode != 0 or "rpc" not in doc:
        return [f"bench exited {cli.proc and cli.proc.returncode} ({cli.error_type()})"]
    result = doc["results"]["tvm-rpc"]
    if killed is None:  # the clean run: one server, one attempt
        return [] if result["attempts"] == 1 and len(doc["rpc"]["servers"]) == 1 else [f"clean run: {doc['rpc']}"]
    problems = _check_retried(doc["rpc"]["servers"], result["attempts"], killed["server"])
    errors = [v.get("max_abs_error", float("inf")) for v in doc.get("verification", [])]
    if not errors or max(errors) > VERIFY_TOLERANCE:
        problems.append(f"outputs not checked against ONNX Runtime, or off: {errors}")
    return problems


def _compress_problems(cli: Cli, out: Path, expected: set[str], killed: dict | None, first: str | None) -> list[str]:
    doc = cli.json() or {}
    if cli.proc is None or cli.proc.returncode != 0 or "compressed" not in doc:
        return [f"compress exited {cli.proc and cli.proc.returncode} ({cli.error_type()})"]
    problems = [f"output: {why}"] if (why := incomplete(out, expected)) else []
    if not Leftovers.of(out).clean:
        problems.append("a temporary or the lock file was left")
    kept, retried = doc["compressed"]["latency"]["tvm"], doc["baseline"]["latency"]["tvm"]
    if kept.get("source") != "measured-rpc" or retried.get("source") != "measured-rpc":
        problems.append("a TVM latency was not measured on a device")
    if kept["attempts"] != 1 or kept["servers"] != [{"address": first, "outcome": "measured"}]:
        problems.append(f"the first measurement was not kept as measured on {first}: {kept['servers']}")
    if killed is None:
        if retried["attempts"] != 1:
            problems.append(f"clean run: the baseline took {retried['attempts']} attempts")
    else:
        problems += _check_retried(retried["servers"], retried["attempts"], killed["server"])
    return problems


def case_rpc(work: Path, clean_dir: Path, runs: int, seed: int) -> list[Case]:
    """Both sub-cases on one loopback tracker, ``runs`` kills each (after one clean run each)."""
    work = work / "rpc"
    work.mkdir(parents=True, exist_ok=True)
    profile = work / "tvm-only.toml"
    profile.write_text(TVM_ONLY)
    onnx = clean_dir / "baseline" / "model.onnx"
    onnx = onnx if onnx.exists() else clean_dir / "model.onnx"
    bench_case = Case("device server killed mid-bench (bench --rpc)")
    compress_case = Case("device server killed in compress --rpc's 2nd measurement")
    rng = random.Random(seed)
    loop = Loopback(work)
    try:
        watcher = Watcher(loop.servers)
        cli = _bench(loop, onnx, profile, work / "logs-bench-clean", watcher)
        bench_len = max(_durations(watcher.sessions), default=0.0)
        bench_case.reference.append(
            {"exit": cli.proc and cli.proc.returncode, "session_s": bench_len, "problems": _bench_problems(cli, None)}
        )
        watcher = Watcher(loop.servers)
        out = work / "res-clean"
        cli = _compress(loop, out, profile, work / "logs-compress-clean", watcher)
        first = watcher.sessions[0].server if watcher.sessions else None
        expected = files_under(out) if out.exists() else set()
        lengths = _durations(watcher.sessions)
        second_len = lengths[1] if len(lengths) > 1 else 0.0
        compress_case.reference.append(
            {
                "exit": cli.proc and cli.proc.returncode,
                "session_s": lengths,
                "problems": _compress_problems(cli, out, expected, None, first),
            }
        )
        for case, length in ((bench_case, bench_len), (compress_case, second_len)):
            if case.reference[0]["problems"] or not length:
                case.add({"run": "clean"}, [f"the clean run failed, or its session was not seen: {case.reference[0]}"])
        if bench_case.failed or compress_case.failed:
            return [bench_case, compress_case]
        for i in range(runs):
            watcher = Watcher(loop.servers, kill_nth=1, delay_s=round(rng.uniform(0, bench_len / 2), 3))
            cli = _bench(loop, onnx, profile, work / f"logs-bench-{i}", watcher)
            problems = _killed_problems(watcher) or _bench_problems(cli, watcher.killed)
            bench_case.add({"run": i, "delay_s": watcher.delay_s, "killed": watcher.killed, "servers": (cli.json() or {}).get("rpc", {}).get("servers")}, problems)  # fmt: skip
            loop.replace_dead()
            watcher = Watcher(loop.servers, kill_nth=2, delay_s=round(rng.uniform(0, second_len / 2), 3))
            out = work / f"res-{i}"
            cli = _compress(loop, out, profile, work / f"logs-compress-{i}", watcher)
            first = watcher.sessions[0].server if watcher.sessions else None
            problems = _killed_problems(watcher) or _compress_problems(cli, out, expected, watcher.killed, first)
            doc = cli.json() or {}
            compress_case.add(
                {
                    "run": i,
                    "delay_s": watcher.delay_s,
                    "killed": watcher.killed,
                    "first_measured_on": first,
                    "compressed_servers": doc.get("compressed", {}).get("latency", {}).get("tvm", {}).get("servers"),
                    "baseline_servers": doc.get("baseline", {}).get("latency", {}).get("tvm", {}).get("servers"),
                },
                problems,
            )
            loop.replace_dead()
    finally:
        loop.close()
    bench_case.detail = _detail(bench_case, bench_len, "a bench session")
    compress_case.detail = _detail(compress_case, second_len, "the 2nd session") + (
        f"; the kept measurement was on the killed server in "
        f"{sum(r['first_measured_on'] == (r['killed'] or {}).get('server') for r in compress_case.records)} of {len(compress_case.records)}"
    )
    return [bench_case, compress_case]


def _killed_problems(watcher: Watcher) -> list[str]:
    if watcher.killed is None:
        return [f"campaign: session {watcher.kill_nth} never started ({len(watcher.sessions)} seen)"]
    if not watcher.killed["mid_session"]:
        return [f"campaign: the session ended before the kill at {watcher.killed['after_s']} s (not killed)"]
    return []


def _detail(case: Case, length: float, what: str) -> str:
    after = sorted(r["killed"]["after_s"] for r in case.records if r.get("killed"))
    if not after:
        return ""
    return (
        f"2 servers, one key, token; killed {after[0]:.2f}-{after[-1]:.2f} s into {what} (clean: {length:.2f} s); "
        "retried on the other server, record lists both"
    )
