"""``evaluate``: how good and how fast one model (or several, side by side) is on a target.

    result = evaluate(Deployable(module, input_specs=specs), get_profile("pixel1"), data=EvalData(eval=test_set, inputs=batches, reference=outs))
    result.accuracy, result.fidelity["cosine"], result.latency["tvm"].latency_ms, result.latency["tvm"].source

It takes a model in whatever forms it has (``Deployable``: an ``nn.Module``, an ONNX file, a TVM artifact
folder), builds the forms the runtimes need in a scratch folder (export, compile, each checked against the one
before), then reports:

- quality on the data (``accuracy`` and ``loss`` on labeled eval data, ``fidelity`` to reference outputs), run
  on one runtime of this machine (``quality_runtime``);
- latency per runtime, each labelled by its source (``measured-local``, ``measured-rpc``, ``estimated``; see
  ``latency.py``): measured here when the target is this machine, on a device when ``rpc`` names a tracker,
  else the target's calibrated estimate with its held-out error beside it;
- ``verification``: every runtime's outputs on the same inputs, compared with the first's.

Given a mapping of models, every model's local runtimes are timed in the same interleaved rounds, so ratios
between models survive a noisy machine; it returns one ``Evaluation`` per name.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from repfx_deploy.errors import InputError
from repfx_deploy.measure.bench import ROUNDS
from repfx_deploy.measure.runner import run_all
from repfx_deploy.measure.timing import TimingConfig
from repfx_deploy.pipeline.artifacts import Deployable, complete
from repfx_deploy.pipeline.latency import Latency, LatencySource
from repfx_deploy.pipeline.quality import (
    EvalData,
    choose_quality_runtime,
    fidelity,
    predictions,
    score,
    top1_accuracy,
)
from repfx_deploy.verify import compare

if TYPE_CHECKING:
    import torch.nn as nn

    from repfx_deploy.measure.rpc.remote import RpcConfig
    from repfx_deploy.measure.runner import Runner
    from repfx_deploy.targets import TargetProfile

__all__ = ["Deployable", "EvalData", "Evaluation", "evaluate", "fidelity", "predictions", "run_all", "top1_accuracy"]

RUNTIMES = ("torch", "onnxruntime", "tvm")
DEFAULT_TIMING = TimingConfig()
NO_DATA = EvalData()
# Samples whose outputs are fetched back from a device to check them (each is a network round trip).
DEVICE_CHECK_SAMPLES = 4


@dataclass(frozen=True)
class Evaluation:
    """The result of ``evaluate`` for one model on one target (JSON-ready with ``to_dict``)."""

    target: str
    threads: int
    latency: Mapping[str, Latency]
    accuracy: float | None = None
    loss: float | None = None
    quality_runtime: str | None = None
    fidelity: Mapping[str, Any] | None = None
    verification: tuple[Mapping[str, Any], ...] = ()
    builds: Mapping[str, Any] = field(default_factory=dict)  # what evaluate exported/compiled, and its checks
    tvm_target: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()

    @property
    def latency_ms(self) -> dict[str, float]:
        return {rt: lat.latency_ms for rt, lat in self.latency.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "threads": self.threads,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "quality_runtime": self.quality_runtime,
            "fidelity": dict(self.fidelity) if self.fidelity is not None else None,
            "latency_ms": self.latency_ms,
            "latency": {rt: lat.to_dict() for rt, lat in self.latency.items()},
            "verification": [dict(v) for v in self.verification],
            "builds": dict(self.builds),
            "tvm_target": dict(self.tvm_target) if self.tvm_target is not None else None,
            "notes": list(self.notes),
        }


RuntimesArg = Sequence[str] | Mapping[str, Sequence[str]] | None


@overload
def evaluate(
    model: Deployable | nn.Module | Path | str,
    profile: TargetProfile,
    *,
    data: EvalData = ...,
    runtimes: RuntimesArg = ...,
    threads: int = ...,
    timing: TimingConfig = ...,
    rounds: int = ...,
    rpc: RpcConfig | None = ...,
    quality_runtime: str | None = ...,
    verify: bool = ...,
    tune_trials: int | Mapping[str, int] = ...,
    name: str = ...,
) -> Evaluation: ...
@overload
def evaluate(
    model: Mapping[str, Deployable | nn.Module | Path | str],
    profile: TargetProfile,
    *,
    data: EvalData = ...,
    runtimes: RuntimesArg = ...,
    threads: int = ...,
    timing: TimingConfig = ...,
    rounds: int = ...,
    rpc: RpcConfig | None = ...,
    quality_runtime: str | None = ...,
    verify: bool = ...,
    tune_trials: int | Mapping[str, int] = ...,
    name: str = ...,
) -> dict[str, Evaluation]: ...


def evaluate(
    model: Deployable | nn.Module | Path | str | Mapping[str, Deployable | nn.Module | Path | str],
    profile: TargetProfile,
    *,
    data: EvalData = NO_DATA,
    runtimes: RuntimesArg = None,
    threads: int = 0,
    timing: TimingConfig = DEFAULT_TIMING,
    rounds: int = ROUNDS,
    rpc: RpcConfig | None = None,
    quality_runtime: str | None = None,
    verify: bool = True,
    tune_trials: int | Mapping[str, int] = 0,
    name: str = "candidate",
) -> Evaluation | dict[str, Evaluation]:
    """Evaluate ``model`` (a ``Deployable``, ``nn.Module``, ``.onnx`` path or artifact folder; or a mapping of
    names to those, timed side by side) on ``profile``. See the module docstring.

    ``runtimes``: which to time (per name, for a mapping); ``None``: the profile's runtimes that the model's
    forms can reach (a module: all; an ONNX file: not torch; an artifact folder: tvm only); ``()``: none.
    ``threads`` 0: the profile's. ``rpc``: measure the TVM artifact on a device from that tracker (with
    ``tune_trials``, MetaSchedule times its candidates there too). ``quality_runtime``: where accuracy and
    fidelity are computed (default: onnxruntime when there is an ONNX form, else torch, else tvm).
    ``verify``: compare every runtime's outputs with the first's. ``tune_trials``: MetaSchedule trials for a TVM
    build made here (per name, for a mapping). ``name`` names a single model in the fidelity record
    (``"<name> (<runtime>)"``).
    """
    if isinstance(model, Mapping):
        models = {str(k): Deployable.of(v) for k, v in model.items()}
        return _evaluate_all(
            models, profile, data, runtimes, threads, timing, rounds, rpc, quality_runtime, verify, tune_trials
        )
    return _evaluate_all(
        {name: Deployable.of(model)},
        profile,
        data,
        runtimes,
        threads,
        timing,
        rounds,
        rpc,
        quality_runtime,
        verify,
        tune_trials,
    )[name]


@dataclass
class _Plan:
    model: Deployable
    runtimes: tuple[str, ...]
    sources: dict[str, LatencySource]
    quality: str | None
    built: dict[str, Any] = field(default_factory=dict)
    runners: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Latency] = field(default_factory=dict)
    device_outputs: list[list[np.ndarray]] | None = None
    notes: list[str] = field(default_factory=list)


def _evaluate_all(
    models: dict[str, Deployable],
    profile,
    data: EvalData,
    runtimes: RuntimesArg,
    threads: int,
    timing: TimingConfig,
    rounds: int,
    rpc,
    quality_runtime,
    verify: bool,
    tune_trials: int | Mapping[str, int],
) -> dict[str, Evaluation]:
    from repfx_deploy.measure.bench import bench_jobs
    from repfx_deploy.pipeline import latency as lat
    from repfx_deploy.targets import resolve_threads, resolve_tvm_target

    threads = resolve_threads(profile, threads)
    plans = {}
    for name, model in models.items():  # every refusal before any work
        asked = runtimes.get(name) if isinstance(runtimes, Mapping) else runtimes
        wanted = _runtimes_for(model, asked, profile)
        sources = {rt: lat.source_for(profile, rt, rpc=rpc is not None) for rt in wanted}
        if "measured-rpc" in sources.values():
            lat.check_rpc_target(
                profile, [rt for rt, s in sources.items() if s == "measured-rpc"], compiles=model.tvm_dir is None
            )
        wants_quality = (data.eval is not None and data.eval.labeled) or data.reference is not None
        plans[name] = _Plan(
            model,
            wanted,
            sources,
            choose_quality_runtime(model.forms, quality_runtime, profile) if wants_quality else None,
        )
    tvm_target = None
    if any(s != "estimated" for p in plans.values() for rt, s in p.sources.items() if rt == "tvm") or any(
        p.quality == "tvm" for p in plans.values()
    ):
        tvm_target = resolve_tvm_target(profile, (rpc.threads or None) if rpc is not None else threads)
    trials = {
        name: int(tune_trials.get(name, 0) if isinstance(tune_trials, Mapping) else tune_trials) for name in models
    }
    tune_rpc = None
    if rpc is not None and any(trials.values()):
        from repfx_deploy.compile.config import RpcTuning

        tune_rpc = RpcTuning(str(rpc.endpoint), rpc.key)
    with tempfile.TemporaryDirectory(prefix="repfx-evaluate-") as scratch:
        jobs = {}
        per_model_inputs = {}
        for index, (name, plan) in enumerate(plans.items()):
            specs = plan.model.specs()
            samples, timing_inputs = _inputs(data, specs)
            per_model_inputs[name] = (samples, timing_inputs)
            local = [rt for rt in plan.runtimes if plan.sources[rt] == "measured-local"]
            needs_tvm = any(
                plan.sources[rt] in ("measured-local", "measured-rpc") for rt in plan.runtimes if rt == "tvm"
            )
            plan.model, plan.built = complete(
                plan.model,
                Path(scratch) / str(index),
                onnx="onnxruntime" in local or plan.quality == "onnxruntime",
                tvm=needs_tvm or plan.quality == "tvm",
                samples=samples,
                threads=threads,
                tvm_target=tvm_target,
                tune_trials=trials[name],
                link=profile.link,
                tune_rpc=tune_rpc,
            )
            for rt in local + ([plan.quality] if plan.quality and plan.quality not in local else []):
                plan.runners[rt] = _runner(rt, plan.model, threads)
            jobs.update({f"{name}/{rt}": (plan.runners[rt], timing_inputs) for rt in local})
        records = bench_jobs(jobs, timing, rounds) if jobs else {}
        for name, plan in plans.items():
            samples, timing_inputs = per_model_inputs[name]
            for rt in plan.runtimes:
                source = plan.sources[rt]
                if source == "measured-local":
                    plan.latency[rt] = lat.measured_local(rt, records[f"{name}/{rt}"])
                elif source == "measured-rpc":
                    assert plan.model.tvm_dir is not None and rpc is not None
                    result = lat.measure_rpc(
                        {name: plan.model.tvm_dir}, samples[:DEVICE_CHECK_SAMPLES], timing_inputs, rpc, timing
                    )[name]
                    plan.latency[rt] = lat.measured_rpc(rt, result)
                    plan.device_outputs = result.outputs
                else:
                    form = plan.model.onnx_path or plan.model.module
                    assert form is not None  # a TVM folder alone has no estimate (source_for measures it, or refuses)
                    plan.latency[rt] = estimate = lat.estimated(rt, form, plan.model.specs(), profile, threads)
                    plan.notes.append(
                        f"{rt} latency on {profile.name} is estimated, not measured ({estimate.details.get('method')}, "
                        f"predicting {estimate.details.get('predicts')}): {estimate.accuracy}."
                    )
        return {
            name: _finish(name, plan, profile, data, threads, tvm_target, verify, *per_model_inputs[name])
            for name, plan in plans.items()
        }


def _finish(
    name: str,
    plan: _Plan,
    profile,
    data: EvalData,
    threads: int,
    tvm_target,
    verify: bool,
    samples: list[list[np.ndarray]],
    timing_inputs,
) -> Evaluation:
    """Quality and verification of one model, once its latency is known."""
    accuracy = loss = fid = None
    if plan.quality is not None:
        accuracy, loss, fid = score(plan.runners[plan.quality], data, plan.model.specs(), f"{name} ({plan.quality})")
    verification = (_verify(plan, samples) if verify else []) + _verify_device(plan, samples)
    return Evaluation(
        target=profile.name,
        threads=threads,
        latency=dict(plan.latency),
        accuracy=accuracy,
        loss=loss,
        quality_runtime=plan.quality,
        fidelity=fid,
        verification=tuple(verification),
        builds=plan.built,
        tvm_target=tvm_target,
        notes=tuple(plan.notes),
    )


def _verify(plan: _Plan, samples: list[list[np.ndarray]]) -> list[dict]:
    """Each timed local runtime's outputs on ``samples`` against the first's."""
    outputs = {rt: run_all(plan.runners[rt], samples) for rt in plan.runtimes if rt in plan.runners}
    names = list(outputs)
    return [
        compare(outputs[names[0]], outputs[n], reference_name=names[0], candidate_name=n).to_dict() for n in names[1:]
    ]


def _verify_device(plan: _Plan, samples: list[list[np.ndarray]]) -> list[dict]:
    """The outputs fetched back from the device against ONNX Runtime's here (always: nothing else checks them)."""
    if plan.device_outputs is None:
        return []
    if plan.model.onnx_path is None:
        plan.notes.append(
            "a compiled artifact folder has no ONNX model beside it: outputs not checked against ONNX Runtime"
        )
        return []
    from repfx_deploy.measure.rpc.remote import RUNTIME
    from repfx_deploy.measure.runtimes import OrtRunner, default_threads

    reference = run_all(OrtRunner(plan.model.onnx_path, default_threads()), samples[: len(plan.device_outputs)])
    return [
        compare(
            reference, plan.device_outputs, reference_name="onnxruntime (this machine)", candidate_name=RUNTIME
        ).to_dict()
    ]


