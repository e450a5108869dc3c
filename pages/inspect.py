"""Inspect: one run's test pairs, image by image, with a threshold that re-scores everything live."""

from __future__ import annotations

import base64
import html
import io
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from pages._ui.datasets import load_dataset_cached
from pages._ui.formatting import STATUS_ICONS, classifier_name, escape_md, fmt_when
from pages._ui.links import no_runs_yet, page_link
from pages._ui.store import cached_runs, store_path
from pages._ui.store_guard import predictions_note, store_guard
from pages._ui.thumbs import WRAP_CSS, breakable, thumb_path, thumb_uri
from pages._ui.url_state import bind, dump_float, dump_range, parse_float, parse_range, set_url, url_value
from pages._ui.vector_sets import vectors_cached
from simlab.data import load_dataset
from simlab.data.images import open_rgb
from simlab.evaluate import pair_metrics
from simlab.explain import can_explain, explain_cached, heat_overlay, match_overlay
from simlab.label_errors import rescore, suspect_labels
from simlab.paths import cache_dir
from simlab.runspec import is_fused, split_backbone
from simlab.search import NeighbourSet, neighbour_set
from simlab.store import Run, Store
from simlab.store.corrections import Corrections

RUN_KEY = "inspect_run"  # set by Compare and Train: the run to open
THRESHOLD_KEY = "inspect_threshold"
VIEWS = ["Cards", "Table"]
PAGE_SIZE = 24
CARDS_PER_ROW = 3
NEIGHBOURS = 6
SHOW = {"all": "All pairs", "errors": "Errors", "fp": "False positives", "fn": "False negatives",
        "right": "Correct", "suspect": "Likely label errors"}
SUSPECT_MIN = 0.5  # "likely label errors": pairs the runs contradict, on average, with at least this confidence
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


@st.cache_data(show_spinner=False, max_entries=16)
def load_suspects(db: str, run_id: str, runs: int) -> pd.Series:
    """Each test pair's suspect-label score, agreed across the runs on the same test pairs (``runs``: how many
    runs the store holds, so that a new run on the same pairs counts)."""
    return suspect_labels(Store(db), run_id)[["suspect", "runs"]]


def corrections() -> Corrections:
    return Corrections(store_path())


def rescored_caption(run: Run, threshold: float) -> None:
    """The run's numbers against the labels a person corrected, beside the original ones; and the CSV."""
    table = corrections()
    try:
        if not table.all():
            return
        result = rescore(Store(str(store_path())), run.id, threshold, n_boot=200)
    except Exception as exc:  # an unreadable file, a locked store: one line
        st.caption(f"Corrected labels could not be read: {escape_md(type(exc).__name__)}: {escape_md(str(exc)[:160])}")
        return
    c1, c2 = st.columns([5, 2], vertical_alignment="center")
    if result["changed"]:
        o, n = result["original"], result["corrected"]
        c1.markdown(f":material/edit_note: **Against the corrected labels** ({result['changed']} of "
                    f"{result['n_test']} test pairs relabelled by hand, no retraining): accuracy "
                    f"**{n['accuracy']:.3f}** "
                    f"(original {o['accuracy']:.3f}), precision {n['precision']:.3f} ({o['precision']:.3f}), recall "
                    f"{n['recall']:.3f} ({o['recall']:.3f}). The run's stored numbers are unchanged.")
    else:
        c1.caption("No label correction touches this run's test pairs.")
    import io as _io

    from simlab.store.corrections import write_csv

    buf = _io.StringIO()
    write_csv(buf, table.all())
    c2.download_button("Corrections (CSV)", buf.getvalue(), file_name="label_corrections.csv", mime="text/csv",
                       icon=":material/download:", key="inspect_corrections_csv", width="stretch")


def scored_run(r: Run) -> bool:
    """A run with test pairs to inspect: finished, or a fine-tune run stopped by hand and scored."""
    return r.done or (r.is_finetune and r.status == "cancelled" and r.metrics.get("accuracy") is not None)


