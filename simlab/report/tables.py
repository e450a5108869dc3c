"""Runs as tables: one row per finished run, the newest run of each grid cell, the 2017 study beside ours.

Shared by the Compare page and the HTML report, so both show the same numbers for the same runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from simlab.backbones import DEFAULT_BACKBONE
from simlab.classifiers import display_name
from simlab.evaluate import metric_names
from simlab.options import choice_label
from simlab.reference import STUDY_BACKBONES, published_accuracies
from simlab.runspec import run_key
from simlab.store import Run

IDENTITY_COLUMNS = ["id", "created", "dataset", "fingerprint", "kind", "status", "method", "epochs", "best_epoch",
                    "backbone", "merge", "classifier", "split", "weights", "negatives", "negative_ratio", "test_size",
                    "seed", "job_id", "config", "copies"]
CELL = ["backbone", "merge", "classifier"]


def scored(r: Run) -> bool:
    """A run with test metrics: finished, or a fine-tune run stopped by hand and scored on its best checkpoint."""
    return r.done or (r.is_finetune and r.status == "cancelled" and r.metrics.get("accuracy") is not None)


def runs_table(runs: list[Run]) -> pd.DataFrame:
    """Scored runs, newest first: identity, protocol and metrics, one row per run."""
    numbers = metric_names()  # every metric declared in simlab.evaluate.METRICS, a new one included
    rows = []
    for r in runs:
        if not scored(r):
            continue
        p = r.protocol
        rows.append({
            "id": r.id, "created": r.created, "dataset": r.dataset or "", "fingerprint": r.fingerprint or "",
            "kind": r.kind, "status": r.status, "method": r.method, "epochs": r.metrics.get("epochs_run"),
            "best_epoch": r.metrics.get("best_epoch"),
            "backbone": r.backbone, "merge": r.merge, "classifier": r.classifier,
            "split": p.split, "weights": p.weights, "negatives": p.negatives, "negative_ratio": p.negative_ratio,
            "test_size": p.test_size, "seed": p.seed, "job_id": r.job_id, "config": run_key(r),
            **{k: r.metrics.get(k) for k in numbers if k != "seconds"},
            "seconds": r.seconds,
        })
    frame = pd.DataFrame(rows, columns=[*IDENTITY_COLUMNS, *numbers])
    frame["copies"] = frame.groupby("config")["id"].transform("size") if len(frame) else []
    for col in numbers:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


def one_per_config(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (same method, protocol and data: ``config``), the newest (frames are newest
    first); ``copies`` says how many stored runs it stands for."""
    return frame.drop_duplicates("config", keep="first")


def newest_per_cell(frame: pd.DataFrame) -> pd.DataFrame:
    """One run per (backbone, merge, classifier): the newest (frames are newest first)."""
    cells = frame.dropna(subset=CELL)
    return cells.drop_duplicates(CELL, keep="first")


def ordered(values, preferred) -> list[str]:
    """Distinct values, those in ``preferred`` first in its order, the rest alphabetically."""
    present = list(dict.fromkeys(v for v in values if isinstance(v, str)))
    first = [p for p in preferred if p in present]
    return first + sorted(v for v in present if v not in first)


def backbone_order(values) -> list[str]:
    return ordered(values, [DEFAULT_BACKBONE, *STUDY_BACKBONES, "vgg16", "vgg19"])


def run_title(run: Run) -> str:
    """'efficientnet_lite0 · dot · Logistic regression', or the fine-tune run's label: the one name of a run
    in the report and on the pages."""
    if run.is_finetune:
        return run.label
    return f"{run.backbone} · {run.merge} · {display_name(run.classifier)}"


