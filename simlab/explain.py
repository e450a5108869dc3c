"""Why two images look alike: the pair's cosine split into one contribution per location of each image.

When a vector is the global average of a feature map ``F`` (``h x w`` locations of ``C`` channels) and two
vectors are compared by cosine, the cosine splits exactly (Stylianou, Souvenir and Pless, "Visualizing Deep
Similarity Networks", WACV 2019)::

    a = mean_i F_a[i],  b = mean_j F_b[j]
    cos(a, b) = sum_i F_a[i] . b / (hw |a| |b|)        (one term per location i of A: ``grid_a``)
              = sum_j F_b[j] . a / (hw |a| |b|)        (likewise for B: ``grid_b``)
              = sum_ij F_a[i] . F_b[j] / (hw)^2 |a| |b|  (one term per pair of locations)

simlab's ``dot`` merge and its ``cosine`` classifier read exactly this cosine of the backbone's vectors, so
``grid_a`` and ``grid_b`` each sum to the score simlab uses (up to float rounding; the vector cache computes
with batch norms folded into the convolutions).

Each backbone declares how it can be explained, in its registry entry (:attr:`Backbone.explain`):

- ``pooled``: the model ends with a global average pooling; the map is that layer's input (EfficientNet-Lite's
  last ReLU6 before ``avg_pool``, the Keras applications built with ``pooling="avg"``). Exact.
- ``tokens``: a vision transformer whose vector is its CLS token; the map is the patch tokens' similarity to
  the other image's vector, scaled to sum to the score. Not exact: the CLS token is not their average.
- ``bit_grid``: dHash, whose 64 bits lie on an 8 x 8 grid of the image; a bit that agrees adds 1/64 to the
  cosine, one that differs takes 1/64 away. Exact.
- ``bits``: pHash, whose bits are global DCT frequencies: no spatial map (:class:`NoSpatialMap` says how many
  bits differ).
- ``""``: no spatial map (VGG's fc2 mixes every location).

The model sees the centre square of each image (simlab's ``crop`` fit), so a map covers that square; the
rest of the image is 0 (the model never saw it).

**Sharper maps.** The last feature map is coarse (7 x 7 for EfficientNet-Lite0) and, worse, every location of
it has seen most of the image, so the upsampled grid is flat. ``map_a`` and ``map_b`` are (by default,
``detail="views"``) the exact grid upsampled and weighted by local evidence: 3 x 3 overlapping views of half the
square's side, each run through the model alone and scored by its cosine to the other image's vector (minus the
least alike view's), then scaled so that each map still sums to the exact score. ``detail="native"`` is the plain
upsampled grid. ``grid_a`` and ``grid_b`` are the exact decomposition either way. Measured on crops of photos
(``benchmarks/explain_crops.py``, benchmarks/README.md): the share of the map's above-average mass inside the
crop's box; a larger input or a denser last map (strides undone) did not help, the views did.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from simlab.backbones import DEFAULT_BACKBONE, get_backbone
from simlab.data import file_digest
from simlab.data.images import open_rgb
from simlab.paths import atomic_path, cache_dir

log = logging.getLogger(__name__)

DETAILS = ("native", "views")  # how map_a / map_b are drawn: the grid upsampled, or sharpened by local views
DEFAULT_DETAIL = "views"
VIEWS = 3  # 3 x 3 views of half the side
VIEW_RES = 56  # the views' evidence, per side of the square
TOP_MATCHES = 5
KINDS = {
    "pooled": "an average-pooled convolutional map: the contributions sum exactly to the cosine",
    "tokens": "the patch tokens' similarity to the other image's vector, scaled to the score (the vector is the "
              "CLS token, not their average: an approximation)",
    "bit_grid": "the hash bits on their 8 x 8 grid: an agreeing bit adds 1/64 to the cosine, a differing one "
                "takes 1/64 away",
}


class NoSpatialMap(ValueError):
    """The backbone's vector has no spatial map to split the score over; the message says why, in one line."""


