"""Keep wide, stride-1 convolutions in NCHW while the rest of the model moves to NHWC.

In NHWC the default schedule vectorizes a convolution over its output channels. A layer with fewer
channels than a vector has lanes (8 channels on AVX-512's 16 float lanes, common after pruning)
then runs on half vectors, and every vector of input it loads feeds one multiply-add per output
channel. In NCHW the same layer vectorizes over the image width instead: a 32-wide row is two whole
vectors whatever the channel count, and each loaded input vector feeds one multiply-add per output
channel of the tile. Pruned ResNet-56's 8-channel 32x32 layers ran at about half the multiply-add
rate of its 16-channel ones in NHWC.

So a stride-1, ungrouped convolution whose output rows hold whole vectors at least twice
(``width % (2 * lanes) == 0``) is legalized to its NCHW kernel before ``ConvertLayout`` runs; that
pass cannot change an already legalized kernel, so the layers around it (bias, ReLU, residual adds)
stay NCHW too and no transposes appear between two such layers. Narrower layers (deeper in a CNN,
where channels are many and rows short) still go to NHWC.
"""

from __future__ import annotations

import logging

log = logging.getLogger("repfx_deploy.compile")

# Only measured on AVX-512 (16 float lanes), where it took pruned ResNet-56's 8-channel layers from
# about half to full multiply-add rate. With 4- or 8-lane vectors (NEON, AVX2) NHWC already fills
# whole vectors at 8 channels, so those targets keep every convolution NHWC.
MIN_LANES = 16


def stays_nchw(call, lanes: int) -> bool:
    """Whether a ``relax.nn.conv2d`` call is kept NCHW (see the module docstring)."""
    attrs = call.attrs
    if lanes < MIN_LANES or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or int(attrs.groups) != 1:
        return False
    if any(int(s) != 1 for s in attrs.strides) or any(int(d) != 1 for d in attrs.dilation):
        return False
    shape = getattr(call.ty, "shape", None)
    if shape is None or len(shape) != 4:
        return False
    try:
        width = int(shape[3])
    except TypeError:  # a symbolic width: nothing to decide on
        return False
    return width % (2 * lanes) == 0


def legalize_wide_convs(mod, lanes: int):
    """Return ``mod`` with every conv2d that ``stays_nchw`` replaced by its legalized NCHW kernel.

    Run before ``ConvertLayout``. Outputs are unchanged (the same TOPI convolution, same layout).
    """
    import tvm

    from repfx_deploy.compile.relax_rewrite import rewrite_calls

    legalize = tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")
    # the builder receives the legalized NCHW kernels
    mod, count = rewrite_calls(
        mod, "relax.nn.conv2d", lambda builder, call: legalize(builder, call) if stays_nchw(call, lanes) else None
    )
    if count:
        log.info("kept %d wide convolutions in NCHW (rows of whole %d-lane vectors)", count, lanes)
    return mod