def run_label(r: Run) -> str:
    acc = r.metrics.get("accuracy")
    name = (f"fine-tune of {r.backbone}: {r.method}" if r.is_finetune
            else " + ".join(str(x) for x in (r.backbone, r.merge, classifier_name(r.classifier or "")) if x))
    parts = [name + (" (stopped)" if r.status == "cancelled" else ""),
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
    if show == "suspect":
        keep &= scored["suspect"] >= SUSPECT_MIN
    elif show == "errors":
        keep &= ~scored["correct"]
    elif show == "right":
        keep &= scored["correct"]
    elif show in ("fp", "fn"):
        keep &= scored["outcome"] == show
    if groups:
        keep &= scored["left_group"].isin(groups) | scored["right_group"].isin(groups)
    return scored[keep]


def sort_pairs(pairs: pd.DataFrame, how: str) -> pd.DataFrame:
    if how == "suspect":
        return pairs.sort_values("suspect", ascending=False, kind="stable")
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
def neighbour_index(spec: str, fingerprint: str, backbone: str, weights: str, cache_root: str) -> NeighbourSet:
    """The dataset's vectors for a backbone (or a fusion "a+b") and their index (simlab.search.neighbour_set),
    kept as a resource: read from the vector cache once per dataset version."""
    return neighbour_set(load_dataset(spec), backbone, weights)


# --------------------------------------------------------------------------- pieces of the page


def metrics_strip(preds: pd.DataFrame, threshold: float, stored: float) -> dict:
    """Accuracy, precision, recall and F1 at the slider's threshold; when it is not the run's own, the difference
    to the run's own numbers in grey (a gain found on the test pairs themselves is no gain)."""
    m = pair_metrics(preds["label"].to_numpy(), preds["prob"].to_numpy(), threshold=threshold)
    moved = abs(threshold - stored) > 1e-9
    own = pair_metrics(preds["label"].to_numpy(), preds["prob"].to_numpy(), threshold=stored, n_boot=1) if moved else m
    delta = (lambda k: f"{m[k] - own[k]:+.3f} vs the run's {stored:.3f}") if moved else (lambda k: None)
    c = st.columns(4)
    c[0].metric("Accuracy", f"{m['accuracy']:.3f}", delta=delta("accuracy"), delta_color="off",
                help=f"95% bootstrap interval {m['accuracy_lo']:.3f}–{m['accuracy_hi']:.3f} on {m['n_test']} pairs")
    c[1].metric("Precision", f"{m['precision']:.3f}", delta=delta("precision"), delta_color="off",
                help="Of the pairs predicted 'same', the share that are")
    c[2].metric("Recall", f"{m['recall']:.3f}", delta=delta("recall"), delta_color="off",
                help="Of the pairs that are the same scene, the share found")
    c[3].metric("F1", f"{m['f1']:.3f}", delta=delta("f1"), delta_color="off")
    if moved:
        st.warning(f"**Tuned on the test pairs: optimistic.** These numbers re-score the test pairs at a threshold "
                   f"picked by looking at them; the run's own numbers are those at its threshold {stored:.3f}.",
                   icon=":material/science:")
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
    fig.add_vline(x=threshold, line_dash="dash", line_color="#444", annotation_text=f"threshold {threshold:.3f}")
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
                # long names wrap after separators (/ _ - .), never mid-word
                st.html(f'<div style="font-size:.8rem;line-height:1.2rem;opacity:.65;{WRAP_CSS}">'
                        f"{breakable(os.path.basename(row[f'{side}_path']))}<br>"
                        f"group {breakable(row[f'{side}_group'])}</div>")
        truth = "same scene" if row["label"] == 1 else "different scenes"
        c1, c2 = st.columns([3, 1], vertical_alignment="center")
        c1.markdown(f"{BADGE[row['outcome']]} P(same)\u00a0**{row['prob']:.3f}**  \n"  # the value stays by its label
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
                 on_select=lambda: _table_selected("inspect_table", indices),
                 column_order=["left", "right", "prob", "outcome", "truth", "groups", "left_name", "right_name"],
                 column_config={
                     "left": st.column_config.ImageColumn("Left", width="small"),
                     "right": st.column_config.ImageColumn("Right", width="small"),
                     "left_name": st.column_config.TextColumn("Left file"),
                     "right_name": st.column_config.TextColumn("Right file"),
                     "groups": st.column_config.TextColumn("Groups"),
                     "truth": st.column_config.TextColumn("Truth"),
                     "prob": st.column_config.ProgressColumn("P(same)", min_value=0.0, max_value=1.0, format="%.3f"),
                     "outcome": st.column_config.TextColumn("Outcome")})
    st.caption("Select a row to open the pair.")


# --------------------------------------------------------------------------- the pair viewer

BROWSER_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
FULL_MAX_BYTES = 15_000_000  # larger files are re-encoded at FULL_MAX_SIDE for the zoom
FULL_MAX_SIDE = 4096
TILE_BIG = 640  # a thumbnail opened in the viewer


@st.cache_data(show_spinner=False, max_entries=24)
def full_image(path: str, mtime: float) -> tuple[str, tuple[int, int]] | None:
    """The image at full resolution as a data URI, with its size: the file itself where a browser shows it,
    else (other formats, CMYK, very large files) re-encoded as JPEG. None if it cannot be read."""
    try:
        with Image.open(path) as im:
            fmt, mode, size = im.format, im.mode, im.size
        data = Path(path).read_bytes() if fmt in BROWSER_FORMATS and mode != "CMYK" else b""
        if data and len(data) <= FULL_MAX_BYTES:
            return f"data:{BROWSER_FORMATS[fmt]};base64," + base64.b64encode(data).decode("ascii"), size
        im = open_rgb(path)
        im.thumbnail((FULL_MAX_SIDE, FULL_MAX_SIDE))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=92)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), im.size
    except Exception:  # shown as "unreadable"
        return None


