"""Train: a grid of runs (backbones x merges x classifiers) on the current dataset, in a background job."""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd
import streamlit as st

from pages._ui.datasets import load_current_dataset
from pages._ui.formatting import escape_md, map_column
from pages._ui.job_panel import get_job, job_panel, latest_job, start_job
from pages._ui.links import open_on_inspect, page_link
from pages._ui.options import default, format_choice, widget_choices, widget_range
from pages._ui.reuse import start_once
from pages._ui.state import current_dataset_spec
from pages._ui.store import runs_of_dataset, same_dataset, store
from pages._ui.store_guard import store_guard
from pages._ui.vector_sets import vectors_cached
from simlab.backbones import DEFAULT_BACKBONE, get_backbone, list_backbones, weights_status
from simlab.classifiers import CLASSIFIERS
from simlab.experiment import GridConfig
from simlab.merge import MERGES
from simlab.options import NEGATIVE_SCHEMES
from simlab.reference import STUDY_PROTOCOL
from simlab.store import Job

DEFAULTS = {"train_backbones": [DEFAULT_BACKBONE], "train_merges": list(default("merges")),
            "train_classifiers": list(default("classifiers")), "train_split": default("split"),
            "train_test_size": default("test_size"), "train_negative_ratio": default("negative_ratio"),
            "train_negatives": default("negatives"), "train_seed": default("seed"), "train_fusion": False,
            "train_weights": default("weights"), "train_library_defaults": False}
FIELD_OF_KEY = {"train_backbones": "backbones", "train_merges": "merges", "train_classifiers": "classifiers",
                "train_split": "split", "train_test_size": "test_size", "train_negative_ratio": "negative_ratio",
                "train_negatives": "negatives", "train_seed": "seed", "train_fusion": "fusion",
                "train_weights": "weights", "train_library_defaults": "library_defaults"}


# --------------------------------------------------------------------------- presets


def _fill_form(**fields) -> None:
    """Set the form's widgets (a button callback, so it runs before they are drawn)."""
    key_of = {v: k for k, v in FIELD_OF_KEY.items()}
    for name, value in fields.items():
        st.session_state[key_of[name]] = list(value) if isinstance(value, list) else value
    st.session_state["_train_preset_note"] = fields.get("split")


def _study_preset(split: str) -> None:
    _fill_form(**{**STUDY_PROTOCOL, "split": split, "seed": 0, "fusion": False})


def _reset_form() -> None:
    for key, value in DEFAULTS.items():
        st.session_state[key] = list(value) if isinstance(value, list) else value
    st.session_state.pop("_train_preset_note", None)


# --------------------------------------------------------------------------- helpers


def backbone_help(backbones) -> str:
    marks = {"bundled": "bundled, works offline", "cached": "weights downloaded",
             "download": "downloads its pretrained weights on first use"}
    return "\n".join(f"- **{b.name}** ({marks[weights_status(b.name)]}): {b.description}" for b in backbones)


def goto_inspect(run_id: str) -> None:
    st.session_state["inspect_run"] = run_id
    st.session_state["_train_open"] = run_id


def _results_selected(key: str, ids: list[str | None]) -> None:
    rows = ((st.session_state.get(key) or {}).get("selection") or {}).get("rows") or []
    if rows and rows[0] < len(ids) and ids[rows[0]]:
        goto_inspect(ids[rows[0]])


def open_inspect_if_asked() -> None:
    run_id = st.session_state.pop("_train_open", None)
    if run_id:
        open_on_inspect(run_id)


def fmt(v, spec: str = ".3f") -> str:
    return "" if v is None or v != v else format(v, spec)


def results_frame(job: Job) -> pd.DataFrame:
    """One row per cell of the job's grid: finished runs with their metrics, the rest waiting."""
    runs = [r for r in store().list_runs() if r.job_id == job.id]  # a few hundred rows: cheap
    by_cell = {}
    for r in reversed(runs):  # oldest first, so that a retried cell shows its newest run
        by_cell[(r.backbone, r.merge, r.classifier)] = r
    try:
        cells = GridConfig(**job.params).cells()
    except (TypeError, ValueError):
        cells = list(by_cell)
    finished = not job.active
    rows = []
    for i, cell in enumerate(cells, 1):
        r = by_cell.get(cell)
        m = r.metrics if r else {}
        status = r.status if r else ("not run" if finished else "waiting")
        rows.append({"#": i, "backbone": cell[0], "merge": cell[1],
                     "classifier": CLASSIFIERS[cell[2]].label if cell[2] in CLASSIFIERS else cell[2],
                     "status": status,
                     "accuracy": m.get("accuracy"),
                     "ci": f"{fmt(m.get('accuracy_lo'))}–{fmt(m.get('accuracy_hi'))}" if m else "",
                     "f1": m.get("f1"), "auc": m.get("auc"), "map": m.get("map"),
                     "seconds": r.seconds if r else None, "id": r.id if r else None})
    frame = pd.DataFrame(rows)
    for col in ("accuracy", "f1", "auc", "map", "seconds"):  # NaN (shown blank) for runs still waiting
        frame[col] = pd.to_numeric(frame[col], errors="coerce") if len(frame) else frame.get(col)
    if len(frame):
        frame["id"] = frame["id"].fillna("")
    return frame


