"""Load a model file safely and work out its input signature.

Safe by default: a state_dict is read with ``torch.load(weights_only=True)``, which cannot run code, and the
architecture is rebuilt from ``--arch module:callable``. A pickled ``nn.Module`` runs arbitrary code when
loaded, so it is refused unless the caller opts in with ``trust_pickle``. The other formats carry code too and
are vetted before torch reads them: ``.pt2`` archives (``export_archive``), TorchScript (``torchscript``) and
the pickled weights of a Hugging Face folder (``hf``). ``trust_pickle`` skips every check.
"""

from __future__ import annotations

import importlib
import pickle
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repfx_deploy.digest import file_sha256
from repfx_deploy.errors import InputShapeError, ModelLoadError, UntrustedPickleError
from repfx_deploy.ingest.formats import Format, detect_format
from repfx_deploy.spec import InputSpec

if TYPE_CHECKING:
    import torch.nn as nn

# Wrappers that training scripts commonly put around the state_dict.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")
# Prefixes added by DataParallel/DistributedDataParallel and torch.compile.
_KEY_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model file.

    ``arch`` is ``"package.module:callable"``; the callable takes no arguments and returns the ``nn.Module``
    the state_dict belongs to. ``python_path`` folders are put on ``sys.path`` first so a user's own
    module can be found. ``input_specs`` override whatever the file carries.
    """

    arch: str | None = None
    python_path: tuple[Path, ...] = ()
    trust_pickle: bool = False
    input_specs: tuple[InputSpec, ...] = ()

    def __post_init__(self) -> None:
        if self.arch is not None and ":" not in self.arch:
            raise ModelLoadError(
                f"--arch {self.arch!r} does not name a callable.",
                "Write it as module:callable, e.g. --arch mypkg.models:resnet20.",
            )


@dataclass
class LoadedModel:
    """A model ready for the pipeline: a torch module, or an ONNX file, and its input signature."""

    path: Path
    format: Format
    sha256: str
    input_specs: tuple[InputSpec, ...]
    module: nn.Module | None = None
    onnx_path: Path | None = None
    arch: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_torch(self) -> bool:
        return self.module is not None


def load_model(path: Path, options: LoadOptions = LoadOptions()) -> LoadedModel:
    """Load ``path`` in whatever supported format it is in; raise a ``RepfxError`` naming any problem."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "hf_folder":
        from repfx_deploy.ingest.hf import folder_sha256, load_hf_folder

        module, specs = load_hf_folder(path, trust_pickle=options.trust_pickle)
        specs = options.input_specs or specs
        check_signature(module, specs)
        return LoadedModel(path=path, format=fmt, sha256=folder_sha256(path), input_specs=tuple(specs), module=module)
    digest = file_sha256(path)
    if fmt == "onnx":
        from repfx_deploy.onnx_signature import onnx_input_specs

        specs = onnx_input_specs(path, options.input_specs)
        return LoadedModel(path=path, format=fmt, sha256=digest, input_specs=specs, onnx_path=path)
    if fmt == "torch_export":
        module, specs = _load_export(path, options.trust_pickle)
    elif fmt == "torchscript":
        from repfx_deploy.ingest.torchscript import load_torchscript

        module, specs = load_torchscript(path, trust_pickle=options.trust_pickle), ()
    else:
        module = _load_torch_save(path, options)
        specs = ()
    specs = options.input_specs or specs
    if not specs:
        raise InputShapeError(
            f"{str(path)!r} does not record its input shape.",
            "Pass it with --input-shape, e.g. --input-shape 1,3,32,32 (repeat the flag for several inputs).",
        )
    check_signature(module, specs)
    return LoadedModel(path=path, format=fmt, sha256=digest, input_specs=tuple(specs), module=module, arch=options.arch)


def check_signature(module: nn.Module, specs: tuple[InputSpec, ...]) -> None:
    """Run the model once on zeros of the given signature; turn a failure into ``InputShapeError``."""
    import torch

    from repfx_deploy.data.tensors import zeros_for

    try:
        with torch.no_grad():
            module(*zeros_for(specs))
    except Exception as e:  # any failure here means the signature does not fit the model
        shown = ", ".join(str(s) for s in specs)
        raise InputShapeError(
            f"The model does not accept inputs {shown}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            "Pass the shape the model was trained on with --input-shape (batch first, e.g. 1,3,32,32).",
        ) from e