def full_image_of(path: str) -> tuple[str, tuple[int, int]] | None:
    try:
        return full_image(path, os.stat(path).st_mtime)
    except OSError:
        return None


@st.cache_data(show_spinner=False, max_entries=2000)
def medium_uri(path: str, size: int, mtime: float) -> str | None:
    """A JPEG data URI at most ``size`` px on its long side (a thumbnail opened in the viewer)."""
    try:
        im = open_rgb(path, draft_size=size)
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    except Exception:
        return None


def medium_of(path: str, size: int = TILE_BIG) -> str | None:
    try:
        return medium_uri(path, size, os.stat(path).st_mtime)
    except OSError:
        return None


VIEWER_CSS = """
.pv input.pv-z{display:none}
.pv .pv-pair{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.pv figure{margin:0;min-width:0}
.pv .pv-box{height:min(62vh,640px);background:#f0f2f6;border-radius:6px;display:flex;align-items:center;
  justify-content:center;overflow:hidden}
.pv .pv-box img{width:100%;height:100%;object-fit:contain;cursor:zoom-in;display:block}
.pv figcaption{font-size:.85rem;line-height:1.3rem;margin-top:.35rem;overflow-wrap:anywhere}
.pv figcaption .dim{opacity:.65}
.pv .pv-hint{font-size:.75rem;opacity:.6}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(112px,1fr));gap:8px}
.tiles details{min-width:0}
.tiles summary{list-style:none;cursor:zoom-in}
.tiles summary::-webkit-details-marker{display:none}
.tiles summary img{width:100%;aspect-ratio:1;object-fit:cover;border-radius:4px;display:block}
.tiles summary .big{display:none}
.tiles details[open]{grid-column:1/-1}
.tiles details[open] summary{cursor:zoom-out}
.tiles details[open] summary .small{display:none}
.tiles details[open] summary .big{display:block;width:auto;max-width:100%;max-height:70vh;aspect-ratio:auto;
  object-fit:contain;margin:auto;background:#f0f2f6}
.tiles .cap{font-size:.75rem;line-height:1.1rem;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;opacity:.85}
.tiles details[open] .cap{white-space:normal;text-align:center}
.tiles .ok{color:#2a9d8f;font-weight:600}
"""


def _zoom_css(uid: str) -> str:
    """While one side is zoomed: it takes the whole width at its full resolution (scroll to pan), the other hides."""
    rules = []
    for side, other in (("L", "R"), ("R", "L")):
        z = f"#pv-{uid}-{side}:checked ~ .pv-pair"
        rules += [f"{z}{{grid-template-columns:1fr}}", f"{z} .pv-{other}{{display:none}}",
                  f"{z} .pv-{side} .pv-box{{height:auto;max-height:78vh;overflow:auto;display:block;"
                  "text-align:center}",
                  f"{z} .pv-{side} .pv-box img{{width:auto;height:auto;max-width:none;max-height:none;"
                  "cursor:zoom-out;display:inline-block}",
                  f"{z} .pv-{side} .pv-fit{{display:none}}", f"{z} .pv-{side} .pv-full{{display:inline}}"]
    return "\n".join(rules) + "\n.pv .pv-full{display:none}"


