"""Search: the images most like one image (nearest neighbours of its vector), optionally re-ranked by a run."""

from __future__ import annotations

import hashlib
import html
import io
import os
from pathlib import Path

import streamlit as st
from PIL import Image, ImageOps

from pages._ui.datasets import require_dataset
from pages._ui.formatting import classifier_name, escape_md, short_path
from pages._ui.job_panel import job_panel, latest_job, start_job, wait_for_job
from pages._ui.links import page_link
from pages._ui.options import default, widget_range
from pages._ui.store import cached_runs
from pages._ui.store_guard import store_guard
from pages._ui.thumbs import WRAP_CSS, breakable, thumb_path, thumb_uri
from pages._ui.vector_sets import align, read_set, vector_sets
from simlab.backbones import DEFAULT_BACKBONE
from simlab.data import file_digest
from simlab.data.images import ImageError, check_image_bytes
from simlab.options import choice_label
from simlab.paths import atomic_write_bytes, cache_dir
from simlab.search import build_index, local_query, neighbour_rows, search_set
from simlab.store import Run

COLUMNS = 6
KINDS = {"auto": "Auto", "flat": "Exact (flat)", "ivf": "IVF", "hnsw": "HNSW"}
UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]
SEARCH_TIMEOUT = 900  # seconds: the first re-rank refits the run's classifier
BOX_BG = (240, 242, 246)  # letterbox colour of the square thumbnails (Streamlit's light grey)


# --------------------------------------------------------------------------- data


@st.cache_resource(show_spinner=False, max_entries=8)
def vector_index(path: str, mtime: float, set_key: str, fingerprint: str, kind: str):
    """The FAISS index of a vector set (built once, then loaded from cache/index/)."""
    vectors, _ = read_set(path, mtime)
    return build_index(vectors, kind, cache_key=(set_key, fingerprint))


@st.cache_data(show_spinner=False, max_entries=4000)
def _square(path: str, mtime: float, size: int) -> bytes | None:
    thumb = thumb_path(path, 256)
    if not thumb:
        return None
    with Image.open(thumb) as im:
        boxed = ImageOps.pad(im.convert("RGB"), (size, size), color=BOX_BG)
    buffer = io.BytesIO()
    boxed.save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


def square_thumb(path: str, size: int = 224) -> bytes | None:
    """The image letterboxed into a square (so that the cards of the grid line up), or None."""
    try:
        return _square(str(path), os.stat(path).st_mtime, size)
    except OSError:
        return None


def set_label(s: dict) -> str:
    return f"{s['backbone']} · {choice_label('weights', s['weights'])} · {s['images']} images"


def rerank_runs(fingerprint: str, backbone: str, weights: str) -> list[Run]:
    """Finished grid runs on this dataset and vector set: their classifier can re-rank."""
    return [r for r in cached_runs() if r.done and r.is_grid and r.fingerprint == fingerprint
            and r.backbone == backbone and r.weights == weights]


def run_label(r: Run) -> str:
    acc = r.metrics.get("accuracy")
    acc = f" · accuracy {acc:.3f}" if isinstance(acc, (int, float)) else ""
    return f"{classifier_name(r.classifier)} on {r.merge}{acc} · {r.id}"


def save_upload(upload) -> tuple[Path | None, str | None]:
    """The uploaded file saved under cache/uploads/ (named by its content), or an error message."""
    data = upload.getvalue()
    try:
        check_image_bytes(data)
    except ImageError as exc:
        return None, str(exc)
    ext = Path(upload.name).suffix.lower() if Path(upload.name).suffix.lower().lstrip(".") in UPLOAD_TYPES else ".img"
    target = cache_dir("uploads") / (hashlib.blake2b(data, digest_size=12).hexdigest() + ext)
    if not target.exists():
        atomic_write_bytes(target, data)
    return target, None


BADGES = {"query": ("query", "#1c4f8c", "#dbe8f8"), "same file": ("same file", "#5b2a86", "#ece0f7"),
          "same group": ("✓ same group", "#1e6b35", "#dcf1e2"), "other group": ("other group", "#555", "#eceef1")}
CARD_CSS = ("border:1px solid rgba(49,51,63,.18);border-radius:.5rem;padding:.45rem;display:flex;"
            "flex-direction:column;gap:.3rem;min-width:0")


