"""One typed description of a run: what a grid cell (or a re-rank, or "run again") fits and scores.

>>> spec = RunSpec.from_dict(run.config)          # a stored run's config, a job's params, a CLI's flags
>>> spec.title()
'efficientnet_lite0 · dot · Logistic regression'
>>> spec.backbones()                              # the one owner of the fused name "a+b"
['efficientnet_lite0']

A spec holds the run's :class:`~simlab.protocol.Protocol` (how pairs are built) and its method fields,
each validated against :mod:`simlab.options` where it is declared. ``to_dict`` writes the stored config
(a grid cell's with one-item lists, the layout runs have always been stored with), ``from_dict`` reads
it back, old rows included. :meth:`key` is what makes two runs "the same configuration".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from simlab import options
from simlab.protocol import Protocol

#: Joins the backbones of a fused run ("efficientnet_lite0+efficientnet_lite2"): only this module reads or
#: writes it (:func:`fused_name`, :meth:`RunSpec.backbones`).
FUSION_SEPARATOR = "+"
KINDS = ("grid", "finetune")


def fused_name(backbones) -> str:
    """The backbone name of the vectors of ``backbones`` concatenated (one name: itself)."""
    return FUSION_SEPARATOR.join(backbones)


def split_backbone(name: str) -> list[str]:
    """The backbones a (possibly fused) backbone name stands for."""
    return str(name).split(FUSION_SEPARATOR)


def is_fused(name: str | None) -> bool:
    return FUSION_SEPARATOR in str(name or "")


@dataclass(frozen=True)
class RunSpec:
    """A run: its kind, dataset, protocol and method. ``method`` holds a fine-tune run's own settings
    (mode, loss, epochs, ...); a grid cell's method is its backbone, merge, classifier and
    ``library_defaults`` (LinearSVC and XGBoost as the 2017 study ran them)."""

    backbone: str
    merge: str
    classifier: str
    dataset: str = "demo"
    protocol: Protocol = field(default_factory=Protocol)
    library_defaults: bool = False
    kind: str = "grid"
    method: Mapping = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")

    def validate(self) -> RunSpec:
        """Self, if its method is allowed (the registries of backbones and classifiers imported), else a
        one-line ``ValueError``; a stored spec is read without it, so an old run still shows."""
        if self.kind == "grid":
            for name in self.backbones():
                options.validate("backbone", name)
            options.validate("merge", self.merge)
            options.validate("classifier", self.classifier)
        return self

    # ------------------------------------------------------------------ reading and writing

    @classmethod
    def from_dict(cls, config: Mapping, **fallback) -> RunSpec:
        """From a stored config (a grid cell's ``GridConfig`` dict, one-item lists, or a fine-tune run's
        ``FinetuneConfig`` dict) or any mapping with ``backbone``/``merge``/``classifier``. ``fallback``
        fills what an old row keeps in columns (backbone, merge, classifier, split, seed, kind)."""
        config = dict(config or {})

        def one(name: str):
            value = config.get(name)
            if value is None and isinstance(config.get(name + "s"), (list, tuple)) and config[name + "s"]:
                value = config[name + "s"][0]
            return fallback.get(name) if value is None else value

        kind = fallback.get("kind") or config.get("kind") or ("finetune" if "mode" in config else "grid")
        protocol = Protocol.from_config(config, split=fallback.get("split"), seed=fallback.get("seed"))
        method = {k: v for k, v in config.items() if k not in {*Protocol.names(), "dataset", "backbone", "backbones",
                                                                "merge", "merges", "classifier", "classifiers",
                                                                "library_defaults", "fusion", "ray", "kind"}}
        return cls(backbone=one("backbone"), merge=one("merge"), classifier=one("classifier"),
                   dataset=config.get("dataset") or fallback.get("dataset") or "demo", protocol=protocol,
                   library_defaults=bool(config.get("library_defaults")), kind=kind,
                   method=method if kind == "finetune" else {})

    def to_dict(self) -> dict:
        """The config as stored with a run: a grid cell as a one-cell ``GridConfig`` (lists of one)."""
        if self.kind == "finetune":
            return {"dataset": self.dataset, "backbone": self.backbone, "merge": self.merge,
                    **self.protocol.to_dict(), **dict(self.method)}
        return {"dataset": self.dataset, "backbones": [self.backbone], "merges": [self.merge],
                "classifiers": [self.classifier], **self.protocol.to_dict(),
                "fusion": is_fused(self.backbone), "library_defaults": self.library_defaults}

    def replace(self, **changes) -> RunSpec:
        return replace(self, **changes)

    # ------------------------------------------------------------------ what it is

    def backbones(self) -> list[str]:
        """The backbones whose vectors the run reads (several for a fused run)."""
        return split_backbone(self.backbone)

    @property
    def fused(self) -> bool:
        return is_fused(self.backbone)

    @property
    def uses_study_rule(self) -> bool:
        """Runs with the 2017 study's settings keep its decision rule, P(same) >= 0.5, so they stay comparable
        with its table; other runs choose and calibrate their threshold on validation scenes."""
        return bool(self.library_defaults)

    def title(self) -> str:
        """One line for people, e.g. 'efficientnet_lite0 · dot · Logistic regression'."""
        return " · ".join([self.backbone, self.merge, options.choice_label("classifier", self.classifier)])

    def key(self, fingerprint: str | None = None) -> str:
        """A digest of everything that decides the run's numbers: kind, method, protocol and the data
        (``fingerprint``, else the dataset spec). Two runs with one key are the same configuration."""
        identity = {"kind": self.kind, "backbone": self.backbone, "merge": self.merge, "classifier": self.classifier,
                    "library_defaults": self.library_defaults, "protocol": self.protocol.to_dict(),
                    "method": {k: v for k, v in sorted(dict(self.method).items()) if k != "dataset"},
                    "data": fingerprint or self.dataset}
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stored_spec(run) -> RunSpec:
    """The spec of a stored run (a ``simlab.store.Run``): its config, with what old rows keep in columns."""
    return RunSpec.from_dict(run.config, kind=run.kind, backbone=run.backbone, merge=run.merge,
                             classifier=run.classifier, split=run.split, seed=run.seed, dataset=run.dataset)


def run_key(run) -> str:
    """What makes two stored runs the same configuration (:meth:`RunSpec.key` on the run's own data
    fingerprint); a run whose config cannot be read is only ever the same as itself."""
    try:
        return stored_spec(run).key(run.fingerprint)
    except (ValueError, TypeError, KeyError):
        return f"run:{run.id}"
