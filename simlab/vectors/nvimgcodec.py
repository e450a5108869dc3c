"""Decoding on the GPU with NVIDIA nvImageCodec (``requirements-gpu.txt``): batches of JPEGs are
decoded by nvJPEG (the hardware JPEG engines where the GPU has them), cropped and resized on the
device (:func:`resize`, two matrix products with Pillow's bilinear weights), and handed to the Keras
backend through DLPack: no image comes back to the host.

Files it should not or cannot take go to Pillow one by one (:func:`simlab.vectors.decode.load_sizes`),
so they give the Pillow path's arrays and its problem reports: anything not a baseline or progressive
JPEG (PNG, TIFF...), CMYK and YCCK JPEGs (Pillow's colour conversion is the reference), images over
the decompression-bomb limit, unreadable files, and any file nvImageCodec answers with no image.

Imported only when this decoder is used (:mod:`simlab.vectors.decoders`).
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from simlab.data import images as image_files
from simlab.vectors.decode import Batch, decode_workers, load_sizes

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=2)
def _decoder(on_device: bool = True):
    """One nvImageCodec decoder per process: on the current GPU, or (``on_device=False``, for checks
    on machines without one) on the CPU with its libjpeg-turbo backend, which gives host images."""
    from nvidia import nvimgcodec

    if on_device:
        return nvimgcodec.Decoder(max_num_cpu_threads=decode_workers())
    return nvimgcodec.Decoder(device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY, max_num_cpu_threads=decode_workers(),
                              backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.CPU_ONLY)])


@functools.lru_cache(maxsize=1)
def _params():
    from nvidia import nvimgcodec

    # sRGB, interleaved RGB, 8 bits, EXIF orientation applied: what open_rgb gives
    return nvimgcodec.DecodeParams(apply_exif_orientation=True, color_spec=nvimgcodec.ColorSpec.SRGB,
                                   allow_any_depth=False, sample_format=nvimgcodec.SampleFormat.I_RGB)


def takes(stream) -> bool:
    """Whether nvImageCodec decodes this parsed file here (else Pillow does): a 1- or 3-channel JPEG
    of a size Pillow would accept."""
    try:
        w, h = int(stream.width), int(stream.height)
        return (stream.codec_name == "jpeg" and int(stream.num_channels) in (1, 3)
                and 0 < w * h <= image_files.MAX_PIXELS)
    except Exception:  # an odd header: Pillow decides
        return False


def _read(path: str):
    """The file parsed into a code stream (headers only), or None: Pillow will say what is wrong."""
    from nvidia import nvimgcodec

    try:
        with open(path, "rb") as f:
            data = f.read()
        if not data:
            return None
        stream = nvimgcodec.CodeStream(data)
        return stream if takes(stream) else None
    except Exception:
        return None


def to_backend(image):
    """A decoded nvImageCodec image as a tensor of the Keras backend, without a copy: DLPack for a
    device buffer; the array interface for a host buffer (the CPU backend, used by checks)."""
    import keras
    from keras import ops
    from nvidia import nvimgcodec

    if image.buffer_kind != nvimgcodec.ImageBufferKind.STRIDED_DEVICE:
        return ops.convert_to_tensor(np.asarray(image))
    backend = keras.config.backend()
    if backend == "jax":
        import jax.dlpack

        return jax.dlpack.from_dlpack(image)
    if backend == "torch":
        import torch

        return torch.from_dlpack(image)
    import tensorflow as tf

    return tf.experimental.dlpack.from_dlpack(image.__dlpack__())


BUCKET = 256  # decoded images are padded up to multiples of this, so resizes compile for a few shapes only
GROUP = 32  # images resized together at most (a power of two; groups are padded up to one)


def resize_params(height: int, width: int, size: int, fit: str) -> np.ndarray:
    """Per axis (y, x): ``start, length, in_size, offset, n``: the source interval ``[start, start + length)``
    of an axis of ``in_size`` pixels lands on output pixels ``[offset, offset + n)``, the rest black.
    ``crop``: the centre square onto the whole output (``images._resize_crop``); ``pad``: the whole image,
    centred (``images._resize_pad``)."""
    if fit == "crop":
        side = min(width, height)
        return np.array([[(height - side) / 2, side, height, 0, size],
                         [(width - side) / 2, side, width, 0, size]], np.float32)
    scale = size / max(width, height)
    nw, nh = max(1, round(width * scale)), max(1, round(height * scale))
    return np.array([[0, height, height, (size - nh) // 2, nh], [0, width, width, (size - nw) // 2, nw]], np.float32)


def _axis_weights(p, size: int, n_in: int):
    """``(k, size, n_in)`` resampling weights of one axis: Pillow's BILINEAR coefficients (a triangle
    widened by the scale when shrinking, clipped to the source, normalised), computed on the device."""
    from keras import ops

    start, length, in_size, offset, n = (p[:, i:i + 1] for i in range(5))  # each (k, 1)
    i = ops.arange(size, dtype="float32")[None, :]
    scale = length / ops.maximum(n, 1.0)
    support = ops.maximum(scale, 1.0)[:, :, None]
    center = (start + (i - offset + 0.5) * scale)[:, :, None]
    j = ops.arange(n_in, dtype="float32")[None, None, :]
    w = ops.maximum(1.0 - ops.abs((j - center + 0.5) / support), 0.0)
    lo = ops.maximum(ops.floor(center - support + 0.5), 0.0)
    hi = ops.minimum(ops.floor(center + support + 0.5), in_size[:, :, None])
    w = ops.where((j >= lo) & (j < hi), w, 0.0)
    w = w / ops.maximum(ops.sum(w, axis=-1, keepdims=True), 1e-12)
    inside = ((i >= offset) & (i < offset + n))[:, :, None]
    return ops.where(inside, w, 0.0)


def _resize_core(images, params, size: int):
    from keras import ops

    ah = _axis_weights(params[:, 0], size, images.shape[1])
    aw = _axis_weights(params[:, 1], size, images.shape[2])
    rows = ops.einsum("ksh,khwc->kswc", ah, ops.cast(images, "float32"))
    out = ops.einsum("kswc,ktw->kstc", rows, aw)
    return ops.cast(ops.clip(ops.round(out), 0, 255), "uint8")


@functools.lru_cache(maxsize=1)
def _compiled_resize():
    """:func:`_resize_core` compiled where the backend compiles per shape (JAX); eager elsewhere."""
    import keras

    if keras.config.backend() == "jax":
        import jax

        return jax.jit(_resize_core, static_argnums=2)
    return _resize_core


def resize(images, params: np.ndarray, size: int):
    """uint8 ``(k, H, W, 3)`` (each image in the top-left corner, zeros around it) -> uint8
    ``(k, size, size, 3)`` on the images' device; ``params``: ``(k, 2, 5)``, :func:`resize_params` each.
    Two matrix products with weights computed on the device: no per-image work, and one compilation per
    padded shape and group size."""
    from keras import ops

    return _compiled_resize()(images, ops.convert_to_tensor(params), size)


def _bucket(n: int) -> int:
    return -(-n // BUCKET) * BUCKET


def _place(image, height: int, width: int):
    """A decoded image padded with zeros to its bucket's shape."""
    from keras import ops

    pad = [[0, _bucket(height) - height], [0, _bucket(width) - width], [0, 0]]
    return ops.pad(image, pad) if pad[0][1] or pad[1][1] else image


