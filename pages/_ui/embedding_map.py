"""The embedding map of the Vectorize page: a vector set projected to 2-D, one trace per group (a legend,
distinct colour and symbol pairs), the image under the pointer in a hover panel, and the images of a
click or a lasso beside and below the map.

Plotly's own hover label holds text only, so the hover panel is a small st.components.v2 listener: it
hooks ``plotly_hover`` on the map drawn by st.plotly_chart and shows the point's thumbnail (data URIs sent
once with the component's data). Clicking and lassoing use st.plotly_chart's selection (on_select), which
works without it.
"""

from __future__ import annotations

import html
import os

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from pages._ui.thumbs import WRAP_CSS, breakable, image_grid, large_image, thumb_uri
from pages._ui.vector_sets import read_set

# 68 distinct colours (Plotly's qualitative sets, repeats removed), then a new marker symbol for each round
PALETTE = list(dict.fromkeys(px.colors.qualitative.Dark24 + px.colors.qualitative.Alphabet
                             + px.colors.qualitative.Light24))
SYMBOLS = ["circle", "square", "diamond", "triangle-up", "cross", "x", "triangle-down", "star", "hexagon",
           "pentagon"]
LEGEND_MAX = 400  # groups: one trace each up to here (a legend to hide, show or isolate groups)
HOVER_MAX = 3000  # points: hover thumbnails up to here (about 3 kB each, sent once per map)
HOVER_PX = 96
SELECTION_SHOWN = 48


@st.cache_data(show_spinner="Projecting the vectors…", max_entries=16)
def project(path: str, mtime: float, method: str, seed: int = 0) -> np.ndarray:
    """2-D coordinates of a cached vector set: PCA, or t-SNE on the first 50 principal components."""
    vectors, _ = read_set(path, mtime)
    x = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    if method == "PCA" or len(x) < 5:
        return PCA(n_components=2, random_state=seed).fit_transform(x) if len(x) >= 2 else np.zeros((len(x), 2))
    x = PCA(n_components=min(50, *x.shape), random_state=seed).fit_transform(x)
    return TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=seed).fit_transform(x)


