"""``reduce_tokens(model, input_specs, TokensConfig(...))``: patch the blocks, fix the schedule, check it."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from repfx_deploy.errors import PassError
from repfx_deploy.passes.tokens.adapters import patch_blocks
from repfx_deploy.passes.tokens.config import TokensConfig
from repfx_deploy.passes.tokens.schedule import check_keep, search_keep

if TYPE_CHECKING:
    import torch.nn as nn

    from repfx_deploy.passes.tokens.block import TokenReducedBlock
    from repfx_deploy.spec import InputSpec

log = logging.getLogger("repfx_deploy.passes.tokens")


@dataclass
class TokensResult:
    """The token-reducing copy of the model and what was done (JSON-ready)."""

    module: "nn.Module"
    stats: dict[str, Any] = field(default_factory=dict)


def _shapes_in(model: "nn.Module", blocks: list["TokenReducedBlock"], inputs: list) -> list[tuple[int, ...]]:
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
            raise PassError(f"Transformer block {i} ran {len(shapes)} times in one forward pass.", "The tokens pass needs each block to run once, in a chain.")
    return [tuple(int(d) for d in shapes[0]) for shapes in seen]


class _BlockMacs:
    """MACs of one block for a given (tokens in, keep), counted like ``torch_stats`` on the block alone and
    cached: the model's MACs are the dense count minus the dense blocks' plus the patched blocks', which is
    what the whole-model count gives (a block's cost depends only on its token counts), at a fraction of the
    time of counting the whole model for every schedule the search tries."""

    def __init__(self, blocks: list["TokenReducedBlock"], batch: int, width: int) -> None:
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
    return len(fa) == len(fb) and all(x.shape == y.shape and torch.allclose(x, y, rtol=1e-4, atol=1e-5) for x, y in zip(fa, fb))


def _set_keep(blocks: list["TokenReducedBlock"], keep: tuple[int, ...] | None) -> None:
    for i, block in enumerate(blocks):
        block.keep = None if keep is None else keep[i]


def reduce_tokens(model: "nn.Module", input_specs: tuple["InputSpec", ...], config: TokensConfig) -> TokensResult:
    """A copy of ``model`` whose transformer blocks remove tokens as ``config`` says; ``model`` is untouched.

    Raises ``PassError`` for a block it cannot patch (naming it), for an explicit ``keep`` that does not fit
    the model, and for a FLOPs target no schedule reaches within ``config.tolerance``.
    """
    import torch

    from repfx_deploy.analyze.torch_stats import torch_stats
    from repfx_deploy.data.tensors import random_inputs, to_torch
    from repfx_deploy.modules import inference_mode

    original = inference_mode(model)
    dense_macs = torch_stats(original, input_specs).macs
    patched = copy.deepcopy(original).eval()
    found = patch_blocks(patched)
    paths, blocks = [p for p, _ in found], [b for _, b in found]
    for block in blocks:
        block.configure(config)
    inputs = to_torch(random_inputs(input_specs, seed=0))
    batch, tokens, width = _shapes_in(patched, blocks, inputs)[0]
    block_macs = _BlockMacs(blocks, batch, width)
    with torch.no_grad():
        reference = original(*inputs)
        if not _outputs_match(reference, patched(*inputs)):
            raise PassError("The patched blocks do not reproduce the model's output with every token kept.", "Report this model: its blocks compute something the adapter does not.")
        _set_keep(blocks, (None,) * (len(blocks) - 1) + (1,))
        cls_only_ok = _outputs_match(reference, patched(*inputs))
    cls_last = config.cls_only_last == "on" or (config.cls_only_last == "auto" and cls_only_ok)
    if config.cls_only_last == "on" and not cls_only_ok:
        log.warning("tokens: cls_only_last = on changes this model's output: it reads more than the class token")

    def macs_of(keep: tuple[int, ...]) -> int:
        patched_blocks, n = 0, tokens
        for i, k in enumerate(keep):
            patched_blocks += block_macs(i, n, k)
            n = k
        return dense_macs - sum(block_macs(i, tokens, None) for i in range(len(blocks))) + patched_blocks

    if config.keep is not None:
        keep = config.keep
        if len(keep) != len(blocks):
            raise PassError(f"keep has {len(keep)} counts but the model has {len(blocks)} transformer blocks ({', '.join(paths)}).", f"Give one count per block, {len(blocks)} in all.")
        try:
            check_keep(keep, tokens, config.method)
        except ValueError as e:
            raise PassError(f"keep = {list(keep)} does not fit this model ({tokens} tokens enter the first block): {e}.", "Give non-increasing counts, each at most the tokens entering that block.") from e
    else:
        layers = config.layers if config.layers is not None else tuple(range(len(blocks) - 1))
        bad = [i for i in layers if i >= len(blocks)]
        if bad:
            raise PassError(f"layers names block(s) {bad}, but the model has {len(blocks)} blocks (0-{len(blocks) - 1}).", "Use block indices that exist.")
        keep, _ = search_keep(macs_of, dense_macs, float(config.flops_reduction), config.tolerance, tokens=tokens, blocks=len(blocks),
                              layers=layers, schedule=config.schedule, method=config.method, cls_only_last=cls_last,
                              multiple=config.token_multiple)
    _set_keep(blocks, keep)
    entering = [shape[1] for shape in _shapes_in(patched, blocks, inputs)]
    expected = [tokens, *[k for k in keep[:-1]]]
    if entering != expected:
        raise PassError(f"Tokens entering the blocks were {entering}, expected {expected}: the blocks are not one chain.", "Use the tokens pass on a ViT whose blocks run one after another.")
    after_macs = torch_stats(patched, input_specs).macs
    if after_macs != macs_of(keep):  # the per-block sum the search used must be the whole-model count
        log.warning("tokens: per-block MACs %d differ from the model's %d; the reported figure is the model's", macs_of(keep), after_macs)
    stats = {
        "method": config.method,
        "blocks": paths,
        "family": blocks[0].family,
        "tokens_in": tokens,
        "keep": list(keep),
        "cls_only_last": bool(keep[-1] == 1),
        "macs_before": dense_macs,
        "macs_after": after_macs,
        "flops_reduction": round(1.0 - after_macs / dense_macs, 4),
        "flops_reduction_target": config.flops_reduction,
    }
    log.info("tokens: %s keep %s, MACs %d -> %d (-%.1f %%)", config.method, list(keep), dense_macs, after_macs, 100 * (1 - after_macs / dense_macs))
    return TokensResult(patched, stats)