def _resized(got: dict, sizes: list[tuple[int, ...]], fit: str) -> dict[int, list]:
    """``{size: [(rows, tensor (len(rows), size, size, 3))]}`` for the images nvImageCodec decoded,
    grouped by padded shape, ``GROUP`` at most at a time (padded to a power of two)."""
    from keras import ops

    by_bucket: dict[tuple, list[int]] = defaultdict(list)
    for i, img in got.items():
        by_bucket[(_bucket(img.shape[0]), _bucket(img.shape[1]))].append(i)
    parts: dict[int, list] = defaultdict(list)
    for bucket, members in by_bucket.items():
        for at in range(0, len(members), GROUP):
            rows = members[at:at + GROUP]
            k = 1 << (len(rows) - 1).bit_length()
            placed = [_place(to_backend(got[i]), got[i].shape[0], got[i].shape[1]) for i in rows]
            placed += [ops.zeros((*bucket, 3), "uint8")] * (k - len(rows))
            stacked = ops.stack(placed)
            for s in sorted({s for i in rows for s in sizes[i]}):
                params = np.zeros((k, 2, 5), np.float32)
                params[:, :, 1] = 1.0  # the padding images: an empty output, all black
                for j, i in enumerate(rows):
                    params[j] = resize_params(got[i].shape[0], got[i].shape[1], s, fit)
                parts[s].append((rows, resize(stacked, params, s)[:len(rows)]))
    return parts