def results(job: Job) -> None:
    """The job's results table, refreshed every 2 s while it runs."""
    active = job.active

    @st.fragment(run_every=2 if active else None)
    def table() -> None:
        if st.session_state.get("_train_open"):
            # a row just selected: only this fragment reruns; the whole page reruns and opens Inspect at its top
            # (a page switch made inside a fragment's run can leave the next page blank)
            st.rerun(scope="app")
        now = get_job(job.id) or job
        frame = results_frame(now)
        done = frame[frame["status"] == "done"] if len(frame) else frame
        st.markdown(f"**Results** · {len(done)} of {len(frame)} runs done")
        if frame.empty:
            st.caption("No runs in this job.")
            return
        ids = frame["id"].tolist()
        st.dataframe(frame, hide_index=True, key="train_results", selection_mode="single-row",
                     on_select=lambda: _results_selected("train_results", ids),
                     height=min(38 + 35 * len(frame), 560), column_config={
                         "#": st.column_config.NumberColumn("#", width=40),
                         "backbone": "Backbone", "merge": "Merge", "classifier": "Classifier", "status": "Status",
                         "accuracy": st.column_config.ProgressColumn("Accuracy", min_value=0.0, max_value=1.0,
                                                                     format="%.3f", width=110),
                         "ci": st.column_config.TextColumn("95% CI", width=100),
                         "f1": st.column_config.NumberColumn("F1", format="%.3f"),
                         "auc": st.column_config.NumberColumn("AUC", format="%.3f"),
                         "map": map_column(),
                         "seconds": st.column_config.NumberColumn("Seconds", format="%.2f"),
                         "id": st.column_config.TextColumn("Run")})
        if len(done):
            best = done.sort_values("accuracy", ascending=False).iloc[0]
            c1, c2 = st.columns([3, 1], vertical_alignment="center")
            c1.caption(f"Best so far: {escape_md(best.backbone)} + {escape_md(best.merge)} + "
                       f"{escape_md(best.classifier)}, accuracy {best.accuracy:.3f} ({best.ci}). "
                       "Select a row to inspect its pairs.")
            with c2:
                page_link("pages/compare.py", "Compare all runs", icon=":material/grid_on:")
        if active and not now.active:
            st.rerun()  # the whole page: the job panel shows the outcome and polling stops

    table()


# --------------------------------------------------------------------------- page


