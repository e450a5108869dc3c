"""Fine-tuning with live loss curves: the study's neural head trained on image pairs, and a true
Siamese network. Both are scored on the same test pairs as every grid run.

``head``      The backbone (frozen, or its top K layers unfrozen at a lower learning rate)
              vectorises both images; the merged vector feeds the study's neural head
              (:func:`simlab.classifiers.build_head`). With augmentation off and nothing unfrozen
              the backbone's vectors never change, so only the head trains, on the cached vectors.
``siamese``   One shared tower maps each image to an L2-normalised embedding: the backbone plus a
              trainable projection starting from learned whitening (or a small CNN trained from
              scratch); trained with a multi-similarity loss on batches of a few scenes (or a
              contrastive loss on pairs, or a triplet loss); the epoch kept is the one that
              retrieves best on the validation scenes, and the decision threshold on the distance
              is chosen on validation pairs. The trained tower becomes a backbone,
              ``siamese-<run id>``, usable by every merge, classifier and retrieval through
              :func:`simlab.vectors.vectorize`.

Augmentation acts on raw pixels (0..255) before the backbone's own preprocessing (the 2017 study
augmented after normalising: a bug not repeated here). Images are decoded once into memory; only
augmentation and the forward (and backward) pass run per step. Validation pairs come from groups
carved out of the training groups (never from test).

The package, top to bottom:

``config``   :class:`FinetuneConfig` and its choices (light: no Keras)
``towers``   trained towers as the backbone scheme of ``siamese-<run id>`` names (light; registered on import)
``data``     :class:`PairData`: images, frozen vectors, train / validation / test pairs
``layers``   Keras layers, losses, metrics, batches and callbacks, each usable alone
``models``   the head and Siamese models (``BUILDERS``), learned whitening
``train``    :func:`run_finetune`, and :func:`finetune_job`, the ``finetune`` job kind

This module stays light: importing it does not import Keras or TensorFlow.
"""

from __future__ import annotations

from simlab.finetune import towers  # noqa: F401  (registers the backbone scheme of siamese-<run id> names)
from simlab.finetune.config import DEFAULT_RATES, INITS, LOSSES, MODES, SELECTIONS, TOWERS, FinetuneConfig

__all__ = ["DEFAULT_RATES", "INITS", "LOSSES", "MODES", "SELECTIONS", "TOWERS", "FinetuneConfig"]
