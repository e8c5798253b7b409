"""The data a search scores candidates on: a BatchNorm-calibration split and a held-out split of TRAINING data.

    proxy = ProxyData.from_recipe_data(data, bn_samples=256, holdout_samples=512, seed=0)
    proxy.bn            # unlabelled use: re-estimating BatchNorm statistics of a candidate
    proxy.holdout       # labelled: the candidate's top-1 accuracy during the search

The pool is the recipe's ``train`` set, else its calibration set. The evaluation (test) set is never used during
a search, only in the final report: when the pool is the same file as the evaluation set, the samples the
evaluation set holds are taken out of the pool first (matched by their position in that file). The two splits
are disjoint and drawn from a seeded permutation, so the same seed gives the same splits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.errors import DataError

if TYPE_CHECKING:
    from repfx_deploy.pipeline.data import RecipeData

log = logging.getLogger("repfx_deploy.search")

# Below these a split says nothing: a 16-sample accuracy moves in steps of 6 points.
MIN_HOLDOUT = 32
MIN_BN = 16


def positions(dataset: Dataset) -> np.ndarray:
    """Each sample's index in the file it came from (``Dataset.positions``, else 0 .. N-1)."""
    return dataset.positions if dataset.positions is not None else np.arange(len(dataset))


def subset(dataset: Dataset, index: np.ndarray) -> Dataset:
    """The samples of ``dataset`` at ``index`` (its positions in the file kept, for messages)."""
    return Dataset(
        x=np.ascontiguousarray(dataset.x[index]),
        y=None if dataset.y is None else dataset.y[index],
        source=dataset.source,
        positions=positions(dataset)[index],
    )


@dataclass(frozen=True)
class ProxyData:
    """The two splits a candidate is scored on; ``pool`` says which recipe set they came from."""

    bn: Dataset
    holdout: Dataset
    pool: str  # "train" or "calibration"
    seed: int
    excluded_eval: int = 0  # samples of the pool left out because the evaluation set holds them

    def __post_init__(self) -> None:
        if self.holdout.y is None:
            raise ValueError("the held-out split needs labels")
        if len(self.bn) < 1 or len(self.holdout) < 1:
            raise ValueError("both splits need at least one sample")

    @classmethod
    def from_recipe_data(
        cls, data: RecipeData, bn_samples: int = 256, holdout_samples: int = 512, seed: int = 0
    ) -> ProxyData:
        """Split the recipe's training data (``train``, else ``calibration``) as the module docstring says.

        When the pool has fewer than ``bn_samples + holdout_samples`` samples, both splits shrink in proportion
        (logged); ``DataError`` when there is no labelled pool, or it is too small for ``MIN_HOLDOUT`` held-out
        and ``MIN_BN`` calibration samples.
        """
        if bn_samples < 1 or holdout_samples < 1:
            raise ValueError(f"bn_samples and holdout_samples must be >= 1, got {bn_samples}, {holdout_samples}")
        name, pool = _pool(data)
        keep = np.arange(len(pool))
        excluded = 0
        if data.eval is not None and data.eval.source == pool.source:
            # the same file: the search must not see a single evaluation sample
            outside = ~np.isin(positions(pool), positions(data.eval))
            excluded = int((~outside).sum())
            keep = keep[outside]
        wanted = bn_samples + holdout_samples
        n_holdout, n_bn = holdout_samples, bn_samples
        if len(keep) < wanted:
            n_holdout = len(keep) * holdout_samples // wanted
            n_bn = len(keep) - n_holdout
            if n_holdout < MIN_HOLDOUT or n_bn < MIN_BN:
                left = f" ({excluded} more are evaluation samples, which a search never uses)" if excluded else ""
                raise DataError(
                    f"The search scores candidates on labelled training data, but the {name} set "
                    f"{pool.source!r} has only {len(keep)} usable sample(s){left}; it needs at least "
                    f"{MIN_HOLDOUT + MIN_BN} ({MIN_HOLDOUT} held out for accuracy, {MIN_BN} for BatchNorm).",
                    "Give more labelled samples in [data] train (a few hundred: 256 for BatchNorm and 512 held out "
                    "by default).",
                )
            log.warning(
                "search: the %s set has %d usable samples, fewer than the %d asked for; using %d held out and %d "
                "for BatchNorm",
                name,
                len(keep),
                wanted,
                n_holdout,
                n_bn,
            )
        order = keep[np.random.default_rng(seed).permutation(len(keep))]
        holdout = np.sort(order[:n_holdout])
        bn = np.sort(order[n_holdout : n_holdout + n_bn])
        return cls(subset(pool, bn), subset(pool, holdout), name, seed, excluded)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "source": self.holdout.source,
            "seed": self.seed,
            "bn_samples": len(self.bn),
            "holdout_samples": len(self.holdout),
            "excluded_eval_samples": self.excluded_eval,
        }


def _pool(data: RecipeData) -> tuple[str, Dataset]:
    """The labelled set the splits come from: ``train`` when it has labelled samples, else ``calibration``."""
    unlabelled = []
    for name, dataset in (("train", data.train), ("calibration", data.calibration)):
        if dataset is None or len(dataset) == 0:
            continue
        if dataset.y is None:
            unlabelled.append(f"{name} {dataset.source!r}")
            continue
        if unlabelled:
            log.info("search: the train set has no labels; scoring candidates on the calibration set")
        return name, dataset
    verb = "has" if len(unlabelled) == 1 else "have"
    given = f" ({' and '.join(unlabelled)} {verb} no labels)" if unlabelled else ""
    raise DataError(
        "A search measures each candidate's accuracy on held-out labelled training data, and the recipe gives no "
        f"labelled [data] train or calibration set{given}.",
        "Set [data] train to labelled data (an .npz with x and y, or class folders); the eval set is kept for the "
        "final report.",
    )
