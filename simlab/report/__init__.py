"""A report to share: one self-contained HTML file about a dataset's runs (``python -m simlab report``).

    tables.py    runs as tables: one row per run, the newest run per grid cell, the 2017 study beside ours
    figures.py   plotly heatmaps of a grid of runs (also drawn by the Compare page)
    document.py  the HTML document: protocol, heatmaps, leaderboard, study, runs in detail

The file embeds everything it shows (plotly's JavaScript once, thumbnails as data URIs, system fonts), so it
opens offline in any browser and fetches nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from simlab.paths import atomic_path
from simlab.report.document import DEFAULT_ERRORS, DEFAULT_TOP, ReportError, render_report, select_runs

__all__ = ["DEFAULT_ERRORS", "DEFAULT_TOP", "ReportError", "render_report", "select_runs",
           "write_report"]


def write_report(path: str | Path, spec: str, run_ids: list[str] | None = None, **kwargs) -> int:
    """Render the report (see :func:`render_report`) and write it to ``path`` whole or not at all; its size in bytes."""
    data = render_report(spec, run_ids, **kwargs).encode("utf-8")
    umask = os.umask(0)
    os.umask(umask)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        tmp.chmod(0o666 & ~umask)  # a file to share: the usual permissions, not the temporary file's 0600
    return len(data)
