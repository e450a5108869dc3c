"""The reliability diagram of a run's P(same): Compare draws it, and the report embeds the same figure."""

from __future__ import annotations

import plotly.graph_objects as go

from simlab.evaluate import Reliability

CAPTION = ("Each dot is a bin of test pairs by predicted P(same): across, the mean prediction; up, the share of "
           "those pairs that truly show one scene (dot size: how many pairs). On the diagonal a probability means "
           "what it says; below it the run is overconfident, above it underconfident.")


def reliability_figure(rel: Reliability, title: str = "") -> go.Figure:
    """Predicted P(same) against the observed share of same-scene pairs, per bin, with the diagonal."""
    b = rel.bins
    size = 8 + 22 * (b["count"] / max(int(b["count"].max()), 1)) ** 0.5 if len(b) else []
    hover = [f"P(same) {lo:.1f}–{hi:.1f}: {n:,} pairs<br>mean prediction {mp:.3f}<br>truly same {fs:.3f}"
             for lo, hi, n, mp, fs in zip(b["lo"], b["hi"], b["count"], b["mean_prob"], b["frac_same"])]
    fig = go.Figure([
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dash", "color": "#999"},
                   name="perfectly calibrated", hoverinfo="skip"),
        go.Scatter(x=b["mean_prob"], y=b["frac_same"], mode="lines+markers", name="this run",
                   marker={"size": size, "color": "#3b6ea8"}, line={"color": "#3b6ea8"}, text=hover,
                   hovertemplate="%{text}<extra></extra>"),
    ])
    fig.update_layout(
        title={"text": title or f"Reliability · ECE {rel.ece:.3f} · Brier {rel.brier:.3f} · {rel.n:,} test pairs",
               "font": {"size": 14}},
        xaxis={"title": "predicted P(same)", "range": [0, 1], "constrain": "domain"},
        yaxis={"title": "share truly the same scene", "range": [0, 1], "scaleanchor": "x"},
        height=380, width=420, margin={"l": 50, "r": 10, "t": 40, "b": 45}, showlegend=False)
    return fig
