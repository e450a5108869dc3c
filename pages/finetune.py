"""Fine-tune: the study's neural head trained on image pairs, or a true Siamese network, learning live."""

from __future__ import annotations

from dataclasses import asdict, fields

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from pages._ui.datasets import require_dataset
from pages._ui.formatting import classifier_name, escape_md, fmt_duration, fmt_when, map_column
from pages._ui.job_panel import get_job, job_panel, latest_job, start_job
from pages._ui.links import page_link
from pages._ui.options import format_choice, widget_choices, widget_range
from pages._ui.store import store
from pages._ui.store_guard import store_guard
from simlab import jobs
from simlab.backbones import list_backbones, weights_status
from simlab.experiment import GridConfig
from simlab.finetune import INITS, LOSSES, MODES, TOWERS, FinetuneConfig
from simlab.finetune.validation import NOISE_HELP, run_story
from simlab.merge import MERGES
from simlab.pairs import NEGATIVE_SCHEMES
from simlab.store import Run

MODE_LABELS = {"head": "Neural head (the 2017 fine-tune)", "siamese": "Siamese network"}
TOWER_LABELS = {"backbone": "Backbone + projection", "small-cnn": "Small CNN from scratch"}
INIT_LABELS = {"whitening": "Learned whitening", "random": "Random"}
GRID_FIELDS = {f.name for f in fields(GridConfig)}  # the protocol settings a baseline grid takes
RATES = [None, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5]
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f"]
AUGMENT_HELP = ("Random flip, rotation (up to 18°), zoom (15%), shift (10%) and contrast (20%) on the raw pixels, "
                "before the backbone's own preprocessing. The backbone then runs on every step: minutes per "
                "epoch on a CPU instead of seconds.")


@st.cache_resource(show_spinner="Loading the backbone registry…")
def pretrained_backbones() -> list[str]:
    """Backbones to fine-tune from (tuned Siamese towers are results, not starting points)."""
    return [b.name for b in list_backbones() if not b.options.get("tuned")]


def weights_label(name: str) -> str:
    status = weights_status(name)
    return name + {"bundled": " (bundled)", "cached": "", "download": " (downloads weights)"}.get(status, "")


# --------------------------------------------------------------------------- the form


