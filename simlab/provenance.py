"""Where a result came from: library versions and the git commit of the code that computed it."""

from __future__ import annotations

import contextlib
import functools
import platform
import subprocess
from importlib import metadata

from simlab.paths import REPO_ROOT

LIBRARIES = ("numpy", "scikit-learn", "xgboost", "tensorflow", "keras", "pillow")


@functools.lru_cache(maxsize=1)
def library_versions() -> dict:
    """Python's and the main libraries' versions, as stored with every run."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The short commit hash of the working tree, or None outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
