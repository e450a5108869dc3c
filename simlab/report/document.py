"""One self-contained HTML file about a dataset's runs, to send to people who will not run the app.

Everything the file shows travels inside it: plotly's JavaScript (once), the heatmaps' data, the thumbnails
(small JPEGs as data URIs) and the styles (system fonts). It fetches nothing, so it opens offline.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image

from simlab.classifiers import CLASSIFIERS, display_name
from simlab.data import parse_spec
from simlab.data.images import open_rgb
from simlab.evaluate import headline_metrics, metric_label, metric_scope, pair_metrics, reliability
from simlab.merge import MERGES
from simlab.options import choice_label
from simlab.provenance import git_commit, library_versions
from simlab.reference import ALIASES, STUDY_TEST_PAIRS, published_accuracies
from simlab.report.figures import metric_switch, pair_overlays, square_heatmap
from simlab.report.reliability import CAPTION as RELIABILITY_CAPTION
from simlab.report.reliability import reliability_figure
from simlab.report.tables import (
    backbone_order,
    fmt_value,
    hover_text,
    metric_range,
    newest_per_cell,
    ordered,
    run_title,
    runs_table,
    scored,
    study_summary,
    study_table,
)
from simlab.runspec import split_backbone
from simlab.store import Run, Store

log = logging.getLogger(__name__)

#: Metrics a heatmap can show (buttons above it switch between them), first one shown.
THUMB_PX = 200  # long side of an embedded thumbnail
DEFAULT_TOP = 3  # runs shown in detail when none are named
DEFAULT_ERRORS = 8  # most confident errors shown per run


class ReportError(ValueError):
    """A report that cannot be made as asked (no such run, no finished run of the dataset): one line."""


def _spec_key(spec: str | None) -> tuple[str, str] | str:
    """A dataset spec in a form two spellings of the same dataset share (kind, resolved path)."""
    try:
        kind, arg = parse_spec(spec)
    except ValueError:
        return str(spec)
    return kind, str(Path(arg).expanduser().resolve()) if arg else ""


# --------------------------------------------------------------------------- choosing the runs


@dataclass
class Selection:
    """The runs a report covers: the dataset's finished runs (one content version), the slices (split x
    weights) shown, and the runs shown in detail."""

    spec: str
    fingerprint: str
    frame: pd.DataFrame  # the dataset's finished runs in the report, newest first
    runs: dict[str, Run]
    detailed: list[str]
    named: bool  # the detailed runs were asked for by id
    older_versions: int = 0  # runs of the same spec on another content version, left out
    slices: list[tuple[str, str]] = field(default_factory=list)


def select_runs(spec: str, run_ids: list[str] | None = None, *, runs: list[Run] | None = None,
                store: Store | None = None, fingerprint: str | None = None, split: str | None = None,
                weights: str | None = None, top: int = DEFAULT_TOP) -> Selection:
    """The runs of ``spec`` a report shows; :class:`ReportError` (one line) when there are none, or when a
    named run does not exist, has not finished or belongs to another dataset."""
    runs = runs if runs is not None else (store or Store()).list_runs()
    by_id = {r.id: r for r in runs}
    frame = runs_table(runs)
    frame = frame[frame["id"].isin(run_ids or []) | ~frame["config"].duplicated(keep="first")]  # one per config
    key = _spec_key(spec)
    if fingerprint is not None:  # one content version, whatever spelling of the spec its runs were made with
        mine = frame[frame["fingerprint"] == fingerprint]
    else:
        mine = frame[[d == spec or _spec_key(d) == key for d in frame["dataset"]]]
    run_ids = list(dict.fromkeys(run_ids or []))
    for rid in run_ids:
        run = by_id.get(rid)
        if run is None:
            raise ReportError(f"No run {rid!r} in the store (python -m simlab runs lists them).")
        if not scored(run):
            raise ReportError(f"Run {rid} is {run.status or 'not finished'}: only finished runs go in a report.")
        if rid not in set(mine["id"]):
            raise ReportError(f"Run {rid} is on dataset {run.dataset!r}, not {spec!r}.")
    if mine.empty:
        raise ReportError(f"No finished runs on dataset {spec!r}: start some with "
                          f"python -m simlab run --dataset {spec}")
    if fingerprint is None:
        fingerprint = (by_id[run_ids[0]].fingerprint or "") if run_ids else mine["fingerprint"].iloc[0]
    older = int((mine["fingerprint"] != fingerprint).sum())
    for rid in run_ids:
        if (by_id[rid].fingerprint or "") != fingerprint:
            raise ReportError(f"Runs {run_ids[0]} and {rid} are on different versions of {spec!r} "
                              "(its images changed between them): report them one at a time.")
    mine = mine[mine["fingerprint"] == fingerprint]
    if split:
        mine = mine[(mine["split"] == split) | mine["id"].isin(run_ids)]
    if weights:
        mine = mine[(mine["weights"] == weights) | mine["id"].isin(run_ids)]
    if mine.empty:
        raise ReportError(f"No finished runs on dataset {spec!r} match split={split} weights={weights}.")
    slices = [(s, w) for s in ordered(mine["split"], ["group", "pair"])
              for w in ordered(mine["weights"], ["imagenet", "random"])
              if ((mine["split"] == s) & (mine["weights"] == w)).any()]
    if run_ids:
        detailed = run_ids
    else:
        first = mine[(mine["split"] == slices[0][0]) & (mine["weights"] == slices[0][1])]
        detailed = first.sort_values(["accuracy", "created"], ascending=False, na_position="last")["id"].tolist()[:top]
    return Selection(spec=spec, fingerprint=fingerprint, frame=mine, runs=by_id, detailed=detailed,
                     named=bool(run_ids), older_versions=older, slices=slices)


# --------------------------------------------------------------------------- pieces


def esc(text) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def fmt_when(ts: float | None) -> str:
    if not ts:
        return ""
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def fmt_int(n) -> str:
    try:
        return f"{int(n):,}"
    except (TypeError, ValueError):
        return "–"


def thumb_uri(path: str, size: int = THUMB_PX) -> str | None:
    """A small JPEG of an image as a data URI (made in memory; the cache is not written), or None."""
    try:
        im = open_rgb(path, draft_size=size)
        im.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80, optimize=True)
    except Exception:  # noqa: BLE001 - shown as an "image unavailable" tile
        log.debug("no thumbnail for %s", path, exc_info=True)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure_html(fig: go.Figure, div_id: str, state: dict) -> str:
    """A figure as a <div> and its script; plotly's JavaScript is embedded with the first one only."""
    first = not state.get("plotly_embedded")
    state["plotly_embedded"] = True
    return fig.to_html(full_html=False, include_plotlyjs=bool(first), div_id=div_id,
                       config={"displayModeBar": False, "responsive": False})