@dataclass(frozen=True)
class Match:
    """A location of A and one of B that are each other's nearest (by the cosine of their features)."""

    a: tuple[int, int]  # (row, column) in grid_a
    b: tuple[int, int]  # (row, column) in grid_b
    similarity: float  # cosine of the two locations' features
    share: float  # (grid_a[a] + grid_b[b]) / 2 / score: the part of the score these two regions carry

    def to_dict(self) -> dict:
        return {"a": list(self.a), "b": list(self.b), "similarity": round(self.similarity, 6),
                "share": round(self.share, 6)}


@dataclass
class Explanation:
    """Per-location contributions of a pair, their pixel maps and the matched regions."""

    backbone: str
    weights: str
    kind: str
    exact: bool
    score: float  # the cosine of the two vectors
    grid_a: np.ndarray  # (h, w) contributions of A's locations; sums to score
    grid_b: np.ndarray
    fine_a: np.ndarray  # what map_a is drawn from: grid_a, or grid_a sharpened by local views; same sum
    fine_b: np.ndarray
    size_a: tuple[int, int]  # (width, height) of image A
    size_b: tuple[int, int]
    matches: list[Match] = field(default_factory=list)
    detail: str = DEFAULT_DETAIL

    @property
    def seen_a(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom): the square of A the model saw."""
        return seen_square(self.size_a)

    @property
    def seen_b(self) -> tuple[int, int, int, int]:
        return seen_square(self.size_b)

    @cached_property
    def map_a(self) -> np.ndarray:
        """float32 (height, width) of image A: the contribution of each pixel; sums to the score."""
        return self.pixel_map("a", self.size_a)

    @cached_property
    def map_b(self) -> np.ndarray:
        return self.pixel_map("b", self.size_b)

    def pixel_map(self, side: str, size: tuple[int, int]) -> np.ndarray:
        """Image ``side``'s map (``"a"`` or ``"b"``) at ``size`` (width, height): the image's own, or smaller."""
        resample = Image.Resampling.NEAREST if self.kind == "bit_grid" else Image.Resampling.BILINEAR
        return to_pixels(self.fine_a if side == "a" else self.fine_b, size, self.score, resample)

    @property
    def matched_share(self) -> float:
        """The share of the score that the matched regions carry."""
        return float(sum(m.share for m in self.matches))

    def summary(self) -> dict:
        return {"backbone": self.backbone, "weights": self.weights, "kind": self.kind, "exact": self.exact,
                "score": round(self.score, 6), "sum_a": round(float(self.grid_a.sum()), 6),
                "sum_b": round(float(self.grid_b.sum()), 6), "grid": list(self.grid_a.shape),
                "detail": self.detail, "size_a": list(self.size_a), "size_b": list(self.size_b),
                "seen_a": list(self.seen_a),
                "seen_b": list(self.seen_b), "matched_share": round(self.matched_share, 6),
                "matches": [m.to_dict() for m in self.matches]}

    def save_npz(self, path: str | os.PathLike) -> None:
        """``grid_a``, ``grid_b``, ``map_a``, ``map_b`` (float32), ``score`` and the matches, written atomically."""
        matches = self._matches_array()
        with atomic_path(Path(path), suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, grid_a=self.grid_a.astype(np.float64), grid_b=self.grid_b.astype(np.float64),
                     map_a=self.map_a.astype(np.float32), map_b=self.map_b.astype(np.float32),
                     score=np.float64(self.score), matches=matches,
                     summary=np.asarray(json.dumps(self.summary())))

    def save_compact(self, path: Path) -> None:
        """Everything but the pixel maps (they are redrawn from ``fine_*``): the disk cache's format."""
        with atomic_path(Path(path), suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, grid_a=self.grid_a, grid_b=self.grid_b, fine_a=self.fine_a, fine_b=self.fine_b,
                     score=np.float64(self.score), matches=self._matches_array(),
                     summary=np.asarray(json.dumps(self.summary())))

    def _matches_array(self) -> np.ndarray:
        """(n, 6): row and column in A, row and column in B, feature cosine, share of the score."""
        return np.asarray([[*m.a, *m.b, m.similarity, m.share] for m in self.matches], np.float64).reshape(-1, 6)

    @classmethod
    def load_compact(cls, path: Path) -> Explanation:
        with np.load(path) as z:
            meta = json.loads(str(z["summary"]))
            return cls(backbone=meta["backbone"], weights=meta["weights"], kind=meta["kind"], exact=meta["exact"],
                       score=float(z["score"]), grid_a=z["grid_a"], grid_b=z["grid_b"], fine_a=z["fine_a"],
                       fine_b=z["fine_b"], size_a=tuple(meta["size_a"]), size_b=tuple(meta["size_b"]),
                       matches=[Match((int(r[0]), int(r[1])), (int(r[2]), int(r[3])), float(r[4]), float(r[5]))
                                for r in z["matches"]], detail=meta["detail"])


