"""The 2017 study's published accuracies, as tidy tables to set beside our runs.

Held-out test accuracy on INRIA Holidays (1,244 test pairs, pair split 70/30, one negative per
positive sharing its left image, library defaults). Rows of the original table: VGG16, VGG19,
InceptionV3, ResNet50, Xception; columns: GaussianNB, LinearSVC, XGBoost, RandomForest.
The study's VGG vectors were the 4096-d fc2 layer, so VGG rows map to ``vgg16_fc2``/``vgg19_fc2``.
"""

from __future__ import annotations

import pandas as pd

from simlab.protocol import Protocol

#: The study's backbone order, as simlab registry names.
STUDY_BACKBONES = ("vgg16_fc2", "vgg19_fc2", "inceptionv3", "resnet50", "xception")
#: The study's classifier order (GaussianNB, LinearSVC, XGBoost, RandomForest), as registry names.
STUDY_CLASSIFIERS = ("gnb", "linsvc", "xgboost", "rf")
STUDY_MERGES = ("dot", "l1", "l2")
#: The study's evaluation: pair split 70/30, one negative per positive sharing its left image.
STUDY = Protocol(split="pair", test_size=0.3, negatives="same_left", negative_ratio=1.0, weights="imagenet")
#: The grid that reproduces the table (fields of :class:`simlab.experiment.GridConfig`; the seed is the form's).
STUDY_PROTOCOL = {"backbones": list(STUDY_BACKBONES), "merges": list(STUDY_MERGES),
                  "classifiers": list(STUDY_CLASSIFIERS), "split": STUDY.split, "test_size": STUDY.test_size,
                  "negative_ratio": STUDY.negative_ratio, "negatives": STUDY.negatives, "weights": STUDY.weights,
                  "library_defaults": True}
STUDY_TEST_PAIRS = 1244

# merge -> one row of 20 numbers: 5 backbones x 4 classifiers, in the orders above.
_TABLE = {
    "dot": (.847, .805, .917, .861, .841, .781, .913, .853, .883, .839, .937, .891,
            .863, .853, .879, .830, .911, .890, .883, .830),
    "l1": (.815, .887, .919, .844, .807, .874, .917, .858, .896, .892, .937, .866,
           .841, .918, .941, .846, .867, .920, .920, .857),
    "l2": (.799, .865, .924, .878, .799, .891, .930, .871, .887, .876, .932, .879,
           .834, .890, .932, .861, .850, .932, .922, .816),
}

# The study's neural head on the vectors (800 test pairs; its "concat" is plain concatenation,
# which simlab does not offer, so only product (dot) and l1 are comparable with our "mlp").
_HEAD = {("inceptionv3", "dot"): .958, ("inceptionv3", "l1"): .893,
         ("resnet50", "dot"): .898, ("resnet50", "l1"): .915}

#: Registry names that stand for the same study backbone (the pooled VGG is not the study's fc2).
ALIASES = {"vgg16_fc2": "VGG16 (fc2)", "vgg19_fc2": "VGG19 (fc2)", "inceptionv3": "InceptionV3",
           "resnet50": "ResNet50", "xception": "Xception"}


def published_accuracies() -> pd.DataFrame:
    """The study's table as rows backbone / merge / classifier / accuracy (60 rows)."""
    rows = []
    for merge, values in _TABLE.items():
        for i, backbone in enumerate(STUDY_BACKBONES):
            for j, clf in enumerate(STUDY_CLASSIFIERS):
                rows.append({"backbone": backbone, "merge": merge, "classifier": clf,
                             "accuracy": values[i * len(STUDY_CLASSIFIERS) + j]})
    return pd.DataFrame(rows)


def published_head_accuracies() -> pd.DataFrame:
    """The study's neural-head results that simlab's ``mlp`` classifier can be compared with."""
    return pd.DataFrame([{"backbone": b, "merge": m, "classifier": "mlp", "accuracy": a, "n_test": 800}
                         for (b, m), a in _HEAD.items()])


def published_accuracy(backbone: str, merge: str, classifier: str) -> float | None:
    """One published number, or None when the study has no such cell."""
    table = published_accuracies()
    hit = table[(table["backbone"] == backbone) & (table["merge"] == merge) & (table["classifier"] == classifier)]
    return float(hit.accuracy.iloc[0]) if len(hit) else None
