"""SliceGPT: shrink a transformer's embedding dimension by rotating its residual stream onto its principal
axes and deleting the least-used directions (``kind = "slicegpt"``). Needs ``transformers`` (extra ``hf``)
only to load the models it works on; the pass itself is plain torch."""

from repfx_deploy.passes.slicegpt.config import SliceGPTConfig
from repfx_deploy.passes.slicegpt.core import SliceResult, slice_model

__all__ = ["SliceGPTConfig", "SliceResult", "slice_model"]
