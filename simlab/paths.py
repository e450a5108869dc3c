"""Where simlab keeps what it computes, and how it writes it safely."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir(*parts: str) -> Path:
    """The cache folder (``$SIMLAB_CACHE`` or ``<repo>/cache``), or a sub-folder of it, created."""
    root = Path(os.environ.get("SIMLAB_CACHE") or REPO_ROOT / "cache")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds.

    A killed process leaves at most a stray temp file, never a half-written target.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix or target.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
