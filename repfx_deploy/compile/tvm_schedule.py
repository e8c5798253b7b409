"""A cheap default CPU schedule for the PrimFuncs TVM lowers a model to.

Untuned TVM 0.27 CPU code is one scalar loop nest per kernel on one thread: 10-50x slower than ONNX
Runtime on the models measured here. MetaSchedule fixes that only after many trials, each a
1.5-3 s compile, so a few minutes of tuning leaves most kernels poor. This module gives every
kernel a fixed, analytically chosen schedule instead, in well under a second per kernel:

* an *anchor* (a reduction whose innermost output axis is a spatial loop: conv2d in NHWC, matmul,
  pooling and mean in NHWC) is register-tiled: ``rows x vec`` output elements are accumulated in
  vector registers while the reduction loops run, the innermost output axis is vectorized, the
  rows are unrolled, the outer output loops are fused and parallelized, and the elementwise
  epilogue (bias, residual add, ReLU) is computed per tile while the tile is still in cache;
* injective kernels and the padded input of an anchor are fused, parallelized and vectorized;
* row reductions (softmax, layer norm) run row by row in one parallel loop, with vectorized
  elementwise stages and the reductions split into vector-wide partial sums (rfactor).

It pays off only with vectorizable layouts, so convolutions are converted to NHWC/HWIO first
(see ``tvm_build``). Kernels it does not recognise keep TVM's plain loops. The schedule uses only
traceable primitives, so it can be replayed and compared with MetaSchedule's records (``tvm_tune``).
"""

from __future__ import annotations

import logging

log = logging.getLogger("repfx_deploy.compile")

# An anchor with fewer multiply-adds than this runs on one thread: a TVM parallel region costs a
# few microseconds to launch and join, which is more than such a kernel takes on one core.
PARALLEL_MIN_MACS = 60_000
# Injective kernels with fewer elements than this are not parallelized, for the same reason.
PARALLEL_MIN_ELEMS = 32_768
# Accumulator budget of a register tile, in vector registers (AVX-512 has 32; leave room for the
# weight vector and the broadcast inputs).
MAX_ACC_VECTORS = 16
MAX_ROWS = 8


_SPATIAL, _REDUCE = 0, 2  # tirx.IterVar.DataPar, tirx.IterVar.CommReduce


def _ext(sch, loop) -> int | None:
    from tvm import tirx

    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _static_exts(sch, loops) -> list[int] | None:
    """The extents of ``loops``, or None when any of them is not a constant."""
    exts = [_ext(sch, lp) for lp in loops]
    static = [e for e in exts if e is not None]
    return static if len(static) == len(exts) else None


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _pick_vec(extent: int, lanes: int) -> int:
    """Elements of the innermost output axis one tile covers: whole vectors where the axis allows."""
    for k in (2, 1):
        if extent % (lanes * k) == 0:
            return lanes * k
    if lanes // 2 >= 4 and extent % (lanes // 2) == 0:
        # 24, 40, 56 channels on AVX-512: half vectors. One 24-wide "odd" vector here ran 20-80x slower
        # than ONNX Runtime (pruned models rounded to 8 channels hit it on every conv).
        return lanes // 2
    if extent <= 2 * lanes:
        return extent  # one short, odd-width vector (LLVM splits it into legal pieces)
    # Wider rows are split into divisor-wide vectors: a token-pruned ViT's q k^T kernel at 45 tokens ran 4x
    # faster as 3 x 15 than as one 45-wide vector, at 58 tokens 2.3x as 2 x 29; 51 (3 x 17) gained nothing,
    # and a 16-wide split with a tail predicate was slower than either.
    fits = [d for d in _divisors(extent) if d <= 2 * lanes]
    return max(fits)


