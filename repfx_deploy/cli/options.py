"""The typer options that several ``repfx-deploy`` commands share, and the ``LoadOptions`` they stand for.

Its own module so that each command module (``app``, ``estimate``, ...) imports it, and none imports another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# Options of the commands that read a model.
Arch = Annotated[
    str | None, typer.Option("--arch", help="module:callable that builds the model a state_dict belongs to.")
]
PythonPath = Annotated[
    list[Path] | None, typer.Option("--python-path", help="Folder to import --arch from (repeatable).")
]
TrustPickle = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Allow loading a file that carries code: a pickled nn.Module or other Python objects, TorchScript with "
        "__setstate__, a .pt2 that fails the checks. Loading it runs that code: only for files you trust.",
    ),
]
InputShape = Annotated[
    list[str] | None,
    typer.Option(
        "--input-shape", help="Input shape, e.g. 1,3,32,32 or x=1,3,32,32:float32 (repeat for several inputs)."
    ),
]
# Output, device and run options.
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout; logs go to stderr.")]
Target = Annotated[str | None, typer.Option("--target", help="Device profile name (see `repfx-deploy targets`).")]
TargetFile = Annotated[Path | None, typer.Option("--target-file", help="A device profile TOML file not in targets/.")]
Threads = Annotated[int, typer.Option("--threads", min=0, help="Intra-op threads (0: the target's default).")]
Force = Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging on stderr.")]
Rpc = Annotated[
    str | None, typer.Option("--rpc", help="TVM RPC tracker HOST:PORT: measure (or tune) on a device of --target.")
]
RpcKey = Annotated[
    str | None, typer.Option("--rpc-key", help="The device's key at the tracker (default: the target's rpc_key).")
]
FreshTuning = Annotated[
    bool,
    typer.Option(
        "--fresh-tuning",
        help="If the target's tuning database is corrupt, move it aside (<folder>.corrupt-<time>) and start a new one.",
    ),
]


def load_options(arch, python_path, trust_pickle, input_shape):
    """The ``LoadOptions`` that the model-reading options above stand for."""
    from repfx_deploy.ingest.loader import LoadOptions
    from repfx_deploy.spec import parse_input_shapes

    return LoadOptions(
        arch=arch,
        python_path=tuple(python_path or ()),
        trust_pickle=trust_pickle,
        input_specs=parse_input_shapes(input_shape or []),
    )