def ci_bar(lo: float, hi: float, value: float, low: float, high: float) -> str:
    """An interval drawn on the leaderboard's common scale [low, high]."""
    if any(v != v for v in (lo, hi, value)):
        return ""
    span = (high - low) or 1.0
    left = 100 * (lo - low) / span
    width = max(1.0, 100 * (hi - lo) / span)
    dot = 100 * (value - low) / span
    return (f'<span class="ci"><span class="ci-range" style="left:{left:.1f}%;width:{width:.1f}%"></span>'
            f'<span class="ci-dot" style="left:{dot:.1f}%"></span></span>')


# --------------------------------------------------------------------------- sections


def header(sel: Selection, generated: str) -> str:
    frame = sel.frame
    best = frame.sort_values(["accuracy", "created"], ascending=False, na_position="last").iloc[0]
    best_run = sel.runs[best["id"]]
    n_grid = int((frame["kind"] == "grid").sum())
    n_ft = int((frame["kind"] == "finetune").sum())
    kinds = f"{n_grid} grid run{'s' * (n_grid != 1)}" + (f", {n_ft} fine-tune run{'s' * (n_ft != 1)}" if n_ft else "")
    tiles = [
        ("Best accuracy", fmt_value(best["accuracy"]),
         f"95% CI {fmt_value(best['accuracy_lo'])}–{fmt_value(best['accuracy_hi'])} · {esc(run_title(best_run))}"),
        ("Runs", fmt_int(len(frame)), esc(kinds)),
        ("Test pairs", " / ".join(fmt_int(n) for n in sorted(set(frame["n_test"].dropna()))) or "–",
         "per run, held out from training"),
        ("Protocols", fmt_int(len(sel.slices)),
         esc(" · ".join(f"{s} split{' (random weights)' if w == 'random' else ''}" for s, w in sel.slices))),
    ]
    cards = "".join(f'<div class="tile"><div class="tile-label">{label}</div><div class="tile-value">{value}</div>'
                    f'<div class="tile-note">{note}</div></div>' for label, value, note in tiles)
    return (f'<header><div class="eyebrow">simlab report</div><h1>{esc(dataset_name(sel.spec))}</h1>'
            f'<p class="sub">Do two photos show the same scene? Results of {fmt_int(len(frame))} stored runs on '
            f'<code>{esc(sel.spec)}</code>. Generated {esc(generated)}.</p>'
            f'<div class="tiles">{cards}</div></header>')


