"""The typed record of one stored run."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from simlab.protocol import Protocol, unchecked
from simlab.store.schema import DEFAULT_THRESHOLD

log = logging.getLogger(__name__)


#: Stored ``kind`` column -> ``Run.kind``. Grid cells are stored as "pair" (and very old rows as NULL).
KINDS = {"pair": "grid", None: "grid", "grid": "grid", "finetune": "finetune"}
#: ``Run.kind`` -> the value written in the ``kind`` column.
KIND_COLUMN = {"grid": "pair", "finetune": "finetune"}


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
        """From a ``runs`` row as a dict (JSON columns decoded or still text); unknown columns ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in dict(row).items() if k in known}
        for k in ("config", "metrics", "timings", "versions", "artifacts"):
            value = values.get(k)
            if isinstance(value, (str, bytes)):
                value = json.loads(value)
            values[k] = dict(value or {})
        values["kind"] = KINDS.get(values.get("kind"), values.get("kind"))
        if values.get("threshold") is None:
            values["threshold"] = DEFAULT_THRESHOLD
        return cls(**values)

    def to_row(self) -> dict:
        """The dict the ``runs`` table holds (``kind`` as stored), as ``Store.get_run`` returns it."""
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
        return self.timings.get("total")



_LAST_REAP: dict[str, float] = {}  # store path -> when its orphaned runs were last looked for (monotonic)
