"""Decoding images ahead of the forward pass, in a pool of threads or of processes."""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from simlab.data.images import load_many
from simlab.spawn import process_pool

log = logging.getLogger(__name__)


def decode_workers() -> int:
    """Workers decoding images ahead of the forward pass: one per core, 2 at least, 16 at most.

    On 2 cores, 2 threads beat 1 and 4 (85 against 81 and 84 img/s, EfficientNet-Lite0); a GPU
    machine needs many, as its forward pass is far faster than one decoding worker.
    """
    return max(2, min(16, os.cpu_count() or 2))


def decode_mode() -> str:
    """``threads`` or ``processes``: ``$SIMLAB_DECODE``, else processes from 8 cores up.

    Threads overlap Pillow's decoding (it releases the GIL) but not the Python around it (opening,
    headers, EXIF, copies): on 16 cores they kept about 5 busy (1,100-1,200 img/s on an H200,
    benchmarks/README.md). Processes have no GIL to share but cost a start-up and a copy of each
    image back; on small machines threads are as fast and simpler.
    """
    mode = os.environ.get("SIMLAB_DECODE", "").strip().lower()
    if mode in ("threads", "processes"):
        return mode
    return "processes" if (os.cpu_count() or 1) >= 8 else "threads"


@functools.lru_cache(maxsize=1)
def _process_pool():
    """One pool of decoding processes for the whole process, started on first use. Spawned (never
    a fork of a process that holds a model and its threads), and never running the parent's main
    module (``simlab.spawn``): the workers only need ``simlab.data.images``, imported by name."""
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


def _image_batches(paths: list[str], size: int, fit: str, batch_size: int, ahead: int = 2):
    """Yield ``(images, n, errors)`` per batch, in order: ``images`` is uint8 ``(batch_size, size, size, 3)``
    (the last batch padded with black, so the model sees one shape), ``n`` the real images in it.

    Decoding and resizing run in a pool of threads or processes (``decode_mode()``), ``ahead``
    batches ahead of the consumer, so they overlap the forward pass. A plain pool rather than
    tf.data with a ``numpy_function``: same vectors, steadier and faster on a small CPU
    (EfficientNet-Lite0, 2 cores: 74 against 61 img/s, forward pass alone 84; benchmarks/README.md).
    """
    if decode_mode() == "processes":
        # a few images per task: fewer round trips, every worker still busy with 2 batches queued
        processes, threads, piece = _process_pool(), None, max(1, batch_size // decode_workers())
        submit = lambda *args: processes.apply_async(load_many, args)  # noqa: E731
    else:
        threads, piece = ThreadPoolExecutor(decode_workers(), thread_name_prefix="simlab-decode"), 1
        submit = lambda *args: threads.submit(load_many, *args)  # noqa: E731
    chunks = iter([paths[i:i + batch_size] for i in range(0, len(paths), batch_size)])
    pending: deque = deque()

    def submit_next():
        chunk = next(chunks, None)
        if chunk is not None:
            pending.append([submit(chunk[j:j + piece], size, fit) for j in range(0, len(chunk), piece)])

    try:
        for _ in range(ahead):
            submit_next()
        while pending:
            futures = pending.popleft()
            submit_next()
            images = np.zeros((batch_size, size, size, 3), np.uint8)
            errors = []
            for fut in futures:
                for img, err in (fut.result() if threads else _get(fut)):
                    if img is not None:
                        images[len(errors)] = img
                    errors.append(err)
            yield images, len(errors), errors
    finally:  # also when the consumer stops early: drop what is queued, let running decodes end
        if threads:
            threads.shutdown(wait=True, cancel_futures=True)
