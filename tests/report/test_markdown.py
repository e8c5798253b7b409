"""report.md: every latency row says where its figure came from, and ratios read the way people say them."""

from repfx_deploy.report.markdown import render_markdown
from repfx_deploy.report.phrasing import faster, fewer

ENV = {
    "cpu": "Test CPU",
    "machine": "x86_64",
    "threads": 1,
    "versions": {"torch": "t", "onnxruntime": "o", "apache-tvm": "v"},
}
STATS = {"median_ms": 2.0, "p90_ms": 2.2, "min_ms": 1.9, "repeats": 50}


def _local(ms):
    return {
        "runtime": "onnxruntime",
        "source": "measured-local",
        "latency_ms": ms,
        "stats": {**STATS, "median_ms": ms},
        "environment": ENV,
    }


def _rpc(ms):
    return {
        "runtime": "tvm",
        "source": "measured-rpc",
        "latency_ms": ms,
        "stats": {**STATS, "median_ms": ms},
        "emulated": False,
        "device": {"key": "rpi4", "address": "10.0.0.2:9090"},
        "environment": {**ENV, "machine": "aarch64"},
    }


def _estimate(ms):
    return {
        "runtime": "tvm",
        "source": "estimated",
        "latency_ms": ms,
        "error_pct": 14.4,
        "accuracy": "held out: 14 %",
        "method": "analytic model",
        "predicts": "TF-Lite float32",
        "calibrated_on": "four CNNs",
        "threads": 1,
    }


def _report(base_latency, comp_latency):
    def side(latency, params):
        return {
            "params": params,
            "macs": params * 10,
            "size_bytes": params * 4,
            "accuracy": 0.9,
            "agreement": 1.0,
            "fidelity": None,
            "latency_ms": {rt: e["latency_ms"] for rt, e in latency.items()},
            "latency": latency,
        }

    return {
        "status": "ok",
        "model": {"path": "m.pt"},
        "target": {"name": "t", "description": "a target"},
        "threads": 1,
        "baseline": side(base_latency, 1000),
        "compressed": side(comp_latency, 500),
    }


def test_latency_rows_name_the_source_of_each_figure():
    md = render_markdown(
        _report({"onnxruntime": _local(2.0), "tvm": _rpc(4.0)}, {"onnxruntime": _local(1.0), "tvm": _rpc(5.8)})
    )
    assert "| latency onnxruntime (ms, median, measured on this machine) | 2.0000 | 1.0000 | 2.00x faster |" in md
    assert "| latency tvm (ms, median, measured on device over RPC) | 4.0000 | 5.8000 | 1.45x slower |" in md
    assert (
        "Measured on device `rpi4` at 10.0.0.2:9090 over TVM RPC" in md and "Measured on this machine: Test CPU" in md
    )


def test_estimated_latency_shows_its_error_and_what_it_predicts():
    md = render_markdown(_report({"tvm": _estimate(3.0)}, {"tvm": _estimate(1.5)}))
    assert "| latency tvm (ms, estimated, ±14.4 %) | 3.0000 | 1.5000 | 2.00x faster |" in md
    assert "Estimated, not measured" in md and "predicts TF-Lite float32" in md and "±14.4 % (held out: 14 %)" in md
    assert "measured on this machine" not in md


def test_ratios_say_the_direction_never_a_fraction_of_faster_or_fewer():
    assert (
        faster(1.0, 2.9) == "2.90x slower" and faster(2.9, 1.0) == "2.90x faster" and faster(1.0, 1.005) == "same speed"
    )
    assert fewer(100, 99) == "1 % fewer" and fewer(100, 34) == "2.9x fewer" and fewer(100, 120) == "20 % more"
    md = render_markdown(_report({"onnxruntime": _local(1.0)}, {"onnxruntime": _local(2.9)}))
    assert "2.90x slower" in md and "0.34x" not in md and "0.50x" not in md
