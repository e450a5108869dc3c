"""Processes that end, pids that are reused, requests made twice, a store on a full or read-only disk:
real processes, real signals and real (tmpfs) disks; no worker here gets to load TensorFlow."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import simlab.store
from simlab import jobs
from simlab.paths import REPO_ROOT
from simlab.store import HOST, INTERRUPTED, Store, StoreError, StoreFull
from simlab.store.run import runs_frame

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p))


@pytest.fixture
def store(tmp_path, monkeypatch) -> Store:
    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(simlab.store, "REAP_INTERVAL", 0.0)  # every read looks for orphans
    return Store()


@pytest.fixture
def bystander():
    """An unrelated process (``sleep 600``, leading its own process group as a worker does)."""
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def still_running(proc: subprocess.Popen, wait: float = 0.3) -> bool:
    time.sleep(wait)  # a SIGKILL sent would have landed by now
    return proc.poll() is None


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def running_job(store: Store, **fields) -> str:
    """A job row left "running" by a worker that crashed long ago."""
    job_id = store.add_job("vectorize", {"dataset": "demo"})
    store.update_job(job_id, status="running", heartbeat=time.time() - 1000, **fields)
    return job_id


def workers_of(job_id: str) -> list[psutil.Process]:
    """Live worker processes of a job (``python -m simlab.jobs JOB_ID ...``), found by command line."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if "simlab.jobs" in cmd and job_id in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


# --------------------------------------------------------------------------- 1: a reused pid is never signalled


def test_a_dead_workers_pid_now_used_by_another_process_is_not_killed(store, bystander):
    started = psutil.Process(bystander.pid).create_time()
    job_id = running_job(store, pid=bystander.pid, pid_started=started - 3600, host=HOST)
    assert jobs.reap_stale(store) == [job_id]
    assert still_running(bystander)
    job = store.job(job_id)
    assert job.status == "failed" and "worker process died" in job.message
    assert f"pid {bystander.pid} now belongs to another process" in job.message


def test_an_old_row_without_a_start_time_is_told_by_the_job_id_in_the_command_line(store, bystander):
    job_id = running_job(store, pid=bystander.pid)  # as written by a simlab before start times were stored
    assert jobs.reap_stale(store) == [job_id]
    assert still_running(bystander)
    assert store.job(job_id).status == "failed"


def test_an_overdue_cancel_never_kills_a_process_that_is_not_the_worker(store, bystander):
    started = psutil.Process(bystander.pid).create_time()
    job_id = running_job(store, pid=bystander.pid, pid_started=started, host=HOST, cancel=int(time.time()) - 600)
    store.update_job(job_id, heartbeat=time.time())  # even one that looks alive and recent
    assert jobs.reap_stale(store) == [job_id]
    assert still_running(bystander)
    assert store.job(job_id).status == "cancelled"


def test_a_job_of_another_machine_is_never_signalled_here(store, bystander):
    job_id = running_job(store, pid=bystander.pid, pid_started=psutil.Process(bystander.pid).create_time(),
                         host="another-machine")
    assert jobs.reap_stale(store) == [job_id]  # silent for 1000 s: failed, nothing signalled
    assert still_running(bystander)
    assert "another-machine stopped responding" in store.job(job_id).message


def test_a_hung_worker_identified_by_pid_start_time_and_job_id_is_killed(store):
    job_id = store.add_job("vectorize", {})
    # Stands in for a hung ``python -m simlab.jobs JOB_ID STORE``: the job id and module in its command line.
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "simlab.jobs", job_id],
                              start_new_session=True)
    try:
        store.update_job(job_id, status="running", pid=worker.pid, host=HOST, heartbeat=time.time() - 1000,
                         pid_started=psutil.Process(worker.pid).create_time())
        assert jobs.reap_stale(store) == [job_id]
        assert worker.wait(10) == -signal.SIGKILL
        assert "stopped responding" in store.job(job_id).message
    finally:
        worker.kill()
        worker.wait()


# --------------------------------------------------------------------------- 2: runs carry their owner

OPEN_A_RUN = ("import sys, time; from simlab.store import Store; "
              "print(Store(sys.argv[1]).add_run(dataset='demo', backbone='b', merge='dot', classifier='cosine'), "
              "flush=True); time.sleep(600)")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_run_whose_process_was_killed_reads_back_failed(store, sig):
    proc = subprocess.Popen([sys.executable, "-c", OPEN_A_RUN, str(store.path)], stdout=subprocess.PIPE, text=True,
                            env=ENV)
    try:
        run_id = proc.stdout.readline().strip()
        run = store.get(run_id)
        assert run.status == "running" and (run.owner_pid, run.owner_host) == (proc.pid, HOST)
        assert run.owner_started == pytest.approx(psutil.Process(proc.pid).create_time(), abs=2)
        assert run.heartbeat and time.time() - run.heartbeat < 30
        proc.send_signal(sig)
        proc.wait(10)
    finally:
        proc.kill()
    assert [(r.id, r.status, r.error) for r in store.list_runs()] == [(run_id, "failed", INTERRUPTED)]
    assert runs_frame(store.list_runs())["status"].tolist() == ["failed"]
    assert store.get(run_id).finished


