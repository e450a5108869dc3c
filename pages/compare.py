"""Compare: a dataset's runs as heatmaps and a leaderboard; one click opens a run's pairs on Inspect."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from pages._ui.formatting import escape_md, map_column
from pages._ui.links import no_runs_yet, open_on_inspect
from pages._ui.state import current_dataset_spec
from pages._ui.store import cached_runs
from simlab.backbones import DEFAULT_BACKBONE
from simlab.classifiers import CLASSIFIERS
from simlab.merge import MERGES
from simlab.reference import ALIASES, STUDY_BACKBONES, STUDY_TEST_PAIRS, published_accuracies
from simlab.store import Run

METRICS = {"accuracy": "Accuracy", "f1": "F1", "auc": "ROC AUC", "map": "Retrieval mAP"}
METRIC_HELP = ("Accuracy and F1 (of 'same') at threshold 0.5 and ROC AUC are measured on the held-out test "
               "pairs. Retrieval mAP ranks every image by cosine similarity to each group's query: it depends "
               "on the backbone only.")
SPLIT_LABELS = {"group": "Group split (held-out scenes)", "pair": "Pair split (2017 protocol, leaky)"}
WEIGHT_LABELS = {"imagenet": "ImageNet weights", "random": "Random weights (untrained, for tests only)"}
LAYOUTS = {"facets": "Backbone × merge, one chart per classifier",
           "merge": "Backbone × classifier, for one merge"}
CELL_PX = 56  # side of one heatmap square, in pixels
NUMBER_COLUMNS = ["accuracy", "accuracy_lo", "accuracy_hi", "precision", "recall", "f1", "auc", "map",
                  "n_test", "seconds"]


# --------------------------------------------------------------------------- data


def runs_table(runs: list[Run]) -> pd.DataFrame:
    """Finished runs, newest first: identity, protocol and metrics, one row per run."""
    rows = []
    for r in runs:
        if not r.done:
            continue
        p = r.protocol
        rows.append({
            "id": r.id, "created": r.created, "dataset": r.dataset or "", "fingerprint": r.fingerprint or "",
            "kind": r.kind, "backbone": r.backbone, "merge": r.merge, "classifier": r.classifier,
            "split": p.split, "weights": p.weights, "negatives": p.negatives, "negative_ratio": p.negative_ratio,
            "test_size": p.test_size, "seed": p.seed, "job_id": r.job_id,
            **{k: r.metrics.get(k) for k in NUMBER_COLUMNS if k != "seconds"},
            "seconds": r.seconds,
        })
    frame = pd.DataFrame(rows, columns=["id", "created", "dataset", "fingerprint", "kind", "backbone", "merge",
                                        "classifier", "split", "weights", "negatives", "negative_ratio",
                                        "test_size", "seed", "job_id", *NUMBER_COLUMNS])
    for col in NUMBER_COLUMNS:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


def newest_per_cell(frame: pd.DataFrame) -> pd.DataFrame:
    """One run per (backbone, merge, classifier): the newest (frames are newest first)."""
    cells = frame.dropna(subset=["backbone", "merge", "classifier"])
    return cells.drop_duplicates(["backbone", "merge", "classifier"], keep="first")


def ordered(values, preferred) -> list[str]:
    """Distinct values, those in ``preferred`` first in its order, the rest alphabetically."""
    present = list(dict.fromkeys(v for v in values if isinstance(v, str)))
    first = [p for p in preferred if p in present]
    return first + sorted(v for v in present if v not in first)


def backbone_order(values) -> list[str]:
    return ordered(values, [DEFAULT_BACKBONE, *STUDY_BACKBONES, "vgg16", "vgg19"])


def fmt_value(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def hover_text(row) -> str:
    lines = [f"<b>{row.backbone} + {row.merge} + {row.classifier}</b>",
             f"accuracy {fmt_value(row.accuracy)} (95% CI {fmt_value(row.accuracy_lo)}–{fmt_value(row.accuracy_hi)})",
             f"F1 {fmt_value(row.f1)} · AUC {fmt_value(row.auc)} · mAP {fmt_value(row.map)}",
             f"{int(row.n_test) if row.n_test == row.n_test else '?'} test pairs · "
             f"{SPLIT_LABELS.get(row.split, row.split)}",
             f"run {row.id} · click to inspect its pairs"]
    return "<br>".join(lines)


# --------------------------------------------------------------------------- heatmaps


def square_heatmap(cells: pd.DataFrame, *, rows: str, cols: str, facet: str | None, value: str,
                   row_order: list[str], col_order: list[str], facet_order: list[str],
                   text: pd.Series, hover: pd.Series, colorscale: str, zmin: float, zmax: float,
                   zmid: float | None = None, colorbar_title: str = "",
                   col_labels: dict | None = None, facet_labels: dict | None = None) -> go.Figure:
    """A heatmap drawn as square scatter markers, so that a click returns the point (and its run id).

    ``go.Heatmap`` cells return no selection in st.plotly_chart; markers do.
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
    titles = [facet_labels.get(f, f) for f in facets] if facet else None
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
    top = 40 if facet else 16
    bar_px = max(110, min(260, plot_h))
    if plot_h < bar_px + 30:  # a one-row grid: room above and below for a readable colour bar
        pad = (bar_px + 30 - plot_h) // 2
        top, bottom = top + pad, bottom + pad
    coloraxis = {"colorscale": colorscale, "cmin": zmin, "cmax": zmax,
                 "colorbar": {"title": {"text": colorbar_title}, "thickness": 14, "lenmode": "pixels",
                              "len": bar_px, "y": 0.5, "yanchor": "middle"}}
    if zmid is not None:
        coloraxis["cmid"] = zmid
    fig.update_layout(coloraxis=coloraxis, width=label_px + plot_w + 110, height=top + plot_h + bottom,
                      margin={"l": label_px, "r": 110, "t": top, "b": bottom}, clickmode="event+select",
                      dragmode=False, plot_bgcolor="rgba(0,0,0,0)", hoverlabel={"align": "left"})
    return fig