def dataset_name(spec: str) -> str:
    kind, arg = parse_spec(spec) if spec else ("demo", "")
    if kind == "demo":
        return "Demo dataset"
    name = os.path.basename(str(arg).rstrip("/")) or arg
    return {"holidays": f"INRIA Holidays ({name})", "folder": f"Folder {name}", "csv": f"CSV {name}"}.get(kind, name)


def protocol_section(sel: Selection) -> str:
    frame = sel.frame
    runs = [sel.runs[i] for i in frame["id"]]
    described = Counter(r.protocol.describe() for r in runs)
    protocols = "".join(f"<li>{esc(d)} <span class=\"muted\">({n} run{'s' * (n != 1)})</span></li>"
                        for d, n in described.most_common())
    seeds = sorted({int(s) for s in frame["seed"].dropna()})
    n_test = sorted({int(n) for n in frame["n_test"].dropna()})
    n_train = sorted({int(r.metrics["n_train"]) for r in runs if isinstance(r.metrics.get("n_train"), (int, float))})
    versions: dict[str, Counter] = {}
    for r in runs:
        for lib, v in (r.versions or {}).items():
            versions.setdefault(lib, Counter())[str(v)] += 1
    lib_rows = "".join(f"<tr><td>{esc(lib)}</td><td>{esc(', '.join(v for v, _ in c.most_common()))}</td></tr>"
                       for lib, c in sorted(versions.items()))
    commits = Counter(r.git or "unknown" for r in runs)
    created = [t for t in frame["created"].dropna()]
    rows = [
        ("Dataset", f"<code>{esc(sel.spec)}</code> · content version <code>{esc(sel.fingerprint[:12])}</code>"
         + (f' <span class="muted">({sel.older_versions} run(s) on an earlier version of these images left '
            "out)</span>" if sel.older_versions else "")),
        ("Protocols", f'<ul class="plain">{protocols}</ul>'),
        ("Seeds", esc(", ".join(map(str, seeds)) or "–")),
        ("Test pairs", esc(" / ".join(f"{n:,}" for n in n_test) or "–")
         + ' <span class="muted">per run (group split: whole scenes held out)</span>'),
        ("Training pairs", esc(" / ".join(f"{n:,}" for n in n_train) or "–")),
        ("Code (git commit)", esc(", ".join(f"{c}" + (f" ({n} runs)" if len(commits) > 1 else "")
                                            for c, n in commits.most_common()))),
        ("Runs made", esc(f"{fmt_when(min(created))} – {fmt_when(max(created))}" if created else "–")),
    ]
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return (f'<section id="protocol"><h2>Protocol</h2><p class="lead">How the numbers below were measured: '
            f'every run trains on the training pairs and is scored on held-out test pairs.</p>'
            f'<div class="two"><table class="kv">{table}</table>'
            f'<div><h3>Library versions</h3><table class="kv libs">{lib_rows or "<tr><td>–</td></tr>"}</table>'
            f"</div></div></section>")


