"""Markdown tables and cells, shared by the run report and the data report."""

from __future__ import annotations

CELL_CHARS = 120


def markdown_table(header: list[str], rows: list[list], align: str = "") -> str:
    """A Markdown table; ``align`` gives one of l/r per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(str(c) for c in row) + " |" for row in lines)


def escape(text) -> str:
    """Keep a value on one table row: no newlines, and pipes that don't end the cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def cell(text, limit: int = CELL_CHARS) -> str:
    if text is None:
        return "-"
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return escape(text)


def text_table(header: list[str], rows: list[list], limit: int = CELL_CHARS) -> str:
    """Columns padded to line up in a terminal; each cell on one line, cut at ``limit`` characters."""
    cells = [[str(h) for h in header]] + [[cell(v, limit) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells)
