"""What the command line prints about things it did not name itself: file names, dataset specs, reasons.

- :func:`printable`: control characters shown escaped (``\\x1b``), so a file named with ANSI or OSC escape
  codes cannot colour the terminal, set its title or rewrite a line; bidirectional overrides likewise.
- :func:`escaped_output`: while inside, ``sys.stdout`` and ``sys.stderr`` escape them in everything
  written (errors, log records, tracebacks, tables), keeping newlines and tabs.
- :func:`print_problems`: skipped files as a summary (counts by reason, then the first few), never one
  line per file: a list of millions of missing files is a few lines.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TextIO

#: C0 and C1 controls, DEL, and the Unicode format characters that reorder or hide text.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
#: What one summary shows of a list of problems.
FIRST_PROBLEMS = 10


def _escape(m: re.Match) -> str:
    c = m.group()
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def printable(text: object, keep: str = "") -> str:
    """``text`` with every control character (but those in ``keep``) written as an escape: ``\\x1b``."""
    text = str(text)
    if not keep:
        return _UNSAFE.sub(_escape, text)
    return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else _escape(m), text)


class EscapingStream:
    """A text stream that escapes control characters (but newlines and tabs) in what is written to it."""

    def __init__(self, inner: TextIO):
        self.inner = inner

    def write(self, text: str) -> int:
        self.inner.write(printable(text, keep="\n\t"))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self.inner.flush()

    def __getattr__(self, name: str):  # encoding, isatty, fileno...
        return getattr(self.inner, name)


def raw_stream(stream: TextIO) -> TextIO:
    """The stream under an :class:`EscapingStream` (the progress bar's own carriage returns), else itself."""
    return stream.inner if isinstance(stream, EscapingStream) else stream


@contextlib.contextmanager
def escaped_output() -> Iterator[None]:
    """``sys.stdout`` and ``sys.stderr`` escape control characters while inside."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = EscapingStream(saved[0]), EscapingStream(saved[1])
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def problem_summary(problems, first: int = FIRST_PROBLEMS) -> list[str]:
    """Lines describing skipped files: the count by reason, the first ``first`` files (one of each reason at
    least), how many more."""
    problems = list(problems)
    if not problems:
        return []
    counts = Counter(_kind(p.reason) for p in problems)
    by_reason = ", ".join(f"{reason} {n:,}" for reason, n in counts.most_common(6))
    if len(counts) > 6:
        by_reason += f", {len(counts) - 6} other reason(s)"
    lines = [f"skipped {len(problems):,} file(s): {printable(by_reason)}"]
    lines += [f"  {printable(p.path)}: {printable(p.reason)}" for p in _examples(problems, first)]
    if len(problems) > first:
        lines.append(f"  ... and {len(problems) - first:,} more (the app's Data page lists them all)")
    return lines


def print_problems(problems, file: TextIO | None = None, first: int = FIRST_PROBLEMS) -> None:
    """:func:`problem_summary` on ``file`` (default stderr)."""
    for line in problem_summary(problems, first):
        print(line, file=file or sys.stderr)


def _examples(problems: list, first: int) -> list:
    """The first ``first`` problems, where each reason has at least one (a rare reason is not drowned)."""
    chosen, reasons = [], set()
    for i, p in enumerate(problems):
        if _kind(p.reason) not in reasons:
            reasons.add(_kind(p.reason))
            chosen.append(i)
    chosen = chosen[:first]
    taken = set(chosen)
    chosen += [i for i in range(len(problems)) if i not in taken][:first - len(chosen)]
    return [problems[i] for i in sorted(chosen)]


def _kind(reason: str) -> str:
    """A reason without what differs from file to file ("listed twice (line 12)" -> "listed twice")."""
    reason = re.sub(r"^same file as .*", "same file as another", reason)
    return re.sub(r" \((line \d+|[^()]*\d[^()]*)\)$", "", reason).split(": ")[0]

