"""Perceptual hashes as weight-free backbones: ``phash`` (DCT) and ``dhash`` (gradient).

The classic near-duplicate detectors, as ``imagehash`` computes them, so a grid or a report shows
what a CNN adds over them. Each vector is the 64 hash bits as +1 / -1: the cosine of two vectors
is ``1 - 2 * hamming / 64``.

- pHash: grayscale, resized to 32x32, 2-D DCT-II, the 8x8 lowest frequencies, bit = coefficient
  above their median.
- dHash: grayscale, resized to 9 wide x 8 high, bit = pixel brighter than its left neighbour.

The model is a fixed Keras graph (no weights to load; ``weights`` is accepted and ignored, so
``random`` gives the same hash) that follows PIL's 8-bit arithmetic step by step, as ``imagehash``
sees it: ``convert("L")`` (ITU-R 601 luma in 16-bit fixed point), then the antialiased Lanczos
resize as two constant matrices with PIL's 22-bit coefficients, horizontal pass first, each
rounded to 8 bits (dHash's flat regions tie, as in ``imagehash``), then for pHash the DCT as a
third constant matrix. It hashes the image as simlab's pipeline decodes it (the centre square
at :data:`INPUT_SIZE` px), where ``imagehash`` squashes the whole file to its grid.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from simlab.backbones import WEIGHTS_CHOICES, Backbone, register

log = logging.getLogger(__name__)

HASH_SIZE = 8  # 8x8 = 64 bits
PHASH_SIZE = 32  # pHash's resize: HASH_SIZE x imagehash's highfreq_factor 4
INPUT_SIZE = 128  # the decoded square the hash is taken from
LUMA = np.array([19595, 38470, 7471])  # PIL's RGB -> L, in 1/65536 (0.299, 0.587, 0.114)
LANCZOS_SUPPORT = 3.0
PRECISION_BITS = 22  # PIL's fixed-point resampling coefficients (8-bit images)


def preprocess(x):
    """RGB 0..255 as is: the hash model starts from pixel values."""
    return x


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < LANCZOS_SUPPORT, np.sinc(x) * np.sinc(x / LANCZOS_SUPPORT), 0.0)


def resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``(size_out, size_in)`` weights of PIL's antialiased Lanczos resize of an 8-bit image along one
    axis (``Resample.c``: the kernel stretched by the scale when shrinking, normalised, in fixed point)."""
    scale = size_in / size_out
    stretch = max(scale, 1.0)
    support = LANCZOS_SUPPORT * stretch
    out = np.zeros((size_out, size_in))
    for i in range(size_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), size_in)
        taps = np.arange(lo, hi)
        w = _lanczos((taps - centre + 0.5) / stretch)
        out[i, lo:hi] = w / w.sum()
    return np.trunc(out * 2**PRECISION_BITS + np.copysign(0.5, out)) / 2**PRECISION_BITS


def dct_matrix(n: int, rows: int) -> np.ndarray:
    """The first ``rows`` rows of the (unnormalised) ``n``-point DCT-II, as ``scipy.fftpack.dct``."""
    k, x = np.arange(rows)[:, None], np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * x + 1) / (2 * n))


def projections(kind: str, size: int = INPUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` resize matrices: the resized gray image is ``rows @ gray @ cols.T``."""
    if kind == "phash":
        return resize_matrix(size, PHASH_SIZE), resize_matrix(size, PHASH_SIZE)
    if kind == "dhash":  # 8 rows, 9 columns
        return resize_matrix(size, HASH_SIZE), resize_matrix(size, HASH_SIZE + 1)
    raise ValueError(f"Unknown hash {kind!r}: phash or dhash")


@functools.lru_cache(maxsize=1)
def hash_layer_class():
    """The Keras layer computing a hash (defined on first use: listing backbones must not load Keras)."""
    import keras
    from keras import ops

    class PerceptualHash(keras.layers.Layer):
        """Images ``(N, size, size, 3)``, RGB 0..255 -> ``(N, 64)`` hash bits as +1 / -1."""

        def __init__(self, kind: str, size: int = INPUT_SIZE, **kwargs):
            kwargs["dtype"] = "float32"  # exact 8-bit steps and thresholds, also under mixed precision
            super().__init__(**kwargs)
            self.kind, self.size = kind, size
            self.rows, self.cols = (m.astype(np.float32) for m in projections(kind, size))
            self.luma = LUMA.astype(np.float32)
            self.dct = dct_matrix(PHASH_SIZE, HASH_SIZE).astype(np.float32)

        def call(self, images):
            def to_8bit(x):  # PIL's rounding of each step's result
                return ops.clip(ops.floor(x + 0.5), 0.0, 255.0)

            weighted = ops.tensordot(ops.cast(images, "float32"), self.luma, axes=[[3], [0]])  # exact integers
            gray = ops.floor((weighted + 32768.0) / 65536.0)
            wide = to_8bit(ops.einsum("njk,lk->njl", gray, self.cols))  # horizontal pass first, as PIL
            grid = to_8bit(ops.einsum("ij,njl->nil", self.rows, wide))
            if self.kind == "phash":
                low = ops.einsum("ij,njk,lk->nil", self.dct, grid, self.dct)  # the 8x8 lowest frequencies
                flat = ops.reshape(low, (-1, HASH_SIZE * HASH_SIZE))
                ordered = ops.sort(flat, axis=-1)
                half = HASH_SIZE * HASH_SIZE // 2
                median = (ordered[:, half - 1:half] + ordered[:, half:half + 1]) / 2.0  # numpy's, for 64 values
                bits = ops.greater(flat, median)
            else:
                bits = ops.reshape(ops.greater(grid[:, :, 1:], grid[:, :, :-1]), (-1, HASH_SIZE * HASH_SIZE))
            return ops.where(bits, 1.0, -1.0)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], HASH_SIZE * HASH_SIZE)

        def get_config(self):
            return super().get_config() | {"kind": self.kind, "size": self.size}

    return PerceptualHash


def build_hash(kind: str, weights: str = "imagenet"):
    """A Keras model: images ``(N, 128, 128, 3)``, RGB 0..255 -> 64 hash bits as +1 / -1.
    ``weights`` is checked like every backbone's and otherwise ignored: a hash has none."""
    if weights not in WEIGHTS_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHTS_CHOICES}, not {weights!r}")
    import keras

    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="image")
    outputs = hash_layer_class()(kind, INPUT_SIZE, name=kind)(inputs)
    return keras.Model(inputs, outputs, name=kind)


_DESCRIPTIONS = {
    "phash": "pHash: DCT perceptual hash (imagehash's), 64 bits as ±1; no weights, the classic "
             "near-duplicate baseline",
    "dhash": "dHash: gradient (difference) hash (imagehash's), 64 bits as ±1; no weights, the classic "
             "near-duplicate baseline",
}

for _kind, _description in _DESCRIPTIONS.items():
    register(Backbone(name=_kind, input_size=INPUT_SIZE, dim=HASH_SIZE * HASH_SIZE,
                      build=functools.partial(build_hash, _kind), preprocess=preprocess,
                      description=_description, bundled=True, options={"weight_free": True},
                      explain="bit_grid" if _kind == "dhash" else "bits"))  # dHash's bits lie on an 8x8 grid
