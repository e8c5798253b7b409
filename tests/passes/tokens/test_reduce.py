"""The token-removal primitives: class token first, static counts, PageRank and merging semantics."""

from __future__ import annotations

import pytest
import torch

from repfx_deploy.passes.tokens.importance import pagerank_importance
from repfx_deploy.passes.tokens.merge import (
    bipartite_merge,
    gather_tokens,
    head_mean,
    merge_into,
    normalized,
)
from repfx_deploy.passes.tokens.select import candidate_pool, zero_tprune


def _tokens(n: int = 17, c: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, n, c, generator=torch.Generator().manual_seed(seed))


def _attention_to(target: int, n: int = 17) -> torch.Tensor:
    """Every query attends mostly to ``target``: (1, 2 heads, n, n) probabilities."""
    logits = torch.zeros(1, 2, n, n)
    logits[..., target] = 4.0
    return logits.softmax(-1)


def test_pagerank_ranks_most_attended_token_first():
    for aggregation in ("mean", "rms"):
        for start in ("uniform", "cls"):
            importance = pagerank_importance(_attention_to(5), iterations=3, aggregation=aggregation, start=start)
            assert importance.shape == (1, 17)
            assert int(importance.argmax()) == 5


def test_pagerank_uniform_scores_sum_to_one_per_head():
    probs = _tokens(17, 17).softmax(-1).unsqueeze(1).expand(2, 3, 17, 17)
    assert torch.allclose(pagerank_importance(probs, 4, "mean").sum(-1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("reduction", ["drop", "merge"])
@pytest.mark.parametrize("factor", [1.0, 2.0, 3.0])
def test_zero_tprune_keeps_cls_first_and_static_count(reduction, factor):
    x = _tokens()
    importance = torch.rand(2, 17, generator=torch.Generator().manual_seed(3))
    importance[:, 0] = 0.0  # least important of all: still kept
    out = zero_tprune(x, x, importance, remove=6, factor=factor, reduction=reduction)
    assert out.shape == (2, 11, 8)
    assert torch.equal(out[:, 0], x[:, 0])


def test_zero_tprune_pure_importance_drops_least_important():
    x = _tokens()
    importance = torch.arange(17.0).expand(2, 17)  # token 1 least important, token 16 most
    out = zero_tprune(x, x, importance, remove=4, factor=1.0, reduction="drop")
    kept = {tuple(t.tolist()) for t in out[0]}
    assert kept == {tuple(x[0, i].tolist()) for i in [0, *range(5, 17)]}


def test_zero_tprune_drops_duplicate_of_kept_token():
    x = _tokens()
    x[:, 2] = x[:, 9] * 3.0  # token 2 is (in direction) a copy of token 9
    importance = torch.ones(2, 17)
    importance[:, 2] = importance[:, 3] = 0.5  # tokens 2 and 3 are the two candidates
    out = zero_tprune(x, x, importance, remove=1, factor=2.0, reduction="drop")
    rows = [tuple(t.tolist()) for t in out[0]]
    assert tuple(x[0, 2].tolist()) not in rows and tuple(x[0, 3].tolist()) in rows


def test_candidate_pool_leaves_one_sure_token():
    assert candidate_pool(patches=16, remove=10, factor=3.0) == 15
    assert candidate_pool(patches=16, remove=4, factor=1.0) == 4


def test_merge_into_averages_sources_with_destination():
    dst = torch.tensor([[[0.0], [10.0]]])
    src = torch.tensor([[[2.0], [4.0]]])
    out = merge_into(dst, src, torch.tensor([[0, 0]]))
    assert torch.allclose(out, torch.tensor([[[2.0], [10.0]]]))


def test_bipartite_merge_keeps_cls_and_removes_exactly_r():
    x = _tokens()
    out = bipartite_merge(x, x, remove=5)
    assert out.shape == (2, 12, 8)
    assert torch.equal(out[:, 0], x[:, 0])


def test_bipartite_merge_refuses_more_than_half():
    with pytest.raises(ValueError, match="at most 8"):
        bipartite_merge(_tokens(), _tokens(), remove=9)


def _zero_tprune_direct(x, metric, importance, remove, factor, reduction):
    """Zero-TPrune written directly (each set gathered on its own): the reference for the few-operator form."""
    patches = x.shape[1] - 1
    pool = candidate_pool(patches, remove, factor)
    order = torch.topk(importance[:, 1:], patches, dim=1).indices + 1
    sure, candidates = order[:, : patches - pool], order[:, patches - pool :]
    if pool == remove and reduction == "drop":
        return torch.cat([x[:, :1], gather_tokens(x, sure)], dim=1)
    m = normalized(metric)
    best, match = (gather_tokens(m, candidates) @ gather_tokens(m, sure).transpose(1, 2)).max(dim=-1)
    by_redundancy = torch.topk(best, pool, dim=1).indices
    gone, spared = by_redundancy[:, :remove], by_redundancy[:, remove:]
    kept_sure = gather_tokens(x, sure)
    if reduction == "merge":
        kept_sure = merge_into(
            kept_sure, gather_tokens(x, torch.gather(candidates, 1, gone)), torch.gather(match, 1, gone)
        )
    return torch.cat([x[:, :1], kept_sure, gather_tokens(x, torch.gather(candidates, 1, spared))], dim=1)


@pytest.mark.parametrize("reduction", ["drop", "merge"])
@pytest.mark.parametrize("factor", [1.0, 1.5, 2.0, 4.0])
def test_zero_tprune_matches_direct_form(reduction, factor):
    x = _tokens(33, 16, seed=5)
    metric = _tokens(33, 8, seed=6)
    importance = torch.rand(2, 33, generator=torch.Generator().manual_seed(7))
    got = zero_tprune(x, metric, importance, remove=7, factor=factor, reduction=reduction)
    torch.testing.assert_close(
        got, _zero_tprune_direct(x, metric, importance, 7, factor, reduction), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("aggregation", ["mean", "rms"])
@pytest.mark.parametrize("start", ["uniform", "cls"])
@pytest.mark.parametrize("iterations", [1, 2, 5])
def test_pagerank_matches_power_iteration(aggregation, start, iterations):
    probs = torch.randn(2, 3, 17, 17, generator=torch.Generator().manual_seed(8)).softmax(-1)
    s = probs[:, :, :1] if start == "cls" else torch.full_like(probs[:, :, :1], 1.0 / 17) @ probs
    for _ in range(iterations - 1):
        s = s @ probs
    s = s.squeeze(2)
    expected = (s * s).mean(1).sqrt() if aggregation == "rms" else s.mean(1)
    torch.testing.assert_close(
        pagerank_importance(probs, iterations, aggregation, start), expected, rtol=1e-5, atol=1e-7
    )


def test_head_mean_equals_mean_over_heads():
    k = torch.randn(2, 4, 9, 6, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(head_mean(k), k.mean(dim=1), rtol=1e-5, atol=1e-6)
