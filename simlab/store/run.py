"""The typed record of one stored run."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields

import pandas as pd

from simlab.protocol import Protocol, unchecked
from simlab.store.schema import DEFAULT_THRESHOLD

log = logging.getLogger(__name__)


#: Stored ``kind`` column -> ``Run.kind``. Grid cells are stored as "pair" (and very old rows as NULL).
KINDS = {"pair": "grid", None: "grid", "grid": "grid", "finetune": "finetune"}
#: ``Run.kind`` -> the value written in the ``kind`` column.
KIND_COLUMN = {"grid": "pair", "finetune": "finetune"}

# What each column of a ``runs`` row must hold for the row to be read (SQLite keeps whatever was written).
TEXT_COLUMNS = ("dataset", "fingerprint", "backbone", "merge", "classifier", "split", "git", "error", "job_id",
                "owner_host")
TIME_COLUMNS = ("finished", "owner_started", "heartbeat")
INTEGER_COLUMNS = ("seed", "owner_pid")
JSON_OBJECTS = ("config", "metrics", "timings", "versions", "artifacts")
#: Keys of ``metrics`` and ``timings`` that pages and the report format as numbers.
NUMERIC_METRICS = ("accuracy", "accuracy_lo", "accuracy_hi", "precision", "recall", "f1", "auc", "map", "threshold",
                   "n_test", "n_train", "n_val", "tn", "fp", "fn", "tp", "best_val_accuracy", "best_val_map",
                   "best_val_loss")
NUMERIC_TIMINGS = ("total", "per_epoch")
#: The configuration columns of :func:`runs_frame`, before one column per metric and ``seconds``.
FRAME_COLUMNS = ("id", "created", "status", "kind", "dataset", "backbone", "merge", "classifier", "split", "seed")


class CorruptRun(ValueError):
    """A stored run row that cannot be read: ``corrupt run <id>: <what is wrong>`` (one line).

    The other runs read on; the row can be deleted (``Store.delete_run``, the Runs page, ``simlab runs --delete``).
    """

    def __init__(self, run_id, problem: str):
        self.run_id = run_id
        self.problem = problem
        super().__init__(f"corrupt run {show(run_id, 60)}: {problem}")


def show(value, width: int = 40) -> str:
    """A stored value in a message: printable ASCII, cut to ``width`` characters."""
    if isinstance(value, str) and value.isprintable() and value.isascii():
        text = value
    elif isinstance(value, (bytes, bytearray)):
        text = f"<{len(value)} bytes>" if len(value) > width // 3 else ascii(bytes(value))
    else:
        text = ascii(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def what_is(value) -> str:
    """A stored value and its type, for a message: 'NULL', "text 'abc'", 'binary data (12 bytes)', '2.5'."""
    if value is None:
        return "NULL"
    if isinstance(value, (bytes, bytearray)):
        return f"binary data ({len(value)} bytes)"
    if isinstance(value, str):
        return f"text '{show(value)}'"
    return show(value)


def _number_problem(name: str, value, required: bool = False) -> str | None:
    if value is None:
        return f"{name} is missing" if required else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} is {what_is(value)}, not a number"
    if not math.isfinite(value):
        return f"{name} is {value}, not a finite number"
    return None


def text_problem(name: str, value, required: bool = False) -> str | None:
    if value is None:
        return f"{name} is missing" if required else None
    if not isinstance(value, str):
        return f"{name} is {what_is(value)}, not text"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):  # bytes that were not UTF-8 (surrogate-escaped on read)
        return f"{name} is not valid UTF-8 text ({show(value)})"
    if required and not value:
        return f"{name} is empty"
    return None


def _json_object(name: str, value) -> tuple[dict, str | None]:
    """A JSON column as a dict, or ``({}, what is wrong)``; NULL reads as an empty dict."""
    if value is None:
        return {}, None
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return {}, f"{name} is {what_is(value)}, not JSON text"
    if isinstance(value, str):
        if problem := text_problem(name, value):
            return {}, problem
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as exc:
            return {}, f"{name} is not valid JSON ({' '.join(str(exc).split())[:80]})"
    if not isinstance(value, Mapping):
        what = {list: "a JSON list", str: "a JSON string", bool: "a JSON boolean", int: "a JSON number",
                float: "a JSON number", type(None): "JSON null"}.get(type(value), type(value).__name__)
        return {}, f"{name} is {what}, not a JSON object"
    return dict(value), None


def row_problems(row: Mapping) -> tuple[dict, list[str]]:
    """Check one ``runs`` row (JSON columns as text or decoded): the values a :class:`Run` takes, and what is
    wrong with the row (empty when it reads)."""
    known = {f.name for f in fields(Run)}
    values = {k: v for k, v in dict(row).items() if k in known}
    problems = [p for p in (text_problem("id", values.get("id"), required=True),
                            _number_problem("created", values.get("created"), required=True),
                            text_problem("status", values.get("status"), required=True)) if p]
    problems += [p for name in TEXT_COLUMNS if (p := text_problem(name, values.get(name)))]
    problems += [p for name in TIME_COLUMNS if (p := _number_problem(name, values.get(name)))]
    for name in INTEGER_COLUMNS:
        value = values.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"{name} is {what_is(value)}, not a whole number")
    threshold = values.get("threshold")
    if (p := _number_problem("threshold", threshold)) or (threshold is not None and not 0 <= threshold <= 1):
        problems.append(p or f"threshold is {threshold}, not between 0 and 1")
    if values.get("kind") not in KINDS:
        problems.append(f"kind is {what_is(values.get('kind'))}, not one of: {', '.join(KIND_COLUMN.values())}")
    for name in JSON_OBJECTS:
        values[name], problem = _json_object(name, values.get(name))
        if problem:
            problems.append(problem)
    for name, keys in (("metrics", NUMERIC_METRICS), ("timings", NUMERIC_TIMINGS)):
        problems += [p for k in keys if (p := _number_problem(f"{name}[{k!r}]", values[name].get(k)))
                     and "not a finite" not in p]  # NaN and infinities are results (an AUC on one class)
    backbones = values["config"].get("backbones")
    if backbones is not None and (not isinstance(backbones, list) or not all(isinstance(b, str) for b in backbones)):
        problems.append(f"config['backbones'] is {what_is(backbones)}, not a list of names")
    return values, problems


@dataclass
class Run:
    """One stored run. ``kind`` is "grid" (a backbone x merge x classifier cell on frozen vectors) or
    "finetune"; ``config`` is the configuration it ran with (a grid cell's ``GridConfig`` with one-item
    lists, or a ``FinetuneConfig``), and :attr:`protocol` the split, negatives, seed and weights in it.

    ``merge`` and ``classifier`` are the stored columns (a fine-tune run fills them with its method so
    the Compare heatmaps can place it); read :attr:`mode`, :attr:`loss` and :attr:`method` for what a
    fine-tune run did.
    """

    id: str
    created: float | None = None
    finished: float | None = None
    status: str | None = None
    kind: str = "grid"
    dataset: str | None = None
    fingerprint: str | None = None
    backbone: str | None = None
    merge: str | None = None
    classifier: str | None = None
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    git: str | None = None
    error: str | None = None
    job_id: str | None = None
    artifacts: dict = field(default_factory=dict)
    split: str | None = None  # also in config; kept as stored for the protocol of rows without one
    seed: int | None = None
    owner_pid: int | None = None  # the process writing the run: pid, start time, machine
    owner_started: float | None = None
    owner_host: str | None = None
    heartbeat: float | None = None  # the last write while it ran
    #: The operating threshold on P(same): chosen on validation scenes carved from the training scenes
    #: (grid runs since schema version 4); 0.5 for the 2017 study's settings, fine-tune runs and older runs.
    threshold: float = DEFAULT_THRESHOLD

    @classmethod
    def from_row(cls, row: Mapping) -> Run:
        """From a ``runs`` row as a dict (JSON columns decoded or still text); unknown columns ignored.

        Raises :class:`CorruptRun` (one line: the id and what is wrong) for a row that cannot be read."""
        values, problems = row_problems(row)
        run_id = values.get("id")
        if not problems:
            values["kind"] = KINDS[values.get("kind")]
            if values.get("threshold") is None:
                values["threshold"] = DEFAULT_THRESHOLD
            run = cls(**values)
            try:  # what every page and the report draw from the config
                run.protocol.describe()
                _ = run.label, run.threshold_rule
            except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
                problems.append(f"config cannot be read ({' '.join(str(exc).split())[:80] or type(exc).__name__})")
            else:
                return run
        raise CorruptRun(run_id, "; ".join(problems))

    def to_row(self) -> dict:
        """The dict the ``runs`` table holds (``kind`` as stored, JSON columns decoded)."""
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["kind"] = KIND_COLUMN.get(self.kind, self.kind)
        return row

    # ------------------------------------------------------------------ what ran

    @property
    def is_finetune(self) -> bool:
        return self.kind == "finetune"

    @property
    def is_grid(self) -> bool:
        return self.kind == "grid"

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def protocol(self) -> Protocol:
        """Split, test size, negatives, ratio, seed and weights; the declared defaults where a stored config
        lacks one. A stored value now out of bounds is kept as it is (logged), for display."""
        try:
            return Protocol.from_config(self.config, split=self.split, seed=self.seed)
        except ValueError as exc:
            log.warning("run %s: protocol out of today's bounds (%s); shown as stored", self.id, exc)
            return unchecked(**{"split": self.split, "seed": self.seed,
                                **{k: v for k, v in self.config.items() if k in Protocol.names() and v is not None}})

    @property
    def weights(self) -> str:
        return self.protocol.weights

    @property
    def mode(self) -> str | None:
        """A fine-tune run's mode ("siamese" or "head"); None for a grid cell."""
        return self.config.get("mode") if self.is_finetune else None

    @property
    def loss(self) -> str | None:
        """A Siamese run's loss ("contrastive", "triplet"); None otherwise."""
        return self.config.get("loss") if self.mode == "siamese" else None

    @property
    def head_merge(self) -> str | None:
        """The merge a fine-tuned head trains on; None otherwise."""
        return self.config.get("merge") if self.mode == "head" else None

    @property
    def method(self) -> str:
        """How pairs were scored: 'dot + xgboost' for a grid cell, 'siamese, contrastive loss' or
        'head on dot' for a fine-tune run, with its augmentation and unfrozen layers."""
        if not self.mode:
            return f"{self.merge} + {self.classifier}"
        base = f"siamese, {self.loss} loss" if self.mode == "siamese" else f"head on {self.head_merge}"
        extras = (["augmented"] if self.config.get("augment") else []) + (
            [f"top {self.config['unfreeze']} layers trained"] if self.config.get("unfreeze") else [])
        return base + "".join(f", {e}" for e in extras)

    @property
    def label(self) -> str:
        """One line naming the run, e.g. 'resnet50 + dot + xgboost' or 'fine-tune of resnet50: siamese, ...'."""
        if self.is_finetune:
            return f"fine-tune of {self.backbone}: {self.method}"
        return f"{self.backbone} + {self.merge} + {self.classifier}"

    @property
    def threshold_rule(self) -> str:
        """Where :attr:`threshold` comes from, in words."""
        if self.is_finetune:
            return "0.5 on the fine-tuned model's P(same) (its own rule, set on validation pairs)"
        if self.metrics.get("n_val"):
            return f"chosen on {self.metrics['n_val']} validation pairs from scenes carved out of the training scenes"
        if "n_val" in self.metrics and not self.config.get("library_defaults"):
            return "0.5: too few training scenes to carve validation scenes from"
        if self.config.get("library_defaults"):
            return "0.5: the 2017 study's rule"
        return "0.5 (stored before thresholds were chosen on validation scenes)"

    @property
    def seconds(self) -> float | None:
        """The run's own time (``timings["total"]``), as it measured it; None when it recorded none."""
        return self.timings.get("total")

    @property
    def duration(self) -> float | None:
        """Seconds it took: :attr:`seconds`, else (a run that ended without timings) creation to finish."""
        if self.seconds is None and self.finished and self.created is not None:
            return self.finished - self.created
        return self.seconds


def runs_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """Runs as a table (as ``python -m simlab runs`` prints them): :data:`FRAME_COLUMNS` (``kind`` as stored:
    "pair" for a grid cell), then one column per metric, then ``seconds``."""
    rows = []
    for run in runs:
        row = run.to_row()
        rows.append({k: row[k] for k in FRAME_COLUMNS} | run.metrics | {"seconds": run.seconds})
    return pd.DataFrame(rows)
