"""Does a latency measured over TVM RPC equal the same artifact's latency measured in-process?

Compiles an ONNX model for this machine, starts a loopback tracker and a native device server
(`repfx-deploy device ...`), then times `main` with TVM's time_evaluator both in this process and on the
server, alternating round by round so load from other work hits both alike. Prints per-round medians and the
RPC/local ratio (1.0: the RPC path adds no bias; the device's timer excludes the network).

    python benchmarks/rpc_vs_local.py MODEL.onnx [--threads 2] [--rounds 7] [--repeats 200]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "repfx_deploy.cli", "device", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_listening(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    import tvm

    from repfx_deploy.compile import CompileConfig, compile_onnx
    from repfx_deploy.compile.tvm_runtime import AFFINITY_BIG, set_tvm_threads
    from repfx_deploy.data.tensors import random_inputs
    from repfx_deploy.measure.rpc.endpoint import RpcEndpoint
    from repfx_deploy.measure.rpc.tracker import request_session
    from repfx_deploy.spec import InputSpec
    from repfx_deploy.targets import get_profile, resolve_tvm_target

    port = _free_port()
    procs = [_start(["tracker", "--port", str(port)])]
    _wait_listening(port)
    procs.append(_start(["serve", "--tracker", f"127.0.0.1:{port}", "--key", "bench-native", "--port", str(_free_port())]))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            art = compile_onnx(args.model, Path(tmp), CompileConfig(target=resolve_tvm_target(get_profile("host"), args.threads)))
            x = random_inputs(tuple(InputSpec.from_dict(d) for d in art.manifest["inputs"]))
            set_tvm_threads(args.threads)
            local = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(art.library_path)), tvm.cpu())
            local.set_input("main", *[tvm.runtime.tensor(a) for a in x])
            deadline = time.monotonic() + 60
            while True:
                try:
                    device = request_session(RpcEndpoint("127.0.0.1", port), "bench-native", wait_s=30, session_timeout_s=600)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
            remote, dev = device.session, device.session.cpu()
            remote.upload(str(art.library_path), "model.so")
            vm = tvm.runtime.vm.VirtualMachine(remote.load_module("model.so"), dev)
            remote.get_function("runtime.config_threadpool")(AFFINITY_BIG, args.threads)
            vm.set_input("main", *[tvm.runtime.tensor(a, dev) for a in x])
            timers = {"local": local.time_evaluator("invoke_stateful", tvm.cpu(), number=1, repeat=args.repeats),
                      "rpc": vm.time_evaluator("invoke_stateful", dev, number=1, repeat=args.repeats)}
            rows = []
            for r in range(args.rounds):
                row = {name: 1e3 * statistics.median(t("main").results) for name, t in timers.items()}
                rows.append(row)
                print(f"round {r}: local {row['local']:.4f} ms  rpc {row['rpc']:.4f} ms  ratio {row['rpc'] / row['local']:.3f}", flush=True)
            ratios = [row["rpc"] / row["local"] for row in rows]
            print(json.dumps({
                "model": str(args.model), "threads": args.threads, "rounds": args.rounds, "repeats": args.repeats,
                "local_median_ms": round(statistics.median(r["local"] for r in rows), 4),
                "rpc_median_ms": round(statistics.median(r["rpc"] for r in rows), 4),
                "rpc_over_local_median_ratio": round(statistics.median(ratios), 3),
                "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
                "outputs_equal": bool(np.array_equal(local["main"](*[tvm.runtime.tensor(a) for a in x]).numpy(),
                                                     vm["main"](*[tvm.runtime.tensor(a, dev) for a in x]).numpy())),
            }, indent=1))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
