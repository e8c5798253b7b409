"""The ``manifest.json`` of a compiled artifact folder: its name and format, reading it, and its inputs.

``tvm_build`` writes it; ``tvm_runtime``, the device runner and ``bench`` read it. Its own module (no TVM, no
ONNX) so that readers and the writer import it and not one another.
"""

from __future__ import annotations

import json
from pathlib import Path

from repfx_deploy.errors import ModelLoadError
from repfx_deploy.spec import InputSpec

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "repfx-deploy/tvm-artifact"
MANIFEST_VERSION = 1


def is_artifact(path: Path) -> bool:
    """Whether ``path`` is a compiled artifact folder (one holding a manifest), not a model file."""
    path = Path(path)
    return path.is_dir() and (path / MANIFEST_NAME).exists()


def read_manifest(artifact_dir: Path) -> dict:
    """The ``manifest.json`` of a compiled artifact folder; ``ModelLoadError`` when it is missing or unreadable."""
    manifest_path = Path(artifact_dir) / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ModelLoadError(f"{str(artifact_dir)!r} has no {MANIFEST_NAME}.", "Point at a folder written by compile.")
    try:
        return json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{str(manifest_path)!r} is not valid JSON: {e}", "Recompile the model.") from e


def manifest_inputs(manifest: dict) -> tuple[InputSpec, ...]:
    """The artifact's inputs, in the order its ``main`` takes them."""
    return tuple(InputSpec.from_dict(d) for d in manifest["inputs"])