def viewer_html(uid: str, sides: list[tuple[str, str | None, tuple[int, int] | None, str]]) -> str:
    """The two images large, side by side; a click on one shows it alone at full resolution (a click again: back).

    ``sides``: (file name, data URI or None, pixel size, caption HTML) for the left and the right image.
    Plain HTML and CSS (a hidden checkbox per side): no script, and every caption is escaped by the caller.
    """
    parts = [f"<style>{VIEWER_CSS}{_zoom_css(uid)}</style><div class='pv'>"]
    parts += [f"<input type='checkbox' class='pv-z' id='pv-{uid}-{s}'>" for s in ("L", "R")]
    parts.append("<div class='pv-pair'>")
    for s, (name, uri, size, caption) in zip(("L", "R"), sides):
        label = html.escape(name, quote=True)
        img = (f"<img src='{uri}' alt='{label}' title='Click to see it at full resolution'>" if uri else
               "<span class='dim'>This image can no longer be read.</span>")
        px = f"{size[0]} × {size[1]} px" if size else ""
        parts.append(f"<figure class='pv-{s}'><label for='pv-{uid}-{s}'><div class='pv-box'>{img}</div></label>"
                     f"<figcaption>{caption}<br><span class='pv-hint'>{px} · <span class='pv-fit'>click the image "
                     f"to zoom to full resolution</span><span class='pv-full'>full resolution: scroll to pan, "
                     f"click to go back</span></span></figcaption></figure>")
    parts.append("</div></div>")
    return "".join(parts)


def tiles_html(items: list[tuple[str, str]], size: int = 128) -> str:
    """Thumbnails that open: a click shows the image larger across the row, a click again closes it.

    ``items``: (path, caption HTML, already escaped)."""
    cells = []
    for path, caption in items:
        small = thumb_uri(path, size)
        if not small:
            cells.append(f"<div><div class='cap'>unreadable</div><div class='cap'>{caption}</div></div>")
            continue
        big = medium_of(path) or small
        name = html.escape(os.path.basename(path), quote=True)
        cells.append(f"<details><summary><img class='small' src='{small}' alt='{name}' title='{name}: click to open'>"
                     f"<img class='big' src='{big}' alt='{name}'><div class='cap'>{caption}</div></summary></details>")
    return f"<style>{VIEWER_CSS}</style><div class='tiles'>" + "".join(cells) + "</div>"


def small_images(items: list[tuple[str, str]], size: int = 128) -> None:
    """(path, caption HTML) thumbnails that can be opened; captions must be escaped by the caller."""
    if not items:
        st.caption("None.")
        return
    st.html(tiles_html(items, size))


OVERLAYS = {"images": "Images", "map": "Similarity map", "matches": "Matches"}
OVERLAY_KEY = "inspect_overlay"  # kept while stepping through the pairs
MAP_LEGEND = ("**Warm: regions that make these two look alike**; dark: regions that add little to it. "
              "Dimmed: outside the centre square the model saw, so no part of the score.")
VIEWER_KEY = "_inspect_pos"  # st.session_state: the position of the open pair in the filtered, sorted list
PAIR_PARAM = "pair"  # the query parameter of the open pair (its row in the run's predictions)


def _step(delta: int, n: int) -> None:
    st.session_state[VIEWER_KEY] = min(max(0, st.session_state.get(VIEWER_KEY, 0) + delta), n - 1)


def _viewer_closed() -> None:
    set_url(PAIR_PARAM, None)


@st.dialog("Pair", width=1600, on_dismiss=_viewer_closed)
def pair_dialog(run: Run, scored: pd.DataFrame, order: list, threshold: float) -> None:
    pair_viewer(run, scored, order, threshold)