@st.cache_data(show_spinner=False, max_entries=256)
def _digest(path: str, mtime: float) -> str:
    return file_digest(path)


def upload_digest(path: str) -> str:
    """Content digest of a saved upload, the same function as the dataset's (simlab.data.file_digest)."""
    return _digest(path, os.stat(path).st_mtime)


def result_badge(r: dict, query_group: str | None, own: str | None, digest: str | None,
                 digest_of: dict[str, str]) -> str:
    """What a neighbour is to the query: the query itself, the same bytes, the same group, or another group."""
    if own is not None and r["path"] == own:
        return "query"
    if r.get("same_file") or (digest is not None and digest_of.get(r["path"]) == digest):
        return "same file"
    if query_group is not None and r["group"] == query_group:
        return "same group"
    return "other group"


def result_cards_html(results: list[dict], dataset, query_group, own, digest, digest_of) -> str:
    """The neighbours as cards of one height (a CSS grid whose rows are all as tall as the tallest), each:
    the image letterboxed in a square, its badge, its name wrapped after separators, group and scores."""
    cards = []
    for r in results:
        label, fg, bg = BADGES[result_badge(r, query_group, own, digest, digest_of)]
        uri = thumb_uri(r["path"], 224)
        img = (f'<img src="{uri}" alt="" style="width:100%;aspect-ratio:1;object-fit:contain;border-radius:.3rem;'
               f'background:rgb{BOX_BG};display:block">' if uri else
               '<div style="width:100%;aspect-ratio:1;border-radius:.3rem;background:#eee;display:flex;'
               'align-items:center;justify-content:center;font-size:.8rem;color:#888">unreadable</div>')
        line = f"similarity {r['score']:.3f}" + (f" · P(same) {r['prob']:.2f}" if "prob" in r else "")
        cards.append(
            f'<div style="{CARD_CSS}" title="{html.escape(short_path(r["path"], dataset), quote=True)}">{img}'
            f'<span style="align-self:flex-start;font-size:.75rem;padding:.05rem .45rem;border-radius:.6rem;'
            f'color:{fg};background:{bg}">{label}</span>'
            f'<div style="font-size:.82rem;line-height:1.15rem;{WRAP_CSS}">#{r["rank"]} · '
            f'{breakable(short_path(r["path"], dataset))}</div>'
            f'<div style="font-size:.8rem;opacity:.8;{WRAP_CSS}">group {breakable(r["group"])}</div>'
            f'<div style="font-size:.78rem;opacity:.65;margin-top:auto">{line}</div></div>')
    return (f'<div style="display:grid;grid-template-columns:repeat({COLUMNS},minmax(0,1fr));grid-auto-rows:1fr;'
            f'gap:.6rem">' + "".join(cards) + "</div>")


# --------------------------------------------------------------------------- searching


def search_here(s: dict, dataset, index_of: list[int], query, k: int, kind: str, bar) -> dict:
    """Search in this process (``simlab.search.search_set``): the query is a row of the vector set (an image of
    the dataset) or a kept vector (an upload searched before); vectors and index come from the cache."""
    path = s["path"]
    mtime = os.stat(path).st_mtime
    bar.progress(0.2, text="Loading the vectors…")
    vectors, _ = read_set(path, mtime)
    bar.progress(0.4, text="Loading the index (built once, then cached)…")
    index = vector_index(path, mtime, s["key"], s["fingerprint"], kind)
    bar.progress(0.8, text="Searching…")
    scores, ids, index = search_set(vectors, query, k, index=index)
    results = neighbour_rows(ids, scores, [dataset.paths[i] for i in index_of],
                             [dataset.groups[i] for i in index_of])
    bar.progress(1.0, text="Done")
    return {"results": results, "index": index.kind, "from_cache": index.from_cache}