def _pick_rows(extent: int, vec_regs: int) -> int:
    """Rows one tile covers: the largest divisor of ``extent`` that fits the accumulator budget; when only 1
    does (a prime extent), the most that fit, the last tile running short (a predicate per row).

    A ViT's 197 tokens got one row per tile, so every weight vector was reloaded for every token: DeiT-S's
    MLP matmuls ran at a third of their speed, the whole model 2.2x slower (1 thread). Short tails cost
    where a small divisor exists: a token-pruned ViT at 58, 51, 38 tokens was 11-14 % slower with 8-row
    tiles and a tail than with 2 or 3 rows; with tails at prime counts only (31 there) it was 5-7 % faster.
    """
    most = max(1, min(MAX_ROWS, MAX_ACC_VECTORS // vec_regs, extent))
    best = max(d for d in _divisors(extent) if d <= most)
    return most if best == 1 else best


def _is_anchor(sch, block) -> bool:
    """A reduction block whose output's innermost index is its last spatial iterator."""
    from tvm import tirx

    stmt = sch.get(block)
    kinds = [iv.iter_type for iv in stmt.iter_vars]
    if tirx.IterVar.CommReduce not in kinds or tirx.IterVar.DataPar not in kinds:
        return False
    if any(k not in (tirx.IterVar.DataPar, tirx.IterVar.CommReduce) for k in kinds):
        return False
    if len(stmt.writes) != 1:
        return False
    spatial = [iv for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.DataPar]
    last_index = stmt.writes[0].region[-1].min
    if not (isinstance(last_index, tirx.Var) and last_index.same_as(spatial[-1].var)):
        return False
    # the loops must map one to one onto the block's iterators (true straight after lowering)
    loops = sch.get_loops(block)
    if len(loops) != len(stmt.iter_vars):
        return False
    return _static_exts(sch, loops) is not None


def _inline_all(sch, root, keep) -> None:
    """Inline every non-output spatial block except ``keep`` until nothing more inlines."""
    changed = True
    while changed:
        changed = False
        for block in sch.get_child_blocks(root):
            name = sch.get(block).name_hint
            if name in keep:
                continue
            try:
                sch.compute_inline(block)
                changed = True
            except Exception:  # noqa: BLE001 - "cannot inline" is an answer here, not a failure
                continue


def _schedule_injective(sch, block, lanes: int) -> None:
    """Fuse the loops of a spatial block, vectorize the inside and parallelize the outside if large."""
    loops = sch.get_loops(block)
    exts = _static_exts(sch, loops)
    if not loops or exts is None:
        return
    total = 1
    for e in exts:
        total *= e
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    inner_ext = exts[-1]
    if total % lanes == 0 and inner_ext % lanes == 0:
        vec = lanes
    elif inner_ext <= 4 * lanes and total % inner_ext == 0:
        vec = inner_ext
    else:
        vec = 1
    if vec > 1 and total > vec:
        outer, inner = sch.split(fused, factors=[None, vec])
        sch.vectorize(inner)
    elif vec > 1:
        sch.vectorize(fused)
        return
    else:
        outer = fused
    if total >= PARALLEL_MIN_ELEMS:
        po, _ = sch.split(outer, factors=[None, 8]) if (total // max(vec, 1)) % 8 == 0 else (outer, None)
        sch.parallel(po)


def _consumer_width(sch, block) -> int | None:
    """The innermost extent of what the anchor's single consumer writes, if it is a constant."""
    from tvm import tirx

    consumers = sch.get_consumers(block)
    if len(consumers) != 1:
        return None
    extent = sch.get(consumers[0]).writes[0].source.shape[-1]
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _row_candidates(stmt, s_idx: list[int], exts: list) -> list[int]:
    """Spatial axes (besides the vectorized last one) a tile may hold several rows of; the last is used.

    Rows should share the vector operand: an axis that does not index the reads the vectorized axis
    indexes. NHWC convolution and matmul: the weight vector is shared by output pixels / rows (the
    axes before it, as before). NCHW convolution: the input row vector is shared by output channels,
    not by output rows (whose inputs differ).
    """
    from tvm import tirx

    v_var = stmt.iter_vars[s_idx[-1]].var

    def used(region) -> list:
        return [v for r in region.region for v in tirx.analysis.undefined_vars(r.min)]

    vector_reads = [used(r) for r in stmt.reads if any(v.same_as(v_var) for v in used(r))]
    candidates = [i for i in s_idx[:-1] if exts[i] > 1]
    if vector_reads:
        sharing = [
            i for i in candidates if not any(any(v.same_as(stmt.iter_vars[i].var) for v in vs) for vs in vector_reads)
        ]
        if sharing:
            return sharing
    return candidates


def _schedule_anchor(sch, block, lanes: int) -> None:
    """Register-tile an anchor and compute its epilogue per tile (see the module docstring).

    An anchor whose output is wider than what its consumer writes (channels padded to whole vectors by
    ``pad_channels``, sliced back in the epilogue) is tiled over its whole width, so that no tile mixes
    real and padded channels (which would need a predicate the schedule verifier rejects).
    """
    from tvm import tirx

    stmt = sch.get(block)
    loops = sch.get_loops(block)
    kinds = [iv.iter_type for iv in stmt.iter_vars]
    exts = _static_exts(sch, loops)
    assert exts is not None, "an anchor's loops have constant extents (checked by _is_anchor)"
    s_idx = [i for i, k in enumerate(kinds) if k == tirx.IterVar.DataPar]
    r_idx = [i for i, k in enumerate(kinds) if k == tirx.IterVar.CommReduce]
    macs = 1
    for e in exts:
        macs *= e

    v = s_idx[-1]
    written = _consumer_width(sch, block)
    padded = written is not None and written < exts[v]
    vec = exts[v] if padded else _pick_vec(exts[v], lanes)
    v_o, v_i = sch.split(loops[v], factors=[None, vec])
    vec_regs = max(1, -(-vec // lanes))
    row_candidates = _row_candidates(stmt, s_idx, exts)
    r_o = r_i = None
    if row_candidates:
        r = row_candidates[-1]
        rows = _pick_rows(exts[r], vec_regs)
        r_o, r_i = sch.split(loops[r], factors=[None, rows])
    outer = []
    for i in s_idx[:-1]:
        if r_o is not None and i == row_candidates[-1]:
            outer.append(r_o)
        else:
            outer.append(loops[i])
    outer.append(v_o)
    reds = [loops[i] for i in r_idx]
    inner = ([r_i] if r_i is not None else []) + [v_i]
    sch.reorder(*outer, *reds, *inner)

    consumers = sch.get_consumers(block)
    for c in consumers:
        sch.reverse_compute_at(c, outer[-1], preserve_unit_loops=True)

    # parallel before decompose_reduction: TIR only parallelizes loops over complete reduction blocks
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if macs >= PARALLEL_MIN_MACS and (_ext(sch, fused) or 0) > 1:
        sch.parallel(fused)
    n_outer = 1
    if r_i is not None:
        sch.unroll(r_i)
    sch.vectorize(v_i)
    init = sch.decompose_reduction(block, reds[0])
    init_loops = sch.get_loops(init)
    sch.vectorize(init_loops[-1])
    for c in consumers:
        c_loops = sch.get_loops(c)[n_outer:]
        if padded and c_loops:
            # rows of ``written`` channels: vectorize along a row only (a vector across rows would
            # need a gather: the row stride of the padded tile differs from the output's)
            sch.vectorize(c_loops[-1])
        elif c_loops:
            inner_c = sch.fuse(*c_loops) if len(c_loops) > 1 else c_loops[0]
            c_ext = _ext(sch, inner_c)
            if c_ext is not None and c_ext % vec == 0 and c_ext > vec:
                _, cv = sch.split(inner_c, factors=[None, vec])
                sch.vectorize(cv)
            else:
                sch.vectorize(inner_c)


def _rfactor_row(sch, block, lanes: int):
    """Split a row reduction into ``w`` partial sums computed as one vector, then ``w`` scalar steps.

    A plain sum over a row is one chain of dependent float adds (4 cycles each); with ``w`` lanes
    the chain is ``w`` times shorter. ``w`` divides the row length so there is no tail.
    """
    stmt = sch.get(block)
    kinds = [iv.iter_type for iv in stmt.iter_vars]
    loops = sch.get_loops(block)
    if kinds.count(_REDUCE) != 1 or kinds[-1] != _REDUCE or len(loops) != len(kinds):
        return None
    ext = _ext(sch, loops[-1])
    if ext is None:
        return None
    width = max((d for d in _divisors(ext) if d <= lanes), default=1)
    if width < 4 or ext // width < 2:
        return None
    _, k_in = sch.split(loops[-1], factors=[None, width])
    try:
        return sch.rfactor(k_in, factor_axis=len(kinds) - 1)
    except Exception:  # noqa: BLE001 - a reduction rfactor cannot take (e.g. argmax) stays serial
        return None


def _schedule_rows(sch, root, lanes: int):
    """Row-wise reductions (softmax, layer norm): one parallel loop over rows, every stage inside it.

    The stages of a row run back to back while the row is in L1; the elementwise stages are
    vectorized over the whole row (no tail predicate, which would stop LLVM vectorizing).
    """
    # inline elementwise stages with one consumer; a stage read twice (exp in softmax) stays
    # materialized per row instead of being computed twice
    changed = True
    while changed:
        changed = False
        for block in sch.get_child_blocks(root):
            if any(iv.iter_type != _SPATIAL for iv in sch.get(block).iter_vars) or len(sch.get_consumers(block)) != 1:
                continue
            try:
                sch.compute_inline(block)
                changed = True
            except Exception:  # noqa: BLE001 - not inlinable: keep it
                continue
    blocks = sch.get_child_blocks(root)
    last = blocks[-1]
    if any(iv.iter_type != _SPATIAL for iv in sch.get(last).iter_vars):
        return None
    rf_names = []
    for b in blocks[:-1]:
        rf = _rfactor_row(sch, b, lanes)
        if rf is not None:
            rf_names.append(sch.get(rf).name_hint)
    blocks = sch.get_child_blocks(root)
    out_loops = sch.get_loops(last)
    out_exts = _static_exts(sch, out_loops)
    if out_exts is None or len(out_loops) != len(sch.get(last).iter_vars):
        return None
    n_lead = len(out_exts) - 1
    for b in blocks[:-1]:
        # compare loop extents (not iterator order: rfactor puts the lane iterator first)
        lead = [_ext(sch, lp) for lp in sch.get_loops(b)]
        n = 0
        while n < min(len(lead), n_lead) and lead[n] == out_exts[n]:
            n += 1
        n_lead = min(n_lead, n)
    if n_lead == 0:
        return None
    rows = sch.fuse(*out_loops[:n_lead]) if n_lead > 1 else out_loops[0]
    for b in reversed(blocks[:-1]):
        sch.compute_at(b, rows, preserve_unit_loops=True)
    total = 1
    for e in out_exts:
        total *= e
    if total >= PARALLEL_MIN_ELEMS and (_ext(sch, rows) or 0) > 1:
        sch.parallel(rows)
    for name in rf_names:
        # compute_at rebuilt the loops in iterator order, lanes outermost: move them inside
        inner = sch.get_loops(sch.get_sblock(name))[1:]
        if len(inner) >= 2:
            sch.reorder(inner[-1], inner[0])
            sch.vectorize(inner[0])
    for b in blocks:
        inner = sch.get_loops(b)[1:]
        if not inner or any(iv.iter_type != _SPATIAL for iv in sch.get(b).iter_vars):
            continue
        loop = sch.fuse(*inner) if len(inner) > 1 else inner[0]
        ext = _ext(sch, loop) or 0
        if 1 < ext <= 8 * lanes:
            sch.vectorize(loop)
        elif ext % lanes == 0:
            sch.vectorize(sch.split(loop, factors=[None, lanes])[1])
    return sch


def vector_bits(target) -> int:
    """The width of the target's vector registers in bits (128 when LLVM does not say)."""
    from tvm.target import codegen

    return codegen.llvm_get_vector_width(target) or 128


def schedule_func(func, target):
    """Return a traced ``Schedule`` of ``func`` with the default CPU schedule, or None if none applies.

    Raises nothing for unusual kernels: what cannot be scheduled is left as TVM lowered it.
    """
    from tvm import s_tir

    width_bits = vector_bits(target)
    sch = s_tir.Schedule(func, debug_mask="all")
    root = sch.get_sblock("root")
    blocks = sch.get_child_blocks(root)
    anchors = [b for b in blocks if _is_anchor(sch, b)]
    if len(anchors) == 1:
        anchor = anchors[0]
        anchor_name = sch.get(anchor).name_hint
        dtype_bits = sch.get(anchor).writes[0].source.dtype.bits
        lanes = max(1, width_bits // dtype_bits)
        keep = {anchor_name} | {sch.get(p).name_hint for p in sch.get_producers(anchor)}
        _inline_all(sch, root, keep)
        anchor = sch.get_sblock(anchor_name)
        producers = list(sch.get_producers(anchor))
        consumers = sch.get_consumers(anchor)
        if len(consumers) > 1:
            return None
        _schedule_anchor(sch, anchor, lanes)
        for p in producers:
            _schedule_injective(sch, p, lanes)
        return sch
    reductions = [b for b in blocks if any(iv.iter_type != _SPATIAL for iv in sch.get(b).iter_vars)]
    if reductions:
        return _schedule_rows(sch, root, max(1, width_bits // 32))
    _inline_all(sch, root, keep=set())
    lanes = max(1, width_bits // 32)
    for b in sch.get_child_blocks(root):
        _schedule_injective(sch, b, lanes)
    return sch
