"""Two runs, pair by pair: on the same test pairs, which pairs run B fixes, breaks, and which both get wrong.

The URL keeps the two runs (``?a=<run id>&b=<run id>``), so a reload or a shared link shows the same comparison.
"""

from __future__ import annotations

import math
import os

import pandas as pd
import streamlit as st

from pages._ui.formatting import escape_md
from pages._ui.links import no_runs_yet, page_link
from pages._ui.run_names import run_choice, run_title
from pages._ui.state import current_dataset_spec
from pages._ui.store import cached_runs, same_dataset, store_path
from pages._ui.store_guard import predictions_note, store_guard
from pages._ui.thumbs import tiles_html
from simlab.evaluate import DifferentTestPairs, not_comparable, pair_diff
from simlab.store import Run, Store

PAGE_SIZE = 18
CARDS_PER_ROW = 3
SHOW = {"disagree": "Where they disagree", "fixed": "Fixed by B", "broken": "Broken by B",
        "both_wrong": "Both wrong"}
COUNTS = (("fixed", "Fixed by B", "A wrong, B right"), ("broken", "Broken by B", "A right, B wrong"),
          ("both_wrong", "Both wrong", "neither run gets them right"),
          ("both_right", "Both right", "both runs get them right"))
BADGE = {"fixed": ":green-badge[:material/trending_up: fixed by B]",
         "broken": ":red-badge[:material/trending_down: broken by B]",
         "both_wrong": ":orange-badge[:material/close: both wrong]",
         "both_right": ":gray-badge[:material/check: both right]"}


@st.cache_data(show_spinner=False, max_entries=16)
def load_predictions(db: str, run_id: str) -> pd.DataFrame:
    """A finished run's test pairs (they never change once the run is done)."""
    return Store(db).predictions(run_id)


@st.cache_data(show_spinner=False, ttl=10)
def test_pairs_keys(db: str, run_ids: tuple[str, ...]) -> dict[str, str]:
    return Store(db).test_pairs_keys(list(run_ids))


def pick(label: str, runs: list[Run], param: str, key: str, help_text: str) -> Run:
    """A run picker that starts at the URL's ``param`` (when it names one of ``runs``) and writes it back."""
    ids = [r.id for r in runs]
    wanted = st.query_params.get(param)
    if wanted in ids and st.session_state.get(f"_{key}_from_url") != wanted:
        st.session_state[key] = wanted  # a link or a reload: the URL decides
    st.session_state[f"_{key}_from_url"] = wanted
    if st.session_state.get(key) not in ids:
        st.session_state[key] = ids[0]
    by_id = {r.id: r for r in runs}
    chosen = st.selectbox(label, ids, key=key, format_func=lambda i: run_choice(by_id[i]), help=help_text)
    if st.query_params.get(param) != chosen:
        st.query_params[param] = chosen
        st.session_state[f"_{key}_from_url"] = chosen
    return by_id[chosen]


def pair_card(row) -> None:
    with st.container(border=True):
        names = [os.path.basename(row["left_path"]), os.path.basename(row["right_path"])]
        st.html(tiles_html([row["left_path"], row["right_path"]],
                           [f"{n} · group {g}" for n, g in zip(names, (row["left_group"], row["right_group"]))],
                           tile_px=120, size=256))
        truth = "same scene" if row["label"] == 1 else "different scenes"
        mark = {True: ":green[:material/check:]", False: ":red[:material/close:]"}
        st.markdown(f"{BADGE[row['outcome']]} :gray[truly {truth}]  \n"
                    f"P(same): A **{row['prob_a']:.3f}** {mark[bool(row['correct_a'])]} → "
                    f"B **{row['prob_b']:.3f}** {mark[bool(row['correct_b'])]}")