def pair_viewer(run: Run, scored: pd.DataFrame, order: list, threshold: float) -> None:
    """One pair of the filtered list, large: ← and → (or the buttons) step through the list."""
    n = len(order)
    pos = min(max(0, int(st.session_state.get(VIEWER_KEY, 0))), n - 1)
    row = scored.loc[order[pos]].to_dict()
    set_url(PAIR_PARAM, str(order[pos]))  # a reload or a shared link opens this pair again
    c1, c2, c3 = st.columns([2, 8, 2], vertical_alignment="center")
    c1.button("Previous", icon=":material/arrow_back:", shortcut="Left", key="inspect_prev", on_click=_step,
              args=(-1, n), disabled=pos == 0, width="stretch", help="The previous pair of the list (←)")
    c2.markdown(f"**Pair {pos + 1} of {n}** in the list below · {BADGE[row['outcome']]} "
                f"{OUTCOME[row['outcome']]} · P(same) **{row['prob']:.3f}** at threshold {threshold:.3f}")
    c3.button("Next", icon=":material/arrow_forward:", icon_position="right", shortcut="Right", key="inspect_next",
              on_click=_step, args=(1, n), disabled=pos == n - 1, width="stretch",
              help="The next pair of the list (→)")
    label_buttons(row)
    overlay = overlay_toggle(run)
    explained = explanation_of(run, row) if overlay != "images" else None
    sides = []
    for side in ("left", "right"):
        path = row[f"{side}_path"]
        full = full_image_of(path)
        caption = (f"<b>{html.escape(os.path.basename(path))}</b> · group <b>{html.escape(str(row[f'{side}_group']))}"
                   f"</b><br><span class='dim'>{html.escape(os.path.dirname(path))}</span>")
        if explained is not None:
            uri, size = explained[overlay][0 if side == "left" else 1]
            full = (uri, full[1] if full else size)  # the caption keeps the file's own size
        sides.append((os.path.basename(path), full[0] if full else None, full[1] if full else None, caption))
    st.html(viewer_html(f"{run.id}-{order[pos]}-{overlay}", sides))
    if explained is not None:
        explanation_caption(run, explained, overlay)
    st.caption("← → step through the pairs (the overlay stays), Esc closes.")
    pair_context(run, row)


def _mark(row: dict, wrong: bool) -> None:
    from simlab.data import file_digest

    try:
        corrections().mark(row["left_path"], row["right_path"], file_digest(row["left_path"]),
                           file_digest(row["right_path"]), int(row["label"]), wrong)
    except Exception as exc:  # a file gone, a store that cannot be written: said on the next run of the page
        st.session_state["_inspect_mark_error"] = f"{type(exc).__name__}: {exc}"


def label_buttons(row: dict) -> None:
    """"Label is wrong / right": stored in the corrections table by the two images' digests; the dataset and the
    run stay as they are."""
    from simlab.data import file_digest

    try:
        verdict = corrections().get(file_digest(row["left_path"]), file_digest(row["right_path"]))
    except OSError:
        verdict = None
    truth = "the same scene" if row["label"] == 1 else "different scenes"
    c1, c2, c3 = st.columns([6, 2, 2], vertical_alignment="center")
    said = "" if verdict is None else f" · you said it is **{verdict.verdict}**"
    if verdict is not None and verdict.verdict == "wrong":
        said += f" (truly {'the same scene' if verdict.label == 1 else 'different scenes'})"
    suspect = row.get("suspect")
    c1.markdown(f"Labelled **{truth}**{said}" + (f" · suspect label {suspect:.2f} over {int(row.get('runs', 1))} run(s)"
                                                   if suspect is not None else ""))
    c2.button("Label is wrong", icon=":material/flag:", key="inspect_label_wrong", on_click=_mark, args=(row, True),
              width="stretch", help="Store a correction (the other label) for this pair of images; re-scores every "
                                    "run on them without retraining, beside the original numbers")
    c3.button("Label is right", icon=":material/check:", key="inspect_label_right", on_click=_mark,
              args=(row, False), width="stretch", help="Confirm this pair's label")
    if error := st.session_state.pop("_inspect_mark_error", None):
        st.error(f"The correction could not be stored: {escape_md(error[:200])}")


def explained_backbone(run: Run) -> str | None:
    """The backbone whose cosine a map can split for this run (a fusion's first), or None."""
    first = split_backbone(run.backbone or "")[0]
    try:
        return first if first and can_explain(first) else None
    except ValueError:  # a backbone no longer registered (a deleted tower)
        return None


def overlay_toggle(run: Run) -> str:
    """Images / similarity map / matches, on both large images; the choice stays while stepping."""
    backbone = explained_backbone(run)
    if backbone is None or st.session_state.get(OVERLAY_KEY) not in OVERLAYS:
        st.session_state[OVERLAY_KEY] = "images"
    choice = st.segmented_control(
        "Overlay", list(OVERLAYS), format_func=OVERLAYS.get, key=OVERLAY_KEY,
        disabled=backbone is None, label_visibility="collapsed",
        help=("Similarity map: which regions of each image make their vectors alike (the cosine split over the "
              "regions). Matches: the regions of the two images that are each other's most alike."
              if backbone else f"{run.backbone or 'This backbone'} has no spatial map to show."))
    return choice or "images"