def explain_kind(backbone: str) -> str:
    """How ``backbone`` can be explained (:attr:`Backbone.explain`); '' when it cannot."""
    return getattr(get_backbone(backbone), "explain", "") or ""


def can_explain(backbone: str) -> bool:
    return explain_kind(backbone) in KINDS


def no_map_reason(backbone: str) -> str:
    kind = explain_kind(backbone)
    if kind == "bits":
        return (f"{backbone} has no spatial map: its 64 bits are global DCT frequencies of the whole image, "
                "so the score cannot be split over regions (compare the hash bits instead).")
    return (f"{backbone} has no spatial map: its vector mixes every location of the image, so the score "
            "cannot be split over regions.")


# --------------------------------------------------------------------------- images


def load_image(image) -> Image.Image:
    """A path (EXIF orientation applied, as simlab decodes it) or a PIL image, as RGB."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return open_rgb(image)


def seen_square(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The centre square of an image of ``(width, height)``: what simlab's ``crop`` fit feeds the model."""
    w, h = size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


def model_input(im: Image.Image, size: int) -> np.ndarray:
    """The centre square resized to ``size``, uint8, as :func:`simlab.data.images.load_for_model` makes it."""
    from simlab.data.images import _resize_crop

    return np.asarray(_resize_crop(im, size), dtype=np.uint8)


def pixels_for(image, size: int) -> np.ndarray:
    """Model input of ``image`` at ``size``: a path is decoded exactly as the vector cache decodes it."""
    if isinstance(image, Image.Image):
        return model_input(image.convert("RGB"), size)
    from simlab.data.images import load_for_model

    return load_for_model(image, size)


# --------------------------------------------------------------------------- feature maps


@functools.lru_cache(maxsize=4)
def _map_model(backbone: str, weights: str):
    """A Keras model: preprocessed images -> the spatial map the backbone's vector is made of."""
    import keras

    from simlab.vectors.embed import load_model

    model, _ = load_model(backbone, weights)
    kind = explain_kind(backbone)
    if kind == "pooled":
        pool = model.layers[-1]
        if not isinstance(pool, keras.layers.GlobalAveragePooling2D):
            raise NoSpatialMap(f"{backbone} does not end with a global average pooling ({type(pool).__name__}).")
        maps = keras.Model(model.input, pool.input, name=f"{backbone}_map")
    elif kind == "tokens":
        maps = _token_model(model)
    else:
        raise NoSpatialMap(no_map_reason(backbone))
    return maps


def _token_model(model):
    """A KerasHub model built by ``simlab.backbones.keras_hub``: images -> (h, w, C) patch tokens, post layer
    norm (and through CLIP's visual projection), so they live where the vector lives."""
    import keras

    tower = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    projection = next((layer for layer in model.layers if layer.name == "vision_projection"), None)
    size = int(model.input.shape[1])
    side = size // int(getattr(tower, "patch_size", 14))
    images = keras.Input((size, size, 3), name="image")
    tokens = tower({"images": images})[:, -side * side:, :]  # after the CLS token
    if projection is not None:
        tokens = projection(tokens)
    grid = keras.layers.Reshape((side, side, int(tokens.shape[-1])))(tokens)
    return keras.Model(images, grid, name=f"{model.name}_tokens")