def test_a_run_whose_pid_now_names_another_process_is_reaped_without_touching_it(store, bystander):
    started = psutil.Process(bystander.pid).create_time()
    orphan = store.add_run(dataset="d", owner_pid=bystander.pid, owner_started=started - 3600)
    alive = store.add_run(dataset="d", owner_pid=bystander.pid, owner_started=started)
    elsewhere = store.add_run(dataset="d", owner_pid=bystander.pid, owner_started=0.0, owner_host="another-machine")
    mine = store.add_run(dataset="d")
    status = {r.id: r.status for r in store.list_runs()}
    assert status == {orphan: "failed", alive: "running", elsewhere: "running", mine: "running"}
    assert still_running(bystander)


def test_a_run_of_an_ended_job_is_reaped_even_without_an_owner(store):
    job_id = store.add_job("grid", {})
    store.update_job(job_id, status="failed")
    run_id = store.add_run(dataset="d", job_id=job_id, owner_pid=None, owner_started=None, owner_host=None)
    assert store.get(run_id).error == "interrupted (its job ended failed)"


def test_a_process_marks_its_own_runs_interrupted(store, bystander):
    mine = store.add_run(dataset="d")
    theirs = store.add_run(dataset="d", owner_pid=bystander.pid,
                           owner_started=psutil.Process(bystander.pid).create_time())
    assert store.interrupt_runs("interrupted (SIGTERM)") == [mine]
    assert (store.get(mine).status, store.get(mine).error) == ("failed", "interrupted (SIGTERM)")
    assert store.get(theirs).status == "running"


def test_readers_look_for_orphans_at_most_every_few_seconds(store, monkeypatch):
    monkeypatch.setattr(simlab.store, "REAP_INTERVAL", 60.0)
    store.reap_orphan_runs(force=True)
    run_id = store.add_run(dataset="d", owner_pid=2**22 + 7, owner_started=1.0)  # a pid no process has
    assert store.get(run_id).status == "running"
    assert store.reap_orphan_runs(force=True) == [run_id]


# --------------------------------------------------------------------------- 13: one job per request


QUICK = {"dataset": "demo", "query": ""}  # a search job that fails at once, without loading a model


def end_job(store: Store, job_id: str) -> None:
    jobs.cancel_job(job_id, store.path)
    wait_for(lambda: not workers_of(job_id), 30, f"the worker of {job_id} to exit")


def test_the_same_request_twice_is_one_job_and_one_worker(store):
    first = jobs.start_job("search", QUICK, store_path=store.path)
    try:
        second = jobs.start_job("search", {"query": "", "dataset": "demo"}, store_path=store.path)
        assert second == first
        assert [j.id for j in store.list_jobs()] == [first]
        assert len(workers_of(first)) <= 1 and sum(len(workers_of(j.id)) for j in store.list_jobs()) <= 1
        other = jobs.start_job("search", {**QUICK, "k": 5}, store_path=store.path)
        assert other != first
        end_job(store, other)
    finally:
        end_job(store, first)


def test_a_request_starts_again_once_its_job_has_ended_or_is_being_cancelled(store):
    first = jobs.start_job("search", QUICK, store_path=store.path)
    jobs.cancel_job(first, store.path)
    second = jobs.start_job("search", QUICK, store_path=store.path)
    assert second != first
    end_job(store, first)
    end_job(store, second)
    wait_for(lambda: store.job(second).status in jobs.FINISHED, 30, "the job to end")
    third = jobs.start_job("search", QUICK, store_path=store.path)
    assert third not in (first, second)
    end_job(store, third)


def test_processes_asking_at_once_get_one_job(store):
    code = ("import sys; from simlab import jobs; "
            "print(jobs.start_job('search', {'dataset': 'demo', 'query': ''}, store_path=sys.argv[1]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(store.path)], stdout=subprocess.PIPE, text=True,
                              env=ENV) for _ in range(4)]
    ids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(ids) == 1 and [j.id for j in store.list_jobs()] == list(ids)
    end_job(store, ids.pop())


