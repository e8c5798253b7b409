"""How much each channel class matters: magnitude (L1, L2), BatchNorm scale, or first-order Taylor.

Every slice a class owns contributes: the rows/columns of the conv and linear weights it removes and its norm
scale. Each layer's scores are divided by that layer's mean score first, so a wide or large-valued layer does not
drown the others, then summed per class (what Torch-Pruning calls group importance with mean normalisation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from repfx_deploy.errors import DataError

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from repfx_deploy.data.datasets import Dataset
    from repfx_deploy.passes.prune.graph import DependencyGraph


def class_scores(
    module: nn.Module,
    graph: DependencyGraph,
    criterion: str,
    *,
    calibration: Dataset | None = None,
    batches: int = 8,
    batch_size: int = 32,
) -> dict[int, float]:
    """Importance per class root (higher = keep). ``taylor`` needs ``calibration`` (labels used when present,
    the model's own predictions otherwise). ``bn_scale`` scores classes without a norm layer by L2."""
    grads = _taylor_grads(module, calibration, batches, batch_size) if criterion == "taylor" else {}
    scores: dict[int, float] = {}
    norm_scores: dict[int, float] = {}
    for cut in graph.cuts:
        if cut.role == "other":
            continue
        w = _get(module, cut.module, cut.name).detach()
        if criterion == "taylor":
            g = grads.get(f"{cut.module}.{cut.name}".strip("."))
            if g is None:
                continue
            per = (w * g).abs()
        elif criterion == "l1":
            per = w.abs()
        else:
            per = w.pow(2)
        s = per.transpose(0, cut.dim).reshape(per.shape[cut.dim], -1).sum(1)
        mean = float(s.mean())
        if mean > 0:
            s = s / mean
        target = norm_scores if (criterion == "bn_scale" and cut.role == "norm") else scores
        if criterion == "bn_scale" and cut.role == "norm":
            s = w.abs() / max(float(w.abs().mean()), 1e-12)
        for e, v in zip(cut.elems, s.tolist()):
            r = graph.classes.find(e)
            target[r] = target.get(r, 0.0) + v
    if criterion == "bn_scale":
        scores = {r: norm_scores.get(r, v) for r, v in scores.items()} | norm_scores
    return scores


def _get(module: nn.Module, owner: str, name: str) -> torch.Tensor:
    return getattr(module.get_submodule(owner) if owner else module, name)


def _taylor_grads(module: nn.Module, data: Dataset | None, batches: int, batch_size: int) -> dict[str, torch.Tensor]:
    """Gradients of the loss summed over ``batches`` calibration batches, by parameter name."""
    import torch
    import torch.nn.functional as F

    if data is None or len(data) == 0:
        raise DataError(
            "Taylor importance needs calibration data, but none was given.",
            'Set the recipe\'s [data] calibration (or --calibration), or use importance = "l2".',
        )
    was_training = module.training
    flags = {n: p.requires_grad for n, p in module.named_parameters()}
    module.eval()  # BatchNorm statistics must not move while scoring
    for p in module.parameters():
        p.requires_grad_(True)
        p.grad = None
    x = torch.from_numpy(data.x)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    size = min(batch_size, len(x))
    try:
        for b in range(min(batches, max(1, len(x) // size))):
            idx = order[b * size : (b + 1) * size]
            out = module(x[idx])
            out = out[0] if isinstance(out, (tuple, list)) else out
            labels = data.y if data.labeled else None
            target = torch.from_numpy(labels[idx.numpy()]).long() if labels is not None else out.detach().argmax(-1)
            F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1)).backward()
        return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    finally:
        for n, p in module.named_parameters():
            p.grad = None
            p.requires_grad_(flags[n])
        module.train(was_training)
