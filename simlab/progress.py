"""One progress callback for every long task, and the exception that cancels one.

Every long task in simlab (vectorising, a grid, a fine-tune, a search index) reports through the
same signature::

    progress(done, total, message="", **fields)

``message`` is for people only: no code parses it. What code needs travels in ``fields``, named:
``stage`` (a short word: "vectorize", "train", "index"...), ``backbone``, ``rate`` (items per
second), ``eta`` (seconds). A task that is asked to stop raises :class:`Cancelled`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Progress(Protocol):
    def __call__(self, done: int, total: int, message: str = "", **fields: Any) -> None: ...


class Cancelled(Exception):
    """A task stopped because it was asked to (a cancel button, Ctrl-C on a job): not a failure."""


ShouldStop = Callable[[], bool]


def silent(done: int, total: int, message: str = "", **fields: Any) -> None:
    """A progress callback that reports nowhere."""


def never() -> bool:
    """A should-stop callback that never asks to stop."""
    return False


def check_stop(should_stop: ShouldStop | None, what: str = "stopped on request") -> None:
    """Raise :class:`Cancelled` when ``should_stop`` says so."""
    if should_stop is not None and should_stop():
        raise Cancelled(what)
