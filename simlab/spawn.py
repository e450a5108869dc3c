"""Process pools whose workers never run the parent's main module.

A ``spawn`` worker re-imports the parent's ``__main__`` before it does anything, to find functions
defined there. simlab's workers need none (they run library functions, imported by name), and the
parent's main may be anything: a Streamlit page, a notebook, a script without a main guard, each of
which would run again in every worker, or crash it. So every worker, also one a pool starts later
to replace a dead one, is launched with a bare ``__main__`` in view. Kept small: a worker unpickles
its process object, and so imports this module, before it starts.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import types
from multiprocessing import context, pool

_SWAP = threading.Lock()


@contextlib.contextmanager
def _bare_main():
    """``sys.modules["__main__"]`` is an empty module for the duration (the launch of one worker)."""
    with _SWAP:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            sys.modules["__main__"] = main


class BareMainProcess(context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj):
        with _bare_main():
            return context.SpawnProcess._Popen(process_obj)


class BareMainContext(context.SpawnContext):
    Process = BareMainProcess


def process_pool(workers: int) -> pool.Pool:
    """A ``multiprocessing`` pool of ``workers`` spawned processes, none of which imports ``__main__``."""
    return pool.Pool(workers, context=BareMainContext())