def settings(dataset, running: bool) -> FinetuneConfig | None:
    """The run's settings; returns a validated config when the user presses Start."""
    mode = st.segmented_control("Mode", list(MODES), format_func=MODE_LABELS.get, default="siamese",
                                key="ft_mode") or "siamese"
    st.caption(MODES[mode])
    names = pretrained_backbones()
    d = FinetuneConfig()
    # Enter in a number box must not start a run (minutes of training): only the button submits.
    with st.form("ft_form", border=True, enter_to_submit=False):
        c1, c2, c3 = st.columns(3)
        tower, loss, margin, init, merge = d.tower, d.loss, d.margin, d.init, d.merge
        with c1:
            if mode == "siamese":
                tower = st.radio("Tower", list(TOWERS), format_func=TOWER_LABELS.get, key="ft_tower",
                                 help="\n\n".join(f"**{TOWER_LABELS[k]}**: {v}" for k, v in TOWERS.items()))
            backbone = st.selectbox("Backbone", names, format_func=weights_label, key="ft_backbone",
                                    help="The pretrained network both images go through (the small CNN ignores it).")
            weights = st.radio("Weights", widget_choices("weights"), format_func=format_choice("weights"),
                               key="ft_weights")
        with c2:
            if mode == "head":
                merge = st.selectbox("Merge", list(MERGES), key="ft_merge",
                                     format_func=lambda m: f"{m} — {MERGES[m].description}")
            else:
                loss = st.radio("Loss", list(LOSSES), key="ft_loss", horizontal=True,
                                help="\n\n".join(f"**{k}**: {v}" for k, v in LOSSES.items()))
                margin = st.number_input("Margin", **widget_range("margin"), value=d.margin, key="ft_margin",
                                         help="Embeddings are unit vectors, so distances lie between 0 and 2.")
                init = st.radio("Projection starts from", list(INITS), format_func=INIT_LABELS.get, horizontal=True,
                                key="ft_init", help="\n\n".join(f"**{INIT_LABELS[k]}**: {v}" for k, v in INITS.items()))
            epochs = st.number_input("Epochs", **widget_range("epochs"), value=d.epochs, key="ft_epochs",
                                     help="At most; training stops early when no epoch has beaten the kept one by "
                                          "more than the validation noise for *patience* epochs.")
            rate = st.selectbox("Learning rate", RATES, key="ft_lr",
                                format_func=lambda r: "default (1e-3; 1e-4 from whitening)" if r is None else f"{r:g}")
        with c3:
            augment = st.toggle("Augment pixels", key="ft_augment", help=AUGMENT_HELP)
            same = st.radio("Transforms", [True, False], horizontal=True, key="ft_same",
                            format_func=lambda v: "same for both images" if v else "one per image",
                            help="With augmentation: one random transform shared by the pair, or one each.")
            unfreeze = st.number_input("Unfreeze the top K layers", **widget_range("unfreeze"), value=d.unfreeze,
                                       key="ft_unfreeze",
                                       help="Also train the backbone's top K layers that carry weights, at a tenth of "
                                            "the learning rate. The backbone then runs on every step.")
            steps = st.number_input("Batches per epoch (0 = every pair)", 0, 100_000, 0, key="ft_steps",
                                    help="A fresh random subset of the training pairs each epoch: keeps epochs short "
                                         "when the backbone runs on every step.")
        with st.expander("Split and training details"):
            e1, e2, e3 = st.columns(3)
            with e1:
                split = st.radio("Split", widget_choices("split"), format_func=format_choice("split"), key="ft_split")
                test_size = st.slider("Test fraction", **widget_range("test_size"), value=d.test_size,
                                      key="ft_test_size")
            with e2:
                negative_ratio = st.number_input("Negatives per positive", **widget_range("negative_ratio"),
                                                 value=d.negative_ratio, key="ft_neg_ratio")
                negatives = st.selectbox("Negatives", list(NEGATIVE_SCHEMES), key="ft_negatives")
            with e3:
                seed = st.number_input("Seed", **widget_range("seed"), value=d.seed, key="ft_seed")
                batch_size = st.number_input("Batch size", **widget_range("batch_size"), value=d.batch_size,
                                             key="ft_batch")
                patience = st.number_input("Patience (epochs)", **widget_range("patience"), value=d.patience,
                                           key="ft_patience")
            st.caption("Test pairs are built exactly as for grid runs with the same split, seed and negatives, so "
                       "results compare with the frozen-vector baselines. Validation pairs (early stopping, the "
                       "Siamese threshold) come from scenes carved out of the training side, never from test.")
        pressed = st.form_submit_button("Start fine-tuning", type="primary", disabled=running,
                                        help="A fine-tuning run is in progress: see below." if running else None)
    if not pressed:
        return None
    config = FinetuneConfig(
        dataset=dataset.spec, mode=mode, backbone=backbone, weights=weights, merge=merge, tower=tower, init=init,
        loss=loss, margin=float(margin), epochs=int(epochs), batch_size=int(batch_size), learning_rate=rate,
        unfreeze=int(unfreeze), augment=bool(augment), same_transform=bool(same),
        steps_per_epoch=int(steps) or None, patience=int(patience), split=split, test_size=float(test_size),
        negative_ratio=float(negative_ratio), negatives=negatives, seed=int(seed))
    try:
        return config.validate()
    except ValueError as exc:
        st.error(escape_md(str(exc)), icon=":material/error:")
        return None


# --------------------------------------------------------------------------- runs and curves


def finetune_runs(fingerprint: str) -> list[Run]:
    return store().list_runs(kind="finetune", fingerprint=fingerprint)


def run_label(run: Run) -> str:
    c = run.config
    what = f"head · {run.head_merge or 'dot'}" if run.mode == "head" else f"siamese · {run.loss or 'contrastive'}"
    extra = [x for x, on in (("aug", c.get("augment")), (f"top{c.get('unfreeze')}", c.get("unfreeze"))) if on]
    m = run.metrics
    score = f" · acc {m['accuracy']:.3f}" if m.get("accuracy") is not None else ""
    status = "" if run.done else f" · {run.status}"
    return (f"{run.id} · {what}{' + ' + ' + '.join(extra) if extra else ''} · {run.backbone}"
            f"{score}{status} · {fmt_when(run.created)[5:16]}")


def run_of_job(job_id: str) -> Run | None:
    return next((r for r in store().list_runs(kind="finetune") if r.job_id == job_id), None)


