"""Load a TorchScript archive without running code it carries, unless the caller trusts it.

TorchScript's unpickler only builds tensors, containers and TorchScript classes, but a class with a
``__setstate__`` method has it called during ``torch.jit.load``, and that method is TorchScript source from the
archive. TorchScript can call ``aten::save`` (it writes any path), so loading writes files the archive chose.
Without ``trust_pickle``: an archive that defines ``__setstate__`` anywhere is refused before loading (its
records are read with the reader ``torch.jit.load`` uses, so compressed records are seen too), and the loaded
graphs are vetted (``graph_vet``) before the model runs. The file is read once and those bytes are loaded.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from repfx_deploy.errors import ModelLoadError
from repfx_deploy.ingest.formats import read_model_bytes
from repfx_deploy.ingest.safe_pickle import untrusted

if TYPE_CHECKING:
    import torch.nn as nn

_LOAD_HOOK = b"__setstate__"


def load_torchscript(path: Path, *, trust_pickle: bool) -> nn.Module:
    """The TorchScript module in ``path``, in eval mode; vetted first unless ``trust_pickle``."""
    import torch

    path = Path(path)
    data = read_model_bytes(path)
    if not trust_pickle:
        vet_torchscript_archive(data, path)
    try:
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as e:
        text = str(e).strip()
        raise ModelLoadError(
            f"Cannot read the TorchScript file {str(path)!r}: {text.splitlines()[0] if text else type(e).__name__}",
            "Re-save it with torch.jit.save.",
        ) from e
    if not trust_pickle:
        from repfx_deploy.ingest.graph_vet import vet_script_graphs

        vet_script_graphs(module, path)
    return module.eval()


def vet_torchscript_archive(data: bytes, path: Path) -> None:
    """Refuse ``data`` if any record of the archive mentions ``__setstate__`` (code that loading would run)."""
    import torch

    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        records = list(reader.get_all_records())
    except RuntimeError:
        return  # torch.jit.load cannot open it either
    for record in records:
        # every record, tensor data included: a false match costs a refusal, a missed one runs code
        if _LOAD_HOOK in bytes(reader.get_record(record)):
            raise untrusted(
                path,
                record,
                "defines a TorchScript __setstate__ method, which torch.jit.load runs (it can write files)",
            )