@functools.lru_cache(maxsize=4)
def _map_function(backbone: str, weights: str):
    """The map model's forward pass, compiled once on TensorFlow (an eager call costs seconds on a small CPU)."""
    import keras

    maps = _map_model(backbone, weights)
    if keras.config.backend() != "tensorflow":
        return lambda x: maps(x, training=False)
    import tensorflow as tf

    return tf.function(lambda x: maps(x, training=False), reduce_retracing=True, autograph=False)


def feature_maps(backbone: str, weights: str, pixels: np.ndarray) -> np.ndarray:
    """(N, h, w, C) float64 maps of uint8 images (N, s, s, 3)."""
    bb = get_backbone(backbone)
    out = _map_function(backbone, weights)(bb.preprocess(np.asarray(pixels, np.float32)))
    return np.asarray(out, np.float64)


def vectors_of(maps: np.ndarray) -> np.ndarray:
    return maps.mean(axis=(1, 2))


# --------------------------------------------------------------------------- the decomposition


def contributions(f_a: np.ndarray, b: np.ndarray, a: np.ndarray) -> np.ndarray:
    """(h, w) terms ``F_a[i] . b / (hw |a| |b|)``: they sum to cos(a, b) when ``a`` is the mean of ``f_a``."""
    h, w, _ = f_a.shape
    norm = max(float(np.linalg.norm(a)) * float(np.linalg.norm(b)), 1e-30)
    return (f_a @ b) / (h * w * norm)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(float(np.linalg.norm(a)) * float(np.linalg.norm(b)), 1e-30))


