"""Data: choose or define the dataset, see its counts, browse its groups and the skipped files."""

from __future__ import annotations

import math
import os

import pandas as pd
import plotly.express as px
import streamlit as st

from pages._ui.datasets import clear_dataset_cache, load_dataset_cached
from pages._ui.formatting import escape_md, short_path
from pages._ui.state import current_dataset_spec, open_dataset
from pages._ui.thumbs import WRAP_CSS, breakable, open_image, tile_clicks, tile_html
from simlab.data import DATASET_KINDS, DatasetError, parse_spec

GROUPS_PER_PAGE_CHOICES = [8, 24, 48, 96]
GROUP_TILE_PX = 64  # the small square thumbnails of a group card
KIND_LABELS = {"demo": "Demo (built in)", "holidays": "INRIA Holidays folder", "folder": "Folder per group",
               "csv": "CSV file"}

st.title("Data")
st.caption("The images every page works on: photos grouped by scene. Two photos of one group are a "
           "*positive* pair, photos of two different groups a *negative* one.")

# --------------------------------------------------------------------------- choose


def _current_kind() -> tuple[str, str]:
    try:
        return parse_spec(current_dataset_spec())
    except DatasetError:
        return "demo", ""


with st.container(border=True):
    st.markdown("**Choose a dataset**")
    kind_now, arg_now = _current_kind()
    kinds = list(DATASET_KINDS)
    kind = st.segmented_control("Layout", kinds, default=kind_now, format_func=lambda k: KIND_LABELS.get(k, k),
                                key="data_kind", label_visibility="collapsed") or kind_now
    st.caption(DATASET_KINDS[kind].description)
    with st.form("dataset_form", border=False):
        if kind == "demo":
            arg = ""
            st.caption("No path needed: the demo images are generated offline on first use.")
        else:
            example = DATASET_KINDS[kind].example.partition(":")[2]
            arg = st.text_input("CSV file" if kind == "csv" else "Folder", value=arg_now if kind == kind_now else "",
                                placeholder=f"e.g. {example}", help="A path on the machine that runs simlab.")
        submitted = st.form_submit_button("Use this dataset", type="primary")
    if submitted:
        spec = kind if kind == "demo" else f"{kind}:{arg.strip()}"
        if kind != "demo" and not arg.strip():
            st.error("Type the path of the " + ("CSV file." if kind == "csv" else "folder."))
        else:
            clear_dataset_cache()
            ds = load_dataset_cached(spec)
            if ds is not None:
                open_dataset(ds.spec)
                st.session_state["data_flash"] = f"Now using {ds.n_images} images in {ds.n_groups} groups."
                st.rerun()  # so the sidebar's picker shows the new dataset too
if flash := st.session_state.pop("data_flash", None):
    st.success(flash, icon=":material/check_circle:")

spec = current_dataset_spec()
top = st.columns([5, 1], vertical_alignment="bottom")
with top[0]:
    st.subheader("Current dataset")
    st.markdown(f"`{spec}`" if "`" not in spec else escape_md(spec))
with top[1]:
    if st.button("Reload from disk", help="Read the folder again (after adding or removing files)."):
        clear_dataset_cache()

dataset = load_dataset_cached(spec)
if dataset is None:
    st.info("Pick another dataset above, or fix the path, then press **Use this dataset**.", icon="👆")
    st.stop()

# --------------------------------------------------------------------------- counts