def _fractional_epochs(batch: pd.DataFrame, per_epoch: int | None) -> pd.Series:
    """x of each batch point: epoch e's j-th batch sits at e - 1 + j / batches per epoch."""
    j = batch.groupby("epoch").cumcount() + 1
    n = per_epoch or batch.groupby("epoch")["step"].transform("count")
    return batch["epoch"] - 1 + j / n


def smooth(values, weight: float) -> np.ndarray:
    """Exponential moving average with TensorBoard's debiasing (the first points are not pulled to 0);
    ``weight`` 0 returns the values unchanged, 0.99 is very smooth."""
    values = np.asarray(values, dtype=float)
    if weight <= 0 or len(values) == 0:
        return values
    out, last = np.empty_like(values), 0.0
    for i, v in enumerate(values):
        last = last * weight + (1 - weight) * v
        out[i] = last / (1 - weight ** (i + 1))
    return out


def _span(values: list[float], floor: float | None = None, ceiling: float | None = None,
          pad: float = 0.06) -> list[float] | None:
    """An axis range that fits ``values`` with a margin (so that markers on the edge show whole)."""
    values = [v for v in values if v == v]
    if not values:
        return None
    lo, hi = min(values), max(values)
    margin = max((hi - lo) * pad, 0.02 if ceiling is not None else 0.02 * max(abs(hi), 1e-3))
    lo, hi = lo - margin, hi + margin
    if floor is not None:
        lo = max(lo, floor)
    if ceiling is not None:
        hi = min(hi, ceiling)
    return [lo, hi]


LINE_DASH = {"loss": "solid", "accuracy": "solid", "val_loss": "dash", "val_accuracy": "dash", "val_map": "dot"}
MARKERS = {"loss": "circle", "accuracy": "circle", "val_loss": "circle-open", "val_accuracy": "circle-open",
           "val_map": "diamond-open"}


def _noise_of(curves: pd.DataFrame, metric: str, points: pd.DataFrame) -> np.ndarray | None:
    """The standard error of each point of ``metric`` (stored as ``<metric>_se``), aligned on its epochs."""
    se = curves[curves.name == f"{metric}_se"].drop_duplicates("epoch", keep="last").set_index("epoch").value
    if se.empty:
        return None
    return se.reindex(points.epoch).fillna(0.0).to_numpy()


