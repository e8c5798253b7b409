"""How much of the residual stream SliceGPT removes, and how it is calibrated (the recipe's ``kind = "slicegpt"``).

The residual streams are named by position: ``"embed"`` (what the embedding writes and layer 0 reads), then
``"layers.<i>.attn"`` and ``"layers.<i>.mlp"`` (what each sublayer of layer ``i`` writes). Those names are the
search space's sites; ``widths`` lists the streams in that order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.protocol import Choice, PassConfig

TokenWeighting = Literal["energy", "unit"]
Schedule = Literal["uniform", "ramp"]

EMBED = "embed"
_SUBLAYER = re.compile(r"layers\.(\d+)\.(attn|mlp)")


def stream_names(layers: int) -> list[str]:
    """The name of every residual stream of a model of ``layers`` layers, in stream order."""
    return [EMBED] + [f"layers.{i}.{which}" for i in range(layers) for which in ("attn", "mlp")]


def stream_position(name: str) -> int:
    """Where stream ``name`` sits in stream order (``"embed"`` 0, ``"layers.i.attn"`` 2i + 1, ``"layers.i.mlp"``
    2i + 2); ``ValueError`` for a name that is not a stream's."""
    if name == EMBED:
        return 0
    match = _SUBLAYER.fullmatch(name)
    if match is None:
        raise ValueError(f"{name!r} is not a residual stream (use 'embed' or 'layers.<i>.attn' / 'layers.<i>.mlp')")
    return 2 * int(match[1]) + (1 if match[2] == "attn" else 2)


