"""Plain-text tables for the terminal."""

from __future__ import annotations


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Columns padded to their widest cell; floats with three decimals, None as blank."""
    widths = {c: max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(fmt(r.get(c)).ljust(widths[c]) for c in columns))


def fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else "" if v is None else str(v)