def glossary() -> str:
    items = [("Accuracy", metric_scope("accuracy")), ("95% CI", metric_scope("accuracy_lo")),
             ("F1", metric_scope("f1")), ("ROC AUC", metric_scope("auc")),
             (metric_label("map"), metric_scope("map", "grid", "each run's backbone"))]
    return '<dl class="glossary">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>"


def heatmap_section(sel: Selection, state: dict) -> str:
    parts = []
    for k, (split, weights) in enumerate(sel.slices):
        part = sel.frame[(sel.frame["split"] == split) & (sel.frame["weights"] == weights)
                         & (sel.frame["kind"] == "grid")]
        cells = newest_per_cell(part)
        title = choice_label("split", split)
        title += "" if weights == "imagenet" else " · " + choice_label("weights", weights)
        if cells.empty:
            continue
        backbones = backbone_order(cells["backbone"])
        merges = ordered(cells["merge"], list(MERGES))
        classifiers = ordered(cells["classifier"], list(CLASSIFIERS))
        hover = pd.Series([hover_text(r, click=None) for r in cells.itertuples()], index=cells.index)
        figures, labels = {}, {}
        for metric in headline_metrics():
            if cells[metric].notna().any():
                zmin, zmax = metric_range(cells[metric])
                labels[metric] = metric_label(metric)
                figures[metric] = square_heatmap(
                    cells, rows="backbone", cols="merge", facet="classifier", value=metric, row_order=backbones,
                    col_order=merges, facet_order=classifiers, text=cells[metric].map(fmt_value), hover=hover,
                    colorscale="Viridis", zmin=zmin, zmax=zmax, colorbar_title=labels[metric],
                    facet_labels={c: display_name(c) for c in classifiers})
        if not figures:
            continue
        fig = metric_switch(figures, labels) if len(figures) > 1 else next(iter(figures.values()))
        fig.update_layout(clickmode="none", font={"family": FONT_STACK, "color": "#1f2937"},
                          paper_bgcolor="rgba(0,0,0,0)")
        older = len(part.dropna(subset=["backbone", "merge", "classifier"])) - len(cells)
        note = f" {older} older run(s) of the same cells are in the leaderboard." if older > 0 else ""
        warn = ('<p class="warn">Random (untrained) backbone weights: these runs exist for tests and say nothing '
                "about real accuracy.</p>") if weights == "random" else ""
        parts.append(f'<div class="figure"><h3>{esc(title)}</h3>{warn}'
                     f'<div class="plot">{figure_html(fig, f"heatmap-{k}", state)}</div>'
                     f'<p class="caption">Rows: backbones; columns: how the two vectors are merged; one chart per '
                     f"classifier. Each square is the newest run of its cell; hover for its 95% interval. The "
                     f"buttons switch the metric.{esc(note)}</p></div>")
    if not parts:
        return ""
    return (f'<section id="heatmaps"><h2>Backbone × merge × classifier</h2>'
            f'<p class="lead">Every grid run of this dataset, one square each.</p>{"".join(parts)}{glossary()}'
            f"</section>")