# --------------------------------------------------------------------------- 9: a store that cannot be written


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs mounted for the test (needs root; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill the disk to the last byte; the filler file, to remove for room again."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as out:
        for chunk in (2**20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * chunk)
    return filler


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_a_full_disk_is_one_clear_line_and_leaves_no_run_running(small_disk):
    path = small_disk / "simlab.db"
    store = Store(path)
    code = ("import sys; from simlab.store import Store, StoreError\n"
            "s = Store(sys.argv[1]); run = s.add_run(dataset='demo'); print(run, flush=True); sys.stdin.readline()\n"
            "try:\n    s.finish_run(run, {'accuracy': 1.0})\n"
            "except StoreError as exc:\n    print(exc); sys.exit(1)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=ENV)
    run_id = proc.stdout.readline().strip()
    filler = fill(small_disk)
    with pytest.raises(StoreFull) as full:
        store.check_writable()
    assert str(path) in one_line(full.value) and "disk is full" in str(full.value)
    with pytest.raises(StoreFull) as full:
        store.check_writable(min_free=0)  # the real write fails too
    assert "Free space on" in one_line(full.value)
    out, _ = proc.communicate("go\n", timeout=30)
    assert proc.returncode == 1 and out.strip().startswith(f"{path}: the disk is full")
    filler.unlink()
    assert [(r.id, r.status, r.error) for r in store.list_runs()] == [(run_id, "failed", INTERRUPTED)]


def test_a_read_only_store_is_refused_before_any_work(small_disk, monkeypatch):
    monkeypatch.setenv("SIMLAB_CACHE", str(small_disk))
    path = small_disk / "simlab.db"
    Store(path).add_run(dataset="demo")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(StoreError) as refused:
        Store(path).check_writable()
    assert not isinstance(refused.value, StoreFull)
    assert str(path) in one_line(refused.value) and "cannot be written" in str(refused.value)
    with pytest.raises(StoreError):
        jobs.start_job("search", QUICK, store_path=path)
    assert not [p for p in psutil.Process().children(recursive=True) if "simlab.jobs" in p.cmdline()]


# --------------------------------------------------------------------------- a cancel while a job loads


def test_loading_a_grid_stops_at_the_first_check_after_a_cancel(tmp_path, monkeypatch):
    """Each loading step is behind a cancel check: a job cancelled from the start loads nothing, and a step
    that is running (an import, a dataset being hashed) is given up at the next check, left to end alone."""
    import threading

    from conftest import make_folder

    from simlab.jobs.kinds import prepare
    from simlab.jobs.worker import until_stopped
    from simlab.progress import Cancelled

    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path / "cache"))
    make_folder(tmp_path / "ds", [2, 2])
    heard = []
    with pytest.raises(Cancelled, match="before loading the dataset"):
        prepare(f"folder:{tmp_path / 'ds'}", ["efficientnet_lite0"], "random",
                lambda done, total, message="", **f: heard.append(message), 1000, 0.1, should_stop=lambda: True)
    assert not any("TensorFlow" in m or "backbone" in m for m in heard), heard
    assert not (tmp_path / "cache" / "datasets" / "files.sqlite").exists()  # not one file was checked

    never, asked = threading.Event(), []
    with pytest.raises(Cancelled, match="while importing"):  # a step that would never end by itself
        until_stopped(never.wait, lambda: asked.append(1) or len(asked) > 3, "importing")
    assert len(asked) == 4


def test_a_grid_cancelled_while_it_loads_ends_cancelled_with_no_run(store, tmp_path):
    """The probe: a cancel in the first seconds of a grid job (the worker importing its libraries, loading
    the dataset or TensorFlow) ends the job "cancelled" and stores no run at all."""
    from conftest import make_folder

    make_folder(tmp_path / "ds", [3, 3, 3, 3])
    params = {"dataset": f"folder:{tmp_path / 'ds'}", "backbones": ["efficientnet_lite0"], "merges": ["dot", "l1"],
              "classifiers": ["cosine", "logreg"], "weights": "random"}
    job_id = jobs.start_job("grid", params, store_path=store.path)
    wait_for(lambda: store.job(job_id).status != "queued", 120, "the worker to start")
    jobs.cancel_job(job_id, store.path)
    wait_for(lambda: store.job(job_id).status in jobs.FINISHED, 120, "the job to end")
    job = store.job(job_id)
    assert job.status == "cancelled" and job.message == "Stopped on request."
    assert (job.done or 0) <= 100  # on the bar, loading is the first tenth: it never got past it
    assert store.list_runs() == []
    wait_for(lambda: not workers_of(job_id), 60, "the worker to exit")


def _finishes_then_sees_a_cancel(params, store, progress, should_stop) -> dict:
    """A kind whose work is all done when it first notices the cancel (a grid whose last runs just landed)."""
    progress(3, 4, "3 of 4 runs done")
    jobs.cancel_job(params["job_id"], store.path)
    wait_for(should_stop, 10, "the cancel to be seen")
    progress(4, 4, "4 runs done")
    return {"runs": 4}


