"""Inspect: one run's test pairs, image by image, with a threshold that re-scores everything live."""

from __future__ import annotations

import io
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from pages._ui.datasets import load_dataset_cached
from pages._ui.formatting import escape_md, fmt_when
from pages._ui.links import no_runs_yet, page_link
from pages._ui.store import cached_runs, store_path
from pages._ui.thumbs import thumb_path, thumb_uri
from pages._ui.vector_sets import vectors_cached
from simlab.classifiers import CLASSIFIERS
from simlab.data import load_dataset
from simlab.evaluate import pair_metrics
from simlab.experiment import common_images
from simlab.merge import fuse, l2_normalise
from simlab.paths import cache_dir
from simlab.store import Run, Store
from simlab.vectors import vectorize

RUN_KEY = "inspect_run"  # set by Compare and Train: the run to open
PAGE_SIZE = 24
CARDS_PER_ROW = 3
NEIGHBOURS = 6
SHOW = {"all": "All pairs", "errors": "Errors", "fp": "False positives", "fn": "False negatives",
        "right": "Correct"}
SORTS = {"confident_errors": "Most confident errors first", "hardest": "Hardest first (nearest the threshold)",
         "prob_desc": "Probability, high to low", "prob_asc": "Probability, low to high", "order": "Test order"}
OUTCOME = {"tp": "Right: the same scene, predicted same", "tn": "Right: different scenes, predicted different",
           "fp": "False positive: different scenes, predicted same",
           "fn": "False negative: the same scene, predicted different"}
SHORT_OUTCOME = {"tp": "right (same)", "tn": "right (different)", "fp": "false positive", "fn": "false negative"}
BADGE = {"tp": ":green-badge[:material/check: right]", "tn": ":green-badge[:material/check: right]",
         "fp": ":red-badge[:material/close: false positive]", "fn": ":orange-badge[:material/close: false negative]"}
BOX_BG = (240, 242, 246)  # letterbox colour of the card thumbnails (Streamlit's light grey)


# --------------------------------------------------------------------------- data


@st.cache_data(show_spinner=False, max_entries=16)
def load_predictions(db: str, run_id: str) -> pd.DataFrame:
    """A finished run's test pairs (they never change once the run is done)."""
    return Store(db).predictions(run_id)


def run_label(r: Run) -> str:
    acc = r.metrics.get("accuracy")
    parts = [" + ".join(str(x) for x in (r.backbone, r.merge, r.classifier) if x),
             f"{r.protocol.split} split",
             f"accuracy {acc:.3f}" if isinstance(acc, (int, float)) else None,
             "random weights (test)" if r.weights == "random" else None,
             os.path.basename(str(r.dataset or "").rstrip("/")) or None, r.id]
    return " · ".join(p for p in parts if p)


