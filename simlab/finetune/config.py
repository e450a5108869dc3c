"""What defines a fine-tuning run: :class:`FinetuneConfig` and the choices its fields take.

Light on purpose (no Keras): the CLI parser, the job registry and the page read it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, fields

from simlab import options
from simlab.backbones import DEFAULT_BACKBONE, get_backbone
from simlab.merge import get_merge
from simlab.options import NEGATIVE_SCHEMES
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


def _one_of(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, not {value!r}")


@dataclass
class FinetuneConfig:
    """Everything that defines a fine-tuning run; what the page's form and the CLI fill in."""

    dataset: str = "demo"
    mode: str = "siamese"
    backbone: str = DEFAULT_BACKBONE
    weights: str = options.default("weights")
    merge: str = "dot"  # head: how the two vectors are merged
    tower: str = "backbone"  # siamese: backbone + projection, or small-cnn
    init: str = "whitening"  # siamese projection: learned whitening, or random
    loss: str = "multi-similarity"  # siamese: multi-similarity | contrastive | triplet
    margin: float = 1.0  # contrastive / triplet: embeddings are unit vectors, distances lie in [0, 2]
    embedding_dim: int | None = None  # None: the backbone's own size from whitening, else 128
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float | None = None  # None: 1e-3 (head, random projection, small CNN), 1e-4 (whitening)
    unfreeze: int = 0  # the top K weighted layers of the backbone train too...
    backbone_lr_factor: float = 0.1  # ...at this fraction of the learning rate
    augment: bool = False
    same_transform: bool = True  # one random transform for both images of a pair, or one each
    steps_per_epoch: int | None = None  # at most this many batches per epoch (a fresh random subset each)
    patience: int = 3  # early stopping on the selection metric
    select: str | None = None  # best epoch by "val_map" | "val_loss"; None: val_map for siamese, val_loss for head
    cnn_size: int = 96  # small-cnn input size
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
        _one_of("mode", self.mode, MODES)
        _one_of("tower", self.tower, TOWERS)
        _one_of("loss", self.loss, LOSSES)
        _one_of("init", self.init, INITS)
        self.protocol  # noqa: B018 - validates split, test size, negatives, ratio, seed and weights
        _one_of("select", self.selection, SELECTIONS)
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
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be at least 1")
        if self.unfreeze < 0:
            raise ValueError("unfreeze (the number of top backbone layers to train) must be >= 0")
        if self.unfreeze and self.uses_small_cnn:
            raise ValueError("unfreeze applies to a pretrained backbone; the small CNN trains entirely anyway")
        if not self.rate > 0 or not 0 < self.backbone_lr_factor <= 1:
            raise ValueError("learning rate must be > 0 and the backbone's factor in (0, 1]")
        if not self.margin > 0:
            raise ValueError("margin must be > 0")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError("steps per epoch must be at least 1 (or None for every pair)")
        if self.patience < 1:
            raise ValueError("patience must be at least 1 epoch")
        if self.embedding_dim is not None and self.embedding_dim < 1:
            raise ValueError("embedding size must be at least 1 (or None: the backbone's own size from whitening)")

    @property
    def protocol(self) -> Protocol:
        """How the run's pairs are built (validated against :mod:`simlab.options`), as for a grid run."""
        return Protocol.from_config({name: getattr(self, name) for name in Protocol.names() if hasattr(self, name)})

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