def test_a_job_that_finished_its_work_before_seeing_the_cancel_reads_done(store, monkeypatch):
    """Never "cancelled at 75%" beside four runs stored done: a job that did all its work is done."""
    from simlab.jobs.worker import run_worker

    monkeypatch.setitem(jobs.JOB_KINDS, "finishes", _finishes_then_sees_a_cancel)
    job_id = store.add_job("finishes", {})
    store.update_job(job_id, params={"job_id": job_id})
    assert run_worker(job_id, store.path) == 0
    job = store.job(job_id)
    assert job.status == "done" and (job.done, job.total) == (4, 4)
    assert job.message == "Done: the cancel came after the work was finished."
    assert job.result == {"runs": 4}


# --------------------------------------------------------------------------- one request, however it is written


def test_one_dataset_written_three_ways_is_one_request_and_one_job(store, tmp_path, monkeypatch):
    from conftest import make_folder

    make_folder(tmp_path / "ds", [2, 2])
    monkeypatch.chdir(tmp_path)
    params = {"backbones": ["efficientnet_lite0"], "weights": "random"}
    first = jobs.start_job("vectorize", {"dataset": f"folder:{tmp_path / 'ds'}/", **params}, store_path=store.path)
    try:
        assert jobs.start_job("vectorize", {"dataset": f"folder:{tmp_path / 'ds'}", **params},
                              store_path=store.path) == first
        assert jobs.start_job("vectorize", {"dataset": "folder:./ds", **params}, store_path=store.path) == first
        assert jobs.start_job("vectorize", {"dataset": str(tmp_path / "ds"), **params}, store_path=store.path) == first
        assert [j.id for j in store.list_jobs()] == [first] and len(workers_of(first)) <= 1
        assert store.job(first).params["dataset"] == f"folder:{tmp_path / 'ds'}"
    finally:
        end_job(store, first)


# --------------------------------------------------------------------------- runs owned elsewhere: a heartbeat bound


def test_a_run_on_another_machine_is_reaped_once_its_heartbeat_is_older_than_the_bound(store):
    now = time.time()
    bound = simlab.store.RUN_STALE_AFTER
    silent = store.add_run(dataset="d", owner_pid=4242, owner_started=1.0, owner_host="another-machine",
                           heartbeat=now - bound - 60)
    beating = store.add_run(dataset="d", owner_pid=4242, owner_started=1.0, owner_host="another-machine",
                            heartbeat=now - bound / 2)
    status = {r.id: (r.status, r.error) for r in store.list_runs()}
    assert status[beating] == ("running", None)
    assert status[silent][0] == "failed"
    assert re.fullmatch(r"interrupted \(its process on another-machine wrote no heartbeat for \d+ s\)",
                        status[silent][1])


def test_a_run_whose_job_still_beats_is_not_reaped_and_an_old_run_with_no_owner_is(store):
    old = time.time() - simlab.store.RUN_STALE_AFTER - 60
    job_id = store.add_job("grid", {})
    store.update_job(job_id, status="running", host="another-machine", heartbeat=time.time())
    of_job = store.add_run(dataset="d", job_id=job_id, owner_host="another-machine", heartbeat=old)
    ownerless = store.add_run(dataset="d", owner_pid=None, owner_started=None, owner_host=None, heartbeat=None,
                              created=old)
    status = {r.id: r.status for r in store.list_runs()}
    assert status == {of_job: "running", ownerless: "failed"}


def test_the_job_reaper_reaps_silent_runs_whatever_the_host(store):
    run_id = store.add_run(dataset="d", owner_pid=4242, owner_started=1.0, owner_host="another-machine",
                           heartbeat=time.time() - simlab.store.RUN_STALE_AFTER - 1)
    jobs.reap_stale(store)
    with contextlib.closing(sqlite3.connect(store.path)) as db:  # read without a reader's own look for orphans
        assert db.execute("SELECT status FROM runs WHERE id = ?", [run_id]).fetchone()[0] == "failed"


BEATING_RUN = ("import sys, time; import simlab.store as s; s.RUN_BEAT_INTERVAL = 0.2; "
               "print(s.Store(sys.argv[1]).add_run(dataset='demo'), flush=True); time.sleep(600)")


def test_a_process_beats_the_heartbeat_of_its_open_runs(store):
    proc = subprocess.Popen([sys.executable, "-c", BEATING_RUN, str(store.path)], stdout=subprocess.PIPE, text=True,
                            env=ENV)
    try:
        run_id = proc.stdout.readline().strip()
        first = store.get(run_id).heartbeat
        wait_for(lambda: store.get(run_id).heartbeat > first + 0.3, 30, "the run's heartbeat to move on")
        assert store.get(run_id).status == "running"
    finally:
        proc.kill()
        proc.wait()
