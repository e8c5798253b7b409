"""Low-rank factorization (truncated SVD) of linears and convolutions, ``kind = "lowrank"``."""

from repfx_deploy.passes.lowrank.config import LowRankConfig, TrainedRankConfig
from repfx_deploy.passes.lowrank.core import (
    LowRankResult,
    apply,
    choose_ranks,
    lowrank,
    prepare,
)

__all__ = ["LowRankConfig", "LowRankResult", "TrainedRankConfig", "apply", "choose_ranks", "lowrank", "prepare"]