def leaderboard_section(sel: Selection) -> str:
    board = sel.frame.sort_values(["accuracy", "created"], ascending=[False, False], na_position="last")
    low = float(np.nanmin(board["accuracy_lo"])) if board["accuracy_lo"].notna().any() else 0.0
    high = float(np.nanmax(board["accuracy_hi"])) if board["accuracy_hi"].notna().any() else 1.0
    low, high = max(0.0, low - 0.01), min(1.0, high + 0.01)
    detailed = set(sel.detailed)
    splits = board["split"].nunique() > 1  # a Split column only when there is more than one
    others = [name for name in headline_metrics() if name != "accuracy"]  # declared in simlab.evaluate.METRICS
    rows = []
    for rank, r in enumerate(board.itertuples(), 1):
        run = sel.runs[r.id]
        name = esc(run_title(run))
        if r.id in detailed:
            name = f'<a href="#run-{esc(r.id)}">{name}</a>'
        tags = "".join([' <span class="tag">fine-tune</span>' if run.is_finetune else "",
                        ' <span class="tag warn-tag">stopped by hand</span>' if run.status == "cancelled" else "",
                        ' <span class="tag warn-tag">random weights</span>' if r.weights == "random" else "",
                        f' <span class="tag" title="stored runs of this very configuration: the newest is shown">'
                        f"×{int(r.copies)}</span>" if r.copies > 1 else ""])
        rows.append(
            f'<tr class="{"hl" if r.id in detailed else ""}"><td class="num muted">{rank}</td>'
            f"<td>{name}{tags}</td>" + (f"<td>{esc(r.split)}</td>" if splits else "") +
            f'<td class="num strong">{fmt_value(r.accuracy)}</td>'
            f'<td class="num ci-text">{fmt_value(r.accuracy_lo)}–{fmt_value(r.accuracy_hi)}</td>'
            f"<td>{ci_bar(r.accuracy_lo, r.accuracy_hi, r.accuracy, low, high)}</td>"
            + "".join(f'<td class="num">{fmt_value(getattr(r, name))}</td>' for name in others) +
            f'<td class="num">{fmt_int(r.n_test)}</td>'
            f'<td class="mono muted">{esc(r.id)}</td></tr>')
    head = ("<tr><th>#</th><th>Run</th>" + ("<th>Split</th>" if splits else "")
            + "<th class=\"num\">Accuracy</th><th class=\"num\">95% CI</th>"
            f'<th class="ci-head"><span>{low:.2f}</span><span>{high:.2f}</span></th>'
            + "".join(f'<th class="num keep-case" title="{esc(metric_scope(name, "grid", "each run"))}">'
                      f"{esc(metric_label(name))}</th>" for name in others)
            + '<th class="num">Test pairs</th><th>Run id</th></tr>')
    return (f'<section id="leaderboard"><h2>Leaderboard</h2><p class="lead">{fmt_int(len(board))} '
            f'run{"s" * (len(board) != 1)}, best accuracy '
            f"first, each with its 95% bootstrap interval: runs whose intervals overlap are not clearly apart. "
            f"Highlighted runs are shown in detail below.</p>"
            f'<div class="scroll"><table class="board"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'
            f"</div></section>")


