import numpy as np

from repfx_deploy.measure.bench import bench_runners
from repfx_deploy.measure.runtimes import OrtRunner, TorchRunner
from repfx_deploy.measure.timing import TimingConfig


def test_runners_agree_and_record_threads_and_environment(tiny_conv, tiny_onnx):
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    torch_r, ort_r = TorchRunner(tiny_conv, threads=1), OrtRunner(tiny_onnx, threads=1)
    np.testing.assert_allclose(torch_r.run([x])[0], ort_r.run([x])[0], atol=1e-5)
    results = bench_runners([torch_r, ort_r], [x], TimingConfig(warmup=2, repeats=5, min_time_s=0.0))
    assert set(results) == {"torch", "onnxruntime"}
    for r in results.values():
        assert r["measured"] is True and r["latency_ms"] > 0
        assert r["environment"]["threads"] == 1
        assert r["environment"]["versions"]["onnxruntime"] != "not installed"
        assert r["environment"]["cpu"]
