"""What the command line checks before any work, and how it ends when something goes wrong.

- :class:`Parser`: a refused flag is one line on stderr (exit 2), not the usage block.
- :func:`option_flag`: a flag whose choices, type, bounds, default and help come from :mod:`simlab.options`.
- :func:`check_writable`: the cache folder and the run store can be written, checked before the work starts.
- :func:`report_unexpected`: an error simlab did not foresee is one line naming a log file that holds
  its traceback (under ``cache/logs/``).
- :func:`sigterm_raises`: SIGTERM raises :class:`Terminated` in the main thread, so the code running
  unwinds as on Ctrl-C (a grid marks its runs in progress failed, "interrupted").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import signal
import sqlite3
import tempfile
import threading
import traceback
from pathlib import Path

from simlab import options
from simlab.paths import cache_dir
from simlab.store import Store, StoreError

log = logging.getLogger(__name__)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose refusals are one line: ``python -m simlab run: error: argument --seed: ...``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def option_flag(parser: argparse.ArgumentParser, flag: str, name: str, **overrides) -> None:
    """Add ``flag`` for the option ``name`` declared in :mod:`simlab.options`; ``overrides`` replace keys of
    the generated keyword arguments (a command's own default, say)."""
    parser.add_argument(flag, **(options.argparse_kwargs(name) | overrides))


def backbone_flag(parser: argparse.ArgumentParser, flag: str, name: str, **overrides) -> None:
    """A backbone flag: help and default from the declaration, no argparse choices. The backbone registry
    loads its modules on first use (and finds the towers trained here through the scheme simlab.finetune
    registers), so a name is checked by ``get_backbone`` when the command starts, before any work, with
    the list of names in its message."""
    opt = options.option(name)
    kwargs = {"default": opt.default, "help": opt.help, "metavar": "NAME"} | ({"nargs": "+"} if opt.many else {})
    parser.add_argument(flag, **(kwargs | overrides))


# --------------------------------------------------------------------------- before any work


class NotWritable(ValueError):
    """The cache folder or the run store cannot be written: one line saying which, why and what to do."""


def check_writable(store: bool) -> None:
    """Raise :class:`NotWritable` unless the cache folder (and, with ``store``, the run store) can be written."""
    fix = "make it writable, or set SIMLAB_CACHE to a writable folder"
    try:
        folder = cache_dir()
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise NotWritable(f"The cache folder cannot be written ({_why(exc)}): {fix}.") from None
    if not store:
        return
    path = folder / "simlab.db"
    try:
        Store(path).check_writable()
    except StoreError as exc:  # its message names the file, why and what to do
        raise NotWritable(one_line(exc)) from None
    except (sqlite3.Error, OSError) as exc:
        raise NotWritable(f"The run store {path} cannot be written ({_why(exc)}): {fix}.") from None


def interrupt_own_runs(reason: str) -> None:
    """Mark the runs this process still has "running" as failed: the last word after Ctrl-C or SIGTERM, for
    whatever the unwinding code did not close itself."""
    try:
        closed = Store().interrupt_runs(reason)
    except (sqlite3.Error, OSError) as exc:
        log.warning("Could not mark this process's runs interrupted: %s", exc)
        return
    if closed:
        log.warning("Marked %d run(s) failed: %s", len(closed), reason)


def _why(exc: BaseException) -> str:
    return " ".join((getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).split())


# --------------------------------------------------------------------------- when something goes wrong


def is_ours(exc: BaseException) -> bool:
    """Errors whose message says what to do: simlab's own, and the ValueError / FileNotFoundError /
    RuntimeError simlab raises with such a message."""
    return isinstance(exc, (ValueError, RuntimeError, FileNotFoundError)) or \
        type(exc).__module__.split(".")[0] == "simlab"


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def report_unexpected(exc: BaseException, command: str) -> Path | None:
    """Write ``exc``'s traceback to ``cache/logs/cli-<time>.log`` (or the temp folder if the cache cannot
    be written); returns the file, or None if no file could be written."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    text = (f"python -m simlab {command} (pid {os.getpid()}) failed at {stamp}\n"
            + "".join(traceback.format_exception(exc)))
    for folder in (lambda: cache_dir("logs"), lambda: Path(tempfile.gettempdir())):
        try:
            path = folder() / f"cli-{stamp}.log"
            path.write_text(text)
            return path
        except OSError as write_error:
            log.warning("Cannot write the traceback log: %s", write_error)
    return None


# --------------------------------------------------------------------------- signals


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that what runs unwinds (and closes its runs) as on Ctrl-C."""


@contextlib.contextmanager
def sigterm_raises():
    """While inside, the first SIGTERM raises :class:`Terminated`; later ones are ignored (the first is being
    handled). Outside the main thread (where signals cannot be set) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