def metric_range(values: pd.Series, metric: str) -> tuple[float, float]:
    vals = values.dropna()
    if vals.empty:
        return 0.0, 1.0
    lo, hi = float(vals.min()), float(vals.max())
    if hi - lo < 0.02:
        lo, hi = lo - 0.01, hi + 0.01
    return lo, hi


# --------------------------------------------------------------------------- navigation to Inspect


def _goto_inspect(run_id: str) -> None:
    st.session_state["inspect_run"] = run_id
    st.session_state["_compare_open"] = run_id


def _chart_clicked(key: str) -> None:
    state = st.session_state.get(key) or {}
    for point in (state.get("selection") or {}).get("points") or []:
        data = point.get("customdata")
        if data:
            _goto_inspect(str(data[0]))
            return


def _row_clicked(key: str, ids: list[str]) -> None:
    state = st.session_state.get(key) or {}
    rows = (state.get("selection") or {}).get("rows") or []
    if rows and rows[0] < len(ids):
        _goto_inspect(ids[rows[0]])


def open_inspect_if_asked() -> None:
    run_id = st.session_state.pop("_compare_open", None)
    if run_id:
        open_on_inspect(run_id)


def clickable_chart(fig: go.Figure, key: str) -> None:
    st.plotly_chart(fig, key=key, on_select=lambda: _chart_clicked(key), selection_mode="points",
                    width="content", config={"displayModeBar": False})


# --------------------------------------------------------------------------- sections


