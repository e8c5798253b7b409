"""The tokens pass's work: ``prepare_tokens`` patches the blocks and fixes the default schedule once;
``build`` makes a copy with given counts. ``handler.py`` speaks the pass protocol on top of these."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from repfx_deploy.errors import PassError, RecipeError
from repfx_deploy.passes.protocol import PassContext, Prepared, SearchSpace, Site, count
from repfx_deploy.passes.tokens.adapters import patch_blocks
from repfx_deploy.passes.tokens.config import TokensConfig
from repfx_deploy.passes.tokens.schedule import check_keep, search_keep, site_choices

if TYPE_CHECKING:
    import torch.nn as nn

    from repfx_deploy.passes.tokens.block import TokenReducedBlock

log = logging.getLogger("repfx_deploy.passes.tokens")


def _shapes_in(model: nn.Module, blocks: list[TokenReducedBlock], inputs: list) -> list[tuple[int, ...]]:
    """The (batch, tokens, width) shape entering each block on one forward pass (also checks that every block
    runs exactly once)."""
    import torch

    seen: list[list[tuple[int, ...]]] = [[] for _ in blocks]
    hooks = []
    for i, block in enumerate(blocks):

        def hook(module, args, kwargs, i=i):
            x = args[0] if args else next(iter(kwargs.values()))
            seen[i].append(tuple(x.shape) if module.batch_first else (x.shape[1], x.shape[0], x.shape[2]))

        hooks.append(block.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    for i, shapes in enumerate(seen):
        if len(shapes) != 1:
            raise PassError(
                f"Transformer block {i} ran {len(shapes)} times in one forward pass.",
                "The tokens pass needs each block to run once, in a chain.",
            )
    return [tuple(int(d) for d in shapes[0]) for shapes in seen]


class _BlockMacs:
    """MACs of one block for a given (tokens in, keep), counted like ``torch_stats`` on the block alone and
    cached: the model's MACs are the dense count minus the dense blocks' plus the patched blocks', which is
    what the whole-model count gives (a block's cost depends only on its token counts), at a fraction of the
    time of counting the whole model for every schedule the search tries."""

    def __init__(self, blocks: list[TokenReducedBlock], batch: int, width: int) -> None:
        self.blocks, self.batch, self.width = blocks, batch, width
        self.cache: dict[tuple[int, int, int | None], int] = {}

    def __call__(self, index: int, tokens: int, keep: int | None) -> int:
        key = (index, tokens, keep)
        if key not in self.cache:
            import torch
            from torch.utils.flop_counter import FlopCounterMode

            from repfx_deploy.analyze.torch_stats import _custom_flop_formulas

            block = self.blocks[index]
            x = torch.randn(self.batch, tokens, self.width, generator=torch.Generator().manual_seed(0))
            if not block.batch_first:
                x = x.transpose(0, 1)
            saved, block.keep = block.keep, keep
            counter = FlopCounterMode(display=False, custom_mapping=_custom_flop_formulas())
            try:
                with torch.no_grad(), counter:
                    block(x)
            finally:
                block.keep = saved
            self.cache[key] = counter.get_total_flops() // 2
        return self.cache[key]


def _outputs_match(a, b) -> bool:
    import torch

    from repfx_deploy.measure.runtimes import _flatten

    fa, fb = _flatten(a), _flatten(b)
    return len(fa) == len(fb) and all(
        x.shape == y.shape and torch.allclose(x, y, rtol=1e-4, atol=1e-5) for x, y in zip(fa, fb)
    )


def _set_keep(blocks: list[TokenReducedBlock], keep: tuple[int | None, ...] | None) -> None:
    for i, block in enumerate(blocks):
        block.keep = None if keep is None else keep[i]


@dataclass
class TokensPrepared(Prepared[TokensConfig]):
    """What ``prepare_tokens`` computed once: ``template``, a copy of the model with every supported block
    patched (``paths``, in model order) and every token kept, never changed afterwards; the tokens entering the
    first block; whether the last block may compute the class token alone; the default counts and, when they
    were searched, the MACs reduction they reach."""

    template: nn.Module
    paths: tuple[str, ...]
    family: str
    tokens_in: int
    cls_last: bool
    default_keep: tuple[int, ...]
    searched_reduction: float | None

    def counts(self, assignment: dict[str, Any]) -> tuple[int, ...]:
        """A complete assignment (by block name) as counts in model order, checked to be a feasible schedule:
        ``RecipeError`` naming the blocks when a count grows along depth, exceeds what the first block receives,
        is 1 before the last block, or removes more than the method can in one block."""
        keep = tuple(int(assignment[p]) for p in self.paths)
        feasible(keep, self.tokens_in, self.config.method, self.paths)
        return keep


def feasible(keep: tuple[int, ...], tokens: int, method: str, paths: tuple[str, ...]) -> None:
    """``schedule.check_keep`` as a ``RecipeError`` naming the blocks involved."""
    try:
        check_keep(keep, tokens, method, paths)
    except ValueError as e:
        raise RecipeError(
            f"tokens: keep {dict(zip(paths, keep))} is not a feasible schedule: {e}.",
            "Give counts that do not grow from one block to the next, each one a block can reach.",
        ) from e


def _explicit_keep(config: TokensConfig, paths: tuple[str, ...], tokens: int) -> tuple[int, ...]:
    """``config.keep`` as counts in model order: positional (one per block) or by name, where a block left out
    keeps every token it receives."""
    by_name = config.keep_by_name
    if by_name is None:
        keep = config.keep_counts or ()
        if len(keep) != len(paths):
            raise RecipeError(
                f"keep has {len(keep)} counts but the model has {len(paths)} transformer blocks ({', '.join(paths)}).",
                f"Give one count per block, {len(paths)} in all, or a table by block name.",
            )
        return keep
    unknown = sorted(set(by_name) - set(paths))
    if unknown:
        raise RecipeError(
            f"keep names {unknown}, which are not transformer blocks of this model.",
            f"Use block names: {', '.join(paths)}.",
        )
    out, n = [], tokens
    for path in paths:
        n = by_name.get(path, n)
        out.append(n)
    return tuple(out)


def prepare_tokens(module: nn.Module, config: TokensConfig, context: PassContext) -> TokensPrepared:
    """Patch a copy of ``module`` once and fix its default schedule; ``module`` is not changed.

    Done here, once: the copy and its block discovery and adapters (``patch_blocks``), the check that the
    patched blocks reproduce the model's output with every token kept, the test whether the model reads only
    the class token (``cls_only_last = "auto"``), the per-block MACs and the schedule search for a
    ``flops_reduction``, and the space. The tokens each block removes are chosen per input at run time (the
    scores come from that input's attention), so there are no token scores to cache: the pass is zero-shot.

    ``PassError`` for a block it cannot patch (naming it), a model whose blocks are not one chain, or a FLOPs
    target no schedule reaches within ``config.tolerance``; ``RecipeError`` for a ``keep`` that does not fit.
    """
    import torch

    from repfx_deploy.data.tensors import random_inputs, to_torch
    from repfx_deploy.modules import inference_mode

    before = count(module, context)
    original = inference_mode(copy.deepcopy(module))
    template = inference_mode(copy.deepcopy(original))
    found = patch_blocks(template)
    paths, blocks = tuple(p for p, _ in found), [b for _, b in found]
    for block in blocks:
        block.configure(config)
    inputs = to_torch(random_inputs(context.input_specs, seed=0))
    batch, tokens, width = _shapes_in(template, blocks, inputs)[0]
    with torch.no_grad():
        reference = original(*inputs)
        if not _outputs_match(reference, template(*inputs)):
            raise PassError(
                "The patched blocks do not reproduce the model's output with every token kept.",
                "Report this model: its blocks compute something the adapter does not.",
            )
        _set_keep(blocks, (None,) * (len(blocks) - 1) + (1,))
        cls_only_ok = _outputs_match(reference, template(*inputs))
        _set_keep(blocks, None)
    del original
    cls_last = config.cls_only_last == "on" or (config.cls_only_last == "auto" and cls_only_ok)
    if config.cls_only_last == "on" and not cls_only_ok:
        log.warning("tokens: cls_only_last = on changes this model's output: it reads more than the class token")

    reached: float | None = None
    if config.keep is not None:
        keep = _explicit_keep(config, paths, tokens)
        feasible(keep, tokens, config.method, paths)
    else:
        keep, reached = _search(config, blocks, before.macs, batch, tokens, width, cls_last)
    multiple = config.token_multiple or context.channel_multiple
    space = SearchSpace(
        "tokens",
        tuple(
            Site(name=path, knob="tokens_kept", choices=choices, default=default, unchanged=tokens)
            for path, choices, default in zip(
                paths, site_choices(tokens, keep, multiple, config.method, cls_only_last=cls_last), keep
            )
        ),
    )
    prepared = TokensPrepared(
        module,
        config,
        context,
        space,
        before,
        template=template,
        paths=paths,
        family=blocks[0].family,
        tokens_in=tokens,
        cls_last=cls_last,
        default_keep=keep,
        searched_reduction=reached,
    )
    # the blocks must form one chain: with every site at its first (smallest) choice, each block receives what the
    # one before it kept
    floor = tuple(int(s.choices[0]) for s in space.sites)
    _set_keep(blocks, floor)
    try:
        entering = [shape[1] for shape in _shapes_in(template, blocks, inputs)]
    finally:
        _set_keep(blocks, None)
    expected = [tokens, *floor[:-1]]
    if entering != expected:
        raise PassError(
            f"Tokens entering the blocks were {entering}, expected {expected}: the blocks are not one chain.",
            "Use the tokens pass on a ViT whose blocks run one after another.",
        )
    return prepared


def _search(
    config: TokensConfig,
    blocks: list[TokenReducedBlock],
    dense_macs: int,
    batch: int,
    tokens: int,
    width: int,
    cls_last: bool,
) -> tuple[tuple[int, ...], float]:
    """The counts reaching ``config.flops_reduction`` (``schedule.search_keep``), and the reduction reached."""
    block_macs = _BlockMacs(blocks, batch, width)
    dense_blocks = sum(block_macs(i, tokens, None) for i in range(len(blocks)))

    def macs_of(keep: tuple[int, ...]) -> int:
        patched_blocks, n = 0, tokens
        for i, k in enumerate(keep):
            patched_blocks += block_macs(i, n, k)
            n = k
        return dense_macs - dense_blocks + patched_blocks

    layers = config.layers if config.layers is not None else tuple(range(len(blocks) - 1))
    bad = [i for i in layers if i >= len(blocks)]
    if bad:
        raise RecipeError(
            f"layers names block(s) {bad}, but the model has {len(blocks)} blocks (0-{len(blocks) - 1}).",
            "Use block indices that exist.",
        )
    return search_keep(
        macs_of,
        dense_macs,
        float(config.flops_reduction or 0.0),
        config.tolerance,
        tokens=tokens,
        blocks=len(blocks),
        layers=layers,
        schedule=config.schedule,
        method=config.method,
        cls_only_last=cls_last,
        multiple=config.token_multiple or 1,
    )


def build(prepared: TokensPrepared, keep: tuple[int, ...]) -> nn.Module:
    """A copy of the prepared template whose blocks keep ``keep`` tokens (model order; checked by the caller);
    the template is not changed."""
    model = copy.deepcopy(prepared.template)
    for path, k in zip(prepared.paths, keep):
        block = model.get_submodule(path)
        block.keep = k  # type: ignore[assignment]
    return model