def form(backbones) -> GridConfig:
    for key, value in DEFAULTS.items():  # first visit: the defaults (kept for the session afterwards)
        st.session_state.setdefault(key, list(value) if isinstance(value, list) else value)
    names = [b.name for b in backbones]
    status = {n: weights_status(n) for n in names}
    st.multiselect("Backbones", names, key="train_backbones", persist_state="session",
                   format_func=lambda n: f"{n} (offline)" if status[n] == "bundled" else n,
                   help="Pretrained networks that turn each image into a vector.\n\n" + backbone_help(backbones))
    st.multiselect("Merges", list(MERGES), key="train_merges", persist_state="session",
                   help="How two image vectors become one pair vector.\n\n"
                        + "\n".join(f"- **{m.name}**: {m.description}" for m in MERGES.values()))
    st.multiselect("Classifiers", list(CLASSIFIERS), key="train_classifiers", persist_state="session",
                   format_func=lambda c: f"{CLASSIFIERS[c].label} ({c})",
                   help="What decides 'same scene' from the pair vector.\n\n"
                        + "\n".join(f"- **{c.label}** ({c.name}): {c.description}" for c in CLASSIFIERS.values()))
    c1, c2, c3 = st.columns(3)
    with c1:
        st.radio("Split", widget_choices("split"), format_func=format_choice("split"), key="train_split",
                 persist_state="session",
                 help="Group: whole scenes go to test, no image is seen in training (honest). Pair: the study's "
                      "split of the pairs themselves; the same images sit in train and test, so scores are "
                      "optimistic. Offered to reproduce the old numbers.")
        st.slider("Test fraction", **widget_range("test_size"), key="train_test_size", persist_state="session",
                  help="Share of the groups (group split) or of the pairs (pair split) held out for testing")
    with c2:
        st.radio("Negative pairs", list(NEGATIVE_SCHEMES), format_func=format_choice("negatives"),
                 key="train_negatives", persist_state="session", help="How pairs of different scenes are drawn")
        st.number_input("Negatives per positive", **widget_range("negative_ratio"), key="train_negative_ratio",
                        persist_state="session", help="1 = balanced, as in the study")
    with c3:
        st.number_input("Seed", **widget_range("seed"), key="train_seed", persist_state="session",
                        help="Seeds the split, the negatives and the classifiers: same seed, same numbers")
        chosen = st.session_state.get("train_backbones") or []
        st.toggle("Fuse the backbones", key="train_fusion", persist_state="session",
                  disabled=len(chosen) < 2,
                  help="Also run the chosen backbones' vectors concatenated (each L2-normalised) as one more "
                       "backbone. Needs two or more backbones.")
        st.selectbox("Weights", widget_choices("weights"), format_func=format_choice("weights"), key="train_weights",
                     persist_state="session",
                     help="ImageNet: the pretrained networks. Random: an untrained network, only for tests.")
        st.toggle("Library defaults (2017)", key="train_library_defaults", persist_state="session",
                  help="LinearSVC and XGBoost with scikit-learn's and XGBoost's own defaults, as the 2017 study "
                       "ran them (raw inputs and C=1; 256 histogram bins), instead of simlab's settings "
                       "(standardised inputs and C=0.01; 64 bins), which are faster and, for LinearSVC, more "
                       "accurate.")
    s = st.session_state
    return GridConfig(dataset=current_dataset_spec(), backbones=list(s["train_backbones"]),
                      merges=list(s["train_merges"]), classifiers=list(s["train_classifiers"]),
                      split=s["train_split"], test_size=float(s["train_test_size"]),
                      negative_ratio=float(s["train_negative_ratio"]), negatives=s["train_negatives"],
                      seed=int(s["train_seed"]), weights=s["train_weights"],
                      fusion=bool(s["train_fusion"]) and len(s["train_backbones"]) > 1,
                      library_defaults=bool(s["train_library_defaults"]))


def presets() -> None:
    with st.container(border=True):
        c1, c2, c3 = st.columns([2, 2, 1], vertical_alignment="center")
        c1.button("Reproduce the 2017 study", type="secondary", icon=":material/history_edu:",
                  on_click=_study_preset, args=("pair",), width="stretch", key="train_preset_2017",
                  help="VGG16/VGG19 (fc2), InceptionV3, ResNet50, Xception × dot, l1, l2 × GaussianNB, LinearSVC, "
                       "XGBoost, random forest: 60 runs on the pair split, 30% test, negatives sharing the left "
                       "image, as published.")
        c2.button("Same grid on the group split", icon=":material/verified:", on_click=_study_preset,
                  args=("group",), width="stretch", key="train_preset_group",
                  help="The study's grid with whole scenes held out: how good the method really is.")
        c3.button("Reset", on_click=_reset_form, width="stretch", key="train_reset",
                  help="Back to the default grid on the bundled backbone")
        note = st.session_state.pop("_train_preset_note", None)
        if note == "pair":
            st.success("Filled with the 2017 study's protocol: 5 backbones × dot, l1, l2 × 4 classifiers on the pair "
                       "split (30% test, negatives sharing the left image, the libraries' default classifier "
                       "settings). Check the dataset, then press Start.",
                       icon=":material/history_edu:")
        elif note == "group":
            st.success("Filled with the study's grid on the group split: whole scenes held out, the honest "
                       "measure. Press Start; Compare shows it beside the pair split and the published table.",
                       icon=":material/verified:")
        else:
            st.caption("The study's protocol in one click: pick the INRIA Holidays photos in the sidebar "
                       "(a `holidays:` dataset), then start. Compare sets our numbers beside the published ones.")


