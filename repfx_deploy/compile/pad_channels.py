"""Pad convolutions' output channels up to whole vectors, at compile time.

The default schedule (``tvm_schedule``) holds an NHWC output tile of ``rows x channels`` in vector
registers. A pruned layer's width is a multiple of the pruning's ``round_to`` (8 by default), which on
AVX-512 (16 float lanes) leaves 24, 40 or 56 output channels: the tile then runs on half vectors, so
every multiply-add instruction does half the work. Pruned ResNet-56 ran its 24-channel convolutions
at about half the multiply-add rate of the unpruned 32-channel ones.

This pass gives such a convolution zero weights for the missing channels (24 -> 32) and slices the
real channels back out; the slice fuses into the kernel's epilogue, so the kernel writes the same
tensor as before and the next layer reads the same number of channels. Only the output side is
padded: input channels are a reduction axis and are not vectorized.
"""

from __future__ import annotations

import logging

log = logging.getLogger("repfx_deploy.compile")

# Pad only when the extra arithmetic is at most this share of the layer's own: 24 -> 32 (+33 %)
# pays off (two full vectors instead of three half ones); 8 -> 16 (+100 %) does the same number of
# vector instructions as before and gains nothing.
MAX_PAD_FRACTION = 0.5


def padded_width(channels: int, lanes: int) -> int:
    """The output width a convolution is computed at: ``channels`` rounded up to whole vectors of
    ``lanes`` when that costs at most ``MAX_PAD_FRACTION`` more arithmetic and the padded width fits
    one register tile of the default schedule (which tiles a padded kernel over its whole width, at
    least two rows), else ``channels``."""
    from repfx_deploy.compile.tvm_schedule import MAX_ACC_VECTORS

    if lanes <= 1 or channels % lanes == 0 or channels < lanes:
        return channels
    padded = -(-channels // lanes) * lanes
    fits = padded // lanes <= MAX_ACC_VECTORS // 2
    return padded if fits and (padded - channels) <= MAX_PAD_FRACTION * channels else channels


def pad_conv_output_channels(mod, lanes: int):
    """Return ``mod`` with every ungrouped NHWC/HWIO ``conv2d`` whose weight is a constant computed at
    ``padded_width`` output channels, followed by a slice back to the real ones.

    Preconditions: convolutions already converted to NHWC with HWIO constant weights (``ConvertLayout``
    then ``FoldConstant``). Outputs are bit-identical: the padded channels are computed and dropped.
    """
    import numpy as np
    import tvm
    from tvm import relax

    from repfx_deploy.compile.relax_rewrite import rewrite_calls

    def pad(builder, call):
        attrs, weight = call.attrs, call.args[1]
        if (
            int(attrs.groups) != 1
            or attrs.data_layout != "NHWC"
            or attrs.kernel_layout != "HWIO"
            or attrs.out_layout != "NHWC"
            or not isinstance(weight, tvm.ir.expr.Constant)
        ):
            return None
        w = weight.value.numpy()
        channels = w.shape[3]
        width = padded_width(channels, lanes)
        if width == channels:
            return None
        padded = np.zeros(w.shape[:3] + (width,), dtype=w.dtype)
        padded[..., :channels] = w
        conv = relax.op.nn.conv2d(
            call.args[0],
            relax.const(padded),
            strides=attrs.strides,
            padding=attrs.padding,
            dilation=attrs.dilation,
            groups=1,
            data_layout="NHWC",
            kernel_layout="HWIO",
            out_layout="NHWC",
            out_dtype=attrs.out_dtype if str(attrs.out_dtype) else None,
        )
        return relax.op.strided_slice(builder.emit(conv), axes=[3], begin=[0], end=[channels])

    mod, count = rewrite_calls(mod, "relax.nn.conv2d", pad)
    if count:
        log.info("padded the output channels of %d convolutions to whole %d-lane vectors", count, lanes)
    return mod