def fmt_value(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def metric_range(values: pd.Series) -> tuple[float, float]:
    """The colour range of a heatmap: the values' span, at least 0.02 wide."""
    vals = values.dropna()
    if vals.empty:
        return 0.0, 1.0
    lo, hi = float(vals.min()), float(vals.max())
    if hi - lo < 0.02:
        lo, hi = lo - 0.01, hi + 0.01
    return lo, hi


def hover_text(row, click: str | None = "click to inspect its pairs") -> str:
    """A heatmap square's hover: the run, its accuracy with the 95% interval, F1, AUC, mAP, test pairs."""
    n_test = int(row.n_test) if row.n_test == row.n_test else "?"
    lines = [f"<b>{row.backbone} + {row.merge} + {display_name(row.classifier)}</b>",
             f"accuracy {fmt_value(row.accuracy)} (95% CI {fmt_value(row.accuracy_lo)}–{fmt_value(row.accuracy_hi)})",
             f"F1 {fmt_value(row.f1)} · AUC {fmt_value(row.auc)} · mAP {fmt_value(row.map)}",
             f"{n_test} test pairs · " + choice_label("split", row.split),
             f"run {row.id}" + (f" · {click}" if click else "")]
    return "<br>".join(lines)


def study_table(all_runs: pd.DataFrame, fingerprint: str) -> pd.DataFrame:
    """The 2017 study's published cells that a pair-split ImageNet run of this dataset reproduces, newest
    run per cell: published, ours (with the 95% interval and run id), the difference, whether the published
    number lies inside our interval, and ours on the group split with what the leak was worth. Empty
    when no run matches a published cell."""
    ours = all_runs[(all_runs.fingerprint == fingerprint) & (all_runs.weights == "imagenet")
                    & (all_runs.kind == "grid")]
    pub = published_accuracies()
    pair = newest_per_cell(ours[ours.split == "pair"]).merge(pub[CELL], on=CELL)
    if pair.empty:
        return pd.DataFrame(columns=[*CELL, "published", "id", "accuracy", "accuracy_lo", "accuracy_hi", "n_test",
                                     "group_id", "group", "delta", "within", "leak"])
    group = newest_per_cell(ours[ours.split == "group"])[[*CELL, "id", "accuracy"]]
    table = pub.rename(columns={"accuracy": "published"}).merge(
        pair[[*CELL, "id", "accuracy", "accuracy_lo", "accuracy_hi", "n_test"]], on=CELL, how="inner")
    table = table.merge(group.rename(columns={"id": "group_id", "accuracy": "group"}), on=CELL, how="left")
    table["delta"] = table["accuracy"] - table["published"]
    table["within"] = (table["published"] >= table["accuracy_lo"]) & (table["published"] <= table["accuracy_hi"])
    table["leak"] = table["group"] - table["accuracy"]
    return table


@dataclass(frozen=True)
class StudySummary:
    """The study comparison in four numbers: cells the study published and that our runs reproduce, the mean
    of ours minus published, how many published numbers lie inside our 95% interval, and the mean of the
    group split minus the pair split over the cells run both ways (None: none was)."""

    published: int
    reproduced: int
    mean_difference: float
    within: int
    group_vs_pair: float | None

    def tiles(self) -> list[tuple[str, str, str]]:
        """(label, value, help) of each number, as the Compare page and the report show them."""
        out = [("Cells reproduced", f"{self.reproduced} / {self.published}", ""),
               ("Mean difference", f"{self.mean_difference:+.3f}", "Ours (pair split) minus published"),
               ("Published inside our 95% CI", f"{self.within} / {self.reproduced}", "")]
        if self.group_vs_pair is not None:
            out.append(("Group split vs pair split", f"{self.group_vs_pair:+.3f}",
                        "Mean accuracy on held-out scenes minus the leaky pair split: what the leak was worth."))
        return out


def study_summary(table: pd.DataFrame) -> StudySummary | None:
    """The summary of :func:`study_table`'s ``table``; None when it is empty (no run reproduces a cell)."""
    if table.empty:
        return None
    leak = table["leak"].dropna()
    return StudySummary(published=len(published_accuracies()), reproduced=len(table),
                        mean_difference=float(table["delta"].mean()), within=int(table["within"].sum()),
                        group_vs_pair=float(leak.mean()) if len(leak) else None)
