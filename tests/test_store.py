import os
import subprocess
import sys

import pandas as pd
import pytest

from simlab.store import Store


def _writer(path, worker, n):
    store = Store(path)
    for i in range(n):
        run_id = store.add_run(dataset="d", backbone=f"b{worker}", merge="dot", classifier="cosine")
        preds = pd.DataFrame({"left_path": [f"{worker}-{i}"] * 50, "right_path": ["x"] * 50, "left_group": ["1"] * 50,
                              "right_group": ["2"] * 50, "label": [0] * 50, "prob": [0.1] * 50})
        store.finish_run(run_id, {"accuracy": i / n}, preds, timings={"total": 0.1})
        store.add_curve_points(run_id, [(i, 0, "loss", 1.0)])


def test_two_processes_writing_at_once_do_not_corrupt_the_store(tmp_path):
    path = tmp_path / "s.db"
    Store(path)
    # Separate interpreters (not multiprocessing: other tests' Streamlit scripts may have replaced __main__).
    code = "import sys; from test_store import _writer; _writer(sys.argv[1], int(sys.argv[2]), 25)"
    env = os.environ | {"PYTHONPATH": os.pathsep.join([os.getcwd(), os.path.dirname(__file__)])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(w)], env=env) for w in range(2)]
    for p in procs:
        assert p.wait(120) == 0
    store = Store(path)
    runs = store.runs()
    assert len(runs) == 50 and all(r["status"] == "done" for r in runs)
    assert all(len(store.predictions(r["id"])) == 50 for r in runs)
    frame = store.runs_frame()
    assert set(frame["backbone"]) == {"b0", "b1"} and "accuracy" in frame


def test_run_lifecycle_and_delete(tmp_path):
    store = Store(tmp_path / "s.db")
    run_id = store.add_run(dataset="demo", backbone="b", merge="l1", classifier="rf", config={"seed": 3})
    assert store.get_run(run_id)["status"] == "running"
    assert store.get_run(run_id)["config"] == {"seed": 3}
    store.update_run(run_id, status="failed", error="ValueError: boom")
    assert store.runs(status="failed")[0]["error"] == "ValueError: boom"
    store.add_curve_points(run_id, [(0, 0, "batch_loss", 0.7), (1, 0, "batch_loss", 0.6)])
    assert list(store.curves(run_id)["value"]) == [0.7, 0.6]
    store.delete_run(run_id)
    assert store.get_run(run_id) is None and store.curves(run_id).empty


def test_jobs_table(tmp_path):
    store = Store(tmp_path / "s.db")
    job = store.add_job("grid", {"dataset": "demo"})
    assert store.get_job(job)["status"] == "queued"
    store.update_job(job, status="running", done=3, total=9, message="3 of 9")
    j = store.get_job(job)
    assert (j["done"], j["total"], j["params"]) == (3, 9, {"dataset": "demo"})
    assert [x["id"] for x in store.jobs(status="running")] == [job]


def test_jobs_keep_their_progress_fields_and_one_job_per_request(tmp_path):
    store = Store(tmp_path / "s.db")
    job = store.add_job("vectorize", {"dataset": "demo", "backbones": ["b"]})
    store.update_job(job, fields={"stage": "vectorize", "backbone": "b", "rate": 12.5, "eta": 3.0})
    assert store.get_job(job)["fields"] == {"stage": "vectorize", "backbone": "b", "rate": 12.5, "eta": 3.0}
    assert store.add_job_once("vectorize", {"backbones": ["b"], "dataset": "demo"}) == (job, False)
    other, new = store.add_job_once("vectorize", {"dataset": "demo", "backbones": ["c"]})
    assert new and other != job
    store.update_job(job, status="done")
    again, new = store.add_job_once("vectorize", {"dataset": "demo", "backbones": ["b"]})
    assert new and again not in (job, other)


def test_runs_carry_their_owner_and_a_heartbeat(tmp_path):
    from simlab.store import HOST, process_started

    store = Store(tmp_path / "s.db")
    run_id = store.add_run(dataset="demo", backbone="b", merge="l1", classifier="rf")
    run = store.get(run_id)
    assert (run.owner_pid, run.owner_started, run.owner_host) == (os.getpid(), process_started(), HOST)
    first = run.heartbeat
    store.add_curve_points(run_id, [(0, 0, "loss", 1.0)])
    assert store.get(run_id).heartbeat >= first and store.get(run_id).status == "running"


def test_check_writable_passes_on_a_writable_store_and_names_the_file_when_the_disk_is_short(tmp_path):
    from simlab.store import StoreFull

    store = Store(tmp_path / "s.db")
    store.check_writable()
    with pytest.raises(StoreFull) as short:
        store.check_writable(min_free=2**62)
    assert str(tmp_path / "s.db") in str(short.value) and "\n" not in str(short.value)


def test_typed_runs_name_what_ran(tmp_path):
    from simlab.store import Run

    store = Store(tmp_path / "s.db")
    grid = store.add_run(dataset="demo", backbone="b", merge="l1", classifier="rf", split="pair", seed=3,
                         config={"split": "pair", "seed": 3, "negatives": "same_left", "weights": "random"})
    head = store.add_run(kind="finetune", dataset="demo", backbone="b", merge="head-l1", classifier="finetune-head+aug",
                         config={"mode": "head", "merge": "l1", "augment": True, "unfreeze": 2, "split": "group"})
    assert [r.id for r in store.list_runs(kind="grid")] == [grid]
    assert store.get(grid).protocol.to_dict() == {"split": "pair", "test_size": 0.3, "negatives": "same_left",
                                                  "negative_ratio": 1.0, "seed": 3, "weights": "random", "hard_k": None}
    tuned = store.get(head)
    assert (tuned.mode, tuned.head_merge, tuned.loss) == ("head", "l1", None)
    assert tuned.label == "fine-tune of b: head on l1, augmented, top 2 layers trained"
    assert Run.from_row(store.get_run(head)) == tuned and Run.from_row(tuned.to_row()) == tuned


def test_a_stored_protocol_out_of_todays_bounds_still_shows(tmp_path):
    store = Store(tmp_path / "s.db")
    run = store.add_run(dataset="demo", backbone="b", merge="dot", classifier="rf", config={"negative_ratio": 0})
    assert store.get(run).protocol.negative_ratio == 0
