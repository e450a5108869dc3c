"""Compare: a dataset's runs as heatmaps and a leaderboard, its fine-tune runs in their own panel; one click
opens a run's pairs on Inspect. The filters and options live in the URL (a reload or a shared link keeps them)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages._ui.formatting import STATUS_ICONS, classifier_name, escape_md, map_column
from pages._ui.links import no_runs_yet, open_on_inspect, page_link
from pages._ui.options import format_choice
from pages._ui.state import current_dataset_spec
from pages._ui.store import cached_runs, store
from pages._ui.store_guard import store_guard
from pages._ui.url_state import bind
from simlab.classifiers import CLASSIFIERS
from simlab.evaluate import headline_metrics, metric_scope, reliability
from simlab.merge import MERGES
from simlab.options import choice_label
from simlab.reference import ALIASES, STUDY_TEST_PAIRS
from simlab.report.figures import square_heatmap
from simlab.report.reliability import CAPTION as RELIABILITY_CAPTION
from simlab.report.reliability import reliability_figure
from simlab.report.tables import (
    backbone_order,
    fmt_value,
    hover_text,
    metric_range,
    newest_per_cell,
    one_per_config,
    ordered,
    runs_table,
    study_summary,
    study_table,
)

METRICS = headline_metrics()  # name -> label, as declared in simlab.evaluate.METRICS
METRIC_HELP = "  \n".join(f"**{label}**: {metric_scope(name)}." for name, label in METRICS.items())
LAYOUTS = {"facets": "Backbone × merge, one chart per classifier",
           "merge": "Backbone × classifier, for one merge"}


# The runs as tables and the square heatmaps come from simlab.report (tables.py, figures.py), which the
# downloadable report draws with: the page and the report show the same numbers the same way.


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

    default_fp = next((fp for fp in fps if spec_of[fp] == spec), fps[0])
    if st.session_state.get("_compare_spec") != spec:  # the sidebar's dataset changed: follow it
        st.session_state["_compare_spec"] = spec
        st.session_state.pop("compare_dataset", None)
    bind("compare_dataset", "version", default_fp, choices=fps)
    if st.session_state.get("compare_dataset") not in fps:
        st.session_state["compare_dataset"] = default_fp
    c1, c2, c3 = st.columns([3, 3, 2])
    with c1:
        fp = st.selectbox("Dataset", fps, format_func=label, key="compare_dataset",
                          help="Runs are compared within one dataset (identified by its content fingerprint).")
    frame = frame[frame.fingerprint == fp]
    splits = ordered(frame["split"], ["group", "pair"])
    with c2:
        split = st.radio("Split", splits, format_func=lambda s: choice_label("split", s) if s else "(none)",
                         horizontal=True, key=bind("compare_split", "split", splits[0], choices=splits),
                         help="Group split: whole scenes held out, the honest number. Pair split: the 2017 "
                              "study's protocol, where the same images sit in train and test.")
    frame = frame[frame.split == split]
    weights = ordered(frame["weights"], ["imagenet", "random"])
    with c3:
        if len(weights) > 1:
            w = st.selectbox("Weights", weights, format_func=format_choice("weights"),
                             key=bind("compare_weights", "weights", weights[0], choices=weights))
        else:
            w = weights[0]
            st.caption("Weights: " + choice_label("weights", w))
    frame = frame[frame.weights == w]
    if w == "random":
        st.warning("These runs use **random** (untrained) backbone weights: they exist for tests and say "
                   "nothing about real accuracy.", icon=":material/warning:")
    return frame


def heatmaps(frame: pd.DataFrame, metric: str) -> None:
    cells = newest_per_cell(frame[frame["kind"] == "grid"])
    if cells.empty:
        st.info("No grid runs (backbone × merge × classifier on frozen vectors) match these filters"
                + ("; the fine-tune runs are below." if (frame["kind"] == "finetune").any() else "."))
        return
    layout = st.radio("Layout", list(LAYOUTS), format_func=LAYOUTS.get, horizontal=True,
                      key=bind("compare_layout", "layout", "facets", choices=LAYOUTS), label_visibility="collapsed")
    backbones = backbone_order(cells["backbone"])
    merges = ordered(cells["merge"], list(MERGES))
    classifiers = ordered(cells["classifier"], list(CLASSIFIERS))
    clf_labels = {c: classifier_name(c) for c in classifiers}
    zmin, zmax = metric_range(cells[metric])
    text = cells[metric].map(fmt_value)
    hover = pd.Series([hover_text(r) for r in cells.itertuples()], index=cells.index)
    if layout == "facets":
        fig = square_heatmap(cells, rows="backbone", cols="merge", facet="classifier", value=metric,
                             row_order=backbones, col_order=merges, facet_order=classifiers, text=text,
                             hover=hover, colorscale="Viridis", zmin=zmin, zmax=zmax,
                             colorbar_title=METRICS[metric], facet_labels=clf_labels)
    else:
        merge = st.columns([2, 3])[0].selectbox(
            "Merge", merges, key=bind("compare_merge", "merge", merges[0], choices=merges),
            format_func=lambda m: f"{m} — {MERGES[m].description}" if m in MERGES else m)
        part = cells[cells["merge"] == merge]
        fig = square_heatmap(part, rows="backbone", cols="classifier", facet=None, value=metric,
                             row_order=backbone_order(part["backbone"]),
                             col_order=ordered(part["classifier"], list(CLASSIFIERS)), facet_order=[],
                             text=text, hover=hover, colorscale="Viridis", zmin=zmin, zmax=zmax,
                             colorbar_title=METRICS[metric], col_labels=clf_labels)
    clickable_chart(fig, f"compare_heatmap_{layout}")
    grid = frame[frame["kind"] == "grid"]
    n_dup = len(grid.dropna(subset=["backbone", "merge", "classifier"])) - len(cells)
    note = f" {n_dup} older run(s) of the same cells are in the leaderboard." if n_dup > 0 else ""
    st.caption("Hover a square for the 95% confidence interval; click it to inspect the run's pairs. "
               f"Each square shows the newest run of its cell.{note}")


def score_columns() -> dict:
    """The columns of a run's scores, the same in the grid's leaderboard and the fine-tuned models' table."""
    scores = {name: st.column_config.NumberColumn(label, format="%.3f", help=metric_scope(name))
              for name, label in METRICS.items()}
    return {"accuracy": scores.pop("accuracy"),
            "ci": st.column_config.TextColumn("95% CI", help="Bootstrap interval of the test accuracy"),
            **scores, "map": map_column(),
            "n_test": st.column_config.NumberColumn("Test pairs", format="%d"),
            "copies": st.column_config.NumberColumn(
                "Runs", format="%d", help="Stored runs of this very configuration (same method, protocol, seed "
                                          "and data): they are shown once, the newest.")}