def main() -> None:
    store_guard()  # a store that cannot be opened: one line; corrupt runs named
    st.title("Two runs")
    st.caption("Two runs scored on the same test pairs, pair by pair: which pairs run B gets right that run A got "
               "wrong (fixed), which it gets wrong that A got right (broken), and which both miss. Each run decides "
               "at its own stored threshold. The fastest way to see what a better model actually learned.")
    runs = [r for r in cached_runs() if r.done]
    linked = next((r for r in runs if r.id == st.query_params.get("a")), None)
    spec = linked.dataset if linked else current_dataset_spec()  # a link's run A decides, else the sidebar
    elsewhere = len(runs)
    runs = [r for r in runs if same_dataset(r.dataset, spec)]
    if not runs and elsewhere:
        st.info(f"No finished runs on {escape_md(spec)} yet ({elsewhere} on other datasets: pick one in the "
                "sidebar).", icon=":material/lightbulb:")
        return
    if not runs:
        no_runs_yet()
        return
    db = str(store_path())
    keys = test_pairs_keys(db, tuple(r.id for r in runs))
    shared = pd.Series([keys[r.id] for r in runs if r.id in keys]).value_counts()
    comparable = [r for r in runs if r.id in keys and shared.get(keys[r.id], 0) >= 2]
    if not comparable:
        st.info("No two finished runs were scored on the same test pairs yet. Runs of one grid share them (same "
                "dataset, split, test size, negatives and seed): start a grid with two classifiers or merges on "
                "Train.", icon=":material/lightbulb:")
        page_link("pages/train.py", "Train: start a grid", icon=":material/model_training:")
        return

    c1, c2 = st.columns(2)
    with c1:
        run_a = pick("Run A (the baseline)", comparable, "a", "diff_a",
                     "Only runs that share their test pairs with at least one other run are listed.")
    with c2:
        others = [r for r in comparable if r.id != run_a.id and not_comparable(run_a, r, keys) is None]
        run_b = pick("Run B (compared with A)", others, "b", "diff_b",
                     "Only runs scored on the same test pairs as run A are listed.")
    preds_a, preds_b = load_predictions(db, run_a.id), load_predictions(db, run_b.id)
    for preds in (preds_a, preds_b):
        predictions_note(preds)  # stored predictions that could not be read, left out
    try:
        diff = pair_diff(preds_a, preds_b, run_a.threshold, run_b.threshold)
    except DifferentTestPairs as exc:
        st.error(str(exc), icon=":material/error:")
        return

    counts = diff.counts
    cols = st.columns(len(COUNTS))
    for col, (key, label, helptext) in zip(cols, COUNTS):
        share = counts[key] / len(diff.pairs)
        col.metric(label, f"{counts[key]}", help=f"Test pairs {helptext} ({share:.1%} of {len(diff.pairs)}).")
    acc_a = (counts["both_right"] + counts["broken"]) / len(diff.pairs)  # "broken": A right, B wrong
    acc_b = (counts["both_right"] + counts["fixed"]) / len(diff.pairs)
    p = run_a.protocol
    st.caption(f"On the same {len(diff.pairs)} test pairs: {escape_md(os.path.basename(str(run_a.dataset or '')))} · "
               f"{escape_md(p.describe())}. A: {escape_md(run_title(run_a))}, accuracy {acc_a:.3f} at threshold "
               f"{diff.threshold_a:.2f}. B: {escape_md(run_title(run_b))}, accuracy {acc_b:.3f} at threshold "
               f"{diff.threshold_b:.2f}. B − A = (fixed − broken) / pairs = {acc_b - acc_a:+.3f}.")
    links = st.columns(4)
    with links[0]:
        page_link("pages/inspect.py", "Inspect run A", icon=":material/search:", query_params={"run": run_a.id})
    with links[1]:
        page_link("pages/inspect.py", "Inspect run B", icon=":material/search:", query_params={"run": run_b.id})

    st.subheader("Pairs")
    show = st.radio("Show", list(SHOW), format_func=SHOW.get, horizontal=True, key="diff_show")
    pairs = diff.disagreeing if show == "disagree" else diff.pairs[diff.pairs["outcome"] == show]
    if show != "disagree":
        change = (pairs["prob_b"] - pairs["prob_a"]).abs()
        pairs = pairs.assign(_c=change).sort_values("_c", ascending=False, kind="stable").drop(columns="_c")
    if pairs.empty:
        st.info("No pairs of this kind: the two runs agree here.", icon=":material/check:")
        return
    n_pages = max(1, math.ceil(len(pairs) / PAGE_SIZE))
    page_key = f"diff_page_{run_a.id}_{run_b.id}_{show}"
    page_no = min(max(1, int(st.session_state.get(page_key, 1))), n_pages)
    page = pairs.iloc[(page_no - 1) * PAGE_SIZE: page_no * PAGE_SIZE]
    t1, t2 = st.columns([3, 2], vertical_alignment="center")
    t1.caption(f"Pairs {(page_no - 1) * PAGE_SIZE + 1}–{(page_no - 1) * PAGE_SIZE + len(page)} of {len(pairs)}, "
               "largest change in P(same) first.")
    if n_pages > 1:
        with t2:
            st.pagination(n_pages, key=page_key, width="stretch")
    rows = [row for _, row in page.iterrows()]
    for start in range(0, len(rows), CARDS_PER_ROW):
        for col, row in zip(st.columns(CARDS_PER_ROW), rows[start:start + CARDS_PER_ROW]):
            with col:
                pair_card(row)


main()