@st.cache_data(show_spinner=False, max_entries=64)
def overlays(path_a: str, path_b: str, mtimes: tuple[float, float], backbone: str, weights: str) -> dict:
    """Both images with their similarity map, and with their matched regions, as data URIs with their sizes;
    the explanation itself is kept on disk by the images' digests and the backbone (simlab.explain)."""
    e = explain_cached(path_a, path_b, backbone, weights)

    def uri(im) -> tuple[str, tuple[int, int]]:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=88)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), im.size

    return {"map": (uri(heat_overlay(path_a, e, "a", TILE_BIG)), uri(heat_overlay(path_b, e, "b", TILE_BIG))),
            "matches": (uri(match_overlay(path_a, e, "a", TILE_BIG)), uri(match_overlay(path_b, e, "b", TILE_BIG))),
            "score": e.score, "matched_share": e.matched_share, "matches_n": len(e.matches), "exact": e.exact,
            "backbone": backbone}


def explanation_of(run: Run, row: dict) -> dict | None:
    backbone = explained_backbone(run)
    paths = (row["left_path"], row["right_path"])
    try:
        mtimes = tuple(os.stat(p).st_mtime for p in paths)
        with st.spinner(f"Explaining this pair with {backbone}…"):
            return overlays(*paths, mtimes, backbone, run.weights)
    except Exception as exc:  # an unreadable image, missing weights: one line, the images stay
        st.warning(f"No similarity map for this pair: {escape_md(type(exc).__name__)}: {escape_md(str(exc)[:200])}")
        return None


def explanation_caption(run: Run, x: dict, overlay: str) -> None:
    """The legend in words, the cosine, the matched regions' share, and what the map does not say."""
    score = f"cosine {x['score']:.3f}"
    if overlay == "map":
        st.markdown(f"{MAP_LEGEND} The {escape_md(x['backbone'])} vectors' {score} is the sum of the map's "
                    f"contributions{'' if x['exact'] else ' (scaled to it: an approximation for this backbone)'}.")
    else:
        st.markdown(f"**Numbered rings: region *k* of the left image and region *k* of the right image are each "
                    f"other's most alike.** These {x['matches_n']} matched regions carry "
                    f"**{x['matched_share']:.0%}** of the {escape_md(x['backbone'])} vectors' {score}.")
    fused = is_fused(run.backbone)
    if run.is_finetune:
        note = (f"This run fine-tuned a network on {escape_md(run.backbone or '?')}; the map shows the pretrained "
                f"backbone's cosine, not the fine-tuned model's reasons.")
    elif run.merge == "dot" and run.classifier == "cosine" and not fused:
        note = "This run's score is this cosine (with one threshold): the map shows exactly what it compared."
    else:
        merge = f"{escape_md(run.merge or '?')} merge" + (" of the fused backbones" if fused else "")
        note = (f"This run's classifier ({escape_md(classifier_name(run.classifier or '?'))}) does not read the "
                f"cosine: it reads the two vectors through its {merge}, so it may weigh these regions differently. "
                f"The map shows what the {escape_md(x['backbone'])} backbone finds alike, which the classifier "
                "then reads.")
    st.caption(f":material/info: {note}")


def pair_context(run: Run, row: dict) -> None:
    """The rest of both groups and each image's nearest neighbours, as thumbnails that open."""
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
    cols = st.columns(len(groups))
    for col, g in zip(cols, groups):
        with col:
            others = [p for p in members.get(g, []) if p not in pair_paths]
            st.markdown(f"**Other images of group {escape_md(g)}** ({len(others)})")
            small_images([(p, html.escape(os.path.basename(p))) for p in others[:12]])

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
    cols = st.columns(2)
    for col, side in zip(cols, ("left", "right")):
        with col:
            path = row[f"{side}_path"]
            st.caption(f"Neighbours of {escape_md(os.path.basename(path))}")
            small_images([(p, f"{s:.3f} · {html.escape(str(g))}"
                              + (" <span class='ok'>✓</span>" if g == row[f"{side}_group"] else ""))
                          for p, g, s in index.nearest(path, NEIGHBOURS)])


# --------------------------------------------------------------------------- page


