"""One Progress signature through the CLI bar, the grid job's bar and the worker (in this process)."""

from __future__ import annotations

import io
import logging

import pytest

from simlab import jobs
from simlab.cli.progress_bar import ProgressBar, show_speed
from simlab.jobs import kinds
from simlab.jobs.worker import run_worker
from simlab.progress import Cancelled
from simlab.store import Store


def test_the_bar_draws_counts_and_the_described_text():
    out = io.StringIO()
    bar = ProgressBar(out, describe=show_speed)
    bar(10, 10, "efficientnet_lite0: 10/10 images", stage="vectorize", rate=12.34, eta=0.0)
    line = out.getvalue()
    assert line.startswith("\r[" + "#" * 30 + "] 10/10 12.3 img/s, ETA 0 s") and line.endswith("\n")
    plain = io.StringIO()
    ProgressBar(plain)(0, 4, "now: dot + cosine", stage="train")
    assert "0/4 now: dot + cosine" in plain.getvalue() and not plain.getvalue().endswith("\n")


def test_the_grid_bar_places_each_backbone_by_its_field_not_its_message():
    seen = []
    report = kinds._grid_bar(lambda done, total, message="", **fields: seen.append((done, total, fields)),
                             ["vgg16", "resnet50"])
    vectorising = kinds.SCALE * (0.5 - kinds.LOADED)  # the vectors' share of the bar, after loading
    report(5, 10, "any wording at all", stage="vectorize", backbone="resnet50", rate=1.0, eta=5.0)
    assert seen[0] == (int(kinds.SCALE * kinds.LOADED + vectorising * 0.25), 1000,
                       {"stage": "vectorize", "backbone": "resnet50", "rate": 1.0, "eta": 5.0})
    # one decode feeds both backbones: they advance together and the bar never steps back
    report(4, 10, "", stage="vectorize", backbone="vgg16")
    report(10, 10, "", stage="vectorize", backbone="resnet50")
    assert [d for d, *_ in seen] == sorted(d for d, *_ in seen)
    assert seen[-1][0] == int(kinds.SCALE * kinds.LOADED + vectorising * 0.7)
    report(1, 4, "now: dot + cosine", stage="train")
    assert seen[-1][:2] == (625, 1000) and seen[-1][2]["stage"] == "train"


def counting_job(params, store, progress, should_stop):
    logging.getLogger("simlab.jobs.test").info("counting to %d", params["n"])
    for i in range(params["n"] + 1):
        progress(i, params["n"], f"{i} counted", stage="count")
    if params.get("stop"):
        store.update_job(params["job"], cancel=1)
        while not should_stop():
            pass
        raise Cancelled("stopped while counting")
    return {"counted": params["n"]}


@pytest.fixture
def store(tmp_cache, monkeypatch):
    monkeypatch.setitem(jobs.JOB_KINDS, "count", counting_job)
    return Store()


def test_a_worker_logs_to_the_jobs_log_file_and_lands_the_result(store):
    job_id = store.add_job("count", {"n": 3})
    assert run_worker(job_id, store.path) == 0
    job = store.job(job_id)
    assert job.status == "done" and job.result == {"counted": 3} and job.done == job.total == 3
    text = jobs.log_path(job_id).read_text()
    assert f"Job {job_id} (count) started" in text and "counting to 3" in text and f"Job {job_id} done" in text


def test_cancelled_raised_after_a_cancel_request_ends_the_job_as_cancelled(store):
    job_id = store.add_job("count", {"n": 2, "stop": True})
    store.update_job(job_id, params={"n": 2, "stop": True, "job": job_id})
    assert run_worker(job_id, store.path) == 0
    job = store.job(job_id)
    assert job.status == "cancelled" and job.message == "Stopped on request."
