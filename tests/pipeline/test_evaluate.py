"""evaluate(): quality, fidelity and latency per runtime, each figure labelled by where it came from."""

import json

import numpy as np
import pytest
import torch

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.data.tensors import random_inputs
from repfx_deploy.errors import InputError, TargetError
from repfx_deploy.measure.runtimes import TorchRunner
from repfx_deploy.measure.timing import TimingConfig
from repfx_deploy.pipeline.evaluate import Deployable, EvalData, evaluate, run_all
from repfx_deploy.pipeline.latency import Latency
from repfx_deploy.spec import InputSpec
from repfx_deploy.targets import get_profile, load_profile_file

FAST = TimingConfig(warmup=1, repeats=3, min_time_s=0.0, remeasure=0)
SPECS = (InputSpec("input", (1, 3, 8, 8)),)


def _labeled(n=8):
    rng = np.random.default_rng(0)
    return Dataset(rng.standard_normal((n, 3, 8, 8)).astype(np.float32), rng.integers(0, 4, n), "test data")


def test_evaluate_module_on_host_labels_each_runtime_measured_local_and_scores_quality(tiny_conv):
    inputs = [random_inputs(SPECS, seed=s) for s in range(3)]
    reference = run_all(TorchRunner(tiny_conv, 1), inputs)
    data = EvalData(
        eval=_labeled(), inputs=inputs, reference=reference, reference_name="original", inputs_source="random"
    )
    result = evaluate(
        Deployable(tiny_conv, input_specs=SPECS),
        get_profile("host"),
        data=data,
        runtimes=("torch", "onnxruntime"),
        threads=1,
        timing=FAST,
        name="mine",
    )
    assert set(result.latency) == {"torch", "onnxruntime"}
    assert all(
        lat.source == "measured-local" and lat.latency_ms > 0 and lat.error_pct is None
        for lat in result.latency.values()
    )
    assert result.quality_runtime == "onnxruntime" and 0.0 <= result.accuracy <= 1.0 and result.loss > 0
    assert result.fidelity["candidate"] == "mine (onnxruntime)" and result.fidelity["cosine"] > 0.9999
    assert result.fidelity["data"] == "random"
    (check,) = result.verification  # torch vs onnxruntime on the same inputs
    assert check["reference"] == "torch" and check["candidate"] == "onnxruntime" and check["max_abs_error"] < 1e-4
    doc = json.loads(json.dumps(result.to_dict()))  # JSON-ready
    assert doc["latency"]["torch"]["source"] == "measured-local" and doc["latency_ms"]["onnxruntime"] > 0


def test_evaluate_on_pixel1_estimates_tvm_with_the_profile_error_without_compiling(tiny_conv):
    profile = get_profile("pixel1")
    result = evaluate(Deployable(tiny_conv, input_specs=SPECS), profile, timing=FAST)
    (lat,) = result.latency.values()
    assert lat.runtime == "tvm" and lat.source == "estimated" and lat.latency_ms > 0
    assert lat.error_pct == profile.estimator.accuracy_pct and lat.accuracy == profile.estimator.accuracy
    assert lat.details["predicts"] == profile.estimator.runtime and "compile" not in result.builds
    assert any("estimated, not measured" in n for n in result.notes)
    assert lat.label == "estimated, ±14.4 %"


def test_evaluate_several_models_times_them_in_the_same_interleaved_rounds(tiny_conv):
    torch.manual_seed(1)
    other = type(tiny_conv)().eval()
    results = evaluate(
        {"a": Deployable(tiny_conv, input_specs=SPECS), "b": Deployable(other, input_specs=SPECS)},
        get_profile("host"),
        runtimes=("torch",),
        threads=1,
        timing=FAST,
        rounds=3,
    )
    assert set(results) == {"a", "b"}
    for r in results.values():
        assert r.latency["torch"].details["stats"]["interleaved_rounds"] == 3


def test_evaluate_refuses_a_foreign_target_without_estimator_or_rpc_before_any_work(tmp_path, tiny_conv):
    path = tmp_path / "board.toml"
    path.write_text(
        'name = "board"\ndescription = "an aarch64 board"\nruntimes = ["tvm"]\n'
        '[tvm_target]\nkind = "llvm"\nmtriple = "aarch64-linux-gnu"\nmcpu = "cortex-a72"\n'
    )
    with pytest.raises(TargetError, match="no \\[estimator\\]") as info:
        evaluate(Deployable(tiny_conv, input_specs=SPECS), load_profile_file(path), timing=FAST)
    assert "--rpc" in info.value.fix


def test_evaluate_refuses_torch_on_an_onnx_file(tiny_onnx):
    with pytest.raises(InputError, match="Cannot run torch on an ONNX file"):
        evaluate(tiny_onnx, get_profile("host"), runtimes=("torch",), timing=FAST)


def test_evaluate_with_no_runtimes_scores_quality_only(tiny_conv):
    result = evaluate(
        Deployable(tiny_conv, input_specs=SPECS),
        get_profile("host"),
        data=EvalData(eval=_labeled()),
        runtimes=(),
        quality_runtime="torch",
        threads=1,
    )
    assert result.latency == {} and result.quality_runtime == "torch" and 0.0 <= result.accuracy <= 1.0


def test_latency_estimate_without_its_error_is_refused():
    with pytest.raises(ValueError, match="error_pct"):
        Latency("tvm", "estimated", 1.0)
    with pytest.raises(ValueError, match="source"):
        Latency("tvm", "guessed", 1.0)  # type: ignore[arg-type]


@pytest.mark.tvm
def test_evaluate_onnx_file_compiles_tvm_and_verifies_it_against_onnxruntime(tiny_onnx):
    result = evaluate(tiny_onnx, get_profile("host"), threads=1, timing=FAST)
    assert list(result.latency) == ["onnxruntime", "tvm"]  # an ONNX file has no torch form
    assert result.latency["tvm"].source == "measured-local" and result.builds["compile"]["compile_s"] > 0
    assert result.verification[0]["candidate"] == "tvm" and result.verification[0]["max_abs_error"] < 1e-4
