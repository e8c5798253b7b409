"""Rewrite the calls to one Relax operator across a module (the graph passes of ``lower_to_kernels`` use it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def rewrite_calls(mod, op_name: str, rewrite: Callable[[Any, Any], Any]):
    """Return ``(module, count)``: ``mod`` with every call to ``op_name`` in its Relax functions replaced by
    ``rewrite(builder, call)``, where that returns an expression (``None`` keeps the call).

    ``builder`` is the mutator's block builder: a rewrite may emit bindings or add PrimFuncs (a legalized
    kernel), which end up in the returned module. Calls are visited after their arguments are rewritten.
    """
    import tvm
    from tvm import relax

    count = 0

    @relax.expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def visit_call_(self, call):  # noqa: N802 - TVM's visitor naming
            nonlocal count
            call = super().visit_call_(call)
            if isinstance(call.op, tvm.ir.Op) and call.op.name == op_name:
                new = rewrite(self.builder_, call)
                if new is not None:
                    count += 1
                    return new
            return call

    rewriter = _Rewriter(mod)
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get(), count
