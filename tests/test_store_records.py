"""The store's typed records in a real SQLite file: runs filtered by kind whichever way they are asked for,
jobs as :class:`simlab.store.Job` with their duration and elapsed time computed once, and the table of runs
(``python -m simlab runs``) built from the records."""

from __future__ import annotations

import sqlite3
import time

import pytest

from simlab import jobs
from simlab.store import Job, Run, Store
from simlab.store.run import runs_frame


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "simlab.db")


def test_runs_of_a_kind_include_grid_cells_stored_as_pair_and_old_rows(store):
    cell = store.add_run(dataset="demo", backbone="phash", merge="dot", classifier="cosine")  # stored as "pair"
    tuned = store.add_run(dataset="demo", backbone="phash", merge="siamese", classifier="contrastive",
                          kind="finetune", config={"mode": "siamese", "loss": "contrastive"})
    old = store.add_run(dataset="demo", backbone="phash", merge="l1", classifier="cosine")
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE runs SET kind = NULL WHERE id = ?", [old])  # a row from before kinds were stored
    grid = {r.id for r in store.list_runs(kind="grid")}
    assert grid == {cell, old}
    assert {r.id for r in store.list_runs(kind="pair")} == grid  # the stored name still answers
    assert [r.id for r in store.list_runs(kind="finetune")] == [tuned]
    assert {r.id for r in store.list_runs(kind="grid", status="running")} == grid
    assert set(runs_frame(store.list_runs(kind="grid"))["id"]) == grid
    assert set(runs_frame(store.list_runs())["kind"]) == {"pair", "finetune"}  # as the CLI has always printed it


def test_the_store_answers_runs_and_jobs_only_as_typed_records(store):
    for gone in ("get_run", "runs", "get_job", "jobs", "runs_frame"):
        assert not hasattr(Store, gone), f"Store.{gone} still answers"
    run_id = store.add_run(dataset="demo", backbone="phash", merge="dot", classifier="cosine")
    job_id = store.add_job("grid", {"dataset": "demo"})
    assert isinstance(store.get(run_id), Run) and all(isinstance(r, Run) for r in store.list_runs())
    assert isinstance(store.job(job_id), Job) and all(isinstance(j, Job) for j in store.list_jobs())
    assert isinstance(jobs.get_job(job_id, store.path), Job)
    assert [j.id for j in jobs.list_jobs(store.path)] == [job_id] == [j.id for j in jobs.active_jobs("grid", store)]


def test_the_runs_frame_keeps_its_columns(store):
    assert runs_frame(store.list_runs()).empty  # no runs: the CLI says so
    cell = store.add_run(dataset="demo", backbone="phash", merge="dot", classifier="cosine", split="group", seed=3)
    store.finish_run(cell, {"accuracy": 0.75, "auc": 0.8}, timings={"total": 1.5})
    tuned = store.add_run(kind="finetune", dataset="demo", backbone="phash", merge="siamese", classifier="contrastive",
                          config={"mode": "siamese", "loss": "contrastive"})
    store.finish_run(tuned, {"accuracy": 0.5, "map": 0.25})
    frame = runs_frame(store.list_runs())
    assert list(frame.columns) == ["id", "created", "status", "kind", "dataset", "backbone", "merge", "classifier",
                                   "split", "seed", "accuracy", "map", "seconds", "auc"]
    assert frame["id"].tolist() == [tuned, cell] and frame["kind"].tolist() == ["finetune", "pair"]
    assert frame["seconds"].tolist()[1] == 1.5 and frame["auc"].tolist()[1] == 0.8


def test_a_finished_job_reads_back_as_a_record_with_its_duration(store):
    job_id = store.add_job("grid", {"dataset": "demo", "seed": 3})
    store.update_job(job_id, status="done", started=100.0, finished=142.5, done=4, total=4, message="4 runs",
                     result={"runs": 4})
    job = jobs.get_job(job_id, store.path)
    assert isinstance(job, Job) and job == store.job(job_id)
    assert (job.kind, job.status, job.params, job.result, job.message) == ("grid", "done", {"dataset": "demo",
                                                                                           "seed": 3},
                                                                          {"runs": 4}, "4 runs")
    assert not job.active
    assert job.duration == pytest.approx(42.5) and job.elapsed() == pytest.approx(42.5)
    assert job.progress == 1.0
    assert [j.id for j in jobs.list_jobs(store.path)] == [job_id] == [j.id for j in store.list_jobs("done")]


def test_durations_of_running_queued_and_dead_jobs(store):
    running = store.add_job("grid", {})
    store.update_job(running, status="running", started=1000.0, done=1, total=4, pid=None)
    job = store.job(running)
    assert job.active and job.duration is None
    assert job.elapsed(now=1012.0) == pytest.approx(12.0)
    assert job.progress == pytest.approx(0.25)

    queued = store.job(store.add_job("vectorize", {}))
    assert queued.active and queued.start == queued.created and queued.progress is None
    assert queued.elapsed(now=queued.created + 3) == pytest.approx(3.0)

    dead = store.add_job("grid", {})  # a worker that died: no finish time, its last heartbeat ends it
    store.update_job(dead, status="failed", started=50.0, heartbeat=80.0, error="Traceback ...")
    job = store.job(dead)
    assert job.duration == pytest.approx(30.0) and job.error == "Traceback ..."
    cancelled = store.add_job("grid", {})
    store.update_job(cancelled, status="cancelled", started=time.time(), fields={"stopped_during": "vectorising"})
    assert store.job(cancelled).fields == {"stopped_during": "vectorising"}
    assert store.job(cancelled).duration == pytest.approx(0.0)  # never finished, never beat: no time at all
    assert store.job("j-missing") is None