def search_job(dataset_spec: str, s: dict, query: str, k: int, kind: str, rerank: str | None, bar) -> dict:
    """Query = an upload, or a re-rank: a "search" job (its worker loads the backbone or refits the
    classifier, which this page never holds), its steps driving the bar."""
    params = {"dataset": dataset_spec, "backbone": s["backbone"], "weights": s["weights"], "query": str(query),
              "k": k, "index": kind}
    if rerank:
        params["rerank"] = rerank
    bar.progress(0.02, text="Starting (loading TensorFlow takes a few seconds; the upload's vector is then kept)…")
    job = wait_for_job(start_job("search", params), bar, SEARCH_TIMEOUT)
    if job is None:
        return {"error": f"The search took longer than {SEARCH_TIMEOUT} s and was stopped."}
    if job.status != "done":
        return {"error": job.message or "unknown error"}
    bar.progress(1.0, text="Done")
    return job.result


# --------------------------------------------------------------------------- page

store_guard()  # a store that cannot be opened: one line; corrupt runs named
st.title("Search")
st.caption("Pick an image and see the images whose vectors are nearest (cosine similarity, FAISS index). "
           "A trained pair classifier can re-rank them by its probability that they show the same scene.")

dataset = require_dataset()

sets = vector_sets(dataset.fingerprint)
if not sets:
    st.info(f"No vectors for **{escape_md(dataset.spec)}** yet: search needs one vector per image. "
            f"Vectorise the {dataset.n_images} images first (the bundled backbone runs offline).",
            icon=":material/image_search:")
    job = latest_job("vectorize", active_only=True)
    if job is not None:
        job_panel(job.id)
    elif st.button(f"Vectorize with {DEFAULT_BACKBONE}", type="primary", icon=":material/scatter_plot:"):
        start_job("vectorize", {"dataset": dataset.spec, "backbones": [DEFAULT_BACKBONE], "weights": "imagenet"})
        st.rerun()
    page_link("pages/vectorize.py", "Or choose backbones on the Vectorize page", icon=":material/scatter_plot:")
    st.stop()

# --------------------------------------------------------------------------- settings

c1, c2, c3, c4 = st.columns([3, 2, 2, 3])
with c1:
    choice = st.selectbox("Vector set", range(len(sets)), format_func=lambda i: set_label(sets[i]), key="search_set")
s = sets[choice]
with c2:
    k = st.slider("Neighbours", value=default("k"), key="search_k", **widget_range("k"))
with c3:
    kind = st.selectbox("Index", list(KINDS), format_func=KINDS.get, key="search_kind",
                        help="Auto: exact search up to 100,000 images, then an IVF index (approximate, much "
                             "faster). HNSW is a graph index. Built once per vector set, then cached.")
with c4:
    runs = rerank_runs(dataset.fingerprint, s["backbone"], s["weights"])
    rerank = st.selectbox("Re-rank by run", [None] + [r.id for r in runs], key="search_rerank",
                          format_func=lambda rid: "No re-ranking" if rid is None else run_label(
                              next(r for r in runs if r.id == rid)),
                          help="Re-order the neighbours by a finished run's classifier (P same scene). Its "
                               "classifier is refitted once on the run's training pairs, then cached.",
                          disabled=not runs)
if s["weights"] == "random":
    st.warning("These vectors come from **random weights**: they exist to test the pipeline; the neighbours "
               "mean nothing.", icon=":material/warning:")

mtime = os.stat(s["path"]).st_mtime
_, digests = read_set(s["path"], mtime)
index_of = align(dataset.digests, digests)
if not index_of:
    st.warning("This vector set no longer matches the dataset's files: vectorise again on the Vectorize page.")
    st.stop()
position_of = {i: p for p, i in enumerate(index_of)}  # dataset index -> row of the vector set

# --------------------------------------------------------------------------- the query

source = st.radio("Query", ["An image of the dataset", "Upload an image"], horizontal=True, key="search_source",
                  label_visibility="collapsed")
query_path: str | None = None
query_group: str | None = None
position: int | None = None  # row of the vector set searched with (an image of the dataset)
digest: str | None = None  # content digest of the query file (as the dataset's digests)
identical: int | None = None  # dataset index of an image with the upload's very bytes
q_left, q_right = st.columns([1, 4], vertical_alignment="top")
if source == "An image of the dataset":
    groups = list(dict.fromkeys(str(dataset.groups[i]) for i in index_of))
    with q_right:
        group = st.selectbox("Group", groups, key="search_group",
                             format_func=lambda g: f"{g} ({sum(1 for i in index_of if str(dataset.groups[i]) == g)})")
        members = [i for i in index_of if str(dataset.groups[i]) == group]
        member = st.selectbox("Image", members, key=f"search_image_{group}",
                              format_func=lambda i: short_path(dataset.paths[i], dataset))
    query_path, query_group, position = dataset.paths[member], group, position_of[member]
    digest = dataset.digests[member]
