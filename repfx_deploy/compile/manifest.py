"""The ``manifest.json`` of a compiled artifact folder: its name and format, reading it, and its inputs.

``tvm_build`` writes it; ``tvm_runtime``, the device runner and ``bench`` read it. Its own module (no TVM, no
ONNX) so that readers and the writer import it and not one another. A manifest that is not a JSON object, or
whose ``inputs`` are missing or malformed, is a ``ModelLoadError`` naming the file, never a ``KeyError``.
"""

from __future__ import annotations

import json
from pathlib import Path

from repfx_deploy.errors import InputShapeError, ModelLoadError
from repfx_deploy.report import strict_json
from repfx_deploy.spec import InputSpec

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "repfx-deploy/tvm-artifact"
MANIFEST_VERSION = 1

_RECOMPILE = "Recompile the model with `repfx-deploy compile` (or point at a folder it wrote)."


def is_artifact(path: Path) -> bool:
    """Whether ``path`` is a compiled artifact folder (one holding a manifest), not a model file."""
    path = Path(path)
    return path.is_dir() and (path / MANIFEST_NAME).exists()


def read_manifest(artifact_dir: Path) -> dict:
    """The ``manifest.json`` of a compiled artifact folder; ``ModelLoadError`` when it is missing, unreadable,
    not a JSON object, or without well-formed ``inputs`` (so ``manifest_inputs`` of it cannot fail)."""
    manifest_path = Path(artifact_dir) / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ModelLoadError(f"{str(artifact_dir)!r} has no {MANIFEST_NAME}.", "Point at a folder written by compile.")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise ModelLoadError(f"{str(manifest_path)!r} is not valid JSON: {e}", _RECOMPILE) from e
    if not isinstance(manifest, dict):
        raise ModelLoadError(f"{str(manifest_path)!r} is not a JSON object.", _RECOMPILE)
    _inputs(manifest, str(manifest_path))
    return manifest


def manifest_inputs(manifest: dict) -> tuple[InputSpec, ...]:
    """The artifact's inputs, in the order its ``main`` takes them."""
    return _inputs(manifest, "the artifact's manifest")


def _inputs(manifest: dict, where: str) -> tuple[InputSpec, ...]:
    raw = manifest.get("inputs")
    if not isinstance(raw, list) or not raw:
        raise ModelLoadError(
            f"{where} has no inputs (the key 'inputs' is {'missing' if raw is None else repr(raw)}), so the "
            "artifact's signature is unknown.",
            _RECOMPILE,
        )
    try:
        specs = tuple(InputSpec.from_dict(d) for d in raw)
    except (KeyError, TypeError, ValueError, AttributeError, InputShapeError) as e:
        raise ModelLoadError(
            f"{where} has a malformed input entry ({type(e).__name__}: {e}); each needs a name, a shape and a dtype.",
            _RECOMPILE,
        ) from e
    return specs


def write_manifest(path: Path, manifest: dict) -> None:
    """Write ``manifest`` to ``path`` as strict JSON (a non-finite figure becomes ``null``; see ``strict_json``)."""
    strict_json.write(Path(path), manifest)
