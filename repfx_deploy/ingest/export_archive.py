"""Vet a ``torch.export`` archive (``.pt2``) before ``torch.export.load`` reads it, then load it.

``torch.export.load`` (torch 2.13) runs code the archive chose in several places, none of which needs the
archive to look unusual:

- it unpickles with full pickle: the sample inputs (after a weights-only attempt fails), weights and constants
  whose payload config says ``use_pickle``, the legacy ``data/weights/<model>.pt`` and
  ``data/constants/<model>.pt`` files, ``opaque_obj_*`` constants, and in a pre-2.8 archive (a zip with a
  top-level ``version``) every ``serialized_*`` member;
- ``custom_obj_*`` constants go to TorchScript's unpickler, which runs TorchScript ``__setstate__`` methods;
- ``data/aotinductor/`` holds compiled shared libraries that it loads (native code);
- the model JSON is turned into Python source and sympy expressions that are evaluated (see ``export_json``).

Without ``trust_pickle`` every member that torch would unpickle is vetted with the weights-only unpickler,
reading the archive with the reader torch itself uses (so both see the same bytes), the JSON is vetted, and
the bytes that were vetted are the ones handed to torch (the file is read once). Anything that cannot be vetted
is refused with an ``UntrustedPickleError`` naming the member. With ``trust_pickle`` the archive loads as
``torch.export.load`` always loaded it.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repfx_deploy.errors import ModelLoadError
from repfx_deploy.ingest.export_json import vet_program_json
from repfx_deploy.ingest.formats import read_model_bytes
from repfx_deploy.ingest.safe_pickle import untrusted, vet_raw_pickle, vet_torch_bytes

if TYPE_CHECKING:
    from torch.export import ExportedProgram

# Members of a pre-2.8 archive that torch.export.load unpickles (its fallback reader, by exact name).
_LEGACY_PICKLED = (
    "serialized_state_dict.pt",
    "serialized_constants.pt",
    "serialized_example_inputs.pt",
    "serialized_state_dict.json",  # deprecated names, but still handed to torch.load
    "serialized_constants.json",
)
_LEGACY_PROGRAM = "serialized_exported_program.json"


def load_export_archive(path: Path, *, trust_pickle: bool) -> ExportedProgram:
    """The ``ExportedProgram`` in ``path``; vetted first unless ``trust_pickle``."""
    import torch

    path = Path(path)
    data = read_model_bytes(path)
    if not trust_pickle:
        vet_export_archive(data, path)
    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as e:
        raise ModelLoadError(
            f"Cannot read the torch.export archive {str(path)!r}: {type(e).__name__}: {_first_line(e)}",
            "Re-save it with torch.export.save.",
        ) from e
    if not trust_pickle:
        from repfx_deploy.ingest.graph_vet import vet_fx_graphs

        vet_fx_graphs(program.graph_module, path)
    return program


def vet_export_archive(data: bytes, path: Path) -> None:
    """Refuse ``data`` (the bytes of ``path``) unless nothing torch would unpickle or evaluate in it runs code."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = z.namelist()
            seen: set[str] = set()
            for name in names:
                if name in seen:  # zip readers differ in which of two same-named members they return
                    raise untrusted(path, name, "appears twice in the archive, so what torch reads cannot be checked")
                seen.add(name)
            if "version" in names:  # torch.export.load falls back to the pre-2.8 layout when the new one fails
                _vet_legacy(z, path)
    except zipfile.BadZipFile as e:
        raise ModelLoadError(
            f"{str(path)!r} is a corrupt zip archive ({e}).", "Re-save it with torch.export.save."
        ) from e
    _vet_pt2(data, path)


def _vet_legacy(z: zipfile.ZipFile, path: Path) -> None:
    for info in z.infolist():
        if info.filename in _LEGACY_PICKLED:
            vet_torch_bytes(z.read(info.filename), path=path, member=info.filename)
        elif info.filename == _LEGACY_PROGRAM:
            vet_program_json(z.read(info.filename), path=path, member=info.filename)


def _vet_pt2(data: bytes, path: Path) -> None:
    """Mirror ``torch.export.pt2_archive._package.load_pt2``: every record it reads, read with its reader."""
    import torch
    from torch.export.pt2_archive import constants as c

    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        records = list(reader.get_all_records())
    except RuntimeError:
        return  # torch cannot open it either; it then tries the pre-2.8 layout, vetted above
    for record in records:
        if record.startswith(c.AOTINDUCTOR_DIR):
            raise untrusted(path, record, "is part of an AOTInductor build (a shared library torch would load)")
    prefix, suffix = c.MODELS_FILENAME_FORMAT.split("{}")
    for record in records:
        if not record.startswith(c.MODELS_DIR):
            continue
        model = record[len(prefix) : -len(suffix)]  # as torch derives it, whatever the record's ending
        vet_program_json(_get(reader, record), path=path, member=record)
        sample = c.SAMPLE_INPUTS_FILENAME_FORMAT.format(model)
        if sample in records:
            vet_torch_bytes(_get(reader, sample), path=path, member=sample)
        _vet_payloads(reader, records, path, c.WEIGHTS_DIR, c.WEIGHTS_CONFIG_FILENAME_FORMAT.format(model), model)
        _vet_payloads(reader, records, path, c.CONSTANTS_DIR, c.CONSTANTS_CONFIG_FILENAME_FORMAT.format(model), model)


def _vet_payloads(reader: Any, records: list[str], path: Path, folder: str, config_name: str, model: str) -> None:
    """The weights or the constants of one model: the legacy pickle, or each payload its config marks pickled."""
    from torch.export.pt2_archive import constants as c

    legacy = f"{folder}{model}.pt"
    if legacy in records:  # torch prefers it to the config, and unpickles it with a full-pickle fallback
        vet_torch_bytes(_get(reader, legacy), path=path, member=legacy)
        return
    if config_name not in records:
        return  # torch stops here too
    for fqn, meta in _payload_config(reader, config_name, path).config.items():
        member = os.path.join(folder, meta.path_name)  # exactly as torch joins it (an absolute path_name wins)
        name = meta.path_name
        if folder == c.CONSTANTS_DIR and name.startswith(c.CUSTOM_OBJ_FILENAME_PREFIX):
            raise untrusted(
                path, member, f"holds the TorchScript object {fqn!r}, which torch loads by running its code"
            )
        if folder == c.CONSTANTS_DIR and name.startswith(c.OPAQUE_OBJ_FILENAME_PREFIX):
            if member in records:
                vet_raw_pickle(_get(reader, member), path=path, member=member)
        elif meta.use_pickle and member in records:
            vet_torch_bytes(_get(reader, member), path=path, member=member)


def _payload_config(reader: Any, name: str, path: Path) -> Any:
    # torch's own parser, so that the entries vetted are the entries torch acts on
    from torch._export.serde import schema
    from torch._export.serde.serialize import _dict_to_dataclass

    try:
        return _dict_to_dataclass(schema.PayloadConfig, json.loads(_get(reader, name).decode("utf-8")))
    except Exception as e:
        raise untrusted(path, name, f"cannot be parsed to check what it makes torch unpickle ({_first_line(e)})") from e


def _get(reader: Any, record: str) -> bytes:
    return bytes(reader.get_record(record))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""
