"""Plain-text tables for the terminal, shared by every summary blockprune prints.

This module does not import TensorFlow.
"""

from __future__ import annotations

__all__ = ["text_table"]


def text_table(rows, rule: bool = False) -> str:
    """Left-aligned columns two spaces apart; the last column is not padded (it may be long).

    Args:
        rows: sequences of strings, the header first.
        rule: draw a line of dashes under the header.

    Example:
        >>> print(text_table([("a", "bb"), ("ccc", "d")], rule=True))
        a    bb
        ---  --
        ccc  d
    """
    rows = [tuple(r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]

    def line(cells):
        return "  ".join([c.ljust(w) for c, w in zip(cells, widths)] + [cells[-1]]).rstrip()

    lines = [line(r) for r in rows]
    if rule:
        lines.insert(1, line(["-" * w for w in widths] + ["-" * len(rows[0][-1])]))
    return "\n".join(lines)