def mutual_matches(f_a: np.ndarray, f_b: np.ndarray, grid_a: np.ndarray, grid_b: np.ndarray, score: float,
                   top: int = TOP_MATCHES) -> list[Match]:
    """Locations of A and B that are each other's nearest by feature cosine, the ``top`` that carry the most."""
    ha, wa, c = f_a.shape
    hb, wb, _ = f_b.shape
    xa, xb = f_a.reshape(-1, c), f_b.reshape(-1, c)
    na = xa / np.maximum(np.linalg.norm(xa, axis=1, keepdims=True), 1e-12)
    nb = xb / np.maximum(np.linalg.norm(xb, axis=1, keepdims=True), 1e-12)
    sim = na @ nb.T
    best_b, best_a = sim.argmax(axis=1), sim.argmax(axis=0)
    ga, gb = grid_a.reshape(-1), grid_b.reshape(-1)
    scale = score if abs(score) > 1e-12 else 1.0
    found = [Match((int(i // wa), int(i % wa)), (int(j // wb), int(j % wb)), float(sim[i, j]),
                   float((ga[i] + gb[j]) / 2.0 / scale))
             for i, j in enumerate(best_b) if best_a[j] == i and (xa[i].any() and xb[j].any())]
    return sorted(found, key=lambda m: -m.share)[:top]


def to_pixels(grid: np.ndarray, size: tuple[int, int], total: float, resample=Image.Resampling.BILINEAR,
              ) -> np.ndarray:
    """A grid over the centre square of an image of ``size`` (width, height), upsampled to its pixels (0
    outside the square) and scaled so that it sums to ``total``: a contribution per pixel."""
    w, h = size
    left, top, right, bottom = seen_square(size)
    side = right - left
    up = Image.fromarray(np.ascontiguousarray(grid, np.float32), mode="F").resize((side, side), resample)
    square = np.asarray(up, np.float64)
    mass = square.sum()
    if abs(mass) > 1e-30:
        square *= total / mass
    else:
        square[:] = total / square.size
    out = np.zeros((h, w), np.float32)
    out[top:bottom, left:right] = square
    return out


def _dhash_bits(backbone: str, pixels: np.ndarray) -> np.ndarray:
    """(N, 8, 8) bits as +1 / -1 of dHash (row i, the step from column j to j + 1)."""
    from simlab.vectors.embed import load_model

    model, _ = load_model(backbone, "imagenet")
    return np.asarray(model(np.asarray(pixels, np.float32), training=False), np.float64).reshape(-1, 8, 8)


def explain_pair(image_a, image_b, backbone: str = DEFAULT_BACKBONE, weights: str = "imagenet",
                 detail: str = DEFAULT_DETAIL, top: int = TOP_MATCHES) -> Explanation:
    """Explain the cosine of two images' vectors: ``image_a`` and ``image_b`` are paths or PIL images.

    Raises :class:`NoSpatialMap` (one line) for a backbone that has none.
    """
    if detail not in DETAILS:
        raise ValueError(f"detail must be one of {', '.join(DETAILS)}, not {detail!r}")
    kind = explain_kind(backbone)
    if kind not in KINDS:
        raise NoSpatialMap(no_map_reason(backbone))
    bb = get_backbone(backbone)
    im_a, im_b = load_image(image_a), load_image(image_b)
    px = np.stack([pixels_for(image_a, bb.input_size), pixels_for(image_b, bb.input_size)])
    if kind == "bit_grid":
        return _explain_bits(backbone, weights, px, im_a.size, im_b.size)
    maps = feature_maps(backbone, weights, px)
    f_a, f_b = maps[0], maps[1]
    if kind == "pooled":
        a, b = vectors_of(maps)
        score = cosine(a, b)
        grid_a, grid_b = contributions(f_a, b, a), contributions(f_b, a, b)
    else:  # tokens: the vector is not the tokens' mean: their similarity to the other vector, scaled to the score
        from simlab.vectors.embed import load_model

        a, b = np.asarray(load_model(backbone, weights)[1](px), np.float64)
        score = cosine(a, b)
        grid_a, grid_b = _scaled(contributions(f_a, b, a), score), _scaled(contributions(f_b, a, b), score)
        detail = "native"  # nine more passes of a transformer per image: too slow on a CPU
    fine_a, fine_b = grid_a, grid_b
    if detail == "views":
        fine_a = _sharper(grid_a, view_weights(backbone, weights, im_a, b, bb.input_size))
        fine_b = _sharper(grid_b, view_weights(backbone, weights, im_b, a, bb.input_size))
    return Explanation(
        backbone=backbone, weights=weights, kind=kind, exact=kind == "pooled", score=score,
        grid_a=grid_a, grid_b=grid_b, fine_a=fine_a, fine_b=fine_b, size_a=im_a.size, size_b=im_b.size,
        matches=mutual_matches(f_a, f_b, grid_a, grid_b, score, top), detail=detail)


def _scaled(grid: np.ndarray, total: float) -> np.ndarray:
    mass = grid.sum()
    return grid * (total / mass) if abs(mass) > 1e-30 else np.full_like(grid, total / grid.size)


def view_weights(backbone: str, weights: str, image: Image.Image, other: np.ndarray, size: int,
                 n: int = VIEWS) -> np.ndarray:
    """How much each part of ``image``'s centre square, seen alone, looks like the other image: ``n x n`` views
    of half the square's side (a quarter of its area, overlapping), each resized to the model's input, scored by
    the cosine of its vector with ``other``, minus the least alike view's; a pixel gets the mean over the views
    that hold it. (VIEW_RES, VIEW_RES) over the square."""
    left, top, right, bottom = seen_square(image.size)
    square = image.crop((left, top, right, bottom))
    side = right - left
    view = max(1, side // 2)
    step = (side - view) / max(n - 1, 1)
    corners = [(round(j * step), round(i * step)) for i in range(n) for j in range(n)]
    tiles = np.stack([model_input(square.crop((x, y, x + view, y + view)), size) for x, y in corners])
    sims = np.array([cosine(v, other) for v in vectors_of(feature_maps(backbone, weights, tiles))])
    sims -= sims.min()
    total, count = np.zeros((VIEW_RES, VIEW_RES)), np.zeros((VIEW_RES, VIEW_RES))
    k = VIEW_RES / side
    for (x, y), sim in zip(corners, sims):
        rows, cols = slice(int(y * k), int(round((y + view) * k))), slice(int(x * k), int(round((x + view) * k)))
        total[rows, cols] += sim
        count[rows, cols] += 1
    return total / np.maximum(count, 1)


def _sharper(grid: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    """The exact grid upsampled to the views' resolution, weighted by the views' evidence, same sum."""
    up = np.asarray(Image.fromarray(np.ascontiguousarray(grid, np.float32), mode="F").resize(
        evidence.shape[::-1], Image.Resampling.BILINEAR), np.float64)
    weighted = up * evidence
    if not np.isfinite(weighted).all() or abs(weighted.sum()) < 1e-30:
        return _scaled(up, float(grid.sum()))  # every view alike: nothing to sharpen with
    return _scaled(weighted, float(grid.sum()))


def _explain_bits(backbone: str, weights: str, px: np.ndarray, size_a, size_b) -> Explanation:
    bits = _dhash_bits(backbone, px)
    agree = bits[0] * bits[1] / bits[0].size  # +1/64 where the bits agree, -1/64 where they differ
    score = float(agree.sum())
    matches = []
    return Explanation(backbone=backbone, weights=weights, kind="bit_grid", exact=True, score=score,
                       grid_a=agree.copy(), grid_b=agree.copy(), fine_a=agree.copy(), fine_b=agree.copy(),
                       size_a=size_a, size_b=size_b, matches=matches, detail="native")


_CODE_VERSION = "2"  # bump when the maps change: it keys cached explanations


def cache_key(digest_a: str, digest_b: str, backbone: str, weights: str, detail: str = DEFAULT_DETAIL) -> str:
    """A key for a pair's explanation: the two images' content digests, the backbone, weights and detail."""
    text = "|".join((digest_a, digest_b, backbone, weights, detail, _CODE_VERSION))
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def explain_cached(path_a: str, path_b: str, backbone: str = DEFAULT_BACKBONE, weights: str = "imagenet",
                   detail: str = DEFAULT_DETAIL) -> Explanation:
    """:func:`explain_pair` of two files, kept under ``cache/explain/`` by the two files' content digests, the
    backbone, the weights and ``detail`` (a changed file is a new key); written atomically."""
    key = cache_key(file_digest(path_a), file_digest(path_b), backbone, weights, detail)
    path = cache_dir("explain") / f"{key}.npz"
    if path.exists():
        try:
            return Explanation.load_compact(path)
        except Exception as exc:  # a damaged entry is computed again
            log.warning("Ignoring the unreadable cached explanation %s (%s)", path, exc)
    e = explain_pair(path_a, path_b, backbone, weights, detail)
    e.save_compact(path)
    return e


# --------------------------------------------------------------------------- pictures

# warm colours for high contribution: dark blue -> purple -> red -> orange -> pale yellow
_STOPS = np.array([[0, 0, 40], [60, 15, 110], [180, 30, 90], [245, 120, 30], [255, 240, 160]], np.float64)
MATCH_COLOURS = [(0, 200, 255), (120, 255, 80), (255, 80, 200), (255, 255, 255), (255, 170, 0), (160, 120, 255),
                 (0, 255, 180), (255, 90, 90)]
SHOW_SIDE = 640  # pictures are drawn at most this long on their long side


def colour_ramp(values: np.ndarray) -> np.ndarray:
    """Values in 0..1 -> RGB uint8 along :data:`_STOPS`."""
    v = np.clip(values, 0.0, 1.0) * (len(_STOPS) - 1)
    lo = np.minimum(v.astype(int), len(_STOPS) - 2)
    frac = (v - lo)[..., None]
    return (_STOPS[lo] * (1 - frac) + _STOPS[lo + 1] * frac).astype(np.uint8)


def _shown(im: Image.Image, side: int) -> tuple[Image.Image, float]:
    scale = min(1.0, side / max(im.size))
    if scale < 1.0:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BILINEAR)
    return im, scale


def heat_overlay(image, e: Explanation, side_of: str, side: int = SHOW_SIDE) -> Image.Image:
    """The image with its map as warm colours over the square the model saw; the rest dimmed."""
    im, _ = _shown(load_image(image), side)
    small = e.pixel_map(side_of, im.size)
    left, top, right, bottom = seen_square(im.size)
    inside = small[top:bottom, left:right]
    hi = float(np.percentile(inside, 99)) if inside.size else 0.0
    lo = float(inside.min()) if inside.size else 0.0
    norm = (small - lo) / (hi - lo) if hi > lo else np.zeros_like(small)
    base = np.asarray(im, np.float64)
    out = base * 0.35  # outside the square: dimmed, the model never saw it
    blend = 0.4 * base + 0.6 * colour_ramp(norm).astype(np.float64)
    out[top:bottom, left:right] = blend[top:bottom, left:right]
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def cell_centre(cell: tuple[int, int], grid_shape: tuple[int, int], seen: tuple[int, int, int, int],
                scale: float = 1.0) -> tuple[float, float]:
    """The pixel (x, y) at the centre of a grid cell, in an image shown at ``scale``."""
    left, top, right, bottom = seen
    r, c = cell
    gh, gw = grid_shape
    return ((left + (c + 0.5) * (right - left) / gw) * scale, (top + (r + 0.5) * (bottom - top) / gh) * scale)


def match_overlay(image, e: Explanation, side_of: str, side: int = SHOW_SIDE) -> Image.Image:
    """The image with its matched regions as numbered rings (the same number and colour on the other image)."""
    from PIL import ImageDraw

    im, scale = _shown(load_image(image), side)
    grid, seen = (e.grid_a, e.seen_a) if side_of == "a" else (e.grid_b, e.seen_b)
    out = Image.fromarray((np.asarray(im, np.float64) * 0.75).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    radius = max(6.0, (seen[2] - seen[0]) * scale / grid.shape[1] / 2)
    for k, m in enumerate(e.matches):
        x, y = cell_centre(m.a if side_of == "a" else m.b, grid.shape, seen, scale)
        colour = MATCH_COLOURS[k % len(MATCH_COLOURS)]
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=colour, width=3)
        draw.text((x - 3, y - 6), str(k + 1), fill=colour)
    return out


def pair_picture(image_a, image_b, e: Explanation, side: int = SHOW_SIDE) -> Image.Image:
    """Both images side by side with their maps, the matched regions joined by lines (the CLI's ``--png``)."""
    from PIL import ImageDraw

    a = heat_overlay(image_a, e, "a", side)
    b = heat_overlay(image_b, e, "b", side)
    gap = 16
    canvas = Image.new("RGB", (a.width + gap + b.width, max(a.height, b.height)), (255, 255, 255))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width + gap, 0))
    scale_a = a.width / load_image(image_a).width
    scale_b = b.width / load_image(image_b).width
    draw = ImageDraw.Draw(canvas)
    for k, m in enumerate(e.matches):
        colour = MATCH_COLOURS[k % len(MATCH_COLOURS)]
        xa, ya = cell_centre(m.a, e.grid_a.shape, e.seen_a, scale_a)
        xb, yb = cell_centre(m.b, e.grid_b.shape, e.seen_b, scale_b)
        xb += a.width + gap
        draw.line([xa, ya, xb, yb], fill=colour, width=2)
        for x, y in ((xa, ya), (xb, yb)):
            draw.ellipse([x - 5, y - 5, x + 5, y + 5], outline=colour, width=2)
    return canvas