def _load_export(path: Path, trust_pickle: bool) -> tuple[nn.Module, tuple[InputSpec, ...]]:
    import torch

    from repfx_deploy.ingest.export_archive import load_export_archive

    program = load_export_archive(path, trust_pickle=trust_pickle)
    specs: tuple[InputSpec, ...] = ()
    example = program.example_inputs
    if example is not None:
        args, kwargs = example
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if len(tensors) == len(args) and not kwargs:
            names = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
            if len(names) != len(tensors):
                names = ["input" if i == 0 else f"input_{i}" for i in range(len(tensors))]
            specs = tuple(
                InputSpec(name=n, shape=tuple(int(d) for d in t.shape), dtype=str(t.dtype).removeprefix("torch."))
                for n, t in zip(names, tensors)
            )
    # the guard function is Python source built from the archive's guard strings and exec-ed: untrusted, skip it
    # (a forward pre-hook still checks the inputs against the recorded shapes)
    return program.module(check_guards=trust_pickle), specs


def _load_torch_save(path: Path, options: LoadOptions) -> nn.Module:
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not options.trust_pickle:
            raise UntrustedPickleError(
                f"{str(path)!r} holds a pickled Python object (probably a whole nn.Module), not just tensors. "
                "Loading a pickle runs whatever code it names, so it is refused by default.",
                "Save only the weights (torch.save(model.state_dict(), ...)) and pass --arch module:callable, "
                "or, if you trust the file's source, pass --trust-pickle.",
            ) from e
        _extend_sys_path(options.python_path)
        return _load_pickled_module(path)
    except Exception as e:
        raise ModelLoadError(
            f"Cannot read {str(path)!r} as a PyTorch file: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            "Check that the file is complete and was written by torch.save.",
        ) from e
    state = _unwrap_state_dict(obj, path)
    if options.arch is None:
        raise ModelLoadError(
            f"{str(path)!r} is a state_dict (weights only); the architecture they belong to is not in the file.",
            "Name the code that builds the model with --arch module:callable (and --python-path DIR if it is "
            "not installed), e.g. --arch repfx_deploy.examples.fashion_mnist:FashionCNN.",
        )
    module = build_arch(options.arch, options.python_path)
    _load_state(module, state, path, options.arch)
    return module.eval()


def _load_pickled_module(path: Path) -> nn.Module:
    import torch
    import torch.nn as nn

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:
        raise ModelLoadError(
            f"Cannot unpickle {str(path)!r}: {type(e).__name__}: {e}",
            "The classes it names must be importable; add their folder with --python-path.",
        ) from e
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(
            f"{str(path)!r} unpickles to a {type(obj).__name__}, not an nn.Module.",
            "Save the model itself, or its state_dict with --arch.",
        )
    return obj.eval()


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Any]:
    import torch

    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(
            f"{str(path)!r} does not hold a state_dict (a mapping of names to tensors); it holds a {type(obj).__name__}.",
            "Save it with torch.save(model.state_dict(), path), optionally inside {'state_dict': ...}.",
        )
    state = dict(obj)
    for prefix in _KEY_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def _extend_sys_path(python_path: tuple[Path, ...]) -> None:
    for folder in python_path:
        folder_str = str(Path(folder).resolve())
        if folder_str not in sys.path:
            sys.path.insert(0, folder_str)


def build_arch(arch: str, python_path: tuple[Path, ...] = ()) -> nn.Module:
    """Import ``module:callable`` and call it with no arguments; it must return an ``nn.Module``."""
    import torch.nn as nn

    _extend_sys_path(python_path)
    module_name, _, attr = arch.partition(":")
    try:
        mod = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelLoadError(
            f"Cannot import {module_name!r} named by --arch {arch!r}: {e}",
            "Install the package that defines it, or add its folder with --python-path DIR.",
        ) from e
    target: Any = mod
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ModelLoadError(
                f"{module_name!r} has no attribute {attr!r} (from --arch {arch!r}).", "Check the name after the colon."
            )
        target = getattr(target, part)
    try:
        model = target()
    except Exception as e:
        raise ModelLoadError(
            f"Calling {arch} with no arguments failed: {type(e).__name__}: {e}",
            "Point --arch at a callable that takes no arguments (wrap a constructor with its settings in a function).",
        ) from e
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"{arch} returned a {type(model).__name__}, not an nn.Module.", "Point --arch at a model class or factory."
        )
    return model


def _load_state(module: nn.Module, state: dict[str, Any], path: Path, arch: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        own = module.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        mismatched = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            k = mismatched[0]
            parts.append(
                f"{len(mismatched)} with other shapes (e.g. {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)})"
            )
        raise ModelLoadError(
            f"The weights in {str(path)!r} do not fit {arch}: {'; '.join(parts) or str(e).splitlines()[0]}.",
            "Point --arch at the architecture (and settings) these weights were trained with.",
        ) from e
