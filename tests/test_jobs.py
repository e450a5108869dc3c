"""The job runner with real worker processes, a real SQLite store and real (tiny) datasets."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simlab import jobs
from simlab.jobs import kinds, reaper
from simlab.paths import REPO_ROOT
from simlab.store import Job, Store

START_TIMEOUT = 120  # a worker imports TensorFlow: slow on a busy 2-core machine
JOB_TIMEOUT = 300


def make_folder_dataset(root: Path, n_groups: int, per_group: int, size: int = 48, seed: int = 0) -> Path:
    """Groups of noisy views of one random colour pattern each, as small JPEGs (folder per group)."""
    rng = np.random.default_rng(seed)
    for g in range(n_groups):
        base = rng.integers(0, 255, (3, 3, 3)).astype(np.uint8)
        folder = root / f"scene{g:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_group):
            img = np.kron(base, np.ones((size // 3, size // 3, 1), np.uint8))
            img = np.clip(img.astype(int) + rng.integers(-15, 15, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"view{k}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """12 groups x 3 images: a grid on it takes seconds."""
    return "folder:" + str(make_folder_dataset(tmp_path_factory.mktemp("tiny"), 12, 3))


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> str:
    """Enough images that vectorising them takes a while (for cancel, restart and kill)."""
    return "folder:" + str(make_folder_dataset(tmp_path_factory.mktemp("big"), 150, 4, seed=1))


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path / "cache"))
    s = Store()
    yield s
    for job in s.list_jobs():  # never leave a worker behind (only a process identified as its worker)
        worker, _ = reaper.worker_of(job)
        if job.status in jobs.ACTIVE and worker is not None:
            with contextlib.suppress(OSError):
                os.killpg(worker.pid, signal.SIGKILL)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_finished(store: Store, job_id: str, timeout: float = JOB_TIMEOUT) -> Job:
    def finished():
        job = store.job(job_id)
        return job if job.status in jobs.FINISHED else None

    try:
        return wait_for(finished, timeout, f"job {job_id} to finish")
    except AssertionError:
        raise AssertionError(f"job {job_id} did not finish: {store.job(job_id)}\n"
                             f"log:\n{jobs.log_tail(job_id, 40)}") from None


def wait_running_with_progress(store: Store, job_id: str) -> Job:
    def running():
        job = store.job(job_id)
        assert job.status in jobs.ACTIVE, f"job ended early: {job}\n{jobs.log_tail(job_id, 40)}"
        return job if job.status == "running" and (job.done or 0) > 0 else None

    return wait_for(running, START_TIMEOUT, f"job {job_id} to report progress")


def pid_gone(pid: int) -> bool:
    return not jobs.pid_alive(pid)


def test_grid_job_runs_in_a_worker_and_lands_its_result(store, tiny):
    job_id = jobs.start_job("grid", {"dataset": tiny, "classifiers": ["cosine", "logreg"], "weights": "random"},
                            store_path=store.path)
    job = store.job(job_id)
    assert job.status in jobs.ACTIVE and job.pid and job.pid != os.getpid()
    job = wait_finished(store, job_id)
    assert job.status == "done", job
    assert job.done == job.total > 0
    result = job.result
    assert len(result["runs"]) == 6 and result["n_runs"] == 6
    assert result["best"]["accuracy"] > 0.5
    runs = store.list_runs(status="done")
    assert {r.id for r in runs} == set(result["runs"])
    assert all(r.job_id == job_id for r in runs)
    assert len(store.predictions(result["runs"][0])) > 0
    assert jobs.log_path(job_id).exists()
    assert wait_for(lambda: pid_gone(job.pid), 30, "the worker to exit")


def test_demo_job_is_the_default_grid_with_overrides(store, tiny):
    job_id = jobs.start_job("demo", {"dataset": tiny, "weights": "random"}, store_path=store.path)
    job = wait_finished(store, job_id)
    assert job.status == "done", job
    runs = store.list_runs(status="done")
    assert len(runs) == 9
    assert {r.merge for r in runs} == {"dot", "l1", "l2"}
    assert {r.classifier for r in runs} == {"cosine", "logreg", "xgboost"}
    assert {r.backbone for r in runs} == {"efficientnet_lite0"}


def test_vectorize_job_reports_progress_and_can_be_cancelled(store, big):
    job_id = jobs.start_job("vectorize", {"dataset": big, "backbones": ["efficientnet_lite0"], "weights": "random"},
                            store_path=store.path)
    job = wait_running_with_progress(store, job_id)
    assert job.total == 600 and 0 < job.done < 600
    assert "img/s" in job.message and "ETA" in job.message
    assert job.heartbeat and time.time() - job.heartbeat < 30
    assert job.fields["stage"] == "vectorize" and job.fields["backbone"] == "efficientnet_lite0"
    assert job.pid_started and job.host
    jobs.cancel_job(job_id, store.path)
    job = wait_finished(store, job_id, timeout=60)
    assert job.status == "cancelled", job
    assert job.done < 600
    assert wait_for(lambda: pid_gone(job.pid), 30, "the cancelled worker to exit")


def test_a_bad_parameter_ends_failed_with_its_message(store, tiny):
    job_id = jobs.start_job("grid", {"dataset": tiny, "classifiers": ["no_such_classifier"], "weights": "random"},
                            store_path=store.path)
    job = wait_finished(store, job_id)
    assert job.status == "failed"
    assert "no_such_classifier" in job.message and "Traceback" not in job.message
    assert "Traceback" in job.error


def test_a_missing_dataset_folder_ends_failed_with_a_clear_message(store, tmp_path):
    missing = tmp_path / "not_there"
    job_id = jobs.start_job("vectorize", {"dataset": f"folder:{missing}", "backbones": ["efficientnet_lite0"],
                                          "weights": "random"}, store_path=store.path)
    job = wait_finished(store, job_id)
    assert job.status == "failed"
    assert "not found" in job.message.lower() and str(missing) in job.message


def test_a_restarted_app_finds_the_running_job_and_its_progress(store, big):
    job_id = jobs.start_job("vectorize", {"dataset": big, "backbones": ["efficientnet_lite0"], "weights": "random"},
                            store_path=store.path)
    wait_running_with_progress(store, job_id)
    # A new process (as after an app restart) reads the same database file.
    code = ("import sys; from simlab.store import Store; from simlab import jobs; "
            "jobs.reap_stale(Store(sys.argv[1])); j = Store(sys.argv[1]).job(sys.argv[2]); "
            "print(j.status, j.done, j.total)")
    out = subprocess.run([sys.executable, "-c", code, str(store.path), job_id], capture_output=True, text=True,
                         timeout=60, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    status, done, total = out.stdout.split()
    assert status == "running" and 0 < int(done) <= int(total) == 600, out
    assert [j.id for j in jobs.active_jobs("vectorize", Store(store.path))] == [job_id]
    jobs.cancel_job(job_id, store.path)
    assert wait_finished(store, job_id, timeout=60).status == "cancelled"


def test_a_killed_worker_is_reaped_as_failed(store, big):
    job_id = jobs.start_job("vectorize", {"dataset": big, "backbones": ["efficientnet_lite0"], "weights": "random"},
                            store_path=store.path)
    job = wait_running_with_progress(store, job_id)
    os.kill(job.pid, signal.SIGKILL)
    wait_for(lambda: pid_gone(job.pid), 30, "the killed worker to disappear")
    assert store.job(job_id).status == "running"  # nobody has looked yet
    assert jobs.reap_stale(store) == [job_id]
    job = store.job(job_id)
    assert job.status == "failed" and job.finished
    assert "worker process died" in job.message
    assert jobs.reap_stale(store) == []


def test_unknown_kinds_are_refused_and_registry_entries_may_be_lazy(store, monkeypatch):
    with pytest.raises(ValueError, match="Unknown job kind"):
        jobs.start_job("no_such_kind", {}, store_path=store.path)
    assert store.list_jobs() == []
    monkeypatch.setitem(jobs.JOB_KINDS, "lazy", "simlab.jobs.kinds:vectorize_job")
    assert jobs.job_function("lazy") is kinds.vectorize_job


def test_cancel_of_a_finished_job_changes_nothing(store):
    job_id = store.add_job("grid", {})
    store.update_job(job_id, status="done")
    jobs.cancel_job(job_id, store.path)
    assert store.job(job_id).status == "done" and not store.job(job_id).cancel


def test_a_terminated_worker_ends_its_job_as_cancelled(store, big):
    job_id = jobs.start_job("vectorize", {"dataset": big, "backbones": ["efficientnet_lite0"], "weights": "random"},
                            store_path=store.path)
    job = wait_running_with_progress(store, job_id)
    os.kill(job.pid, signal.SIGTERM)
    assert wait_finished(store, job_id, timeout=60).status == "cancelled"


def test_a_worker_that_ignores_cancel_is_killed_after_the_grace_period(store, big, monkeypatch):
    job_id = jobs.start_job("vectorize", {"dataset": big, "backbones": ["efficientnet_lite0"], "weights": "random"},
                            store_path=store.path)
    job = wait_running_with_progress(store, job_id)
    jobs.cancel_job(job_id, store.path)
    monkeypatch.setattr(reaper, "CANCEL_GRACE", -1.0)  # the grace period is over at once
    assert jobs.reap_stale(store) == [job_id]
    job = store.job(job_id)
    assert job.status == "cancelled" and "did not stop in time" in job.message
    assert wait_for(lambda: pid_gone(job.pid), 30, "the worker to be killed")


def _wraps_up_after_a_cancel(params, store, progress, should_stop) -> dict:
    """A kind that, like fine-tuning, goes on after a cancel (scores its checkpoint) and reports 1 of 1."""
    progress(3, 10, "epoch 3 of 10")
    jobs.cancel_job(params["job_id"], store.path)  # the user presses Stop here
    assert wait_for(should_stop, 10, "the cancel to be seen")
    progress(0, 0, "Scoring the best checkpoint")
    progress(1, 1, "Stopped and scored")
    return {"status": "cancelled"}


def test_a_cancelled_job_keeps_the_progress_where_it_stopped(store, monkeypatch):
    from simlab.jobs.worker import run_worker

    monkeypatch.setitem(jobs.JOB_KINDS, "wrap_up", _wraps_up_after_a_cancel)
    job_id = store.add_job("wrap_up", {})
    store.update_job(job_id, params={"job_id": job_id})
    assert run_worker(job_id, store.path) == 0  # in this process: the kind is registered here only
    job = store.job(job_id)
    assert job.status == "cancelled"
    assert (job.done, job.total) == (3, 10)  # not 1 of 1: the bar stays where the cancel came
    assert job.fields == {"stage": "cancelled", "stopped_during": "epoch 3 of 10"}


def test_the_demo_generator_reports_each_image_it_writes(tmp_path):
    from simlab.data.demo import Config, generate

    heard = []
    stats = generate(tmp_path / "demo", Config(n_groups=6), workers=1, progress=lambda done, total: heard.append(
        (done, total)))
    assert heard and heard[-1] == (stats["n_images"], stats["n_images"])
    assert [d for d, _ in heard] == sorted(d for d, _ in heard) and {t for _, t in heard} == {stats["n_images"]}


def test_the_start_of_a_job_says_what_it_loads_and_skips_models_it_does_not_need(store, tiny):
    from simlab.data import load_dataset
    from simlab.vectors import vectorize

    messages = []

    def heard(done, total, message="", **fields):
        assert fields["stage"] == "load" and 0 <= done <= total * kinds.LOADED + 1
        messages.append(message)

    dataset = kinds.prepare(tiny, ["efficientnet_lite0"], "random", heard, kinds.SCALE, kinds.LOADED)
    assert dataset.spec == tiny
    assert f"Loading the dataset {tiny}" in messages
    assert "Loading TensorFlow" in messages  # the vectors are not cached: the model is built now
    assert "Loading the backbone efficientnet_lite0 (random weights)" in messages
    assert messages[-1] == "Loaded"
    vectorize(load_dataset(tiny), "efficientnet_lite0", "random")
    messages.clear()
    kinds.prepare(tiny, ["efficientnet_lite0"], "random", heard, kinds.SCALE, kinds.LOADED)
    assert not any("TensorFlow" in m or "backbone" in m for m in messages)  # cached vectors need no model