def score(preds: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Adds pred, outcome (tp/tn/fp/fn), correct and margin (distance to the threshold)."""
    pred = (preds["prob"].to_numpy() >= threshold).astype(int)
    label = preds["label"].to_numpy().astype(int)
    outcome = np.where(pred == 1, np.where(label == 1, "tp", "fp"), np.where(label == 1, "fn", "tn"))
    return preds.assign(pred=pred, outcome=outcome, correct=pred == label,
                        margin=(preds["prob"] - threshold).abs())


def filter_pairs(scored: pd.DataFrame, show: str, prob_range: tuple[float, float], groups: list[str]) -> pd.DataFrame:
    keep = scored["prob"].between(prob_range[0], prob_range[1])
    if show == "errors":
        keep &= ~scored["correct"]
    elif show == "right":
        keep &= scored["correct"]
    elif show in ("fp", "fn"):
        keep &= scored["outcome"] == show
    if groups:
        keep &= scored["left_group"].isin(groups) | scored["right_group"].isin(groups)
    return scored[keep]


def sort_pairs(pairs: pd.DataFrame, how: str) -> pd.DataFrame:
    if how == "confident_errors":
        return pairs.sort_values(["correct", "margin"], ascending=[True, False], kind="stable")
    if how == "hardest":
        return pairs.sort_values("margin", kind="stable")
    if how == "prob_desc":
        return pairs.sort_values("prob", ascending=False, kind="stable")
    if how == "prob_asc":
        return pairs.sort_values("prob", kind="stable")
    return pairs


@st.cache_data(show_spinner=False, max_entries=4000)
def boxed(thumb: str, size: int, mtime: float) -> bytes:
    """A thumbnail letterboxed into a square, so that the cards of a grid line up."""
    with Image.open(thumb) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size))
        canvas = Image.new("RGB", (size, size), BOX_BG)
        canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def boxed_image(thumb: str | None, size: int) -> None:
    if not thumb:
        st.caption(":material/broken_image: image unreadable")
        return
    try:
        st.image(boxed(thumb, size, os.stat(thumb).st_mtime), width="stretch")
    except OSError:
        st.caption(":material/broken_image: image unreadable")


def thumbs(paths: list[str], size: int) -> dict[str, str | None]:
    """Cached thumbnails of many images, made in threads; a progress bar if it takes a while."""
    paths = list(dict.fromkeys(paths))
    out: dict[str, str | None] = {}
    start, bar = time.monotonic(), None
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {pool.submit(thumb_path, p, size): p for p in paths}
        for i, fut in enumerate(as_completed(futures), 1):
            out[futures[fut]] = fut.result()
            if time.monotonic() - start > 0.5:
                bar = bar or st.progress(0.0)
                bar.progress(i / len(paths), text=f"Making thumbnails: {i}/{len(paths)}")
    if bar is not None:
        bar.empty()
    return out


# --------------------------------------------------------------------------- neighbours


@st.cache_resource(show_spinner=False, max_entries=3)
def neighbour_index(spec: str, fingerprint: str, backbone: str, weights: str, cache_root: str):
    """L2-normalised vectors of a dataset for a backbone (or a fusion "a+b"), with paths and groups.

    Read from the vector cache (vectorize is a cache hit here); kept as a resource, not copied.
    """
    dataset = load_dataset(spec)
    sets = {b: vectorize(dataset, b, weights) for b in backbone.split("+")}
    paths, groups, vectors = common_images(sets)
    fused = fuse([vectors[b] for b in sets])
    return l2_normalise(np.asarray(fused, np.float32)), paths, groups


def nearest(index, path: str, k: int = NEIGHBOURS) -> list[tuple[str, str, float]]:
    vectors, paths, groups = index
    try:
        i = paths.index(path)
    except ValueError:
        return []
    sims = vectors @ vectors[i]
    sims[i] = -np.inf
    top = np.argsort(-sims)[:k]
    return [(paths[j], groups[j], float(sims[j])) for j in top]


# --------------------------------------------------------------------------- pieces of the page


def metrics_strip(preds: pd.DataFrame, threshold: float) -> dict:
    m = pair_metrics(preds["label"].to_numpy(), preds["prob"].to_numpy(), threshold=threshold)
    at_half = pair_metrics(preds["label"].to_numpy(), preds["prob"].to_numpy(), threshold=0.5, n_boot=1)
    delta = (lambda k: None) if threshold == 0.5 else (lambda k: f"{m[k] - at_half[k]:+.3f} vs 0.5")
    c = st.columns(4)
    c[0].metric("Accuracy", f"{m['accuracy']:.3f}", delta=delta("accuracy"),
                help=f"95% bootstrap interval {m['accuracy_lo']:.3f}–{m['accuracy_hi']:.3f} on {m['n_test']} pairs")
    c[1].metric("Precision", f"{m['precision']:.3f}", delta=delta("precision"),
                help="Of the pairs predicted 'same', the share that are")
    c[2].metric("Recall", f"{m['recall']:.3f}", delta=delta("recall"),
                help="Of the pairs that are the same scene, the share found")
    c[3].metric("F1", f"{m['f1']:.3f}", delta=delta("f1"))
    st.caption(f"Accuracy 95% CI {m['accuracy_lo']:.3f}–{m['accuracy_hi']:.3f} · {m['n_test']} test pairs · "
               f"ROC AUC {m['auc']:.3f} (independent of the threshold)")
    return m


def confusion_figure(m: dict) -> go.Figure:
    z = [[m["tp"], m["fn"]], [m["fp"], m["tn"]]]
    total = max(1, sum(map(sum, z)))
    text = [[f"{v}<br>{v / total:.0%}" for v in row] for row in z]
    fig = go.Figure(go.Heatmap(z=z, x=["predicted same", "predicted different"], y=["same", "different"],
                               text=text, texttemplate="%{text}", colorscale="Blues", showscale=False,
                               hovertemplate="true %{y}, %{x}: %{z}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title="truth")
    fig.update_layout(height=260, margin={"l": 10, "r": 10, "t": 30, "b": 10}, title="Confusion matrix")
    return fig


def histogram_figure(preds: pd.DataFrame, threshold: float) -> go.Figure:
    fig = go.Figure()
    bins = {"start": 0, "end": 1.0001, "size": 0.025}
    for label, name, colour in ((1, "same scene", "#2a9d8f"), (0, "different", "#e76f51")):
        fig.add_trace(go.Histogram(x=preds.loc[preds["label"] == label, "prob"], name=name, xbins=bins,
                                   marker_color=colour, opacity=0.65))
    fig.add_vline(x=threshold, line_dash="dash", line_color="#444", annotation_text=f"threshold {threshold:.2f}")
    fig.update_layout(barmode="overlay", height=260, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      title="Predicted probability of 'same'", legend={"orientation": "h", "y": -0.2},
                      xaxis={"range": [0, 1]}, yaxis_title="pairs")
    return fig


def _open_pair(index) -> None:
    st.session_state["_inspect_open"] = index


def _table_selected(key: str, indices: list) -> None:
    rows = ((st.session_state.get(key) or {}).get("selection") or {}).get("rows") or []
    if rows and rows[0] < len(indices):
        st.session_state["_inspect_open"] = indices[rows[0]]


def pair_card(row, index, thumbs_map: dict) -> None:
    with st.container(border=True):
        left, right = st.columns(2)
        for col, side in ((left, "left"), (right, "right")):
            with col:
                boxed_image(thumbs_map.get(row[f"{side}_path"]), 192)
                st.caption(f"{escape_md(os.path.basename(row[f'{side}_path']))}  \n"
                           f"group {escape_md(row[f'{side}_group'])}")
        truth = "same scene" if row["label"] == 1 else "different scenes"
        c1, c2 = st.columns([3, 1], vertical_alignment="center")
        c1.markdown(f"{BADGE[row['outcome']]} P(same) **{row['prob']:.3f}**  \n"
                    f":gray[truly {truth}]")
        c2.button("Open", key=f"inspect_open_{index}", on_click=_open_pair, args=(index,), width="stretch",
                  help="Larger images, the rest of both groups and each image's nearest neighbours")


def cards(page: pd.DataFrame) -> None:
    thumbs_map = thumbs([*page["left_path"], *page["right_path"]], 192)
    rows = list(page.iterrows())
    for start in range(0, len(rows), CARDS_PER_ROW):
        cols = st.columns(CARDS_PER_ROW)
        for col, (index, row) in zip(cols, rows[start:start + CARDS_PER_ROW]):
            with col:
                pair_card(row, index, thumbs_map)


def table(page: pd.DataFrame) -> None:
    progress = st.progress(0.0, text="Preparing thumbnails…") if len(page) > 8 else None
    left, right = [], []
    for i, (lp, rp) in enumerate(zip(page["left_path"], page["right_path"])):
        left.append(thumb_uri(lp, 96))
        right.append(thumb_uri(rp, 96))
        if progress is not None:
            progress.progress((i + 1) / len(page), text="Preparing thumbnails…")
    if progress is not None:
        progress.empty()
    shown = pd.DataFrame({
        "left": left, "right": right, "left_name": page["left_path"].map(os.path.basename).to_numpy(),
        "right_name": page["right_path"].map(os.path.basename).to_numpy(),
        "groups": (page["left_group"].astype(str) + " / " + page["right_group"].astype(str)).to_numpy(),
        "truth": np.where(page["label"] == 1, "same", "different"), "prob": page["prob"].to_numpy(),
        "outcome": page["outcome"].map(SHORT_OUTCOME).to_numpy()})
    indices = list(page.index)
    st.dataframe(shown, hide_index=True, row_height=84, key="inspect_table", selection_mode="single-row",
                 height=40 + 85 * len(shown),  # the whole page of rows: no scrollbar inside the page
                 on_select=lambda: _table_selected("inspect_table", indices), column_config={
                     "left": st.column_config.ImageColumn("Left", width="small"),
                     "right": st.column_config.ImageColumn("Right", width="small"),
                     "left_name": st.column_config.TextColumn("Left file"),
                     "right_name": st.column_config.TextColumn("Right file"),
                     "groups": st.column_config.TextColumn("Groups"),
                     "truth": st.column_config.TextColumn("Truth"),
                     "prob": st.column_config.ProgressColumn("P(same)", min_value=0.0, max_value=1.0, format="%.3f"),
                     "outcome": st.column_config.TextColumn("Outcome")})
    st.caption("Select a row to open the pair.")


def small_images(items: list[tuple[str, str]], size: int = 128, columns: int = 6) -> None:
    """(path, caption) thumbnails in a row of columns; captions escaped."""
    if not items:
        st.caption("None.")
        return
    thumbs_map = thumbs([p for p, _ in items], size)
    for start in range(0, len(items), columns):
        cols = st.columns(columns)
        for col, (path, caption) in zip(cols, items[start:start + columns]):
            with col:
                boxed_image(thumbs_map.get(path), size)
                st.caption(caption)


@st.dialog("Pair", width="large")
def pair_dialog(run: Run, row: dict, threshold: float) -> None:
    pair_detail(run, row, threshold)


def pair_detail(run: Run, row: dict, threshold: float) -> None:
    st.markdown(f"{BADGE[row['outcome']]} **{OUTCOME[row['outcome']]}** · P(same) = **{row['prob']:.3f}** "
                f"at threshold {threshold:.2f}")
    big = thumbs([row["left_path"], row["right_path"]], 256)
    cols = st.columns(2)
    for col, side in zip(cols, ("left", "right")):
        with col:
            path = row[f"{side}_path"]
            if big.get(path):
                st.image(big[path], width="content")  # 256 px at most: crisp, never the full-size file
            else:
                st.warning("This image can no longer be read.")
            st.caption(f"{escape_md(os.path.basename(path))} · group **{escape_md(row[f'{side}_group'])}**  \n"
                       f":gray[{escape_md(os.path.dirname(path))}]")

    dataset = load_dataset_cached(run.dataset or "", show_error=False)
    if dataset is not None and run.fingerprint and dataset.fingerprint != run.fingerprint:
        st.caption(":material/info: The dataset's files changed since this run: the images, groups and neighbours "
                   "below are today's.")
    if dataset is None:
        st.info(f"The dataset {escape_md(run.dataset or '?')} cannot be loaded any more, so the rest of "
                "the groups and the neighbours are not available.")
        return
    members: dict[str, list[str]] = {}
    for p, g in zip(dataset.paths, dataset.groups):
        members.setdefault(g, []).append(p)
    pair_paths = {row["left_path"], row["right_path"]}
    groups = list(dict.fromkeys([row["left_group"], row["right_group"]]))
    for g in groups:
        others = [p for p in members.get(g, []) if p not in pair_paths]
        st.markdown(f"**Other images of group {escape_md(g)}** ({len(others)})")
        small_images([(p, escape_md(os.path.basename(p))) for p in others[:12]], size=128)

    backbone = run.backbone or ""
    weights = run.weights
    st.markdown(f"**Nearest neighbours** by cosine similarity of the **{escape_md(backbone)}** vectors "
                f"({escape_md(weights)} weights); :green[:material/check:] marks the same group")
    if not backbone or not vectors_cached(dataset.fingerprint, backbone, weights):
        st.info("The vectors of this backbone for this dataset are not in the cache; compute them on the "
                "Vectorize page to see the neighbours.")
        page_link("pages/vectorize.py", "Vectorize", icon=":material/scatter_plot:")
        return
    try:
        with st.spinner("Reading the vectors…"):
            index = neighbour_index(dataset.spec, dataset.fingerprint, backbone, weights, str(cache_dir()))
    except Exception as exc:  # a short message, the details folded
        st.error(f"Could not read the vectors: {escape_md(type(exc).__name__)}: {escape_md(str(exc)[:200])}")
        return
    for side in ("left", "right"):
        path = row[f"{side}_path"]
        st.caption(f"Neighbours of {escape_md(os.path.basename(path))}")
        found = nearest(index, path)
        small_images([(p, f"{s:.3f} · {escape_md(g)}{' :green[:material/check:]' if g == row[f'{side}_group'] else ''}")
                      for p, g, s in found], size=128)


# --------------------------------------------------------------------------- page


def pick_run(runs: list[Run]) -> Run:
    ids = [r.id for r in runs]
    by_id = {r.id: r for r in runs}
    wanted = st.query_params.get("run") or st.session_state.get(RUN_KEY)
    if wanted in by_id and st.session_state.get("inspect_select") != wanted:
        st.session_state["inspect_select"] = wanted
    if st.session_state.get("inspect_select") not in by_id:
        st.session_state["inspect_select"] = ids[0]

    def picked() -> None:
        st.session_state[RUN_KEY] = st.session_state["inspect_select"]
        st.query_params["run"] = st.session_state["inspect_select"]

    run_id = st.selectbox("Run", ids, format_func=lambda i: run_label(by_id[i]), key="inspect_select",
                          on_change=picked, help="Newest first. Compare and Train open a run here with one click.")
    st.session_state[RUN_KEY] = run_id
    if st.query_params.get("run") != run_id:
        st.query_params["run"] = run_id
    return by_id[run_id]


def run_caption(run: Run) -> None:
    p = run.protocol
    clf = CLASSIFIERS[run.classifier].label if run.classifier in CLASSIFIERS else run.classifier
    parts = [f"Dataset {escape_md(run.dataset or '?')}",
             f"{escape_md(p.split)} split, test fraction {p.test_size}",
             f"negatives {escape_md(p.negatives)} × {p.negative_ratio}",
             f"classifier {escape_md(clf or '?')}", f"seed {p.seed}",
             f"{escape_md(p.weights)} weights", f"run {run.id} of {fmt_when(run.created)}"]
    st.caption(" · ".join(parts))


def main() -> None:
    st.title("Inspect")
    try:
        runs = [r for r in cached_runs() if r.done]
    except Exception as exc:
        st.error(f"Could not read the run store: {escape_md(type(exc).__name__)}: {escape_md(str(exc)[:300])}")
        return
    if not runs:
        no_runs_yet()
        return
    run = pick_run(runs)
    run_caption(run)
    preds = load_predictions(str(store_path()), run.id)
    if preds.empty:
        st.info("This run stored no per-pair predictions, so there is nothing to inspect. Pick another run.")
        return

    threshold = st.slider("Threshold", 0.0, 1.0, 0.5, 0.01, key="inspect_threshold",
                          help="A pair is predicted 'same' when its probability is at least this. Every number, "
                               "chart and filter below follows it.")
    m = metrics_strip(preds, threshold)
    c1, c2 = st.columns([2, 3])
    c1.plotly_chart(confusion_figure(m), config={"displayModeBar": False}, key="inspect_confusion")
    c2.plotly_chart(histogram_figure(preds, threshold), config={"displayModeBar": False}, key="inspect_hist")

    st.subheader("Pairs")
    scored = score(preds, threshold)
    f1, f2 = st.columns([5, 2])
    show = f1.radio("Show", list(SHOW), format_func=SHOW.get, horizontal=True, key="inspect_show",
                    help="Errors and their kinds follow the threshold above")
    view = f2.radio("View", ["Cards", "Table"], horizontal=True, key="inspect_view")
    g1, g2, g3 = st.columns([2, 3, 2])
    prob_range = g1.slider("Probability range", 0.0, 1.0, (0.0, 1.0), 0.01, key="inspect_prob")
    all_groups = sorted(set(scored["left_group"].astype(str)) | set(scored["right_group"].astype(str)))
    groups = g2.multiselect("Groups", all_groups, key="inspect_groups", placeholder="All groups",
                            help="Keep pairs with either image in one of these groups")
    sort = g3.selectbox("Sort", list(SORTS), format_func=SORTS.get, key="inspect_sort")

    pairs = sort_pairs(filter_pairs(scored, show, prob_range, groups), sort)
    if pairs.empty:
        st.info("No pairs match these filters: widen the probability range, pick other groups, or show all pairs.")
        return
    n_pages = max(1, math.ceil(len(pairs) / PAGE_SIZE))
    # a new key (so page 1) whenever what is listed changes
    listing = (run.id, show, prob_range, tuple(groups), sort, threshold if show != "all" else 0)
    page_key = f"inspect_page_{hash(listing)}"
    page_no = st.session_state.get(page_key, 1)
    page_no = min(max(1, int(page_no)), n_pages)
    page = pairs.iloc[(page_no - 1) * PAGE_SIZE: page_no * PAGE_SIZE]
    t1, t2 = st.columns([3, 2], vertical_alignment="center")
    t1.caption(f"Showing pairs {(page_no - 1) * PAGE_SIZE + 1}–{(page_no - 1) * PAGE_SIZE + len(page)} of "
               f"{len(pairs)} ({len(scored)} in the run's test set).")
    if n_pages > 1:
        with t2:
            st.pagination(n_pages, key=page_key, width="stretch")
    if view == "Cards":
        cards(page)
    else:
        table(page)

    opened = st.session_state.pop("_inspect_open", None)
    if opened is not None and opened in scored.index:
        pair_dialog(run, scored.loc[opened].to_dict(), threshold)


main()