def _runtimes_for(model: Deployable, asked: Sequence[str] | None, profile) -> tuple[str, ...]:
    """The runtimes to time ``model`` on: ``asked`` (refused where its forms cannot reach them), else the
    profile's that they can reach."""
    if asked is None:
        return tuple(rt for rt in RUNTIMES if rt in profile.runtimes and rt in model.forms)
    unknown = sorted(set(asked) - set(RUNTIMES))
    if unknown:
        raise InputError(f"Unknown runtime(s) {unknown}.", f"Use {', '.join(RUNTIMES)} or all.")
    unreachable = sorted(set(asked) - set(model.forms))
    if unreachable:
        what = "a compiled TVM artifact" if model.onnx_path is None and model.module is None else "an ONNX file"
        fix = (
            "pass the ONNX file or the torch model for those runtimes"
            if what.startswith("a compiled")
            else "pass the torch model to time torch eager"
        )
        raise InputError(
            f"Cannot run {', '.join(unreachable)} on {what}.", f"Use --runtime with what it supports, or {fix}."
        )
    return tuple(rt for rt in RUNTIMES if rt in asked)


def _inputs(data: EvalData, specs) -> tuple[list[list[np.ndarray]], list[np.ndarray]]:
    """``(samples to verify on, inputs to time on)`` for a model of ``specs``."""
    from repfx_deploy.data.tensors import random_inputs

    samples = [list(s) for s in data.inputs]
    timing_inputs = (
        list(data.timing_inputs)
        if data.timing_inputs is not None
        else (samples[0] if samples else random_inputs(specs))
    )
    return samples or [timing_inputs], timing_inputs


def _runner(runtime: str, model: Deployable, threads: int) -> Runner:
    from repfx_deploy.measure.runtimes import OrtRunner, TorchRunner

    if runtime == "torch":
        assert model.module is not None
        return TorchRunner(model.module, threads)
    if runtime == "onnxruntime":
        assert model.onnx_path is not None
        return OrtRunner(model.onnx_path, threads)
    from repfx_deploy.compile.tvm_runtime import load_tvm_runner

    assert model.tvm_dir is not None
    return load_tvm_runner(model.tvm_dir, threads)