def pick_run(runs: list[Run]) -> Run:
    """The run picker; the run is kept in the URL (``?run=``), so a reload or a shared link opens it again."""
    ids = [r.id for r in runs]
    by_id = {r.id: r for r in runs}
    linked = url_value("run")  # a reload, a shared link, or Compare's and Runs' "open on Inspect"
    if linked in by_id:
        st.session_state[RUN_KEY] = linked
    wanted = st.session_state.get(RUN_KEY)
    if wanted in by_id and st.session_state.get("inspect_select") != wanted:
        st.session_state["inspect_select"] = wanted
    if st.session_state.get("inspect_select") not in by_id:
        st.session_state["inspect_select"] = ids[0]

    def picked() -> None:
        st.session_state[RUN_KEY] = st.session_state["inspect_select"]

    run_id = st.selectbox("Run", ids, format_func=lambda i: run_label(by_id[i]), key="inspect_select",
                          on_change=picked, help="Newest first. Compare and Train open a run here with one click.")
    st.session_state[RUN_KEY] = run_id
    set_url("run", run_id)
    return by_id[run_id]


def run_caption(run: Run) -> None:
    p = run.protocol
    clf = run.method if run.is_finetune else classifier_name(run.classifier or "?")
    parts = [f"Dataset {escape_md(run.dataset or '?')}",
             f"{escape_md(p.split)} split, test fraction {p.test_size}",
             f"negatives {escape_md(p.negatives)} × {p.negative_ratio}",
             f"{'fine-tuned' if run.is_finetune else 'classifier'} {escape_md(clf)}", f"seed {p.seed}",
             f"{escape_md(p.weights)} weights", f"run {run.id} of {fmt_when(run.created)}"]
    if run.status == "cancelled":
        parts.append(f"{STATUS_ICONS['cancelled']} stopped by hand, scored on its best checkpoint")
    st.caption(" · ".join(parts))


def stored_threshold(run: Run) -> float:
    """The operating threshold stored with the run (chosen without the test pairs); 0.5 for runs made before."""
    value = getattr(run, "threshold", None)
    return 0.5 if value is None else float(value)


def _reset_threshold(value: float) -> None:
    st.session_state[THRESHOLD_KEY] = value


def threshold_slider(run: Run) -> tuple[float, float]:
    """The threshold slider, starting at the run's stored threshold; (threshold, stored)."""
    stored = stored_threshold(run)
    if st.session_state.get("_inspect_threshold_run") != run.id:  # another run: start at its own threshold
        st.session_state["_inspect_threshold_run"] = run.id
        st.session_state[THRESHOLD_KEY] = stored
    bind(THRESHOLD_KEY, "threshold", stored, parse=parse_float, dump=dump_float, valid=lambda v: 0.0 <= v <= 1.0)
    moved = abs(st.session_state.get(THRESHOLD_KEY, stored) - stored) > 1e-9
    c1, c2 = st.columns([5, 2], vertical_alignment="bottom")
    # The slider keeps one short label; whether the value is the run's own is said above it.
    c1.caption("Tuned on the test pairs: optimistic" if moved else "The run's own threshold")
    threshold = c1.slider("Threshold", 0.0, 1.0, step=0.01, key=THRESHOLD_KEY, format="%.3f",
                          help=f"A pair is predicted 'same' when its probability is at least this. The run's own "
                               f"threshold, {stored:.3f}, is stored with it: chosen on validation scenes carved from "
                               "its training scenes (0.5 for runs made before thresholds were stored, and for the "
                               "2017 study's settings). Moving the slider re-scores the test pairs: an exploration "
                               "tool, whose best numbers are optimistic, found by looking at the test pairs.")
    c2.button(f"Back to {stored:.3f}", icon=":material/undo:", key="inspect_threshold_reset", disabled=not moved,
              on_click=_reset_threshold, args=(stored,), width="stretch", help="The run's own threshold")
    return threshold, stored