def summary(config: GridConfig, dataset) -> bool:
    """How many runs, what needs downloading or computing; False when the grid cannot start."""
    try:
        config.validate()
    except ValueError as exc:
        st.warning(str(exc), icon=":material/front_hand:")
        return False
    n_b = len(config.backbones) + (1 if config.fusion else 0)
    cells = config.cells()
    st.markdown(f"This grid makes **{len(cells)} run{'s' if len(cells) != 1 else ''}**: {n_b} backbone"
                f"{'s' if n_b != 1 else ''}{' (with the fusion)' if config.fusion else ''} × "
                f"{len(config.merges)} merge{'s' if len(config.merges) != 1 else ''} × {len(config.classifiers)} "
                f"classifier{'s' if len(config.classifiers) != 1 else ''}, on **{escape_md(config.dataset)}**.")
    if config.weights == "random":
        st.warning("Random weights: the backbone is untrained, so the numbers mean nothing. For tests only.",
                   icon=":material/warning:")
    downloads = [b for b in config.backbones if config.weights == "imagenet" and weights_status(b) == "download"]
    if downloads:
        mb = sum(get_backbone(b).options.get("download_mb", 100) for b in downloads)
        st.warning(f"{', '.join(downloads)} download their pretrained weights on first use (about {mb:,} MB in all), "
                   "so this needs the internet once. Offline? The job's error names each file and where to put "
                   f"it, or use {DEFAULT_BACKBONE}, which works offline.", icon=":material/cloud_download:")
    if dataset is not None:
        todo = [b for b in config.backbones if not vectors_cached(dataset.fingerprint, b, config.weights)]
        if todo:
            st.caption(f"Vectors to compute first ({dataset.n_images} images each): {', '.join(todo)}. "
                       "The others come from the cache.")
        else:
            st.caption("All vectors are in the cache: only the classifiers train.")
    if set(STUDY_PROTOCOL["backbones"]) <= set(config.backbones) and not config.dataset.startswith("holidays:"):
        st.caption(f"The published 2017 numbers are for INRIA Holidays; the current dataset is "
                   f"{escape_md(config.dataset)}. Pick a `holidays:` dataset in the sidebar to reproduce them.")
    if config.split == "pair":
        st.caption("Pair split: the same images sit in train and test, so accuracies are optimistic. "
                   "Use it to reproduce the 2017 numbers, the group split to measure.")
    return True


def no_grid_job(spec: str) -> None:
    """No grid job on this dataset: say what there is (runs made earlier, by the demo or the CLI) or what to do."""
    made = [r for r in runs_of_dataset(spec) if r.is_grid]
    if made:
        done = sum(r.done for r in made)
        st.info(f"No grid job on this dataset in the job list, but it has {len(made)} run"
                f"{'s' if len(made) != 1 else ''} ({done} done): Compare shows them.", icon=":material/grid_on:")
        page_link("pages/compare.py", "Compare all runs", icon=":material/grid_on:")
    else:
        st.info("No grid yet: pick what to combine above and press Start. The demo experiment on Home is a "
                "quick first one.", icon=":material/lightbulb:")


def main() -> None:
    open_inspect_if_asked()
    store_guard()  # a store that cannot be opened: one line; corrupt runs named
    st.title("Train")
    st.markdown("A grid of runs on the current dataset: every **backbone × merge × classifier**, trained in a "
                "background job (leave the page, it keeps going). Each run's test pairs land in the store for "
                "Compare and Inspect.")
    try:
        backbones = list_backbones()
    except Exception as exc:
        st.error(f"Could not list the backbones: {escape_md(type(exc).__name__)}: {escape_md(str(exc)[:300])}")
        return
    presets()
    config = form(backbones)
    dataset = load_current_dataset()
    ok = summary(config, dataset) and dataset is not None
    running = latest_job("grid", active_only=True)
    where = running.params.get("dataset") if running else None
    elsewhere = running is not None and not same_dataset(where, config.dataset)
    label = f"Start {len(config.cells())} runs" if ok else "Start"
    clicked = st.button(label, type="primary", icon=":material/play_arrow:", disabled=not ok or running is not None,
                        key="train_start",
                        help=(f"A grid is already running on {where}: wait for it or cancel it on Runs." if elsewhere
                              else "A grid is already running: wait for it or cancel it below.") if running else None)
    if elsewhere:
        st.caption(f"A grid is running on {escape_md(str(where))}: pick that dataset in the sidebar to follow it here, "
                   "or see it on Runs.")

    def start(reuse: bool) -> None:
        try:
            st.session_state["train_job"] = start_job("grid", asdict(config) | {"reuse": reuse})
        except Exception as exc:  # the job could not even start: say why
            st.error(f"Could not start the grid: {escape_md(type(exc).__name__)}: {escape_md(str(exc)[:300])}")
        else:
            st.rerun()

    if ok:
        start_once(config, "train", start, clicked, fingerprint=dataset.fingerprint)

    job = latest_job("grid", dataset=config.dataset)  # this dataset's: another's grid is not shown here
    if job is None:
        no_grid_job(config.dataset)
        return
    st.divider()
    params = job.params
    st.caption(f"Grid job {job.id} on {escape_md(params.get('dataset', '?'))} · "
               f"{escape_md(params.get('split', '?'))} split · {escape_md(params.get('weights', '?'))} weights")
    job_panel(job.id)
    results(job)


main()