def group_style(k: int) -> tuple[str, str]:
    """Colour and marker symbol of the k-th group: distinct pairs for len(PALETTE) x len(SYMBOLS) groups."""
    return PALETTE[k % len(PALETTE)], SYMBOLS[(k // len(PALETTE)) % len(SYMBOLS)]


def map_figure(xy: np.ndarray, names: list[str], groups: list[str]) -> go.Figure:
    """The scatter: one trace per group (legend) up to LEGEND_MAX groups, else one trace coloured by group.
    Each point's customdata is [row, name, group] (escaped: plotly's hover label reads a little HTML); the
    row ties a selected or clicked point back to its image."""
    order = list(dict.fromkeys(groups))
    rows_of: dict[str, list[int]] = {g: [] for g in order}
    for i, g in enumerate(groups):
        rows_of[g].append(i)
    scatter = go.Scattergl if len(xy) > 5000 else go.Scatter
    hover = "%{customdata[1]}<br>group %{customdata[2]}<extra></extra>"
    fig = go.Figure()
    if len(order) <= LEGEND_MAX:
        for k, g in enumerate(order):
            rows = rows_of[g]
            color, symbol = group_style(k)
            fig.add_trace(scatter(
                x=xy[rows, 0], y=xy[rows, 1], mode="markers", name=g, legendgroup=g,
                marker=dict(size=8, color=color, symbol=symbol, line=dict(width=0.5, color="white")),
                customdata=[[i, html.escape(names[i]), html.escape(g)] for i in rows], hovertemplate=hover))
    else:
        styles = {g: group_style(k) for k, g in enumerate(order)}
        fig.add_trace(scatter(
            x=xy[:, 0], y=xy[:, 1], mode="markers", showlegend=False,
            marker=dict(size=7, color=[styles[g][0] for g in groups], line=dict(width=0.5, color="white")),
            customdata=[[i, html.escape(names[i]), html.escape(g)] for i, g in enumerate(groups)],
            hovertemplate=hover))
    fig.update_layout(
        height=560, margin=dict(l=10, r=10, t=10, b=10), dragmode="lasso", hovermode="closest",
        xaxis=dict(showticklabels=False, title=None, zeroline=False),
        yaxis=dict(showticklabels=False, title=None, zeroline=False),
        legend=dict(itemsizing="constant", font=dict(size=11), tracegroupgap=0, y=0.94))
    return fig


@st.cache_data(show_spinner="Making the hover thumbnails (once)…", max_entries=8)
def hover_thumbnails(paths: tuple[str, ...]) -> list[str]:
    """Small data URIs of every image of the map (empty for an unreadable one)."""
    return [thumb_uri(p, HOVER_PX) or "" for p in paths]


_HOVER_JS = """
export default function(component) {
    const { data, setTriggerValue } = component;
    const panelId = "simlab-map-hover";
    let panel = document.getElementById(panelId);
    if (!panel) {
        panel = document.createElement("div");
        panel.id = panelId;
        panel.style.cssText = "position:fixed;z-index:100000;pointer-events:none;display:none;background:#fff;" +
            "border:1px solid rgba(49,51,63,.25);border-radius:8px;padding:6px;box-shadow:0 4px 14px rgba(0,0,0,.2);" +
            "font:12px/1.3 sans-serif;color:#31333f;width:172px";
        panel.innerHTML = '<img style="display:block;width:160px;height:160px;object-fit:contain;' +
            'background:#f0f2f6;border-radius:4px"><div style="margin-top:4px;overflow-wrap:anywhere"></div>';
        document.body.appendChild(panel);
    }
    const img = panel.querySelector("img"), text = panel.querySelector("div");
    const hide = () => { panel.style.display = "none"; };
    const show = (ev) => {
        const pt = ev.points && ev.points[0];
        if (!pt || !pt.customdata) return;
        const row = pt.customdata[0];
        const src = data.thumbs[row];
        if (!src) { hide(); return; }
        img.src = src;
        text.textContent = data.captions[row];
        const e = ev.event || {};
        const x = (e.clientX || 0) + 18, y = (e.clientY || 0) + 18;
        panel.style.left = Math.min(x, window.innerWidth - 190) + "px";
        panel.style.top = Math.min(y, window.innerHeight - 220) + "px";
        panel.style.display = "block";
    };
    let hooked = null;
    const hook = () => {
        const gd = document.querySelector(".st-key-" + data.chart + " .js-plotly-plot");
        if (gd && gd !== hooked && gd.on) {
            gd.on("plotly_hover", show);
            gd.on("plotly_unhover", hide);
            gd.on("plotly_click", (ev) => {  // in lasso mode Streamlit selects nothing on a click: say which
                const pt = ev.points && ev.points[0];
                if (pt && pt.customdata) setTriggerValue("clicked", pt.customdata[0]);
            });
            hooked = gd;
        }
    };
    hook();
    const timer = setInterval(hook, 400);  // the chart may be drawn after this runs, or redrawn
    return () => { clearInterval(timer); hide(); };
}
"""
_hover = st.components.v2.component("simlab.map_hover", js=_HOVER_JS)


def hover_panel(chart_key: str, thumbs: list[str], captions: list[str]) -> int | None:
    """The thumbnail of the point under the pointer, beside the pointer, on the chart with ``chart_key``;
    returns the row of a point just clicked (None on other reruns)."""
    data = {"chart": chart_key, "thumbs": thumbs, "captions": captions}
    result = _hover(key=f"hover_{chart_key}", data=data, height=0, on_clicked_change=lambda: None)
    clicked = getattr(result, "clicked", None)
    return int(clicked) if isinstance(clicked, (int, float)) else None


def selected_rows(event) -> list[int]:
    """Rows (customdata[0]) of the points selected on the map by a click, a box or a lasso."""
    points = event.selection.points if event else []
    return sorted({int(p["customdata"][0]) for p in points if p.get("customdata")})


def embedding_map(dataset, path: str, index: list[int], method: str, chart_key: str) -> None:
    """The map of one vector set (``index``: dataset index of each vector), its hover panel, and what is
    selected on it: a clicked image large beside the map, a lassoed set as tiles below."""
    mtime = os.stat(path).st_mtime
    xy = project(path, mtime, method)
    paths = [dataset.paths[i] for i in index]
    groups = [str(dataset.groups[i]) for i in index]
    names = [os.path.basename(p) for p in paths]
    n_groups = len(set(groups))
    legend = ("one colour and symbol per group, legend on the right (click a group to hide it, double-click to "
              "show it alone)" if n_groups <= LEGEND_MAX else
              f"coloured by group ({n_groups} groups: too many for a legend)")
    st.caption(f"{len(index)} images, {legend}. Images of one scene should sit together. Hover over a point to "
               "see its image; click one to open it beside the map; draw a lasso or a box to see a set below.")
    left, right = st.columns([3, 1])
    with left:
        event = st.plotly_chart(map_figure(xy, names, groups), width="stretch", key=chart_key, on_select="rerun",
                                selection_mode=("points", "box", "lasso"))
    thumbs = hover_thumbnails(tuple(paths)) if len(paths) <= HOVER_MAX else [""] * len(paths)
    clicked = hover_panel(chart_key, thumbs, [f"{n} · group {g}" for n, g in zip(names, groups)])
    rows = selected_rows(event)
    picked_key = f"{chart_key}_picked"
    if clicked is not None and 0 <= clicked < len(paths):
        st.session_state[picked_key] = clicked
    elif len(rows) == 1:  # a click where Streamlit selects points (pan or zoom mode)
        st.session_state[picked_key] = rows[0]
    with right:
        row = st.session_state.get(picked_key)
        if row is not None and row < len(paths):
            image = large_image(paths[row], 640)
            if image is not None:
                st.image(image, width="stretch")
            st.html(f'<div style="font-size:.85rem;{WRAP_CSS}"><b>{breakable(names[row])}</b><br>'
                    f'group {breakable(groups[row])}</div>')
            mates = [i for i, g in enumerate(groups) if g == groups[row] and i != row]
            if mates:
                st.caption(f"The other {len(mates)} image(s) of its group:")
                image_grid([paths[i] for i in mates[:12]], [names[i] for i in mates[:12]], tile_px=70, size=128,
                           wrap=True)
        else:
            st.caption("Click a point to see its image here.")
    if len(rows) > 1:
        shown = sorted(rows, key=lambda i: (groups[i], names[i]))[:SELECTION_SHOWN]
        more = f" (showing the first {SELECTION_SHOWN}, by group)" if len(rows) > SELECTION_SHOWN else ""
        st.markdown(f"**{len(rows)} selected images from {len({groups[i] for i in rows})} group(s)**{more}")
        image_grid([paths[i] for i in shown], [f"{names[i]} · group {groups[i]}" for i in shown], wrap=True)