def study_section(sel: Selection, state: dict) -> str:
    table = study_table(sel.frame, sel.fingerprint)
    pub = published_accuracies()
    if table.empty:
        return ('<section id="study"><h2>Beside the 2017 study</h2><p class="lead muted">The 2017 study published '
                f"accuracies for {len(pub)} cells (VGG16/19 fc2, InceptionV3, ResNet50, Xception × dot/l1/l2 × "
                "GaussianNB, LinearSVC, XGBoost, RandomForest) on INRIA Holidays with a pair split. None of these "
                "runs is such a cell, so there is nothing to set beside it.</p></section>")
    table = table.sort_values(["classifier", "backbone", "merge"])
    summary = study_summary(table)
    has_group = summary.group_vs_pair is not None
    note = "" if str(sel.spec).startswith("holidays:") else (
        f'<p class="warn">The published numbers are for INRIA Holidays; this dataset is {esc(sel.spec)}, so '
        "the differences compare different images.</p>")
    tiles = "".join(f'<div class="tile small"><div class="tile-label">{k}</div><div class="tile-value">{v}</div>'
                    "</div>" for k, v, _ in summary.tiles())
    bound = max(0.02, float(table["delta"].abs().max()))
    hover = pd.Series([
        f"<b>{ALIASES.get(r.backbone, r.backbone)} + {r.merge} + {display_name(r.classifier)}</b><br>"
        f"2017: {r.published:.3f}<br>ours (pair split): {r.accuracy:.3f} (95% CI {r.accuracy_lo:.3f}–"
        f"{r.accuracy_hi:.3f})<br>difference: {r.delta:+.3f}" for r in table.itertuples()], index=table.index)
    fig = square_heatmap(table, rows="backbone", cols="merge", facet="classifier", value="delta",
                         row_order=backbone_order(table["backbone"]), col_order=ordered(table["merge"], list(MERGES)),
                         facet_order=ordered(table["classifier"], list(CLASSIFIERS)),
                         text=table["delta"].map(lambda d: f"{d:+.3f}"), hover=hover, colorscale="RdBu",
                         zmin=-bound, zmax=bound, zmid=0.0, colorbar_title="ours − 2017",
                         facet_labels={c: display_name(c) for c in table["classifier"].unique()})
    fig.update_layout(clickmode="none", font={"family": FONT_STACK, "color": "#1f2937"},
                      paper_bgcolor="rgba(0,0,0,0)")
    rows = "".join(
        f"<tr><td>{esc(ALIASES.get(r.backbone, r.backbone))}</td><td>{esc(r.merge)}</td>"
        f"<td>{esc(display_name(r.classifier))}</td><td class=\"num\">{r.published:.3f}</td>"
        f'<td class="num strong">{r.accuracy:.3f}</td>'
        f'<td class="num ci-text">{r.accuracy_lo:.3f}–{r.accuracy_hi:.3f}</td>'
        f'<td class="num {"pos" if r.delta >= 0 else "neg"}">{r.delta:+.3f}</td>'
        f'<td class="center">{"✓" if r.within else "–"}</td>'
        + (f'<td class="num">{fmt_value(r.group)}</td><td class="num">'
           f'{"–" if r.leak != r.leak else f"{r.leak:+.3f}"}</td>' if has_group else "") + "</tr>"
        for r in table.itertuples())
    head = ("<tr><th>Backbone</th><th>Merge</th><th>Classifier</th><th class=\"num\">2017</th>"
            "<th class=\"num\">Ours, pair split</th><th class=\"num\">95% CI</th><th class=\"num\">Difference</th>"
            "<th class=\"center\">2017 inside our CI</th>"
            + ("<th class=\"num\">Ours, group split</th><th class=\"num\">Group − pair</th>" if has_group else "")
            + "</tr>")
    return (f'<section id="study"><h2>Beside the 2017 study</h2><p class="lead">Our pair-split runs (the study\'s '
            f"own protocol) cell by cell against its published table; the study tested on {STUDY_TEST_PAIRS:,} "
            f"pairs.</p>{note}<div class=\"tiles\">{tiles}</div>"
            f'<div class="plot">{figure_html(fig, "study-heatmap", state)}</div>'
            f'<p class="caption">Blue: our run beats the published accuracy; red: it falls short.</p>'
            f'<div class="scroll"><table class="board"><thead>{head}</thead><tbody>{rows}</tbody></table></div>'
            f"</section>")


def confusion_html(m: dict) -> str:
    total = max(1, m["tp"] + m["fn"] + m["fp"] + m["tn"])
    peak = max(1, m["tp"], m["fn"], m["fp"], m["tn"])

    def cell(v: int, right: bool) -> str:
        alpha = 0.12 + 0.6 * v / peak
        colour = f"rgba(37,99,235,{alpha:.2f})" if right else f"rgba(220,38,38,{alpha:.2f})"
        ink = "#fff" if alpha > 0.45 else "#111827"
        return (f'<td class="cm-cell" style="background:{colour};color:{ink}"><div class="cm-n">{v:,}</div>'
                f'<div class="cm-p">{v / total:.1%}</div></td>')

    return ('<table class="cm"><thead><tr><th></th><th>Predicted same</th><th>Predicted different</th></tr></thead>'
            f'<tbody><tr><th>Same scene</th>{cell(m["tp"], True)}{cell(m["fn"], False)}</tr>'
            f'<tr><th>Different scenes</th>{cell(m["fp"], False)}{cell(m["tn"], True)}</tr></tbody></table>')