def filters(frame: pd.DataFrame) -> pd.DataFrame:
    """Dataset, split and weights pickers; returns the runs they keep."""
    spec = current_dataset_spec()
    fps = list(dict.fromkeys(frame["fingerprint"]))
    spec_of = {fp: frame.loc[frame.fingerprint == fp, "dataset"].iloc[0] for fp in fps}
    count = frame["fingerprint"].value_counts()
    repeated = pd.Series(list(spec_of.values())).duplicated(keep=False).tolist()

    def label(fp: str) -> str:
        name = spec_of[fp] or "(unnamed)"
        extra = f" · version {fp[:8]}" if repeated[fps.index(fp)] else ""
        return f"{name}{extra} · {count[fp]} run{'s' if count[fp] != 1 else ''}"

    if st.session_state.get("_compare_spec") != spec:  # the sidebar's dataset changed: follow it
        st.session_state["_compare_spec"] = spec
        st.session_state.pop("compare_dataset", None)
    if st.session_state.get("compare_dataset") not in fps:
        st.session_state["compare_dataset"] = next((fp for fp in fps if spec_of[fp] == spec), fps[0])
    c1, c2, c3 = st.columns([3, 3, 2])
    with c1:
        fp = st.selectbox("Dataset", fps, format_func=label, key="compare_dataset",
                          help="Runs are compared within one dataset (identified by its content fingerprint).")
    frame = frame[frame.fingerprint == fp]
    splits = ordered(frame["split"], ["group", "pair"])
    with c2:
        split = st.radio("Split", splits, format_func=lambda s: SPLIT_LABELS.get(s, s or "(none)"),
                         horizontal=True, key="compare_split",
                         help="Group split: whole scenes held out, the honest number. Pair split: the 2017 "
                              "study's protocol, where the same images sit in train and test.")
    frame = frame[frame.split == split]
    weights = ordered(frame["weights"], ["imagenet", "random"])
    with c3:
        if len(weights) > 1:
            w = st.selectbox("Weights", weights, format_func=lambda v: WEIGHT_LABELS.get(v, v), key="compare_weights")
        else:
            w = weights[0]
            st.caption(f"Weights: {WEIGHT_LABELS.get(w, w)}")
    frame = frame[frame.weights == w]
    if w == "random":
        st.warning("These runs use **random** (untrained) backbone weights: they exist for tests and say "
                   "nothing about real accuracy.", icon=":material/warning:")
    return frame


def heatmaps(frame: pd.DataFrame, metric: str) -> None:
    cells = newest_per_cell(frame)
    if cells.empty:
        st.info("None of these runs has a backbone, a merge and a classifier to place on a grid; "
                "see the leaderboard below.")
        return
    layout = st.radio("Layout", list(LAYOUTS), format_func=LAYOUTS.get, horizontal=True, key="compare_layout",
                      label_visibility="collapsed")
    backbones = backbone_order(cells["backbone"])
    merges = ordered(cells["merge"], list(MERGES))
    classifiers = ordered(cells["classifier"], list(CLASSIFIERS))
    clf_labels = {c: CLASSIFIERS[c].label if c in CLASSIFIERS else c for c in classifiers}
    zmin, zmax = metric_range(cells[metric], metric)
    text = cells[metric].map(fmt_value)
    hover = pd.Series([hover_text(r) for r in cells.itertuples()], index=cells.index)
    if layout == "facets":
        fig = square_heatmap(cells, rows="backbone", cols="merge", facet="classifier", value=metric,
                             row_order=backbones, col_order=merges, facet_order=classifiers, text=text,
                             hover=hover, colorscale="Viridis", zmin=zmin, zmax=zmax,
                             colorbar_title=METRICS[metric], facet_labels=clf_labels)
    else:
        merge = st.columns([2, 3])[0].selectbox(
            "Merge", merges, key="compare_merge",
            format_func=lambda m: f"{m} — {MERGES[m].description}" if m in MERGES else m)
        part = cells[cells["merge"] == merge]
        fig = square_heatmap(part, rows="backbone", cols="classifier", facet=None, value=metric,
                             row_order=backbone_order(part["backbone"]),
                             col_order=ordered(part["classifier"], list(CLASSIFIERS)), facet_order=[],
                             text=text, hover=hover, colorscale="Viridis", zmin=zmin, zmax=zmax,
                             colorbar_title=METRICS[metric], col_labels=clf_labels)
    clickable_chart(fig, f"compare_heatmap_{layout}")
    n_dup = len(frame.dropna(subset=["backbone", "merge", "classifier"])) - len(cells)
    note = f" {n_dup} older run(s) of the same cells are in the leaderboard." if n_dup > 0 else ""
    st.caption("Hover a square for the 95% confidence interval; click it to inspect the run's pairs. "
               f"Each square shows the newest run of its cell.{note}")


