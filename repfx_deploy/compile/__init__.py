"""Compile ONNX models with Apache TVM 0.27 (Relax) and run the result.

Importing this package does not import TVM or ONNX (about 0.4 GB and a second of start-up); the
functions import them when called.

    target = host_target(threads=2)
    artifact = compile_onnx(Path("m.onnx"), out_dir, CompileConfig(target=target, tune_trials=0))
    runner = load_tvm_runner(out_dir, threads=2)
    outputs = runner.run([x])
"""

from repfx_deploy.compile.config import CompileConfig
from repfx_deploy.compile.host import default_tuning_db, host_target
from repfx_deploy.compile.tvm_build import CompiledArtifact, compile_onnx
from repfx_deploy.compile.tvm_runtime import TvmRunner, load_tvm_runner

__all__ = [
    "CompileConfig",
    "CompiledArtifact",
    "TvmRunner",
    "compile_onnx",
    "default_tuning_db",
    "host_target",
    "load_tvm_runner",
]