else:
    with q_right:
        upload = st.file_uploader("An image (JPEG, PNG, WebP…)", type=UPLOAD_TYPES, key="search_upload")
    if upload is not None:
        saved, problem = save_upload(upload)
        if problem:
            with q_right:
                st.error(f"This file cannot be used: {problem}.", icon=":material/broken_image:")
        else:
            query_path = str(saved)
            digest = upload_digest(query_path)
            identical = next((i for i in index_of if dataset.digests[i] == digest), None)
            if identical is not None:  # the same bytes as a dataset image: search with that image
                query_group, position = str(dataset.groups[identical]), position_of[identical]
                with q_right:
                    st.info(f"This file is identical to **{escape_md(short_path(dataset.paths[identical], dataset))}**"
                            f" (group {escape_md(query_group)}): it is searched as that image.",
                            icon=":material/content_copy:")
with q_left:
    if query_path:
        thumb = square_thumb(query_path, 256)
        if thumb:
            st.image(thumb, width="stretch")
        name = short_path(query_path, dataset) if source == "An image of the dataset" else f"uploaded: {upload.name}"
        st.html(f'<div style="font-size:.85rem;{WRAP_CSS}">{breakable(name)}</div>')
    else:
        st.caption("Upload an image to search with it.")

if not query_path:
    st.stop()

# --------------------------------------------------------------------------- results

# Keyed by content, not by widget: another k, index or re-ranking reuses the query's vector (an upload is
# vectorised once per backbone configuration, then kept under cache/queries/ by its digest).
request = (s["key"], s["fingerprint"], digest, k, kind, rerank)
cache = st.session_state.setdefault("search_results", {})
if request not in cache:
    bar = st.progress(0.0, text="Searching…")
    here = local_query(position, s["key"], digest, rerank)  # None: a job vectorises or re-ranks
    if here is not None:
        cache[request] = search_here(s, dataset, index_of, here, k, kind, bar)
    else:
        cache[request] = search_job(dataset.spec, s, query_path, k, kind, rerank, bar)
    bar.empty()
answer = cache[request]
if "error" in answer:
    cache.pop(request, None)
    st.error(f"The search failed: {escape_md(answer['error'])}", icon=":material/error:")
    st.stop()

results = answer["results"]
digest_of = {p: d for p, d in zip(dataset.paths, dataset.digests)}
own = query_path if source == "An image of the dataset" else None  # the query itself, among the results
itself = own or (dataset.paths[identical] if identical is not None else None)
same = sum(1 for r in results if query_group is not None and r["group"] == query_group and r["path"] != itself)
summary = f"**{len(results)} nearest images** · {KINDS.get(answer.get('index'), answer.get('index'))} index"
if rerank:
    summary += f" · re-ranked by run {escape_md(rerank)}"
if query_group is not None:
    others = sum(1 for i in index_of if str(dataset.groups[i]) == query_group) - 1
    summary += f" · {same} of the {others} other image(s) of the query's group found"
st.markdown(summary)
if answer.get("close_match") is False:
    st.warning("**No close match.** The best of these looks less alike than 95% of the same-scene pairs this run "
               "was validated on (by its P(same) and by vector similarity): the query probably shows a scene that "
               "is not in the dataset. The P(same) below are the classifier's reading of images unlike any it "
               "was trained on; do not trust them.", icon=":material/help:")
order = ("ordered by the run's probability that the pair shows the same scene, P(same)" if rerank
         else "ordered by cosine similarity")
if query_group is not None:
    st.caption(f"Neighbours {order}. Images of the query's own group are marked **same group**; the query "
               "itself (or a file with the very same bytes, **same file**) has similarity 1.")
else:
    st.caption(f"Neighbours {order}. A dataset image with the very same bytes as the upload is marked "
               "**same file**.")
st.html(result_cards_html(results, dataset, query_group, own, digest, digest_of))