def _assemble(batch_size: int, size: int, parts: list[tuple[list[int], object]]):
    """One ``(batch_size, size, size, 3)`` tensor from pieces ``(rows, tensor)``; other rows black."""
    from keras import ops

    zero = ops.zeros((1, size, size, 3), "uint8")
    order = np.full(batch_size, 0, np.int32)  # row -> index in the concatenation (0: the black row)
    at = 1
    for rows, _ in parts:
        order[rows] = np.arange(at, at + len(rows))
        at += len(rows)
    return ops.take(ops.concatenate([zero, *(t for _, t in parts)], axis=0), ops.convert_to_tensor(order), axis=0)


def _decode_batch(paths: list[str], sizes: list[tuple[int, ...]], fit: str, batch_size: int, on_device: bool,
                  pool: ThreadPoolExecutor) -> Batch:
    from keras import ops

    streams = list(pool.map(_read, paths))
    mine = [i for i, s in enumerate(streams) if s is not None]
    decoded = _decoder(on_device).decode([streams[i] for i in mine], params=_params()) if mine else []
    got = {i: img for i, img in zip(mine, decoded) if img is not None}
    others = [i for i in range(len(paths)) if i not in got]
    fallback = pool.map(lambda i: load_sizes([paths[i]], [sizes[i]], fit)[0], others)
    errors = [""] * len(paths)
    parts = _resized(got, sizes, fit)
    decodes = len(got)
    for i, (arrays, err, count) in zip(others, fallback):
        errors[i], decodes = err, decodes + count
        for s, arr in (arrays or {}).items():
            parts[s].append(([i], ops.convert_to_tensor(arr[None])))
    every = sorted({s for wanted in sizes for s in wanted})
    images = {s: _assemble(batch_size, s, parts[s]) for s in every}
    return Batch(images, len(paths), errors, decodes=decodes, fallbacks=len(others))


def nvimgcodec_batches(paths: list[str], sizes: list[tuple[int, ...]], fit: str, batch_size: int, ahead: int = 2,
                       on_device: bool = True) -> Iterator[Batch]:
    """:func:`simlab.vectors.decode.pillow_batches`' contract, decoded by nvImageCodec: each batch is
    decoded on a worker thread ``ahead`` batches before the forward pass needs it."""
    if fit not in ("crop", "pad"):
        raise ValueError(f"fit must be 'crop' or 'pad', not {fit!r}")
    pool = ThreadPoolExecutor(decode_workers(), thread_name_prefix="simlab-read")
    worker = ThreadPoolExecutor(1, thread_name_prefix="simlab-nvimgcodec")
    starts = iter(range(0, len(paths), batch_size))
    pending: deque = deque()

    def submit_next():
        start = next(starts, None)
        if start is not None:
            end = start + batch_size
            pending.append(worker.submit(_decode_batch, paths[start:end], sizes[start:end], fit, batch_size,
                                         on_device, pool))

    try:
        for _ in range(ahead):
            submit_next()
        while pending:
            batch = pending.popleft().result()
            submit_next()
            yield batch
    finally:
        worker.shutdown(wait=True, cancel_futures=True)
        pool.shutdown(wait=True, cancel_futures=True)
