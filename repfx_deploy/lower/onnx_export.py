"""Export an ``nn.Module`` to a checked ONNX file with provenance metadata.

The torch.export-based exporter is tried first (it is PyTorch's default and constant-folds through the
onnxscript optimizer); the TorchScript exporter is the fallback, and the only one that takes TorchScript
modules. Opsets above 20 are refused because TVM 0.27's importer cannot take the opset-23 ``Attention`` op.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from repfx_deploy import __version__
from repfx_deploy.atomic import atomic_file
from repfx_deploy.diskfull import raise_if_disk_full
from repfx_deploy.errors import ExportError
from repfx_deploy.modules import inference_mode
from repfx_deploy.spec import InputSpec

if TYPE_CHECKING:
    import torch.nn as nn

log = logging.getLogger("repfx_deploy.lower")

Exporter = Literal["auto", "dynamo", "torchscript"]
MIN_OPSET, MAX_OPSET = 17, 20


@dataclass(frozen=True)
class ExportConfig:
    """``opset`` 17-20; ``exporter`` ``auto`` tries torch.export then falls back to TorchScript."""

    opset: int = 18
    exporter: Exporter = "auto"

    def __post_init__(self) -> None:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ExportError(
                f"Opset {self.opset} is outside the supported range {MIN_OPSET}-{MAX_OPSET}.",
                "Use --opset 18 (opsets above 20 turn attention into an op TVM 0.27 cannot import).",
            )
        if self.exporter not in ("auto", "dynamo", "torchscript"):
            raise ExportError(f"Unknown exporter {self.exporter!r}.", "Use auto, dynamo or torchscript.")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    exporter: str
    opset: int
    size_bytes: int
    export_s: float
    output_names: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "exporter": self.exporter,
            "opset": self.opset,
            "size_bytes": self.size_bytes,
            "export_s": round(self.export_s, 3),
            "output_names": list(self.output_names),
        }


def export_onnx(
    module: nn.Module,
    specs: tuple[InputSpec, ...],
    out_path: Path,
    *,
    config: ExportConfig = ExportConfig(),
    source_sha256: str = "",
    force: bool = True,
) -> ExportResult:
    """Export ``module`` called with inputs of ``specs`` to ``out_path`` (written atomically).

    The file passes ``onnx.checker`` (full check), carries inferred shapes, and has metadata
    ``repfx.source_sha256`` and ``repfx.input_spec``. Raises ``ExportError`` naming the failing operator when
    no exporter can take the model, and ``DiskFullError`` when the disk fills up.
    """
    import torch

    from repfx_deploy.data.tensors import zeros_for

    module = inference_mode(module)
    example = tuple(zeros_for(specs))
    names = [s.name for s in specs]
    is_script = isinstance(module, torch.jit.ScriptModule)
    order: list[str] = ["torchscript"] if is_script or config.exporter == "torchscript" else ["dynamo"]
    if config.exporter == "auto" and not is_script:
        order.append("torchscript")
    started = time.perf_counter()
    errors: list[str] = []
    with atomic_file(out_path, force=force) as tmp:
        for exporter in order:
            try:
                _run_exporter(exporter, module, example, names, tmp, config.opset)
                break
            except Exception as e:  # the exporters raise many types; all mean "this exporter cannot"
                raise_if_disk_full(e, out_path.parent)  # except a full disk, which no other exporter fixes
                log.warning(
                    "ONNX export with the %s exporter failed: %s", exporter, str(e).splitlines()[0] if str(e) else e
                )
                errors.append(f"{exporter}: {_first_line(e)}")
        else:
            raise ExportError(
                "No exporter could convert the model to ONNX. " + " | ".join(errors),
                "The message names the unsupported operator; rewrite that part of the model with standard ops, "
                "or try --exporter torchscript / a different --opset.",
            )
        output_names = _finish(tmp, specs, source_sha256, exporter)
    return ExportResult(
        path=out_path,
        exporter=exporter,
        opset=config.opset,
        size_bytes=out_path.stat().st_size,
        export_s=time.perf_counter() - started,
        output_names=output_names,
    )


_OPERATOR = re.compile(r"aten(?:::|\.)[A-Za-z_][\w.]*")


def _first_line(e: Exception) -> str:
    """The error's first line, plus the ATen operator it names anywhere in its (often long) text."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # exporters colour their messages
    line = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
    ops = sorted(set(_OPERATOR.findall(text)))
    if ops and not any(op in line for op in ops):
        line += f" (operator: {', '.join(ops[:3])})"
    return line


def _run_exporter(exporter: str, module, example, names, path: Path, opset: int) -> None:
    import torch

    # The torch.export exporter prints progress on stdout, which belongs to --json output, so it goes to the
    # debug log. Its warnings about torchvision ops and deprecated pytree APIs concern torch, not the model.
    sink = io.StringIO()
    torch_onnx_log = logging.getLogger("torch.onnx")
    level = torch_onnx_log.level
    torch_onnx_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sink), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            if exporter == "dynamo":
                program = torch.onnx.export(
                    module, example, dynamo=True, opset_version=opset, input_names=names, optimize=True, verbose=False
                )
                if program is None:
                    raise ExportError("The exporter returned nothing.", "Retry with --exporter torchscript.")
                program.save(str(path))
            else:
                torch.onnx.export(
                    module,
                    example,
                    str(path),
                    dynamo=False,
                    opset_version=opset,
                    input_names=names,
                    do_constant_folding=True,
                )
    finally:
        torch_onnx_log.setLevel(level)
        if sink.getvalue():
            log.debug("%s exporter: %s", exporter, sink.getvalue().strip())


def _finish(path: Path, specs: tuple[InputSpec, ...], source_sha256: str, exporter: str) -> tuple[str, ...]:
    import onnx

    model = onnx.load(str(path))
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise_if_disk_full(e, path.parent)
        raise ExportError(
            f"The exported ONNX model fails onnx.checker: {_first_line(e)}", "Try --exporter torchscript."
        ) from e
    model.producer_name = "repfx-deploy"
    model.producer_version = __version__
    # the dynamo exporter annotates every node with its Python stack trace and FX text: debugging data that is
    # no part of the model, and about half the file of an int8 model
    for node in model.graph.node:
        del node.metadata_props[:]
    meta = {
        "repfx.source_sha256": source_sha256,
        "repfx.input_spec": json.dumps([s.to_dict() for s in specs]),
        "repfx.exporter": exporter,
    }
    kept = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return tuple(o.name for o in model.graph.output)
