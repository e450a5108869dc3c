"""Decoding images ahead of the forward pass with Pillow, in a pool of threads or of processes.

Each image is decoded once for all the sizes asked of it that share a JPEG draft scale, at the
largest of them, and resized from that decode to each (:func:`load_sizes`): a grid over several
backbones reads each photo once where their sizes agree, and every array is exactly
:func:`simlab.data.images.load_for_model`'s.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from simlab.data.images import _JPEG_FORMATS, _resize_crop, _resize_pad, open_rgb
from simlab.spawn import process_pool

log = logging.getLogger(__name__)

POOL_MODES = ("threads", "processes")


@dataclass
class Batch:
    """Some images decoded, at every size asked: ``images[size]`` is uint8 ``(batch_size, size, size, 3)``
    (numpy, or a tensor of the Keras backend on the device; rows past ``n``, and rows that failed or
    that no backbone wanted at that size, black). ``errors[i]`` is '' when image ``i`` decoded."""

    images: dict[int, Any]
    n: int
    errors: list[str]
    decodes: int  # decodes made for this batch (one per image, more where Pillow draft scales differ)
    fallbacks: int = 0  # files a GPU decoder handed to Pillow


def decode_workers() -> int:
    """Workers decoding images ahead of the forward pass: one per core, 2 at least, 16 at most.

    On 2 cores, 2 threads beat 1 and 4 (85 against 81 and 84 img/s, EfficientNet-Lite0); a GPU
    machine needs many, as its forward pass is far faster than one decoding worker.
    """
    return max(2, min(16, os.cpu_count() or 2))


def decode_mode() -> str:
    """``threads`` or ``processes``, the Pillow decoder's pool: ``$SIMLAB_DECODE`` when it names one,
    else processes from 8 cores up.

    Threads overlap Pillow's decoding (it releases the GIL) but not the Python around it (opening,
    headers, EXIF, copies): on 16 cores they kept about 5 busy (1,100-1,200 img/s on an H200,
    benchmarks/README.md). Processes have no GIL to share but cost a start-up and a copy of each
    image back; on small machines threads are as fast and simpler.
    """
    mode = os.environ.get("SIMLAB_DECODE", "").strip().lower()
    if mode in POOL_MODES:
        return mode
    return "processes" if (os.cpu_count() or 1) >= 8 else "threads"


def draft_scales(path: str, sizes: Sequence[int]) -> dict[int, int]:
    """The reduced DCT scale (1, 2, 4 or 8) :func:`simlab.data.images.open_rgb` decodes a JPEG at for
    each size (Pillow's ``JpegImageFile.draft`` rule); 1 for other formats and unreadable files."""
    try:
        with Image.open(path) as im:
            if im.format not in _JPEG_FORMATS:
                return dict.fromkeys(sizes, 1)
            w, h = im.size
    except Exception:  # open_rgb says what is wrong with it
        return dict.fromkeys(sizes, 1)
    return {s: next((k for k in (8, 4, 2) if min(w // s, h // s) >= k), 1) for s in sizes}


def load_sizes(paths: Sequence[str], sizes: Sequence[Sequence[int]], fit: str = "crop",
               ) -> list[tuple[dict[int, np.ndarray] | None, str, int]]:
    """Each file decoded and resized to each of its sizes: ``({size: array}, "", decodes)`` or
    ``(None, reason, decodes)`` per file, never raising (a top-level function, so a pool of
    processes can run it).

    Every array is :func:`simlab.data.images.load_for_model`'s for that size, bit for bit: a JPEG is
    decoded at the reduced DCT scale each size allows (``open_rgb``'s draft), so the sizes that share
    a scale share one decode, at the largest of them. Sizes that do not (224 and 299 on a photo with
    a short side of 900 px: 1/4 and 1/2) cost one decode per scale, the coarser ones the cheaper:
    resizing from a finer decode instead changed ImageNet vectors by up to 17% (benchmarks/README.md).
    """
    if fit not in ("crop", "pad"):
        raise ValueError(f"fit must be 'crop' or 'pad', not {fit!r}")
    resize = _resize_crop if fit == "crop" else _resize_pad
    out: list[tuple[dict[int, np.ndarray] | None, str, int]] = []
    for path, wanted in zip(paths, sizes):
        by_scale: dict[int, list[int]] = {}
        for s, scale in draft_scales(path, wanted).items():
            by_scale.setdefault(scale, []).append(s)
        arrays, decodes = {}, 0
        try:
            for group in by_scale.values():
                decodes += 1
                im = open_rgb(path, draft_size=max(group))
                arrays.update((s, np.asarray(resize(im, s), dtype=np.uint8)) for s in group)
            out.append((arrays, "", decodes))
        except Exception as exc:  # reported per image, never fatal
            out.append((None, f"{type(exc).__name__}: {exc}", decodes))
    return out


@functools.lru_cache(maxsize=1)
def _process_pool():
    """One pool of decoding processes for the whole process, started on first use. Spawned (never
    a fork of a process that holds a model and its threads), and never running the parent's main
    module (``simlab.spawn``): the workers import this module and ``simlab.data.images`` by name."""
    log.info("Starting %d decoding processes", decode_workers())
    return process_pool(decode_workers())


def _get(result, timeout: float = 300.0):
    """A decoding process's answer. A pool loses the task of a worker that dies (a decoder crash
    on some file), so wait a bounded time and say so rather than hang."""
    try:
        return result.get(timeout)
    except multiprocessing.TimeoutError:
        raise RuntimeError(f"A decoding process gave no answer in {timeout:.0f} s (it may have crashed on an "
                           "image); SIMLAB_DECODE=threads decodes in this process instead.") from None


def pillow_batches(paths: list[str], sizes: list[tuple[int, ...]], fit: str, batch_size: int,
                   ahead: int = 2) -> Iterator[Batch]:
    """Yield one :class:`Batch` per ``batch_size`` paths, in order; ``sizes[i]``: the sizes image ``i``
    is wanted at. The last batch is padded with black, so the model sees one shape.

    Decoding and resizing run in a pool of threads or processes (``decode_mode()``), ``ahead``
    batches ahead of the consumer, so they overlap the forward pass. A plain pool rather than
    tf.data with a ``numpy_function``: same vectors, steadier and faster on a small CPU
    (EfficientNet-Lite0, 2 cores: 74 against 61 img/s, forward pass alone 84; benchmarks/README.md).
    """
    every = sorted({s for wanted in sizes for s in wanted})
    if decode_mode() == "processes":
        # a few images per task: fewer round trips, every worker still busy with 2 batches queued
        processes, threads, piece = _process_pool(), None, max(1, batch_size // decode_workers())
        submit = lambda *args: processes.apply_async(load_sizes, args)  # noqa: E731
    else:
        threads, piece = ThreadPoolExecutor(decode_workers(), thread_name_prefix="simlab-decode"), 1
        submit = lambda *args: threads.submit(load_sizes, *args)  # noqa: E731
    starts = iter(range(0, len(paths), batch_size))
    pending: deque = deque()

    def submit_next():
        start = next(starts, None)
        if start is not None:
            end = min(start + batch_size, len(paths))
            pending.append([submit(paths[j:min(j + piece, end)], sizes[j:min(j + piece, end)], fit)
                            for j in range(start, end, piece)])

    try:
        for _ in range(ahead):
            submit_next()
        while pending:
            futures = pending.popleft()
            submit_next()
            images = {s: np.zeros((batch_size, s, s, 3), np.uint8) for s in every}
            errors: list[str] = []
            decodes = 0
            for fut in futures:
                for arrays, err, count in (fut.result() if threads else _get(fut)):
                    for s, arr in (arrays or {}).items():
                        images[s][len(errors)] = arr
                    errors.append(err)
                    decodes += count
            yield Batch(images, len(errors), errors, decodes=decodes)
    finally:  # also when the consumer stops early: drop what is queued, let running decodes end
        if threads:
            threads.shutdown(wait=True, cancel_futures=True)
