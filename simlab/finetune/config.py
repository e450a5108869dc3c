"""What defines a fine-tuning run: :class:`FinetuneConfig` and the choices its fields take.

Light on purpose (no Keras): the CLI parser, the job registry and the page read it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

from simlab import options
from simlab.backbones import DEFAULT_BACKBONE, get_backbone
from simlab.merge import get_merge
from simlab.options import NEGATIVE_SCHEMES, Choices, Interval, Option
from simlab.protocol import Protocol

log = logging.getLogger(__name__)

MODES = {
    "head": "The study's neural head on the merged backbone vectors, trained on image pairs "
            "(optionally augmented, optionally with the backbone's top layers unfrozen).",
    "siamese": "A true Siamese network: a shared tower trained so that images of one scene sit close "
               "and others far apart (contrastive or triplet loss).",
}
LOSSES = {
    "multi-similarity": "Batches of a few scenes with several images each: every image's similarity to the other "
                        "images of its scene is pulled above 0.5 and to other scenes pushed below, the hardest "
                        "pairs of the batch weighted most (Wang et al. 2019). Trains ranking, what retrieval needs.",
    "contrastive": "Pairs: pulls same-scene embeddings together, pushes others at least a margin apart.",
    "triplet": "Triplets (anchor, same scene, other scene): the other scene must be a margin farther.",
}
TOWERS = {
    "backbone": "The pretrained backbone (frozen unless unfrozen) plus a trainable projection to an "
                "L2-normalised embedding.",
    "small-cnn": "A small CNN trained from scratch at low resolution (the study's from-scratch attempt).",
}
INITS = {
    "whitening": "Projection Dense -> embedding, starting from learned whitening of the training pairs "
                 "(Radenovic et al. 2018), its shrinkage chosen on validation mAP: the loss fine-tunes it.",
    "random": "Projection Dense 256 -> ReLU -> Dense -> embedding, from random weights.",
}
SELECTIONS = {
    "val_map": "The epoch whose embeddings retrieve best on the validation scenes (retrieval mAP); "
               "Siamese runs only.",
    "val_loss": "The epoch with the lowest validation loss.",
}
DEFAULT_RATES = {"head": 1e-3, "whitening": 1e-4, "random": 1e-3}  # Adam; whitening starts close to a good answer
SMALL_EMBEDDING = 128  # embedding size of the random projection and the small CNN unless set
#: Settings older runs were stored with that no longer apply; read back and ignored ("val_fraction": validation
#: scenes are now carved by the protocol, as for a grid run's threshold).
RETIRED = ("val_fraction",)
CURVE_NAMES = ("loss", "val_loss", "accuracy", "val_accuracy", "val_map")


def unit_scale(x):
    """The small CNN's preprocessing: RGB 0..255 -> 0..1."""
    return x / 255.0


def preprocess_fn(name: str) -> Callable:
    """The preprocessing of a backbone by name, or ``"unit"`` (0..1) for the small CNN (the name a
    model's Preprocess layer and a saved tower record)."""
    return unit_scale if name == "unit" else get_backbone(name).preprocess


# Every fine-tuning setting a user picks, declared once (simlab.options): the CLI's flags, the page's widgets and
# FinetuneConfig's defaults and validation all come from here.
options.declare(
    Option("mode", Choices(tuple(MODES)), "siamese", "head (the study's neural head trained on image pairs) or "
           "siamese (a shared tower trained for retrieval)", labels={"head": "Neural head (the study's)",
                                                                     "siamese": "Siamese network"}),
    Option("tower", Choices(tuple(TOWERS)), "backbone", "siamese: the pretrained backbone plus a projection, or "
           "small-cnn (from scratch)"),
    Option("loss", Choices(tuple(LOSSES)), "multi-similarity", "siamese: " + " | ".join(LOSSES)),
    Option("init", Choices(tuple(INITS)), "whitening", "siamese projection: learned whitening of the training "
           "pairs, or random"),
    Option("select", Choices(tuple(SELECTIONS)), None, "what picks the best epoch (default: val_map for siamese, "
           "val_loss for head)", optional=True),
    Option("margin", Interval(float, 0, None, closed="neither"), 1.0,
           "contrastive / triplet margin (embeddings are unit vectors: distances lie in [0, 2])",
           widget={"min_value": 0.1, "max_value": 2.0, "step": 0.1}),
    Option("epochs", Interval(int, 1, 1000), 10, "passes over the training pairs",
           widget={"min_value": 1, "max_value": 50, "step": 1}),
    Option("batch_size", Interval(int, 1, 4096), 32, "pairs (or images) per training step",
           widget={"min_value": 4, "max_value": 256, "step": 4}),
    Option("learning_rate", Interval(float, 0, 1, closed="right"), None,
           "learning rate of the head / projection (default 1e-3; 1e-4 from whitening)", optional=True),
    Option("unfreeze", Interval(int, 0, 1000), 0, "also train the backbone's top K weighted layers, at the "
           "learning rate times the backbone's factor", widget={"min_value": 0, "max_value": 20, "step": 1}),
    Option("backbone_lr_factor", Interval(float, 0, 1, closed="right"), 0.1,
           "the unfrozen backbone layers' share of the learning rate"),
    Option("steps_per_epoch", Interval(int, 1, None), None, "at most this many batches per epoch (a fresh random "
           "subset each); None: every pair", optional=True),
    Option("patience", Interval(int, 1, 1000), 3, "early stopping: epochs without a step beyond the validation "
           "noise", widget={"min_value": 1, "max_value": 20, "step": 1}),
    Option("embedding_dim", Interval(int, 1, 65536), None, "siamese embedding size (None: the backbone's own size "
           "from whitening, else 128)", optional=True),
    Option("cnn_size", Interval(int, 16, 1024), 96, "the small CNN's input size in pixels"),
)
#: FinetuneConfig fields whose values the declarations above (or simlab.options') check.
DECLARED = ("mode", "tower", "loss", "init", "select", "margin", "epochs", "batch_size", "learning_rate", "unfreeze",
            "backbone_lr_factor", "steps_per_epoch", "patience", "embedding_dim", "cnn_size")