def confident_errors(preds: pd.DataFrame, threshold: float, n: int) -> pd.DataFrame:
    """The ``n`` wrongly classified pairs farthest from the threshold (most confident first)."""
    pred = (preds["prob"].to_numpy() >= threshold).astype(int)
    wrong = preds[pred != preds["label"].to_numpy().astype(int)]
    wrong = wrong.assign(margin=(wrong["prob"] - threshold).abs())
    return wrong.sort_values("margin", ascending=False, kind="stable").head(n)


def error_card(row, threshold: float, overlays: tuple[str, str] | None = None) -> str:
    said = "same scene" if row.prob >= threshold else "different scenes"
    truth = "same scene" if int(row.label) == 1 else "different scenes"
    kind = "False positive" if row.prob >= threshold else "False negative"
    imgs = []
    for path, group in ((row.left_path, row.left_group), (row.right_path, row.right_group)):
        uri = thumb_uri(path)
        name = os.path.basename(str(path))
        img = (f'<img src="{uri}" alt="{esc(name)}" loading="eager">' if uri else
               '<div class="missing">image unavailable</div>')
        imgs.append(f'<figure>{img}<figcaption title="{esc(path)}">{esc(name)}<br>'
                    f'<span class="muted">scene {esc(group)}</span></figcaption></figure>')
    maps = ("" if overlays is None else '<div class="pair-imgs">' + "".join(
        f'<figure><img src="{uri}" alt="similarity map" loading="eager"></figure>' for uri in overlays)
        + '</div><div class="pair-foot muted">Similarity map: warm regions make the two look alike.</div>')
    return (f'<div class="pair"><div class="pair-head"><span class="badge {"fp" if row.prob >= threshold else "fn"}">'
            f"{kind}</span><span>P(same) <b>{row.prob:.3f}</b></span></div>"
            f'<div class="pair-imgs">{"".join(imgs)}</div>{maps}'
            f'<div class="pair-foot">Predicted {said}; truth: {truth}.</div></div>')


def run_section(run: Run, store: Store, n_errors: int, state: dict | None = None) -> str:
    preds = store.predictions(run.id)
    threshold = run.threshold
    title = esc(run_title(run))
    head = (f'<h3 id="run-{esc(run.id)}">{title} <span class="mono muted">{esc(run.id)}</span></h3>'
            f'<p class="muted">{esc(run.protocol.describe())} · made {esc(fmt_when(run.created))}</p>')
    if preds.attrs.get("problem"):  # stored predictions that could not be read, left out
        head += f'<p class="warn">{esc(preds.attrs["problem"])}</p>'
    if preds.empty:
        return f'<div class="run">{head}<p class="warn">No per-pair predictions stored for this run.</p></div>'
    m = pair_metrics(preds["label"].to_numpy(), preds["prob"].to_numpy(), threshold=threshold)
    stats = [("Accuracy", fmt_value(m["accuracy"]), f"95% CI {fmt_value(m['accuracy_lo'])}–"
              f"{fmt_value(m['accuracy_hi'])}"),
             ("Precision", fmt_value(m["precision"]), "of “same”"), ("Recall", fmt_value(m["recall"]), "of “same”"),
             ("F1", fmt_value(m["f1"]), ""), ("ROC AUC", fmt_value(m["auc"]), "any threshold"),
             ("Test pairs", fmt_int(m["n_test"]), "")]
    tiles = "".join(f'<div class="stat"><div class="tile-label">{k}</div><div class="stat-value">{v}</div>'
                    f'<div class="tile-note">{note}</div></div>' for k, v, note in stats)
    errors = confident_errors(preds, threshold, n_errors)
    n_wrong = m["fp"] + m["fn"]
    explained = None if run.is_finetune else split_backbone(run.backbone or "")[0]  # a fusion: its first backbone
    cards = "".join(error_card(r, threshold, pair_overlays(explained, run.weights, r.left_path, r.right_path))
                    for r in errors.itertuples())
    errors_html = (f'<h4>Most confident errors <span class="muted">({len(errors)} of {n_wrong:,})</span></h4>'
                   f'<div class="pairs">{cards}</div>') if len(errors) else "<h4>No errors on the test pairs</h4>"
    stored = run.threshold_rule
    rel = reliability(preds["label"].to_numpy(), preds["prob"].to_numpy())
    honest = (f'<div class="plot">{figure_html(reliability_figure(rel), f"reliability-{run.id}", state)}'
              f'<p class="caption">{esc(RELIABILITY_CAPTION)}</p></div>') if state is not None else ""
    return (f'<div class="run">{head}<div class="run-top"><div class="stats">{tiles}</div>'
            f'<div class="cm-box">{confusion_html(m)}<p class="caption">At the run\'s threshold on P(same), '
            f"{threshold:.3f}: {esc(stored)}.</p></div>{honest}</div>{errors_html}</div>")