def main() -> None:
    store_guard()  # a store that cannot be opened: one line; corrupt runs named
    st.title("Inspect")
    try:
        runs = [r for r in cached_runs() if scored_run(r)]
    except Exception as exc:
        st.error(f"Could not read the run store: {escape_md(type(exc).__name__)}: {escape_md(str(exc)[:300])}")
        return
    if not runs:
        no_runs_yet()
        return
    run = pick_run(runs)
    run_caption(run)
    preds = load_predictions(str(store_path()), run.id)
    predictions_note(preds)  # stored predictions that could not be read, left out
    if preds.empty:
        st.info("This run stored no per-pair predictions, so there is nothing to inspect. Pick another run.")
        return

    threshold, stored = threshold_slider(run)
    m = metrics_strip(preds, threshold, stored)
    rescored_caption(run, threshold)
    c1, c2 = st.columns([2, 3])
    c1.plotly_chart(confusion_figure(m), config={"displayModeBar": False}, key="inspect_confusion")
    c2.plotly_chart(histogram_figure(preds, threshold), config={"displayModeBar": False}, key="inspect_hist")

    st.subheader("Pairs")
    scored = score(preds, threshold)
    try:
        suspects = load_suspects(str(store_path()), run.id, len(runs))
        scored = scored.assign(suspect=suspects["suspect"].to_numpy(), runs=suspects["runs"].to_numpy())
    except Exception:  # the filter needs it; without it, every pair counts as unsuspected
        scored = scored.assign(suspect=0.0, runs=1)
    f1, f2 = st.columns([5, 2])
    show = f1.radio("Show", list(SHOW), format_func=SHOW.get, horizontal=True,
                    key=bind("inspect_show", "show", "all", choices=SHOW),
                    help="Errors and their kinds follow the threshold above")
    view = f2.radio("View", VIEWS, horizontal=True, key=bind("inspect_view", "view", VIEWS[0], choices=VIEWS))
    g1, g2, g3 = st.columns([2, 3, 2])
    prob_range = g1.slider("Probability range", 0.0, 1.0, (0.0, 1.0), 0.01,
                           key=bind("inspect_prob", "prob", (0.0, 1.0), parse=parse_range, dump=dump_range))
    all_groups = sorted(set(scored["left_group"].astype(str)) | set(scored["right_group"].astype(str)))
    groups = g2.multiselect("Groups", all_groups, placeholder="All groups",
                            key=bind("inspect_groups", "group", [], choices=all_groups, multi=True),
                            help="Keep pairs with either image in one of these groups")
    sort = g3.selectbox("Sort", list(SORTS), format_func=SORTS.get,
                        key=bind("inspect_sort", "sort", "confident_errors", choices=SORTS))

    pairs = sort_pairs(filter_pairs(scored, show, prob_range, groups), "suspect" if show == "suspect" else sort)
    if show == "suspect":
        st.caption(f"Pairs whose label the runs on these test pairs contradict with confidence {SUSPECT_MIN} or more "
                   "on average (1 - P(same) for a pair labelled same, P(same) for one labelled different), most "
                   "suspect first. Open one and say whether its label is wrong.")
    if pairs.empty:
        st.info("No pairs match these filters: widen the probability range, pick other groups, or show all pairs.")
        return
    n_pages = max(1, math.ceil(len(pairs) / PAGE_SIZE))
    # a new key (so page 1) whenever what is listed changes
    listing = (run.id, show, prob_range, tuple(groups), sort, threshold if show != "all" else 0)
    page_key = f"inspect_page_{hash(listing)}"
    bind(page_key, "page", 1, parse=int, valid=lambda v: 1 <= v <= n_pages)
    page_no = st.session_state.get(page_key, 1)
    page_no = min(max(1, int(page_no)), n_pages)
    page = pairs.iloc[(page_no - 1) * PAGE_SIZE: page_no * PAGE_SIZE]
    t1, t2 = st.columns([3, 2], vertical_alignment="center")
    t1.caption(f"Showing pairs {(page_no - 1) * PAGE_SIZE + 1}–{(page_no - 1) * PAGE_SIZE + len(page)} of "
               f"{len(pairs)} ({len(scored)} in the run's test set). Open a pair to see it large; "
               "then ← → step through this list.")
    if n_pages > 1:
        with t2:
            st.pagination(n_pages, key=page_key, width="stretch")
    if view == "Cards":
        cards(page)
    else:
        table(page)

    opened = st.session_state.pop("_inspect_open", None)
    linked = url_value(PAIR_PARAM)  # a reload or a shared link with the viewer open
    if opened is None and linked is not None and linked.isdigit():
        opened = int(linked)
    if opened is not None and opened not in pairs.index:
        set_url(PAIR_PARAM, None)  # not in this list (any more): the URL must not say it is open
    if opened is not None and opened in pairs.index:
        order = list(pairs.index)
        st.session_state[VIEWER_KEY] = order.index(opened)
        pair_dialog(run, scored, order, threshold)


main()