def leaderboard(frame: pd.DataFrame, metric: str) -> None:
    st.subheader("Leaderboard")
    board = frame.sort_values([metric, "created"], ascending=[False, False], na_position="last")
    board = board.reset_index(drop=True)
    shown = board.assign(
        created=pd.to_datetime(board["created"], unit="s"),
        ci=[f"{fmt_value(lo)}–{fmt_value(hi)}" for lo, hi in zip(board.accuracy_lo, board.accuracy_hi)],
        classifier=[CLASSIFIERS[c].label if c in CLASSIFIERS else c for c in board["classifier"]],
        split=[SPLIT_LABELS.get(s, s).split(" (")[0] for s in board["split"]],
    )
    columns = ["backbone", "merge", "classifier", "split", "accuracy", "ci", "f1", "auc", "map", "n_test",
               "seconds", "created", "id"]
    config = {
        "backbone": st.column_config.TextColumn("Backbone"),
        "merge": st.column_config.TextColumn("Merge"),
        "classifier": st.column_config.TextColumn("Classifier"),
        "split": st.column_config.TextColumn("Split"),
        "accuracy": st.column_config.NumberColumn("Accuracy", format="%.3f"),
        "ci": st.column_config.TextColumn("95% CI", help="Bootstrap interval of the test accuracy"),
        "f1": st.column_config.NumberColumn("F1", format="%.3f"),
        "auc": st.column_config.NumberColumn("AUC", format="%.3f"),
        "map": map_column(),
        "n_test": st.column_config.NumberColumn("Test pairs", format="%d"),
        "seconds": st.column_config.NumberColumn("Seconds", format="%.2f", help="Merge + fit + predict"),
        "created": st.column_config.DatetimeColumn("Created", format="YYYY-MM-DD HH:mm"),
        "id": st.column_config.TextColumn("Run"),
    }
    ids = board["id"].tolist()
    st.dataframe(shown, column_order=columns, column_config=config, hide_index=True, key="compare_leaderboard",
                 on_select=lambda: _row_clicked("compare_leaderboard", ids), selection_mode="single-row",
                 height=min(38 + 35 * len(shown), 600))
    c1, c2 = st.columns([3, 1], vertical_alignment="center")
    with c1:
        st.caption(f"{len(board)} run(s), best {METRICS[metric].lower()} first. Select a row to inspect its pairs.")
    with c2:
        st.download_button("Download CSV", board.to_csv(index=False).encode(), file_name="simlab_runs.csv",
                           mime="text/csv", icon=":material/download:", width="stretch")


