"""Plotly figures of runs: square heatmaps (a grid of cells, one chart per facet), shared by the Compare page
and the HTML report."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

CELL_PX = 56  # side of one heatmap square, in pixels


def square_heatmap(cells: pd.DataFrame, *, rows: str, cols: str, facet: str | None, value: str,
                   row_order: list[str], col_order: list[str], facet_order: list[str],
                   text: pd.Series, hover: pd.Series, colorscale: str, zmin: float, zmax: float,
                   zmid: float | None = None, colorbar_title: str = "",
                   col_labels: dict | None = None, facet_labels: dict | None = None) -> go.Figure:
    """A heatmap drawn as square scatter markers, so that a click returns the point (and its run id).

    ``go.Heatmap`` cells return no selection in st.plotly_chart; markers do. Each facet holds two traces:
    faint squares where a cell has no run, then the runs' squares (``customdata``: run id, hover text).
    """
    facets = facet_order if facet else [None]
    col_labels, facet_labels = col_labels or {}, facet_labels or {}
    longest_col = max((len(col_labels.get(v, v)) for v in col_order), default=4)
    facet_w = len(col_order) * CELL_PX
    facet_h = len(row_order) * CELL_PX
    label_px = 12 + 7 * max((len(r) for r in row_order), default=4)
    gap_x, gap_y = 24, 64
    per_row = max(1, min(len(facets), (1100 - label_px) // (facet_w + gap_x)))
    n_rows = math.ceil(len(facets) / per_row)
    plot_w = per_row * facet_w + (per_row - 1) * gap_x
    plot_h = n_rows * facet_h + (n_rows - 1) * gap_y
    titles = [wrap(facet_labels.get(f, f), facet_w + gap_x) for f in facets] if facet else None
    fig = make_subplots(rows=n_rows, cols=per_row, subplot_titles=titles, shared_yaxes=False,
                        horizontal_spacing=gap_x / plot_w if per_row > 1 else 0.0,
                        vertical_spacing=gap_y / plot_h if n_rows > 1 else 0.0)
    span = (zmax - zmin) or 1.0
    for i, f in enumerate(facets):
        part = cells if f is None else cells[cells[facet] == f]
        part = part[part[value].notna()]
        r, c = i // per_row + 1, i % per_row + 1
        grid_x, grid_y = np.meshgrid(range(len(col_order)), range(len(row_order)))
        fig.add_trace(go.Scatter(  # faint squares behind: where a cell has no run yet
            x=grid_x.ravel(), y=grid_y.ravel(), mode="markers", hoverinfo="skip", showlegend=False,
            marker={"symbol": "square", "size": CELL_PX - 4, "color": "rgba(128,128,128,0.08)",
                    "line": {"width": 0}}), row=r, col=c)
        x = [col_order.index(v) for v in part[cols]]
        y = [row_order.index(v) for v in part[rows]]
        vals = part[value].to_numpy(float)
        t = (vals - zmin) / span
        if zmid is None:
            ink = ["white" if v < 0.55 else "#111" for v in t]
        else:
            ink = ["#111" if abs(v - 0.5) < 0.3 else "white" for v in t]
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="markers+text", text=list(text.loc[part.index]),
            textfont={"size": 12, "color": ink}, textposition="middle center",
            marker={"symbol": "square", "size": CELL_PX - 4, "color": vals, "coloraxis": "coloraxis",
                    "line": {"width": 0}},
            customdata=np.column_stack([part["id"].to_numpy(str), hover.loc[part.index].to_numpy(str)])
            if len(part) else None,
            hovertemplate="%{customdata[1]}<extra></extra>", showlegend=False, name=str(f or "")),
            row=r, col=c)
        fig.update_xaxes(range=[-0.5, len(col_order) - 0.5], tickvals=list(range(len(col_order))),
                         ticktext=[col_labels.get(v, v) for v in col_order], showgrid=False, zeroline=False,
                         fixedrange=True, row=r, col=c, tickangle=-35 if longest_col > 7 else 0)
        fig.update_yaxes(range=[len(row_order) - 0.5, -0.5], tickvals=list(range(len(row_order))),
                         ticktext=row_order if c == 1 else [""] * len(row_order), showgrid=False,
                         zeroline=False, fixedrange=True, row=r, col=c)
    bottom = 30 + (4 * longest_col if longest_col > 7 else 0)
    title_lines = max((t.count("<br>") + 1 for t in titles), default=1) if titles else 0
    top = 22 + 18 * title_lines if facet else 16
    bar_px = max(110, min(260, plot_h))
    if plot_h < bar_px + 30:  # a one-row grid: room above and below for a readable colour bar
        pad = (bar_px + 30 - plot_h) // 2
        top, bottom = max(top, pad), max(bottom, pad)
    coloraxis = {"colorscale": colorscale, "cmin": zmin, "cmax": zmax,
                 "colorbar": {"title": {"text": colorbar_title}, "thickness": 14, "lenmode": "pixels",
                              "len": bar_px, "y": 0.5, "yanchor": "middle"}}
    if zmid is not None:
        coloraxis["cmid"] = zmid
    fig.update_layout(coloraxis=coloraxis, width=label_px + plot_w + 110, height=top + plot_h + bottom,
                      margin={"l": label_px, "r": 110, "t": top, "b": bottom}, clickmode="event+select",
                      dragmode=False, plot_bgcolor="rgba(0,0,0,0)", hoverlabel={"align": "left"})
    return fig


def wrap(title: str, width_px: int, char_px: float = 8.5) -> str:
    """A facet title broken into lines (<br>) at spaces so that each fits ``width_px`` (about 8.5 px a letter)."""
    limit = max(6, int(width_px / char_px))
    lines: list[str] = []
    for word in str(title).split():
        if lines and len(lines[-1]) + 1 + len(word) <= limit:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "<br>".join(lines)


def metric_switch(figures: dict[str, go.Figure], labels: dict[str, str]) -> go.Figure:
    """One figure holding several same-layout heatmaps (one per metric, from :func:`square_heatmap`), with
    buttons above it that show one metric at a time: its squares, colour range and colour-bar title.

    The first entry is shown; the others' squares are hidden until their button is pressed."""
    names = list(figures)
    base = go.Figure(figures[names[0]])
    n = len(base.data)
    value_traces = {name: [t for i, t in enumerate(fig.data) if i % 2 == 1] for name, fig in figures.items()}
    for name in names[1:]:
        for trace in value_traces[name]:
            base.add_trace(trace.update(visible=False))
    n_values = len(value_traces[names[0]])
    buttons = []
    for k, name in enumerate(names):
        visible = [True if i % 2 == 0 else k == 0 for i in range(n)]
        for j in range(1, len(names)):
            visible += [k == j] * n_values
        axis = figures[name].layout.coloraxis
        buttons.append({"label": labels.get(name, name), "method": "update",
                        "args": [{"visible": visible},
                                 {"coloraxis.cmin": axis.cmin, "coloraxis.cmax": axis.cmax,
                                  "coloraxis.colorbar.title.text": axis.colorbar.title.text}]})
    # facet titles sit above the plot area, one line or more
    titles = max((18 * (a.text.count("<br>") + 1) + 8 for a in base.layout.annotations if a.text), default=0)
    base.update_layout(
        height=base.layout.height + 44, margin={"t": base.layout.margin.t + 44},
        updatemenus=[{"type": "buttons", "direction": "right", "buttons": buttons, "showactive": True,
                      "x": 0, "xanchor": "left", "y": 1, "yanchor": "bottom", "pad": {"b": titles + 12},
                      "bgcolor": "#f3f4f6", "bordercolor": "#d1d5db", "font": {"size": 12}}])
    return base


def pair_overlays(backbone: str | None, weights: str, path_a: str, path_b: str, size: int = 200,
                  ) -> tuple[str, str] | None:
    """Both images of a pair with their similarity map (``simlab.explain``, kept on disk by the images' digests) as
    small JPEG data URIs; None when the backbone has no spatial map or an image cannot be read."""
    import base64
    import io
    import logging

    from simlab.explain import can_explain, explain_cached, heat_overlay

    try:
        if not backbone or not can_explain(backbone):
            return None
        e = explain_cached(path_a, path_b, backbone, weights)
        uris = []
        for path, side in ((path_a, "a"), (path_b, "b")):
            buf = io.BytesIO()
            heat_overlay(path, e, side, size).save(buf, "JPEG", quality=80, optimize=True)
            uris.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))
        return uris[0], uris[1]
    except Exception:  # noqa: BLE001 - a pair without overlays still shows its images
        logging.getLogger(__name__).debug("no overlays for %s / %s", path_a, path_b, exc_info=True)
        return None
