"""Job kinds by name: each is a dotted path ``"module:function"``, imported only when a worker runs it.

A kind's function is ``fn(params, store, progress, should_stop[, job_id]) -> dict`` where ``progress``
is a :class:`simlab.progress.Progress` and ``should_stop() -> bool``; it raises
:class:`simlab.progress.Cancelled` when asked to stop. Adding a kind is one entry here (and one in
:data:`JOB_LABELS`); nothing is imported until a job of that kind runs, so importing the job runner
never loads TensorFlow.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from simlab.progress import Progress, ShouldStop
from simlab.store import Store

JobFn = Callable[[dict, Store, Progress, ShouldStop], dict]

#: kind -> "module:function" (a function itself is accepted too). Adding a kind is one line.
JOB_KINDS: dict[str, JobFn | str] = {
    "vectorize": "simlab.jobs.kinds:vectorize_job",
    "grid": "simlab.jobs.kinds:grid_job",
    "demo": "simlab.jobs.kinds:demo_job",
    "search": "simlab.jobs.kinds:search_job",
    "finetune": "simlab.finetune.train:finetune_job",
}

#: What each kind does, for pages and the CLI (kinds missing here show their name).
JOB_LABELS = {"vectorize": "Vectorise images", "grid": "Grid of runs", "demo": "Demo experiment",
              "search": "Search", "finetune": "Fine-tune"}


def check_kind(kind: str) -> None:
    """Raise a ValueError naming the known kinds when ``kind`` is not one."""
    if kind not in JOB_KINDS:
        raise ValueError(f"Unknown job kind {kind!r}. Known kinds: {', '.join(JOB_KINDS)}.")


def job_function(kind: str) -> JobFn:
    """The function behind a job kind (imports its module the first time)."""
    check_kind(kind)
    entry = JOB_KINDS[kind]
    if isinstance(entry, str):
        module, _, name = entry.partition(":")
        entry = getattr(importlib.import_module(module), name)
    return entry