def score_names() -> list[str]:
    """The leaderboards' score columns in order: accuracy and its interval, the other headline metrics, test pairs."""
    return [name for name in score_columns() if name != "copies"]


def leaderboard(frame: pd.DataFrame, metric: str) -> None:
    frame = frame[frame["kind"] == "grid"]
    if frame.empty:
        return
    st.subheader("Leaderboard")
    board = one_per_config(frame).sort_values([metric, "created"], ascending=[False, False], na_position="last")
    board = board.reset_index(drop=True)
    shown = board.assign(
        created=pd.to_datetime(board["created"], unit="s"),
        ci=[f"{fmt_value(lo)}–{fmt_value(hi)}" for lo, hi in zip(board.accuracy_lo, board.accuracy_hi)],
        classifier=[classifier_name(c) for c in board["classifier"]],
        split=[choice_label("split", s).split(":")[0] for s in board["split"]],
    )
    columns = ["backbone", "merge", "classifier", "split", *score_names(), "copies", "seconds", "created", "id"]
    config = {
        "backbone": st.column_config.TextColumn("Backbone"),
        "merge": st.column_config.TextColumn("Merge"),
        "classifier": st.column_config.TextColumn("Classifier"),
        "split": st.column_config.TextColumn("Split"),
        **score_columns(),
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
    table = study_table(all_runs, fingerprint)
    if table.empty:
        return

    st.subheader("Beside the 2017 study")
    dataset = ours["dataset"].iloc[0] if len(ours) else ""
    if not str(dataset).startswith("holidays:"):
        st.caption(f"The published numbers are for INRIA Holidays; this dataset is {escape_md(dataset)}, "
                   "so the differences below compare different images.")
    summary = study_summary(table)
    has_group = summary.group_vs_pair is not None
    for column, (label, value, why) in zip(st.columns(4), summary.tiles()):
        column.metric(label, value, help=why or None)
    table = table.sort_values(["classifier", "backbone", "merge"])
    clf_labels = {k: classifier_name(k) for k in table["classifier"].unique()}
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


def finetune_label(row) -> str:
    """'small-cnn · siamese, triplet loss · f0c37e3f01c', with ' (stopped)' for a run stopped by hand."""
    return f"{row.backbone} · {row.method} · {row.id}" + (" (stopped)" if row.status == "cancelled" else "")


def finetune_figure(runs: pd.DataFrame, metric: str, frozen) -> go.Figure:
    """One dot per fine-tune run (its 95% interval for accuracy), beside the best frozen-vector run's value."""
    labels = [finetune_label(r) for r in runs.itertuples()]
    stopped = (runs["status"] == "cancelled").to_numpy()
    values = runs[metric].to_numpy(float)
    error = None
    if metric == "accuracy":
        error = {"type": "data", "symmetric": False, "color": "#888", "thickness": 1.5,
                 "array": (runs["accuracy_hi"] - runs["accuracy"]).fillna(0).to_numpy(float),
                 "arrayminus": (runs["accuracy"] - runs["accuracy_lo"]).fillna(0).to_numpy(float)}
    hover = [f"<b>fine-tune of {r.backbone}</b><br>{r.method}<br>"
             f"{METRICS[metric].lower()} {fmt_value(getattr(r, metric))}"
             + (f" (95% CI {fmt_value(r.accuracy_lo)}–{fmt_value(r.accuracy_hi)})" if metric == "accuracy" else "")
             + f"<br>{'stopped by hand after' if r.status == 'cancelled' else 'trained'} "
             f"{int(r.epochs) if r.epochs == r.epochs and r.epochs is not None else '?'} epoch(s), "
             f"scored on its best checkpoint<br>run {r.id} · click to inspect its pairs" for r in runs.itertuples()]
    fig = go.Figure(go.Scatter(
        x=values, y=labels, mode="markers", error_x=error, showlegend=False,
        marker={"size": 13, "symbol": np.where(stopped, "square", "circle").tolist(),
                "color": np.where(stopped, "#e9a23b", "#3b6ea8").tolist(), "line": {"width": 0}},
        customdata=np.column_stack([runs["id"].to_numpy(str), np.asarray(hover, dtype=str)]),
        hovertemplate="%{customdata[1]}<extra></extra>"))
    if frozen is not None:
        fig.add_vline(x=float(frozen[metric]), line_dash="dash", line_color="#666")  # named in the caption
    lo = np.nanmin(np.r_[values, runs["accuracy_lo"].to_numpy(float) if metric == "accuracy" else values,
                         [float(frozen[metric])] if frozen is not None else []])
    left = max(0.0, math.floor((lo - 0.05) * 10) / 10) if lo == lo else 0.0
    fig.update_layout(height=90 + 44 * len(runs), margin={"l": 10, "r": 30, "t": 40, "b": 40},
                      xaxis={"range": [left, 1.0], "title": METRICS[metric], "fixedrange": True},
                      yaxis={"autorange": "reversed", "fixedrange": True}, clickmode="event+select",
                      dragmode=False, hoverlabel={"align": "left"}, plot_bgcolor="rgba(0,0,0,0)")
    fig.update_xaxes(showgrid=True, gridcolor="rgba(128,128,128,0.2)")
    return fig


def finetune_panel(frame: pd.DataFrame, metric: str) -> None:
    """Fine-tune runs on their own: they train the network (or a head on it), so they are not grid cells."""
    runs = frame[frame["kind"] == "finetune"]
    if runs.empty:
        return
    st.subheader("Fine-tuned models")
    runs = runs.sort_values([metric, "created"], ascending=[False, False], na_position="last").reset_index(drop=True)
    grid = frame[(frame["kind"] == "grid") & frame[metric].notna()]
    frozen = grid.sort_values(metric, ascending=False).iloc[0] if len(grid) else None
    n_stopped = int((runs["status"] == "cancelled").sum())
    best = (f" ({frozen.backbone} + {frozen.merge} + {classifier_name(frozen.classifier)}, "
            f"{fmt_value(frozen[metric])})" if frozen is not None else "")
    st.caption("Runs that train the network end to end (Siamese) or a head on its vectors, tested on the same kind "
               f"of held-out pairs; the dashed line is the best run on frozen vectors above{best}. "
               + (f"{STATUS_ICONS['cancelled']} {n_stopped} run(s) were stopped by hand and scored on their best "
                  "checkpoint so far (orange squares)." if n_stopped else ""))
    clickable_chart(finetune_figure(runs, metric, frozen), "compare_finetune_chart")
    shown = runs.assign(
        created=pd.to_datetime(runs["created"], unit="s"),
        status=[f"{STATUS_ICONS['cancelled']} stopped" if s == "cancelled" else f"{STATUS_ICONS['done']} done"
                for s in runs["status"]],
        ci=[f"{fmt_value(lo)}–{fmt_value(hi)}" for lo, hi in zip(runs.accuracy_lo, runs.accuracy_hi)],
        epochs=[f"{int(b)} of {int(e)}" if b == b and e == e and b is not None and e is not None else ""
                for b, e in zip(runs["best_epoch"], runs["epochs"])])
    ids = runs["id"].tolist()
    st.dataframe(shown, hide_index=True, key="compare_finetune_table", selection_mode="single-row",
                 on_select=lambda: _row_clicked("compare_finetune_table", ids),
                 column_order=["backbone", "method", "status", *score_names(), "epochs", "seconds", "created",
                               "id"],
                 column_config={
                     "backbone": st.column_config.TextColumn("Backbone"),
                     "method": st.column_config.TextColumn("Method"),
                     "status": st.column_config.TextColumn(
                         "Status", help="stopped: stopped by hand, scored on the best checkpoint so far"),
                     **score_columns(),
                     "epochs": st.column_config.TextColumn("Best epoch", help="Best epoch of those trained"),
                     "seconds": st.column_config.NumberColumn("Seconds", format="%.1f"),
                     "created": st.column_config.DatetimeColumn("Created", format="YYYY-MM-DD HH:mm"),
                     "id": st.column_config.TextColumn("Run")})
    st.caption("Click a dot or select a row to inspect the run's pairs. Curves and settings: the Fine-tune page.")


PROTOCOL_COLUMNS = ["split", "test_size", "seed", "negatives", "negative_ratio", "n_test"]


def run_option(row) -> str:
    name = (f"fine-tune of {row.backbone}: {row.method}" if row.kind == "finetune"
            else f"{row.backbone} + {row.merge} + {classifier_name(row.classifier)}")
    return f"{name} · accuracy {fmt_value(row.accuracy)} · {row.id}"


def two_runs(frame: pd.DataFrame, metric: str) -> None:
    """Pick two runs on the same test pairs and open them side by side, pair by pair, on the Two runs page."""
    if len(frame) < 2:
        return
    st.subheader("Two runs, pair by pair")
    board = frame.sort_values([metric, "created"], ascending=[False, False], na_position="last")
    rows = {r.id: r for r in board.itertuples()}
    ids = list(rows)
    c1, c2 = st.columns(2)
    with c1:
        a = st.selectbox("Run A", ids, format_func=lambda i: run_option(rows[i]),
                         key=bind("compare_diff_a", "a", ids[0], choices=ids))
    same_pairs = [i for i in ids if i != a and all(
        getattr(rows[i], c) == getattr(rows[a], c) for c in PROTOCOL_COLUMNS)]
    if not same_pairs:
        st.caption("No other run here was tested on the same pairs as run A (same split, test size, seed, "
                   "negatives and number of test pairs).")
        return
    # by default, the best run that differs from A in what it is (fine-tuned or not, or its classifier)
    other = [i for i in same_pairs if (rows[i].kind, rows[i].classifier) != (rows[a].kind, rows[a].classifier)]
    default_b = (other or same_pairs)[0]
    if st.session_state.get("compare_diff_b") not in same_pairs:
        st.session_state.pop("compare_diff_b", None)
    with c2:
        b = st.selectbox("Run B", same_pairs, format_func=lambda i: run_option(rows[i]),
                         index=same_pairs.index(default_b),
                         key=bind("compare_diff_b", "b", default_b, choices=same_pairs),
                         help="Runs tested on the same pairs as run A")
    if not page_link("pages/diff.py", "Open the two runs pair by pair", icon=":material/compare_arrows:",
                     query_params={"a": a, "b": b}):
        st.caption(f"Open the Two runs page with runs {a} and {b}.")
    st.caption("Where the two disagree: the pairs B fixed, the pairs it broke, and those both get wrong.")


# --------------------------------------------------------------------------- page


def reliability_panel(frame: pd.DataFrame, metric: str) -> None:
    """Whether a run's P(same) means what it says on its test pairs: the reliability diagram of one run (the
    best by the metric unless another is picked)."""
    grid = one_per_config(frame[frame["kind"] == "grid"]).sort_values(metric, ascending=False, na_position="last")
    if grid.empty:
        return
    st.subheader("Are the probabilities honest?")
    titles = {r.id: f"{r.backbone} · {r.merge} · {classifier_name(r.classifier)} ({fmt_value(getattr(r, metric))})"
              for r in grid.itertuples()}
    c1, c2 = st.columns([2, 3])
    with c1:
        run_id = st.selectbox("Run", list(titles), format_func=titles.get, key="compare_reliability_run",
                              help="P(same) of grid runs is calibrated on validation scenes (Platt scaling), never "
                                   "on the test pairs drawn here.")
        preds = store().predictions(run_id)
        if preds.empty:
            st.info("This run has no stored predictions.")
            return
        rel = reliability(preds["label"].to_numpy(), preds["prob"].to_numpy())
        st.metric("Expected calibration error", f"{rel.ece:.3f}",
                  help="The count-weighted mean gap between predicted P(same) and the share of pairs that truly "
                       "show one scene, over the bins: 0 is perfectly calibrated.")
        st.metric("Brier score", f"{rel.brier:.3f}", help="Mean squared error of P(same) on the test pairs (lower "
                                                           "is better; 0.25 is a coin toss at 0.5).")
        st.caption(RELIABILITY_CAPTION)
    with c2:
        st.plotly_chart(reliability_figure(rel, " "), key="compare_reliability_chart", width="content")


def main() -> None:
    open_inspect_if_asked()
    store_guard()  # a store that cannot be opened: one line; corrupt runs named
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
    metric = st.radio("Metric", list(METRICS), format_func=METRICS.get, horizontal=True,
                      key=bind("compare_metric", "metric", "accuracy", choices=METRICS), help=METRIC_HELP)
    if frame.empty:
        st.info("No finished runs match these filters.")
        return
    # Download report: one self-contained HTML file of the runs these filters keep (simlab.report), made on click.
    import functools

    from pages._ui.store import store
    from simlab.report import render_report
    first = frame.iloc[0]
    st.download_button(
        "Download report", functools.partial(render_report, first["dataset"], runs=cached_runs(), store=store(),
                                             fingerprint=first["fingerprint"], split=first["split"],
                                             weights=first["weights"]),
        file_name=f"simlab_report_{first['fingerprint'][:8]}_{first['split']}.html", mime="text/html",
        icon=":material/download:", key="compare_report", on_click="ignore",  # no page rerun while it is made
        help="One HTML file that opens offline in any browser: protocol, heatmaps, leaderboard with 95% intervals, "
             "the 2017 study where it applies, and the best runs' confusion matrices and most confident errors.")
    heatmaps(frame, metric)
    leaderboard(frame, metric)
    reliability_panel(frame, metric)
    finetune_panel(frame, metric)
    two_runs(frame, metric)
    study_comparison(all_runs, frame["fingerprint"].iloc[0])


main()