@dataclass(frozen=True)
class SliceGPTConfig(PassConfig):
    """``slicing``: the fraction of the embedding (residual stream) dimension removed, in [0, 1). The kept width
    is ``floor(hidden * (1 - slicing))`` rounded down to a multiple of ``round_to`` (vector lanes; 8 is what the
    SliceGPT reference code uses), and never below ``round_to``. ``slicing = 0`` keeps every direction: the model
    is only folded and rotated, which must leave its outputs unchanged (the invariant the tests check).

    ``calibration_samples`` sequences of ``seq_len`` tokens, in batches of ``batch_size``, feed the PCA of the
    residual stream. The PCA runs layer by layer on the already sliced model's own activations (so each
    rotation sees the error the previous slices made), in float64 (eigenvectors of a covariance summed over
    tens of thousands of tokens lose orthogonality in float32).

    ``token_weighting``: ``energy`` is the paper's PCA (each token weighs by its squared norm); ``unit`` scales
    every token to unit length first, so the few huge-norm tokens of a pre-norm decoder (attention sinks) do
    not own the axes (see ``pca.covariance``). Post-norm encoders' streams are normalised already: no difference.

    ``slice_head``: whether the last stream (what the head, or an encoder's output map, reads) is sliced too.
    False (the SliceGPT authors' default, ``do_slice_head=False`` in their scheduler) keeps it at full width:
    the last layer's output linear and shortcut write all ``hidden`` directions and the head keeps its width.
    On SmolLM2-135M at 25 % that bought 0.1-0.5 % perplexity (91.68 vs 91.80 with 16 calibration windows,
    72.65 vs 73.05 with 64) for a head a third wider (its 49,152 x 576 MACs are a fifth of the model's), so
    the default slices it.

    ``keep_first_layers`` / ``keep_last_layers``: that many layers at each end keep full width (every stream
    they read or write stays ``hidden`` wide), so the cut is spent on the rest. On SmolLM2-135M at 25 % the first
    layers cost most when sliced: keeping 2 whole took perplexity from 2.02x to 1.67x dense (64 calibration
    windows) for 2 % more MACs; keeping the last 2 whole changed nothing. 0 is the paper's uniform slicing.

    ``schedule``: how the sliced streams share the cut. ``uniform`` (the paper) slices every one by ``slicing``.
    ``ramp`` slices stream ``j`` of the ``m`` sliced ones (in order, embedding first) by
    ``slicing + ramp * (j / (m - 1) - 1/2)``: less at the start, more at the end, the same mean, so ``slicing``
    is still the mean fraction removed (each width rounded to the nearest multiple of ``round_to``). ``ramp``
    stays within ``2 * slicing`` (no stream is widened). Early streams of a deep decoder cost most when sliced
    and the last ones least; a ramp also narrows the head, so at the same mean it does fewer MACs. SmolLM2-135M
    at 25 %, 64 calibration windows: uniform 2.02x dense perplexity at 112.1 M MACs per token, ``ramp = 0.5``
    1.83x at 105.3 M; at equal MACs a ramp matched ``keep_first_layers = 2`` (1.66-1.70x against 1.67x).

    ``widths``: explicit widths of every stream, the per-stream knob a search drives; when given, it replaces
    ``slicing``, ``schedule``, ``slice_head`` and the keep options. A list of ``2 * layers + 1`` widths in stream
    order: the embedding's output (stream ``"embed"``), then each sublayer's (``"layers.0.attn"``,
    ``"layers.0.mlp"``, ``"layers.1.attn"``, ...; the last is what the head reads). The search space's sites
    are those stream names, and ``with_assignment`` writes an assignment by name back into this list.
    """

    kind = "slicegpt"

    slicing: float | None = None
    round_to: int | None = None
    calibration_samples: int = 64
    batch_size: int = 8
    token_weighting: TokenWeighting = "energy"
    slice_head: bool = True
    keep_first_layers: int = 0
    keep_last_layers: int = 0
    schedule: Schedule = "uniform"
    ramp: float = 0.5
    widths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.widths, tuple) or any(
            isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.widths
        ):
            raise ValueError(f"widths must be a list of positive whole stream widths; got {self.widths!r}")
        if self.slicing is None:
            if not self.widths:
                raise ValueError(
                    "slicing (the fraction of the embedding dimension removed, in [0, 1)) is required unless "
                    "widths gives every stream: add e.g. slicing = 0.25"
                )
        elif (
            isinstance(self.slicing, bool)
            or not isinstance(self.slicing, (int, float))
            or not 0.0 <= self.slicing < 1.0
        ):
            raise ValueError(
                f"slicing is the fraction of the embedding dimension removed, in [0, 1); got {self.slicing!r}"
            )
        if self.schedule not in ("uniform", "ramp"):
            raise ValueError(
                f"schedule must be 'uniform' (every stream sliced alike) or 'ramp' (less at the start, more at the end); got {self.schedule!r}"
            )
        if isinstance(self.ramp, bool) or not isinstance(self.ramp, (int, float)) or self.ramp < 0:
            raise ValueError(
                f"ramp is the difference between the last and the first sliced stream's slicing, 0 or more; got {self.ramp!r}"
            )
        if (
            self.schedule == "ramp"
            and self.slicing is not None
            and not (self.ramp <= 2 * self.slicing + 1e-9 and self.ramp < 2 * (1 - self.slicing))
        ):
            raise ValueError(
                f"ramp {self.ramp} at slicing {self.slicing} would widen the first streams or remove all of the last: keep ramp <= 2 * min(slicing, 1 - slicing), below it at the upper end"
            )
        if self.token_weighting not in ("energy", "unit"):
            raise ValueError(
                f"token_weighting must be 'energy' (SliceGPT's PCA) or 'unit' (every token scaled to unit length); got {self.token_weighting!r}"
            )
        if not isinstance(self.slice_head, bool):
            raise ValueError(f"slice_head must be true or false; got {self.slice_head!r}")
        for name in ("keep_first_layers", "keep_last_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number of layers, 0 or more; got {value!r}")
        for name in ("calibration_samples", "batch_size") + (("round_to",) if self.round_to is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")

    def multiple(self, channel_multiple: int) -> int:
        """What kept widths are multiples of: ``round_to`` when set, else the target's ``channel_multiple``."""
        return self.round_to if self.round_to is not None else channel_multiple

    def kept_dim(self, hidden: int, multiple: int) -> int:
        """The residual width left after slicing a stream of ``hidden`` channels by ``slicing`` (widths multiples
        of ``multiple``, as ``multiple()`` gives)."""
        kept = int(hidden * (1.0 - (self.slicing or 0.0)))
        if kept < hidden:
            kept -= kept % multiple
        return max(min(kept, hidden), min(multiple, hidden))

    def stream_widths(self, hidden: int, sublayers: int, multiple: int) -> list[int]:
        """The width of each residual stream: the embedding's output, then each of ``sublayers`` sublayers'
        outputs (two per layer: attention, MLP; the last one is what the head reads). Layer ``i`` reads stream
        ``2i`` and writes streams ``2i + 1`` and ``2i + 2``. ``ValueError`` when explicit ``widths`` do not fit."""
        if self.widths:
            if len(self.widths) != sublayers + 1 or max(self.widths) > hidden:
                raise ValueError(
                    f"widths lists {len(self.widths)} streams of at most {max(self.widths)}; this model has {sublayers + 1} "
                    f"streams (2 per layer + the embedding's) of width {hidden}"
                )
            return list(self.widths)
        layers = sublayers // 2
        # the first k layers read or write streams 0 .. 2k; the last k, streams 2 (layers - k) .. 2 layers
        first_sliced = 2 * self.keep_first_layers + 1 if self.keep_first_layers else 0
        last_sliced = 2 * (layers - self.keep_last_layers) - 1 if self.keep_last_layers else sublayers
        sliced = [i for i in range(sublayers + 1) if first_sliced <= i <= last_sliced]
        widths = [hidden] * (sublayers + 1)
        for j, i in enumerate(sliced):
            widths[i] = (
                self._ramp_width(hidden, j, len(sliced), multiple)
                if self.schedule == "ramp"
                else self.kept_dim(hidden, multiple)
            )
        if not self.slice_head:
            widths[-1] = hidden
        return widths

    def _ramp_width(self, hidden: int, j: int, count: int, multiple: int) -> int:
        position = j / (count - 1) - 0.5 if count > 1 else 0.0
        kept = hidden * (1.0 - ((self.slicing or 0.0) + self.ramp * position))
        kept = round(kept / multiple) * multiple
        return int(max(min(kept, hidden), min(multiple, hidden)))

    def with_assignment(self, assignment: Mapping[str, Choice]) -> SliceGPTConfig:
        """This config with ``widths`` set to ``assignment`` (a width per stream name, every stream of the model,
        as ``SearchSpace.complete`` gives), written in stream order."""
        if not assignment:
            return self
        try:
            by_position = {stream_position(name): width for name, width in assignment.items()}
        except ValueError as e:
            raise RecipeError(f"slicegpt: {e}.", "Assign widths to the sites of the slicegpt pass's space.") from None
        if sorted(by_position) != list(range(len(by_position))):
            raise RecipeError(
                f"slicegpt: the assignment does not name every stream once ({sorted(assignment)}).",
                "Complete it first (SearchSpace.complete).",
            )
        widths = [by_position[i] for i in range(len(by_position))]
        if any(isinstance(w, bool) or not isinstance(w, int) for w in widths):
            raise RecipeError(
                f"slicegpt: stream widths must be whole numbers; got {widths}.",
                "Assign widths from the site's choices.",
            )
        return replace(self, widths=tuple(int(w) for w in widths))
