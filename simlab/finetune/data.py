"""The images and pairs one fine-tuning run trains, validates and scores on."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from simlab.data.images import load_for_model
from simlab.finetune.config import FinetuneConfig
from simlab.pairs import Pairs, group_codes
from simlab.progress import Progress, ShouldStop, check_stop, silent
from simlab.protocol import SplitPairs, validation_pairs
from simlab.vectors import vectorize

log = logging.getLogger(__name__)


@dataclass
class PairData:
    """Images, pairs and (for backbone runs) the frozen vectors one run trains and scores on."""

    paths: np.ndarray
    groups: np.ndarray
    digests: list[str]
    bad: dict  # digest -> reason, images the backbone could not read
    vectors: np.ndarray | None  # frozen backbone vectors (None for the small CNN)
    train: Pairs
    val: Pairs
    test: Pairs
    test_images: np.ndarray  # indices of the images of held-out groups (retrieval on those)
    grid_train: Pairs | None = None  # the training pairs a grid run with this protocol fits on (train + val here)

    @property
    def train_images(self) -> np.ndarray:
        """Indices of the images of the training pairs (validation scenes excluded), sorted."""
        return np.unique(np.concatenate([self.train.left, self.train.right]))

    @property
    def val_images(self) -> np.ndarray:
        """Indices of the images of the validation pairs (the scenes carved from training), sorted."""
        return np.unique(np.concatenate([self.val.left, self.val.right]))


def split_for_finetuning(config: FinetuneConfig, groups) -> tuple[SplitPairs, SplitPairs]:
    """The run's pairs and its validation pairs, both built by the run's :class:`~simlab.protocol.Protocol`
    exactly as a grid run with the same protocol builds them: the test pairs of the split, and validation
    scenes carved from the training scenes (:func:`simlab.protocol.validation_pairs`, the share and the rules
    a grid run chooses its threshold with). Training uses the validation split's training side."""
    protocol = config.protocol
    split = protocol.pairs(groups)
    validation = validation_pairs(protocol, split, groups)
    if validation is None:
        n_train = len(np.unique(np.asarray(groups)[~protocol.held_out(groups)]))
        raise ValueError(f"{n_train} training groups are too few to carve validation scenes from: fine-tuning "
                         "needs validation scenes with positive and negative pairs. Use a dataset with more groups "
                         "or a smaller test fraction.")
    return split, validation


def _frozen_vectors(config: FinetuneConfig, dataset, echo: Callable[[str], None], progress: Progress,
                    should_stop: ShouldStop | None):
    """The frozen backbone's vectors of the dataset (cached), and the images it could not read."""

    def report(done, total, message="", **fields):
        progress(0, 0, f"Vectorising with the frozen {config.backbone}: {done}/{total} images, "
                       f"{fields.get('rate', 0.0):.1f} img/s, ETA {fields.get('eta', 0.0):.0f} s",
                 stage="vectorize", backbone=config.backbone, rate=fields.get("rate"), eta=fields.get("eta"))

    vs = vectorize(dataset, config.backbone, config.weights, progress=report, should_stop=should_stop)
    if vs.computed:
        echo(f"{vs.computed} frozen vectors computed (cached for next time)")
    reasons, good = {p.path: p.reason for p in vs.problems}, set(vs.digests)
    bad = {d: reasons.get(p, "could not be vectorised") for p, d in zip(dataset.paths, dataset.digests)
           if d not in good}
    return vs, bad


def prepare_data(config: FinetuneConfig, dataset, echo: Callable[[str], None],
                 progress: Progress, should_stop: ShouldStop | None) -> PairData:
    """The dataset's images (those the backbone could read, as in grid runs) and its pairs."""
    vectors, bad = None, {}
    paths, groups, digests = list(dataset.paths), list(dataset.groups), list(dataset.digests)
    if not config.uses_small_cnn:
        vs, bad = _frozen_vectors(config, dataset, echo, progress, should_stop)
        vectors, paths, groups, digests = vs.vectors, vs.paths, vs.groups, vs.digests
    groups_arr = np.asarray(groups)
    split, validation = split_for_finetuning(config, groups_arr)
    return PairData(np.asarray(paths), groups_arr, digests, bad, vectors, validation.train_pairs,
                    validation.test_pairs, split.test_pairs, config.protocol.test_images(groups_arr),
                    split.train_pairs)


def decode_images(paths, size: int, should_stop: ShouldStop | None = None,
                  progress: Progress | None = None) -> np.ndarray:
    """Every image decoded once to ``size`` px (uint8, N x size x size x 3), as the vectoriser crops them.

    Raises :class:`simlab.progress.Cancelled` when ``should_stop`` asks for it."""
    progress = progress or silent
    out = np.empty((len(paths), size, size, 3), np.uint8)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) + 2)) as pool:
        for i, image in enumerate(pool.map(lambda p: load_for_model(p, size, fit="crop"), paths)):
            out[i] = image
            if i % 50 == 0:
                progress(0, 0, f"Decoding images once into memory: {i}/{len(paths)}", stage="decode")
                check_stop(should_stop, "Stopped on request while decoding images.")
    return out


def make_triplets(pairs: Pairs, groups: np.ndarray, seed: int) -> np.ndarray:
    """(anchor, positive, negative) rows: each positive pair in both orders, with a random image of
    another group drawn from the same side's images (an (M, 3) index array)."""
    rng = np.random.default_rng(seed)
    pool = np.unique(np.concatenate([pairs.left, pairs.right]))
    codes = group_codes(groups)
    pos = pairs.label == 1
    anchors = np.concatenate([pairs.left[pos], pairs.right[pos]])
    positives = np.concatenate([pairs.right[pos], pairs.left[pos]])
    negatives = np.empty_like(anchors)
    for i, a in enumerate(anchors):
        others = pool[codes[pool] != codes[a]]
        negatives[i] = rng.choice(others)
    return np.column_stack([anchors, positives, negatives])
