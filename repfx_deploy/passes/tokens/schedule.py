"""Tokens kept per block: from explicit counts, or searched to remove a fraction of the model's MACs; and the
counts each block's site offers a search.

The MACs are counted on the patched model itself (``analyze.torch_stats``: linears, matmuls, attention,
the PageRank and similarity products included; elementwise ops, softmax and top-k are not MACs), so the
reduction a schedule reaches is exactly what the exported model computes.
"""

from __future__ import annotations

from collections.abc import Callable

from repfx_deploy.errors import PassError
from repfx_deploy.passes.protocol import kept_choices


def max_remove(tokens: int, method: str) -> int:
    """The most tokens one block can remove from ``tokens``: token merging pairs set A with set B, so at most
    half the patch tokens (rounded up); pruning keeps the class token and one patch token."""
    patches = tokens - 1
    return (patches + 1) // 2 if method == "merge" else max(patches - 1, 0)


def round_count(n: int, before: int, multiple: int, method: str) -> int:
    """``n`` tokens (class token included) moved to the nearest multiple of ``multiple`` that one block can reach
    from ``before`` (at least 2 tokens, at most ``before``); ``n`` itself when none can."""
    if multiple <= 1 or n == before:
        return n
    reachable = [
        c for c in range(multiple, before + 1, multiple) if c >= 2 and before - c <= max_remove(before, method)
    ]
    return min(reachable, key=lambda c: (abs(c - n), c)) if reachable else n


def keep_counts(
    tokens: int,
    blocks: int,
    layers: tuple[int, ...],
    step: float,
    schedule: str,
    method: str,
    cls_only_last: bool,
    multiple: int = 1,
) -> tuple[int, ...]:
    """Tokens leaving each of ``blocks`` blocks when each block in ``layers`` removes ``step`` tokens
    (``schedule = "constant"``; a fractional step is spread by cumulative rounding, so 2.5 removes 3, 2, 3, 2)
    or the fraction ``step`` of its tokens (``"ratio"``); each reduced count is then rounded to a ``multiple``
    (``round_count``)."""
    keep, n, j = [], tokens, 0
    for i in range(blocks):
        if cls_only_last and i == blocks - 1:
            keep.append(1)
            continue
        if i in layers:
            remove = int(step * (j + 1) + 0.5) - int(step * j + 0.5) if schedule == "constant" else int(n * step + 0.5)
            n = round_count(n - max(0, min(remove, max_remove(n, method))), n, multiple, method)
            j += 1
        keep.append(n)
    return tuple(keep)


def check_keep(keep: tuple[int, ...], tokens: int, method: str, names: tuple[str, ...] | None = None) -> None:
    """``ValueError`` unless ``keep`` is a feasible schedule for blocks receiving ``tokens`` tokens: counts that
    do not grow along depth, 1 (the class token alone) only in the last block, and no block removing more than
    ``max_remove``. The message names the blocks (``names``, default "block i") involved."""
    names = names or tuple(f"block {i}" for i in range(len(keep)))
    n = tokens
    for i, k in enumerate(keep):
        if k > n:
            if i == 0:
                raise ValueError(f"{names[0]} keeps {k} tokens but receives only {tokens}")
            raise ValueError(
                f"{names[i]} keeps {k} tokens but {names[i - 1]} before it keeps only {n}: counts must not grow along depth"
            )
        if k == 1 and i != len(keep) - 1:
            raise ValueError(
                f"{names[i]} keeps 1 token (the class token alone), which is allowed only in the last block ({names[-1]})"
            )
        if k > 1 and n - k > max_remove(n, method):
            came = f"{names[i - 1]}'s {n}" if i else f"the {n} it receives"
            raise ValueError(
                f"{names[i]} cannot go from {came} to {k} tokens with method {method!r} (at most {max_remove(n, method)} removed per block)"
            )
        n = k


def site_choices(
    tokens: int, defaults: tuple[int, ...], multiple: int, method: str, *, cls_only_last: bool, steps: int = 12
) -> tuple[tuple[int, ...], ...]:
    """The counts each block's site offers (ascending, class token included): multiples of ``multiple`` from a
    floor up to ``tokens`` (the count every block receives in the unreduced model), thinned to about ``steps``,
    plus ``tokens`` itself (unchanged), the block's default, and 1 on the last block when ``cls_only_last``.

    A block's floor is the fewest tokens it can be left with when every block before it took its own smallest
    choice (``max_remove``), so the assignment of every site's first choice is a feasible schedule (as the
    default is, and ``check_keep`` holds for both)."""
    out: list[tuple[int, ...]] = []
    previous = tokens  # the smallest choice of the block before
    for i, default in enumerate(defaults):
        floor = max(2, previous - max_remove(previous, method))
        values = set(kept_choices(tokens, multiple, minimum=floor, steps=steps)) | {default}
        if cls_only_last and i == len(defaults) - 1:
            values.add(1)
        choices = tuple(sorted(values))
        out.append(choices)
        previous = choices[0]
    return tuple(out)


def search_keep(
    macs_of: Callable[[tuple[int, ...]], int],
    dense_macs: int,
    target: float,
    tolerance: float,
    *,
    tokens: int,
    blocks: int,
    layers: tuple[int, ...],
    schedule: str,
    method: str,
    cls_only_last: bool,
    multiple: int = 1,
) -> tuple[tuple[int, ...], float]:
    """The schedule whose MACs reduction (``1 - macs / dense_macs``) is closest to ``target``, and that
    reduction. Bisection on the step (reduction grows with it; each distinct schedule is counted once);
    ``PassError`` when the closest is farther than ``tolerance``."""
    cache: dict[tuple[int, ...], float] = {}

    def reduction(step: float) -> tuple[tuple[int, ...], float]:
        keep = keep_counts(tokens, blocks, layers, step, schedule, method, cls_only_last, multiple)
        if keep not in cache:
            cache[keep] = 1.0 - macs_of(keep) / dense_macs
        return keep, cache[keep]

    lo, hi = 0.0, float(tokens - 2) if schedule == "constant" else 0.95
    eps = 0.01 if schedule == "constant" else 1e-4  # finer steps give the same counts
    if reduction(hi)[1] >= target:
        while hi - lo > eps:
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if reduction(mid)[1] >= target else (mid, hi)
    candidates = [reduction(lo), reduction(hi)]
    keep, reached = min(candidates, key=lambda c: abs(c[1] - target))
    if abs(reached - target) > tolerance:
        most = max(cache.values())
        raise PassError(
            f"A {target:.0%} MACs reduction is not reachable within +-{tolerance:.0%} by removing tokens at blocks {list(layers)} "
            f"({schedule} schedule, {method}): the closest is {reached:.1%} (the most reachable {most:.1%}).",
            "Prune at more blocks (layers = [...]), raise tolerance, or give keep = [...] explicitly.",
        )
    return keep, reached