sizes = dataset.group_sizes()
positives = sum(k * (k - 1) // 2 for k in sizes.values())
singletons = sum(1 for k in sizes.values() if k < 2)
c = st.columns(5)
c[0].metric("Images", f"{dataset.n_images:,}")
c[1].metric("Groups", f"{dataset.n_groups:,}")
c[2].metric("Positive pairs", f"{positives:,}", help="Every pair of images inside a group.")
c[3].metric("Negative pairs", f"{positives:,}",
            help="By default one per positive: its left image with an image of another group "
                 "(the ratio is set on the Train page).")
c[4].metric("Skipped files", f"{len(dataset.problems):,}", help="Files that are not usable images; see below.")
if singletons:
    st.caption(f"{singletons} group(s) hold a single image: they give no positive pair, only negatives.")

hist = pd.Series(list(sizes.values())).value_counts().sort_index()
fig = px.bar(x=hist.index.astype(str), y=hist.values, labels={"x": "images in the group", "y": "groups"},
             title="Group sizes", height=260)
fig.update_layout(margin=dict(l=10, r=10, t=40, b=10), xaxis_type="category", bargap=0.3)
fig.update_traces(hovertemplate="%{y} groups of %{x} images<extra></extra>")
st.plotly_chart(fig, width="stretch", key="group_sizes")

# --------------------------------------------------------------------------- group browser

CARD_CSS = ("border:1px solid rgba(49,51,63,.18);border-radius:.5rem;padding:.4rem .5rem .5rem;flex:0 0 auto;"
            "display:flex;flex-direction:column;gap:.3rem")
TILES_PER_ROW = 6  # a larger group wraps inside its card


def group_cards_html(cards: list[tuple[str, list[tuple[str, str, bool, str]]]], tile_px: int) -> str:
    """Compact cards that flow side by side, each as wide as its thumbnails (up to TILES_PER_ROW a row):
    a title line (wrapped to the card's width) and the group's small square tiles, which open the large
    view when clicked; the cards of a line share its height."""
    out = []
    for title, tiles in cards:
        cells = "".join(f'<div style="width:{tile_px}px">'
                        f'{tile_html(path, caption, 160, mark, open_id=open_id, show_caption=False)}</div>'
                        for path, caption, mark, open_id in tiles)
        width = min(len(tiles), TILES_PER_ROW) * (tile_px + 4) - 4
        out.append(f'<div style="{CARD_CSS}"><div style="width:0;min-width:100%;font-size:.8rem;font-weight:600;'
                   f'{WRAP_CSS}">{breakable(title)}</div><div style="display:flex;flex-wrap:wrap;gap:4px;'
                   f'width:{max(width, 2 * tile_px + 4)}px">{cells}</div></div>')
    return '<div style="display:flex;flex-wrap:wrap;gap:.5rem;align-items:stretch">' + "".join(out) + "</div>"


st.subheader("Groups")
frame = dataset.to_frame()
has_queries = dataset.queries is not None  # Holidays layout (and the demo): each group's query image
queries = set(dataset.query_indices()) if has_queries else set()
frame["query"] = [i in queries for i in range(len(frame))]
frame["index"] = range(len(frame))
group_names = list(sizes)

f1, f2, f3 = st.columns([3, 2, 1])
with f1:
    needle = st.text_input("Filter groups by name", key="group_filter",
                           placeholder=f"e.g. {group_names[0]}" if group_names else "").strip()
with f2:
    size_pick = st.multiselect("Group size", sorted(set(sizes.values())), key="group_size_filter",
                               placeholder="any")
with f3:
    per_page = st.selectbox("Groups per page", GROUPS_PER_PAGE_CHOICES, index=1, key="group_page_size")
names = [g for g in group_names if (not needle or needle.lower() in str(g).lower())
         and (not size_pick or sizes[g] in size_pick)]
if not names:
    st.info("No group matches the filter.")
else:
    n_pages = max(1, math.ceil(len(names) / per_page))
    if st.session_state.get("group_page", 1) > n_pages:
        st.session_state["group_page"] = 1
    p1, p2 = st.columns([1, 5], vertical_alignment="center")
    with p1:
        page = st.number_input("Page", min_value=1, max_value=n_pages, step=1, key="group_page")
    with p2:
        st.caption(f"{len(names)} groups · {per_page} per page · page {page} of {n_pages}. Click an image to open "
                   "it large." + (" The first image of each group is its query (★, outlined)." if has_queries else ""))
    by_group = frame.groupby("group", sort=False)
    cards, order = [], []
    for g in names[(page - 1) * per_page: page * per_page]:
        rows = by_group.get_group(g).sort_values("query", ascending=False, kind="stable")
        tiles = []
        for path, query, index in zip(rows["path"], rows["query"], rows["index"]):
            tiles.append((path, ("★ query · " if query else "") + os.path.basename(path), bool(query),
                          f"data:{len(order)}"))
            order.append(int(index))
        cards.append((f"{g} · {len(rows)} image{'s' if len(rows) != 1 else ''}", tiles))
    st.html(group_cards_html(cards, GROUP_TILE_PX))
    clicked = tile_clicks("data")
    if clicked is not None and clicked.isdigit() and int(clicked) < len(order):
        captions = [f"group {frame['group'].iloc[i]} · {short_path(frame['path'].iloc[i], dataset)}" for i in order]
        open_image("data_image", [frame["path"].iloc[i] for i in order], captions, int(clicked))

# --------------------------------------------------------------------------- problems

st.subheader("Skipped files")
if not dataset.problems:
    st.success("Every file is a usable image.", icon=":material/check_circle:")
else:
    st.caption("These files were left out of the dataset. Fix or remove them, then press **Reload from disk**.")
    problems = pd.DataFrame({"file": [short_path(p.path, dataset) for p in dataset.problems],
                             "reason": [p.reason for p in dataset.problems]})
    st.dataframe(problems, hide_index=True, width="stretch", height=min(400, 38 + 35 * len(problems)))
