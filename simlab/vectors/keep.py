"""Finished batches kept as they complete: a vectorisation that is killed, stopped or fails leaves
its work in the vector cache (as parts of the dataset's set, :meth:`VectorCache.write_part`), and
the next run computes only the rest. A part holds whole batches, so with the same batch size the
rest is batched as the first run would have batched it: the same vectors, bit for bit.

A full disk stops the work with one line (:class:`DiskFull`) that says how many of the dataset's
images have their vectors kept on disk.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from pathlib import Path

import numpy as np

from simlab.vectors.cache import VectorCache

log = logging.getLogger(__name__)

# Seconds between two parts: a killed run loses at most about this much work. Writing a part costs
# about 16 us an image (5 kB at 1,280 dims): on the demo (783 images, EfficientNet-Lite0, 2 busy
# CPUs, 15-22 s) 12-15 parts took 18-35 ms, 0.1-0.2% of the run (a part after every batch, 25 parts:
# 0.15-0.5%); on a GPU at ~1,100 img/s it would be up to ~2% of a run long enough to write parts.
SAVE_EVERY_S = 1.0
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFull(OSError, ValueError):
    """No room left to write the vector cache. What was written before is kept: free some space
    and run again, only the rest is computed. (A ValueError too: an error that says what to do.)"""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.errno, self.path = errno.ENOSPC, Path(path)  # (a filename would change how it prints)


class Keeper:
    """Collects the batches of one computation (``on_batch`` of ``compute_vectors``) and writes
    what it holds as a part of the set every ``save_every`` seconds, and when asked on the way out.

    ``digests``: the digests of the images being computed, in the order computed; ``kept``: how
    many of the dataset's ``total`` images already have vectors on disk.
    """

    def __init__(self, cache: VectorCache, fingerprint: str, digests: list[str], total: int, kept: int,
                 save_every: float = SAVE_EVERY_S):
        self.cache, self.fingerprint, self.digests = cache, fingerprint, digests
        self.total, self.kept, self.save_every = total, kept, save_every
        self.pending: list[tuple[int, np.ndarray, list[str]]] = []
        self.last = time.monotonic()  # (the model's loading counts: the first batch after a slow one is kept at once)

    def add(self, start: int, vectors: np.ndarray, errors: list[str]) -> None:
        """One finished batch: rows ``start...`` of the computation."""
        self.pending.append((start, vectors, errors))
        if time.monotonic() - self.last >= self.save_every:
            self.flush()

    def flush(self) -> None:
        """Write the batches held as one part (raises :class:`DiskFull` when there is no room)."""
        if not self.pending:
            return
        rows, digests, bad = [], [], {}
        for start, vectors, errors in self.pending:
            for j, err in enumerate(errors):
                if err:
                    bad[self.digests[start + j]] = err
                else:
                    rows.append(vectors[j])
                    digests.append(self.digests[start + j])
        with self.room(self.cache.folder):
            self.cache.write_part(self.fingerprint, np.stack(rows) if rows else vectors[:0],
                                  digests, bad)
        self.pending, self.last = [], time.monotonic()
        self.kept += len(rows)
        log.debug("Kept %d of %d vectors of %s", self.kept, self.total, self.fingerprint)

    def flush_quietly(self) -> None:
        """On the way out of a failed or stopped computation: keep what is held if there is room."""
        try:
            self.flush()
        except (OSError, ValueError) as exc:
            log.warning("Could not keep the last vectors of %s: %s", self.fingerprint, exc)

    @contextlib.contextmanager
    def room(self, path: Path):
        """Turn a full disk (or a file-size limit) while writing to ``path`` into :class:`DiskFull`."""
        try:
            yield
        except OSError as exc:
            if isinstance(exc, DiskFull) or exc.errno not in NO_ROOM:
                raise
            raise DiskFull(f"disk full: {path} ({exc.strerror}); free space and run again — {self.kept} of "
                           f"{self.total} images are kept", path) from exc
