"""Background work: each job runs in its own worker process and reports through the store.

A page (or the CLI) calls :func:`start_job`; the worker (``python -m simlab.jobs JOB_ID STORE``,
:mod:`simlab.jobs.worker`) runs the job's function, writes progress, result or error to the store's
``jobs`` table, and checks the cancel flag between batches. The worker is started in a new session,
so a Streamlit rerun or restart never stops it; :func:`reap_stale` marks jobs whose worker died as
failed. A worker is known by its pid, its start time and the job id in its command line: a pid the
system has given to another process is never signalled. The same request made twice while its job is
queued or running (a second tab, the CLI while the app runs it) gets that job's id, not a second job.

    base.py      job states, the store to use, each job's log file
    registry.py  job kinds by name ("module:function", imported lazily) and their labels
    kinds.py     vectorize, grid, demo and search
    table.py     start_job, cancel_job; get_job, list_jobs, active_jobs (typed Job records)
    request.py   request_params: a job's params with their paths resolved (folder:X/ and folder:X: one job)
    worker.py    run_worker, the heartbeat and the progress reporter
    reaper.py    reap_stale, worker_of (the worker of a job, if it still runs)

Adding a kind is one entry in :data:`JOB_KINDS` (see :mod:`simlab.jobs.registry`).
"""

from simlab.jobs.base import ACTIVE, FINISHED, log_path, log_tail
from simlab.jobs.reaper import pid_alive, reap_stale, worker_of
from simlab.jobs.registry import JOB_KINDS, JOB_LABELS, job_function
from simlab.jobs.table import active_jobs, cancel_job, get_job, list_jobs, start_job

__all__ = ["ACTIVE", "FINISHED", "JOB_KINDS", "JOB_LABELS", "active_jobs", "cancel_job", "get_job", "job_function",
           "list_jobs", "log_path", "log_tail", "pid_alive", "reap_stale", "start_job", "worker_of"]