@dataclass
class FinetuneConfig:
    """Everything that defines a fine-tuning run; what the page's form and the CLI fill in."""

    dataset: str = "demo"
    mode: str = options.default("mode")
    backbone: str = DEFAULT_BACKBONE
    weights: str = options.default("weights")
    merge: str = "dot"  # head: how the two vectors are merged
    tower: str = options.default("tower")
    init: str = options.default("init")
    loss: str = options.default("loss")
    margin: float = options.default("margin")
    embedding_dim: int | None = options.default("embedding_dim")
    epochs: int = options.default("epochs")
    batch_size: int = options.default("batch_size")
    learning_rate: float | None = options.default("learning_rate")  # None: the mode's default (rate)
    unfreeze: int = options.default("unfreeze")
    backbone_lr_factor: float = options.default("backbone_lr_factor")
    augment: bool = False
    same_transform: bool = True  # one random transform for both images of a pair, or one each
    steps_per_epoch: int | None = options.default("steps_per_epoch")
    patience: int = options.default("patience")
    select: str | None = options.default("select")  # None: val_map for siamese, val_loss for head
    cnn_size: int = options.default("cnn_size")
    # The protocol (how pairs are built, validation scenes included): declared in simlab.options, built by
    # simlab.protocol exactly as for a grid run.
    split: str = options.default("split")
    test_size: float = options.default("test_size")
    negative_ratio: float = options.default("negative_ratio")
    negatives: str = options.default("negatives")
    seed: int = options.default("seed")

    @classmethod
    def from_params(cls, params: dict) -> FinetuneConfig:
        known = {f.name for f in fields(cls)}
        params = {k: v for k, v in params.items() if k not in RETIRED}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"Unknown fine-tune setting(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
        return cls(**params)

    def validate(self) -> FinetuneConfig:
        for name in DECLARED:  # each value against its declaration: one line naming the setting
            setattr(self, name, options.validate(name, getattr(self, name)))
        self.protocol  # noqa: B018 - validates split, test size, negatives, ratio, seed and weights
        if self.selection == "val_map" and self.mode != "siamese":
            raise ValueError("select val_map needs embeddings: it applies to siamese runs; use val_loss for head runs")
        if self.negatives not in NEGATIVE_SCHEMES:
            raise ValueError(f"negatives must be one of {', '.join(NEGATIVE_SCHEMES)} for fine-tuning (hard "
                             f"negatives are mined for grid runs), not {self.negatives!r}")
        get_merge(self.merge)
        if not self.uses_small_cnn and get_backbone(self.backbone).options.get("tuned"):
            raise ValueError(f"{self.backbone} is itself a tuned tower; fine-tune from a pretrained backbone.")
        if not self.uses_small_cnn and get_backbone(self.backbone).options.get("weight_free"):
            raise ValueError(f"{self.backbone} has no weights to learn from; fine-tune from a pretrained backbone.")
        self._validate_numbers()
        return self

    def _validate_numbers(self) -> None:
        """What the declarations cannot say alone: settings that depend on each other."""
        if self.unfreeze and self.uses_small_cnn:
            raise ValueError("unfreeze applies to a pretrained backbone; the small CNN trains entirely anyway")

    @property
    def protocol(self) -> Protocol:
        """How the run's pairs are built (validated against :mod:`simlab.options`), as for a grid run."""
        return Protocol.from_config(asdict(self))

    @property
    def selection(self) -> str:
        """What picks the best epoch: as set, else validation mAP for Siamese runs, validation loss for heads."""
        return self.select or ("val_map" if self.mode == "siamese" else "val_loss")

    @property
    def group_batches(self) -> bool:
        """Whether training batches are images of a few scenes (multi-similarity), not pairs or triplets."""
        return self.mode == "siamese" and self.loss == "multi-similarity"

    def embedding_size(self, input_dim: int) -> int:
        """The embedding's size: as set; else the backbone's (``input_dim``) when the projection starts from
        whitening (a rotation, nothing thrown away), else 128."""
        if self.embedding_dim is not None:
            return int(self.embedding_dim)
        return input_dim if self.init == "whitening" and not self.uses_small_cnn else SMALL_EMBEDDING

    @property
    def rate(self) -> float:
        """The learning rate: as set, else the default of the mode (and the projection's start)."""
        if self.learning_rate is not None:
            return float(self.learning_rate)
        if self.mode == "head":
            return DEFAULT_RATES["head"]
        return DEFAULT_RATES["random" if self.uses_small_cnn else self.init]

    @property
    def uses_small_cnn(self) -> bool:
        return self.mode == "siamese" and self.tower == "small-cnn"

    @property
    def on_images(self) -> bool:
        """Whether training needs pixels (else it runs on the cached frozen vectors)."""
        return self.augment or self.unfreeze > 0 or self.uses_small_cnn

    # How the run shows in the store (Compare's heatmaps: backbone x merge, one chart per classifier).
    @property
    def backbone_label(self) -> str:
        return "small-cnn" if self.uses_small_cnn else self.backbone

    @property
    def merge_label(self) -> str:
        return f"head-{self.merge}" if self.mode == "head" else "siamese"

    @property
    def classifier_label(self) -> str:
        base = "finetune-head" if self.mode == "head" else self.loss
        return base + ("+aug" if self.augment else "") + (f"+top{self.unfreeze}" if self.unfreeze else "")
