"""Text for the pages: Markdown escaping, short paths, durations, dates and status symbols."""

from __future__ import annotations

import html
import os
import time
from pathlib import Path

import streamlit as st

from simlab.classifiers import display_name as classifier_name  # noqa: F401  (the pages' name for it)
from simlab.evaluate import metric_scope

# Plain symbols (tables cannot show icons; these render in any font, emoji fonts not needed)
STATUS_ICONS = {"queued": "○", "running": "●", "done": "✓", "failed": "✗", "cancelled": "■"}


def escape_md(text: str) -> str:
    """Text safe to put inside st.markdown: HTML and Markdown specials escaped."""
    out = html.escape(str(text), quote=False)
    for ch in "\\`*_{}[]()#+-.!|~>$":
        out = out.replace(ch, "\\" + ch)
    return out


def short_path(path: str, dataset=None) -> str:
    """A path relative to the dataset's root when possible."""
    if dataset is not None:
        try:
            return str(Path(path).relative_to(dataset.root))
        except ValueError:
            pass
    return os.path.basename(path)


def fmt_duration(seconds: float | None) -> str:
    """1.2 s, 3 min 04 s, 1 h 02 min."""
    if seconds is None or seconds != seconds:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(seconds)
    return f"{s // 60} min {s % 60:02d} s" if s < 3600 else f"{s // 3600} h {s % 3600 // 60:02d} min"


def fmt_when(ts: float | None) -> str:
    """A timestamp as local date and time."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def map_column() -> st.column_config.NumberColumn:
    """The one column for a stored run's ``map``, labelled with its scope (simlab.evaluate.METRICS)."""
    grid = metric_scope("map", "grid", "each run's backbone")
    tuned = metric_scope("map", "finetune")
    return st.column_config.NumberColumn(
        "retrieval mAP", format="%.3f",
        help=f"Grid runs: {grid}; it describes the vectors, not the classifier. Fine-tune runs: {tuned}.")
