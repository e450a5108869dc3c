"""Decoding on the GPU with NVIDIA nvImageCodec (``requirements-gpu.txt``): batches of JPEGs are
decoded by nvJPEG (the hardware JPEG engines where the GPU has them), cropped and resized on the
device by the Keras backend, and handed to it through DLPack: no image comes back to the host.

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


def resize(images, size: int, fit: str):
    """uint8 ``(k, h, w, 3)`` -> uint8 ``(k, size, size, 3)`` on the images' device: the centre square
    (``crop``) or the whole image padded black (``pad``), antialiased bilinear as Pillow's BILINEAR."""
    from keras import ops

    out = ops.image.resize(ops.cast(images, "float32"), (size, size), interpolation="bilinear", antialias=True,
                           crop_to_aspect_ratio=fit == "crop", pad_to_aspect_ratio=fit == "pad", fill_value=0.0)
    return ops.cast(ops.clip(ops.round(out), 0, 255), "uint8")


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
    parts: dict[int, list[tuple[list[int], object]]] = defaultdict(list)
    by_shape: dict[tuple, list[int]] = defaultdict(list)  # one resize call per shape and size
    for i, img in got.items():
        by_shape[tuple(img.shape)].append(i)
    for rows in by_shape.values():
        stacked = ops.stack([to_backend(got[i]) for i in rows])
        for s in sorted({s for i in rows for s in sizes[i]}):
            parts[s].append((rows, resize(stacked, s, fit)))
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