def curves_figure(runs: list[Run], smoothing: float = 0.6) -> go.Figure:
    """Loss and accuracy side by side, training (solid) and validation (dashed) on the same axes, one
    colour per run; the loss of each batch as a thin line, smoothed by an exponential moving average."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"), horizontal_spacing=0.08)
    loss_values, acc_values, last_epoch, with_map, with_kept = [], [], 1, False, False
    for i, run in enumerate(runs):
        color = PALETTE[i % len(PALETTE)]
        curves = store().curves(run.id)
        live_mark = " (live)" if run.status == "running" else ""
        name = f"{run.id}{live_mark} · {run.merge} · {classifier_name(run.classifier)}"
        per_epoch = run.artifacts.get("steps_per_epoch")
        batch = curves[curves.name == "batch_loss"]
        if len(batch):
            x = _fractional_epochs(batch, per_epoch)
            last_epoch = max(last_epoch, float(np.ceil(x.max())))
            smoothed = smooth(batch.value, smoothing)
            if smoothing > 0:  # the raw batches stay behind, faint, as in TensorBoard
                fig.add_trace(go.Scatter(x=x, y=batch.value, mode="lines", line=dict(width=1, color=color),
                                         opacity=0.2, legendgroup=run.id, showlegend=False, hoverinfo="skip"),
                              row=1, col=1)
            fig.add_trace(go.Scatter(x=x, y=smoothed, mode="lines", line=dict(width=1.5, color=color),
                                     opacity=0.75, name=name, legendgroup=run.id, showlegend=False,
                                     customdata=np.column_stack([batch.step, batch.value]),
                                     hovertemplate="batch %{customdata[0]}<br>loss %{customdata[1]:.4f}"
                                                   + (" (smoothed %{y:.4f})" if smoothing > 0 else "")
                                                   + "<extra></extra>"), row=1, col=1)
            loss_values += list(smoothed) + list(np.quantile(batch.value, [0.02, 0.98]))
        first = True
        for metric, col in (("loss", 1), ("val_loss", 1), ("accuracy", 2), ("val_accuracy", 2), ("val_map", 2)):
            points = curves[curves.name == metric]
            if points.empty:
                continue
            (loss_values if col == 1 else acc_values).extend(points.value)
            last_epoch = max(last_epoch, float(points.epoch.max()))
            val, retrieval = metric.startswith("val_"), metric == "val_map"
            with_map = with_map or retrieval
            noise = _noise_of(curves, metric, points)
            fig.add_trace(go.Scatter(
                x=points.epoch, y=points.value, mode="lines+markers", name=name, legendgroup=run.id,
                showlegend=first, line=dict(color=color, width=2.5, dash=LINE_DASH[metric]),
                marker=dict(size=8, symbol=MARKERS[metric], line=dict(width=2)),
                error_y=None if noise is None else dict(type="data", array=noise, thickness=1.2, width=4, color=color),
                customdata=np.zeros(len(points)) if noise is None else noise,
                cliponaxis=False,
                hovertemplate=("validation retrieval mAP" if retrieval else
                               f"{'validation' if val else 'training'} {metric.removeprefix('val_')}")
                              + "<br>epoch %{x}<br>%{y:.4f}"
                              + ("" if noise is None else " ± %{customdata:.4f} (SE)") + "<extra></extra>"),
                row=1, col=col)
            if noise is not None:
                bars = list(points.value - noise) + list(points.value + noise)
                (loss_values if col == 1 else acc_values).extend(bars)
            kept = run.metrics.get("best_epoch")
            if metric == run.metrics.get("selected_by") and kept is not None and kept in set(points.epoch):
                y = float(points.value[points.epoch == kept].iloc[0])
                fig.add_trace(go.Scatter(x=[kept], y=[y], mode="markers", legendgroup=run.id, showlegend=False,
                                         marker=dict(symbol="star", size=16, color=color,
                                                     line=dict(width=1, color="white")),
                                         hovertemplate=f"kept: epoch {kept}<br>%{{y:.4f}}<extra></extra>"),
                              row=1, col=col)
                with_kept = True
            first = False
    keys = [("training", "solid", "circle"), ("validation", "dash", "circle-open")]
    if with_map:  # Siamese towers: the validation scenes' retrieval mAP, which picks the epoch kept
        keys.append(("validation retrieval mAP", LINE_DASH["val_map"], MARKERS["val_map"]))
        fig.layout.annotations[1].text = "Accuracy · retrieval mAP"
    if with_kept:
        keys.append(("kept epoch", None, "star"))
    for label, dash, symbol in keys:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers" if dash is None else "lines+markers", name=label,
                                 legendgroup=label, line=dict(color="#777", width=2, dash=dash or "solid"),
                                 marker=dict(symbol=symbol, size=12 if dash is None else 8)), row=1, col=1)
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="per batch" + (" (smoothed)" if smoothing else ""),
                             line=dict(color="#777", width=1.5)), row=1, col=1)
    ticks = dict(tickmode="linear", tick0=0, dtick=max(1, int(np.ceil(last_epoch / 10))))
    fig.update_xaxes(title_text="epoch", range=[-0.04 * last_epoch - 0.1, last_epoch * 1.04 + 0.1], **ticks)
    fig.update_yaxes(range=_span(loss_values, floor=0.0), row=1, col=1)
    fig.update_yaxes(range=_span(acc_values, floor=0.0, ceiling=1.02), row=1, col=2)
    fig.update_layout(height=430, margin=dict(l=10, r=10, t=40, b=10), uirevision="finetune-curves",
                      legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0),
                      hovermode="closest")
    return fig


CURVES_NOTE = ("Solid: training, per epoch; dashed with open markers: validation (epoch 0 is the starting point, "
               "before any training); dotted with diamonds (Siamese towers): the validation scenes' retrieval mAP "
               "(every validation image a query), which picks the epoch kept; bars: ± one standard error; star: "
               "the epoch kept. Thin: the loss of each batch, smoothed by the slider (an exponential moving "
               "average, as in TensorBoard; the raw batches stay faint behind). Siamese accuracy: with the "
               "multi-similarity loss, recall@1 (training: within each batch of neighbouring scenes; validation: "
               "among all validation images); with pairs, at the best distance threshold.")


def smoothing_control() -> float:
    """The smoothing slider of the per-batch loss (its value is kept for the live view)."""
    return st.slider("Smoothing", 0.0, 0.99, 0.6, 0.01, key="ft_smoothing",
                     help="Exponential moving average of the per-batch loss (0 = raw batches), debiased as in "
                          "TensorBoard and W&B.")


@st.fragment(run_every=1)
def live(job_id: str, others: list[str]) -> None:
    """Progress, Stop, and the curves of the running job (plus the runs picked for comparison), every second."""
    job = get_job(job_id)
    if job is None or not job.active:
        jobs.reap_stale(store())
        st.rerun()  # the whole page: results replace the live view, and this fragment stops polling
    c1, c2 = st.columns([6, 1], vertical_alignment="center")
    with c1:
        st.progress(job.progress or 0.0, text=f"{job.message or 'Starting'} ({fmt_duration(job.elapsed())})")
    with c2:
        stopping = bool(job.cancel)
        if st.button("Stopping…" if stopping else "Stop", key=f"ft_stop_{job_id}", disabled=stopping,
                     width="stretch", help="End after the current batch; the best checkpoint is still scored."):
            jobs.cancel_job(job_id, store().path)
            st.rerun(scope="fragment")
    run = run_of_job(job_id)
    shown = ([run] if run else []) + [r for r in (store().get(i) for i in others)
                                      if r and (run is None or r.id != run.id)]
    if shown:
        st.plotly_chart(curves_figure(shown, st.session_state.get("ft_smoothing", 0.6)), width="stretch",
                        key="ft_curves_live")
        st.caption(CURVES_NOTE)


# --------------------------------------------------------------------------- results


def what_training_did(runs: list[Run]) -> None:
    """Per finished run, in words: what came from the starting point and what from training, against the noise."""
    for run in runs:
        lines = run_story(run.metrics) if run.metrics else []
        if lines:
            st.markdown(f"**{escape_md(run.id)}** · " + " · ".join(escape_md(line) for line in lines),
                        help=NOISE_HELP)


def baselines(run: Run) -> list[Run]:
    """Frozen-vector grid runs on the same dataset and backbone, with the same protocol (newest per cell)."""
    seen, out = set(), []
    for r in store().list_runs(status="done", kind="grid", fingerprint=run.fingerprint):
        if r.backbone != run.config.get("backbone") or r.protocol != run.protocol:
            continue
        if (r.merge, r.classifier) not in seen:
            seen.add((r.merge, r.classifier))
            out.append(r)
    return out


def result_row(run: Run, kind: str, test_scenes_map: float | None = None) -> dict:
    m = run.metrics
    status = "" if run.done else f" ({run.status})"
    return {"": kind, "run": run.id, "method": f"{run.merge} + {classifier_name(run.classifier)}{status}",
            "accuracy": m.get("accuracy"),
            "95% CI": (f"{m['accuracy_lo']:.3f} – {m['accuracy_hi']:.3f}" if m.get("accuracy_lo") is not None else ""),
            "AUC": m.get("auc"), "map": m.get("map"),
            "map_test_scenes": m.get("map") if test_scenes_map is None else test_scenes_map,
            "epochs": (f"{m.get('best_epoch')} of {m.get('epochs_run')}" if "epochs_run" in m else ""),
            "seconds": run.seconds}


def results(runs: list[Run]) -> None:
    finished = [r for r in runs if r.metrics]
    if not finished:
        return
    st.subheader("Results on the test pairs")
    rows = [result_row(r, "fine-tuned") for r in finished]
    base = {b.id: b for r in finished for b in baselines(r)}
    # Grid runs rank all images; fine-tune runs the held-out scenes only: show the frozen vectors' mAP on those.
    frozen_map = next((r.metrics["map_frozen"] for r in finished if r.metrics.get("map_frozen") is not None),
                      float("nan"))
    rows += [result_row(b, "frozen vectors", frozen_map) for b in base.values()]
    frame = pd.DataFrame(rows).sort_values("accuracy", ascending=False, na_position="last")
    for col in ("accuracy", "AUC", "map", "map_test_scenes", "seconds"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    backbones = sorted({r.backbone or "" for r in finished})
    first = finished[0]
    st.caption(f"Backbone {', '.join(backbones)} · {first.protocol.split} split, seed {first.protocol.seed} · "
               f"{first.metrics.get('n_test')} test pairs")
    st.dataframe(frame, hide_index=True, width="stretch", column_config={
        "accuracy": st.column_config.ProgressColumn("accuracy", format="%.3f", min_value=0.5, max_value=1.0),
        "AUC": st.column_config.NumberColumn(format="%.3f"), "map": map_column(),
        "map_test_scenes": st.column_config.NumberColumn(
            "mAP on the test scenes", format="%.3f",
            help="Like for like: retrieval mAP among the held-out test scenes (each scene's first image queries the "
                 "others) of the fine-tuned embeddings, and of the frozen vectors on the same scenes (measured by "
                 "the fine-tune run). The retrieval mAP column is each run's own stored number."),
        "seconds": st.column_config.NumberColumn(format="%.1f", help="Training and scoring time of the run."),
        "epochs": st.column_config.TextColumn(help="The best epoch (0 = the starting point) of those run.")})
    towers = [f"**{escape_md(m['tuned_backbone'])}** (retrieval mAP on the test scenes {m['map']:.3f}, frozen "
              f"vectors {m.get('map_frozen', float('nan')):.3f})"
              for m in (r.metrics for r in finished) if m.get("tuned_backbone")]
    if towers:
        st.caption("Each Siamese run's tower is now a backbone: pick it on the Train page to try every merge and "
                   "classifier on it, or on the Search page. " + "; ".join(towers) + ".")
    if not base:
        run = finished[0]
        st.info("No frozen-vector baseline on the same split yet.", icon=":material/straighten:")
        if st.button("Compute the frozen-vector baselines (cosine and the neural head, dot merge)", key="ft_baseline"):
            params = {"dataset": run.config.get("dataset") or run.dataset, "backbones": [run.config.get("backbone")],
                      "merges": ["dot"], "classifiers": ["cosine", "mlp"],
                      **{k: v for k, v in run.protocol.to_dict().items() if k in GRID_FIELDS}}
            st.session_state["ft_baseline_job"] = start_job("grid", params)
            st.rerun()
    page_link("pages/compare.py", "Compare every run", icon=":material/grid_on:")


# --------------------------------------------------------------------------- page


store_guard()  # a store that cannot be opened: one line; corrupt runs named
st.title("Fine-tune")
st.caption("Train on image pairs and watch it learn. **Neural head**: the 2017 study's fine-tune (it reached "
           "only 88%). **Siamese network**: one shared tower learns the image-to-vector function itself, pulling "
           "views of one scene together and pushing other scenes apart. Both are scored on the same test pairs as "
           "the grid runs.")

dataset = require_dataset()

job = latest_job("finetune")
running = job is not None and job.active
with st.expander("New run" if not running else "New run (one at a time: available when the run in progress ends)",
                 expanded=not running and "ft_job" not in st.session_state, icon=":material/tune:"):
    config = settings(dataset, running)
if config is not None:
    job_id = start_job("finetune", asdict(config))
    st.session_state["ft_job"] = job_id
    st.rerun()

st.subheader("Training curves")
runs = finetune_runs(dataset.fingerprint)
current = run_of_job(job.id) if job else None
pick_col, smooth_col = st.columns([4, 1], vertical_alignment="bottom")
with pick_col:
    if running:  # the live run is always shown; earlier runs can be overlaid
        by_id = {r.id: r for r in runs if not current or r.id != current.id}
        picked = st.multiselect("Overlay earlier runs", list(by_id), default=[],
                                format_func=lambda i: run_label(by_id[i]), key="ft_overlay",
                                help="Compare how they learned with the run in progress.")
    else:
        by_id = {r.id: r for r in runs}
        default = [current.id] if current and current.id in by_id else [r.id for r in runs[:1]]
        picked = st.multiselect("Runs to show", list(by_id), default=default, format_func=lambda i: run_label(by_id[i]),
                                key=f"ft_runs_{default[0] if default else 'none'}",
                                help="Overlay several runs to compare how they learned.")
with smooth_col:
    smoothing = smoothing_control() if picked or running else 0.6
if running:
    live(job.id, picked)
else:
    if job is not None and st.session_state.get("ft_job") == job.id:
        job_panel(job.id)  # this session's last run: how it ended
    shown = [by_id[i] for i in picked]
    if shown:
        st.plotly_chart(curves_figure(shown, smoothing), width="stretch", key="ft_curves")
        st.caption(CURVES_NOTE, help=NOISE_HELP)
        what_training_did(shown)
    elif not runs:
        st.info("No fine-tuning runs on this dataset yet: pick the settings above and press **Start fine-tuning**.",
                icon=":material/arrow_upward:")
baseline_job = st.session_state.get("ft_baseline_job")
if baseline_job:
    job_panel(baseline_job)
results([by_id[i] for i in picked if i in by_id])
