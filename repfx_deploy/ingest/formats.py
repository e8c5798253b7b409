"""Recognise a model file's format from its contents, not just its name."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal

from repfx_deploy.errors import ModelLoadError

Format = Literal["onnx", "torch_export", "torchscript", "torch_save", "hf_folder"]

_ONNX_SUFFIXES = (".onnx",)


def is_hf_folder(path: Path) -> bool:
    """A Hugging Face model folder: it holds ``config.json`` or exactly one ``.gguf`` file."""
    return path.is_dir() and ((path / "config.json").is_file() or len(list(path.glob("*.gguf"))) == 1)


def detect_format(path: Path) -> Format:
    """Return the format of ``path``.

    ``torch.save`` files, TorchScript archives and ``torch.export`` archives are all zip files; their member
    names tell them apart. Raises ``ModelLoadError`` for a missing, empty or unrecognised file.
    """
    if not path.exists():
        raise ModelLoadError(f"The model file {str(path)!r} does not exist.", "Check the path.")
    if path.is_dir():
        if is_hf_folder(path):
            return "hf_folder"
        raise ModelLoadError(
            f"{str(path)!r} is a folder, not a model file.",
            "Pass a .pt/.pth state_dict, a .pt2 torch.export archive, a TorchScript file, an .onnx file, or a "
            "Hugging Face model folder (config.json and weights, or one .gguf file).",
        )
    if path.stat().st_size == 0:
        raise ModelLoadError(f"The model file {str(path)!r} is empty.", "Re-save the model; the file was truncated.")
    if path.suffix.lower() in _ONNX_SUFFIXES:
        return "onnx"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise ModelLoadError(f"The model file {str(path)!r} is a corrupt zip archive ({e}).", "Re-save it.") from e
        if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
            return "torch_export"
        if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch_save"
        raise ModelLoadError(
            f"{str(path)!r} is a zip archive, but not one PyTorch wrote.",
            "Pass a file saved with torch.save, torch.jit.save or torch.export.save.",
        )
    with path.open("rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80":  # pickle protocol marker: the legacy (pre-zip) torch.save format
        return "torch_save"
    raise ModelLoadError(
        f"Cannot tell what kind of model {str(path)!r} is (not an ONNX file by name, not a PyTorch archive).",
        "Pass a .pt/.pth state_dict with --arch, a .pt2 torch.export archive, a TorchScript file, or an .onnx file.",
    )


def read_model_bytes(path: Path) -> bytes:
    """The whole file, read once so that what is vetted is exactly what torch then loads; ``ModelLoadError``
    naming the path when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ModelLoadError(
            f"Cannot read {str(path)!r}: {e.strerror or e}.", "Check the path and its permissions."
        ) from e