def study_comparison(all_runs: pd.DataFrame, fingerprint: str) -> None:
    """Beside the 2017 study's published table, cell by cell, when its protocol's runs exist."""
    ours = all_runs[(all_runs.fingerprint == fingerprint) & (all_runs.weights == "imagenet")]
    pub = published_accuracies()
    keys = ["backbone", "merge", "classifier"]
    pair = newest_per_cell(ours[ours.split == "pair"])
    pair = pair.merge(pub[keys], on=keys)
    if pair.empty:
        return
    group = newest_per_cell(ours[ours.split == "group"])[keys + ["id", "accuracy"]]
    table = pub.rename(columns={"accuracy": "published"}).merge(
        pair[keys + ["id", "accuracy", "accuracy_lo", "accuracy_hi", "n_test"]], on=keys, how="inner")
    table = table.merge(group.rename(columns={"id": "group_id", "accuracy": "group"}), on=keys, how="left")
    table["delta"] = table["accuracy"] - table["published"]
    table["within"] = (table["published"] >= table["accuracy_lo"]) & (table["published"] <= table["accuracy_hi"])
    table["leak"] = table["group"] - table["accuracy"]

    st.subheader("Beside the 2017 study")
    dataset = ours["dataset"].iloc[0] if len(ours) else ""
    if not str(dataset).startswith("holidays:"):
        st.caption(f"The published numbers are for INRIA Holidays; this dataset is {escape_md(dataset)}, "
                   "so the differences below compare different images.")
    has_group = table["group"].notna().any()
    c = st.columns(4)
    c[0].metric("Cells reproduced", f"{len(table)} / {len(pub)}")
    c[1].metric("Mean difference", f"{table['delta'].mean():+.3f}", help="Ours (pair split) minus published")
    c[2].metric("Published inside our 95% CI", f"{int(table['within'].sum())} / {len(table)}")
    if has_group:
        c[3].metric("Group split vs pair split", f"{table['leak'].mean():+.3f}",
                    help="Mean accuracy on held-out scenes minus the leaky pair split: what the leak was worth.")
    table = table.sort_values(["classifier", "backbone", "merge"])
    clf_labels = {k: CLASSIFIERS[k].label for k in table["classifier"].unique() if k in CLASSIFIERS}
    hover = pd.Series([
        f"<b>{ALIASES.get(r.backbone, r.backbone)} + {r.merge} + {clf_labels.get(r.classifier, r.classifier)}</b><br>"
        f"2017: {r.published:.3f}<br>ours (pair split): {r.accuracy:.3f} "
        f"(95% CI {r.accuracy_lo:.3f}–{r.accuracy_hi:.3f})"
        f"<br>difference: {r.delta:+.3f}" + (f"<br>ours (group split): {r.group:.3f}" if r.group == r.group else "")
        + f"<br>run {r.id} · click to inspect" for r in table.itertuples()], index=table.index)
    bound = max(0.02, float(table["delta"].abs().max()))
    fig = square_heatmap(table, rows="backbone", cols="merge", facet="classifier", value="delta",
                         row_order=backbone_order(table["backbone"]), col_order=ordered(table["merge"], list(MERGES)),
                         facet_order=ordered(table["classifier"], list(CLASSIFIERS)),
                         text=table["delta"].map(lambda d: f"{d:+.3f}"), hover=hover, colorscale="RdBu",
                         zmin=-bound, zmax=bound, zmid=0.0, colorbar_title="ours − 2017",
                         facet_labels=clf_labels)
    clickable_chart(fig, "compare_study_heatmap")
    st.caption(f"Blue: our pair-split run beats the published accuracy; red: it falls short. The study tested on "
               f"{STUDY_TEST_PAIRS} pairs; our intervals are 95% bootstrap intervals.")
    shown = table.assign(backbone=table["backbone"].map(lambda b: ALIASES.get(b, b)),
                         classifier=table["classifier"].map(lambda k: clf_labels.get(k, k)))
    columns = ["backbone", "merge", "classifier", "published", "accuracy", "delta", "within"] + (
        ["group", "leak"] if has_group else [])
    st.dataframe(shown, column_order=columns, hide_index=True, column_config={
        "backbone": "Backbone", "merge": "Merge", "classifier": "Classifier",
        "published": st.column_config.NumberColumn("2017", format="%.3f"),
        "accuracy": st.column_config.NumberColumn("Ours, pair split", format="%.3f"),
        "delta": st.column_config.NumberColumn("Difference", format="%+.3f"),
        "within": st.column_config.CheckboxColumn("2017 inside our CI"),
        "group": st.column_config.NumberColumn("Ours, group split", format="%.3f"),
        "leak": st.column_config.NumberColumn("Group − pair", format="%+.3f",
                                              help="What holding out whole scenes costs: the leak's worth"),
    })


# --------------------------------------------------------------------------- page


def main() -> None:
    open_inspect_if_asked()
    st.title("Compare")
    try:
        all_runs = runs_table(cached_runs())
    except Exception as exc:  # an unreadable store: say so, never a traceback
        st.error(f"Could not read the run store: {escape_md(type(exc).__name__)}: {escape_md(str(exc)[:300])}")
        return
    if all_runs.empty:
        no_runs_yet()
        return
    frame = filters(all_runs)
    metric = st.radio("Metric", list(METRICS), format_func=METRICS.get, horizontal=True, key="compare_metric",
                      help=METRIC_HELP)
    if frame.empty:
        st.info("No finished runs match these filters.")
        return
    heatmaps(frame, metric)
    leaderboard(frame, metric)
    study_comparison(all_runs, frame["fingerprint"].iloc[0])


main()
