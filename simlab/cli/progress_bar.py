"""The terminal progress bar: one line on stderr, fed by a :class:`simlab.progress.Progress` call."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from simlab.cli.output import printable, raw_stream

Describe = Callable[[str, dict], str]  # (message, fields) -> the text after the counts


def show_message(message: str, fields: dict) -> str:
    return message


def show_speed(message: str, fields: dict) -> str:
    """A vectorisation's speed and time left, from its ``rate`` and ``eta`` fields."""
    return f"{fields.get('rate') or 0.0:.1f} img/s, ETA {fields.get('eta') or 0.0:.0f} s"


class ProgressBar:
    """A one-line progress bar on stderr, redrawn at most ten times a second.

    A :class:`~simlab.progress.Progress`: ``bar(done, total, message="", **fields)``. ``describe``
    turns the message and fields into the text shown after the counts (default: the message).
    """

    def __init__(self, stream: TextIO | None = None, describe: Describe = show_message):
        # its own carriage returns go through; the text it is given is escaped (a message may name a file)
        self.stream, self.describe, self.last = raw_stream(stream or sys.stderr), describe, 0.0

    def __call__(self, done: int, total: int, message: str = "", **fields: Any) -> None:
        now = time.monotonic()
        if done < total and now - self.last < 0.1:
            return
        self.last = now
        width = 30
        filled = int(width * done / total) if total else width
        text = printable(self.describe(message, fields))
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {text[:80]:<80}")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()
