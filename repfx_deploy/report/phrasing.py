"""Ratios in the words people read them in: "31 % fewer", "2.9x smaller", "1.6x faster", "1.2x slower".

Never "0.99x fewer" or "0.34x faster": a change under 1.5x is a percentage, a larger one a factor, and the
word always says the direction.
"""

from __future__ import annotations


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def fewer(before: object, after: object, *, less: str = "fewer", more: str = "more") -> str:
    """How ``after`` compares with ``before`` for a count (parameters, MACs, bytes): "50 % fewer", "3.2x fewer",
    "4 % more", "unchanged"; "n/a" when either is missing or zero."""
    b, a = _num(before), _num(after)
    if not b or not a:
        return "n/a"
    if a == b:
        return "unchanged"
    if a < b:
        return f"{b / a:.1f}x {less}" if b / a >= 1.5 else f"{100 * (1 - a / b):.0f} % {less}"
    return f"{a / b:.1f}x {more}" if a / b >= 1.5 else f"{100 * (a / b - 1):.0f} % {more}"


def faster(before_ms: object, after_ms: object) -> str:
    """How a latency changed: "1.62x faster", "2.9x slower", "same speed" (within 1 %); "n/a" when missing."""
    b, a = _num(before_ms), _num(after_ms)
    if not b or not a:
        return "n/a"
    if abs(a / b - 1) < 0.01:
        return "same speed"
    return f"{b / a:.2f}x faster" if a < b else f"{a / b:.2f}x slower"