def runs_section(sel: Selection, store: Store, n_errors: int, state: dict | None = None) -> str:
    if not sel.detailed:
        return ""
    n = len(sel.detailed)
    lead = ("The runs asked for" if sel.named else "The best run by accuracy" if n == 1 else
            f"The {n} best runs by accuracy") + (
        ": each one's confusion matrix on its test pairs, and the pairs it got wrong with the most confidence.")
    body = "".join(run_section(sel.runs[i], store, n_errors, state) for i in sel.detailed)
    return f'<section id="runs"><h2>Runs in detail</h2><p class="lead">{lead}</p>{body}</section>'


# --------------------------------------------------------------------------- the document


FONT_STACK = ('-apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", '
              "sans-serif")

#: The report's styles (report.css beside this module), embedded in every file.
CSS = (Path(__file__).with_name("report.css")).read_text(encoding="utf-8").replace("FONTS", FONT_STACK)


def render_report(spec: str, run_ids: list[str] | None = None, *, runs: list[Run] | None = None,
                  store: Store | None = None, fingerprint: str | None = None, split: str | None = None,
                  weights: str | None = None, top: int = DEFAULT_TOP, errors: int = DEFAULT_ERRORS,
                  command: str | None = None) -> str:
    """The HTML text of a report on dataset ``spec``: protocol, heatmaps, leaderboard with 95% intervals, the
    2017 study beside ours where it applies, and the runs ``run_ids`` (default: the ``top`` best) in detail,
    each with its confusion matrix at its stored threshold and its ``errors`` most confident errors.

    ``runs`` (the store's runs, newest first) saves reading them again; ``fingerprint``, ``split`` and
    ``weights`` narrow the runs as the Compare page's filters do. Raises :class:`ReportError` (one line)."""
    store = store or Store()
    sel = select_runs(spec, run_ids, runs=runs, store=store, fingerprint=fingerprint, split=split,
                      weights=weights, top=top)
    generated = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    state: dict = {}
    sections = [protocol_section(sel), heatmap_section(sel, state), leaderboard_section(sel),
                study_section(sel, state), runs_section(sel, store, errors, state)]
    toc = [("protocol", "Protocol"), ("heatmaps", "Heatmaps"), ("leaderboard", "Leaderboard"),
           ("study", "2017 study"), ("runs", "Runs in detail")]
    nav = '<nav class="toc">' + "".join(f'<a href="#{k}">{v}</a>' for k, v in toc
                                        if f'<section id="{k}"' in "".join(sections)) + "</nav>"
    versions = library_versions()
    made_by = (f"Made by simlab (commit {esc(git_commit() or 'unknown')}, Python {esc(versions.get('python'))}"
               + (f", plotly {esc(_plotly_version())}" if state.get("plotly_embedded") else "") + ")"
               + (f" with <code>{esc(command)}</code>" if command else "") + ". This file is self-contained: "
               "it opens offline and fetches nothing.")
    title = f"simlab report · {dataset_name(spec)}"
    head = header(sel, generated).replace("</header>", f"{nav}</header>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="simlab"><title>{esc(title)}</title><style>{CSS}</style></head>'
            f'<body><main>{head}{"".join(sections)}<footer>{made_by}</footer></main></body></html>\n')


def _plotly_version() -> str:
    import plotly

    return plotly.__version__
