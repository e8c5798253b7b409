"""Typed errors. Every failure a user can cause is one of these, raised ``from`` its cause.

The CLI turns a ``RepfxError`` into a one-paragraph message and a non-zero exit code; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class RepfxError(Exception):
    """Base class: a problem the user can fix. The message names the problem and the fix."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem} Fix: {fix}")


class InputError(RepfxError):
    """A path, flag or value given on the command line or in a recipe is wrong."""


class ModelLoadError(RepfxError):
    """The model file is missing, corrupt, of an unknown format, or cannot be rebuilt."""


class UntrustedPickleError(ModelLoadError):
    """Loading would unpickle arbitrary objects, which runs code, and the user did not opt in."""


class InputShapeError(RepfxError):
    """The input signature is missing or does not fit the model."""


class DataError(RepfxError):
    """Calibration or evaluation data is missing, malformed, or does not fit the model."""


class RecipeError(RepfxError):
    """A recipe file is malformed or names unknown keys or passes."""


class TargetError(RepfxError):
    """A device profile is unknown or malformed."""


class ExportError(RepfxError):
    """Lowering to ONNX failed (an operator the exporter cannot take, a checker failure)."""


class CompileError(RepfxError):
    """Compiling with TVM failed (an operator the importer cannot take, a build failure)."""


class VerificationError(RepfxError):
    """Two runtimes disagree on the same inputs by more than the tolerance."""


class MeasureError(RepfxError):
    """A runtime could not be run or timed."""


class OutputExistsError(RepfxError):
    """The output path exists and ``--force`` was not given."""


class PassError(RepfxError):
    """A compression pass cannot be applied to this model."""


class OutputLockedError(RepfxError):
    """Another process is writing the same output path (it holds the output's lock file)."""


class DiskFullError(RepfxError, OSError):
    """A write failed because the disk (or the user's quota) is full. Also an ``OSError`` (``errno`` ENOSPC or
    EDQUOT), so code that handled the raw write error still does."""


class TuningDatabaseError(CompileError):
    """A tuning database cannot be read (a write cut short, a hand edit); ``--fresh-tuning`` moves it aside."""


class RpcAuthError(MeasureError):
    """An RPC tracker or device server refused this side's token, or does not hold the token this side holds."""


class DeviceUnreachableError(MeasureError):
    """The tracker handed out a device server that could not be reached (it died, or its address is not routable).

    ``address``: that server's ``HOST:PORT``."""

    def __init__(self, problem: str, fix: str | None = None, *, address: str = "unknown") -> None:
        super().__init__(problem, fix)
        self.address = address


class SearchError(RepfxError):
    """A search cannot go on: its study cannot be stored or resumed, its workers failed, or every candidate failed."""
