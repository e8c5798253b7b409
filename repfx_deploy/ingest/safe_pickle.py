"""Vet pickled bytes with torch's weights-only unpickler before anything unpickles them with full pickle.

A pickle names the callables that rebuild it, so a full unpickler runs whatever the file chose (a class whose
``__reduce__`` returns ``os.system`` is the classic payload). torch's weights-only unpickler only resolves an
allowlist of tensor-rebuilding callables and containers. When it reads a blob to its end, every callable the
blob names is on that list, so a full unpickler given the same bytes builds the same harmless objects: that is
what makes a vetted member safe to hand to a loader (``torch.export.load``) that unpickles it with full pickle.

Every refusal is an ``UntrustedPickleError`` that names the file, the member and ``--trust-pickle``.
"""

from __future__ import annotations

import io
from pathlib import Path

from repfx_deploy.errors import UntrustedPickleError

TRUST_FIX = (
    "Load only files from a source you trust. If you trust this one, pass --trust-pickle; otherwise ask for the "
    "weights as a state_dict or safetensors file (loaded without unpickling code) and rebuild the model with --arch."
)


def untrusted(path: Path, member: str | None, why: str) -> UntrustedPickleError:
    """The refusal for ``member`` of ``path`` (the whole file when ``member`` is None)."""
    where = f"{str(path)!r}" if member is None else f"member {member!r} of {str(path)!r}"
    return UntrustedPickleError(f"{where} {why}; loading it would run code the file chose.", TRUST_FIX)


def vet_torch_bytes(data: bytes, *, path: Path, member: str | None) -> None:
    """Refuse ``data`` unless ``torch.load(weights_only=True)`` reads it whole.

    For blobs a loader reads with ``torch.load`` (a ``torch.save`` zip, or the legacy pre-zip format, whose
    several pickles the weights-only loader all reads). A TorchScript archive is refused too: ``torch.load`` would
    hand it to ``torch.jit.load``, which runs the archive's ``__setstate__`` code.
    """
    import torch

    try:
        # map_location only spares a false refusal of tensors saved on a GPU; it does not change what is unpickled
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # the weights-only unpickler raises UnpicklingError, RuntimeError and more
        raise untrusted(path, member, f"is not plain tensor data ({_reason(e)})") from e


def vet_raw_pickle(data: bytes, *, path: Path, member: str | None) -> None:
    """Refuse ``data`` unless the weights-only unpickler reads its first pickle (what ``pickle.loads`` reads)."""
    from torch import _weights_only_unpickler

    try:
        _weights_only_unpickler.load(io.BytesIO(data))
    except Exception as e:
        raise untrusted(path, member, f"is not plain data ({_reason(e)})") from e


def vet_torch_file(path: Path) -> None:
    """``vet_torch_bytes`` on a whole file (a Hugging Face ``pytorch_model.bin``, say)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise untrusted(path, None, f"cannot be read to check it ({e.strerror or e})") from e
    vet_torch_bytes(data, path=path, member=None)


def _reason(e: Exception) -> str:
    """The line of torch's message that says what was refused (it is many paragraphs long)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "Unsupported" in line or "not allowed" in line or "TorchScript" in line:
            return line.rstrip(".")
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__
