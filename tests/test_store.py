import contextlib
import json
import os
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simlab.store import CorruptRun, Store, StoreCorrupt, StoreTooNew
from simlab.store.run import runs_frame


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
    runs = store.list_runs()
    assert len(runs) == 50 and all(r.status == "done" for r in runs)
    assert all(len(store.predictions(r.id)) == 50 for r in runs)
    frame = runs_frame(runs)
    assert set(frame["backbone"]) == {"b0", "b1"} and "accuracy" in frame


def test_run_lifecycle_and_delete(tmp_path):
    store = Store(tmp_path / "s.db")
    run_id = store.add_run(dataset="demo", backbone="b", merge="l1", classifier="rf", config={"seed": 3})
    assert store.get(run_id).status == "running"
    assert store.get(run_id).config == {"seed": 3}
    store.update_run(run_id, status="failed", error="ValueError: boom")
    assert store.list_runs(status="failed")[0].error == "ValueError: boom"
    store.add_curve_points(run_id, [(0, 0, "batch_loss", 0.7), (1, 0, "batch_loss", 0.6)])
    assert list(store.curves(run_id)["value"]) == [0.7, 0.6]
    store.delete_run(run_id)
    assert store.get(run_id) is None and store.curves(run_id).empty


def test_jobs_table(tmp_path):
    store = Store(tmp_path / "s.db")
    job = store.add_job("grid", {"dataset": "demo"})
    assert store.job(job).status == "queued"
    store.update_job(job, status="running", done=3, total=9, message="3 of 9")
    j = store.job(job)
    assert (j.done, j.total, j.params) == (3, 9, {"dataset": "demo"})
    assert [x.id for x in store.list_jobs(status="running")] == [job]


def test_jobs_keep_their_progress_fields_and_one_job_per_request(tmp_path):
    store = Store(tmp_path / "s.db")
    job = store.add_job("vectorize", {"dataset": "demo", "backbones": ["b"]})
    store.update_job(job, fields={"stage": "vectorize", "backbone": "b", "rate": 12.5, "eta": 3.0})
    assert store.job(job).fields == {"stage": "vectorize", "backbone": "b", "rate": 12.5, "eta": 3.0}
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
    assert Run.from_row(tuned.to_row()) == tuned


def test_a_stored_protocol_out_of_todays_bounds_still_shows(tmp_path):
    store = Store(tmp_path / "s.db")
    run = store.add_run(dataset="demo", backbone="b", merge="dot", classifier="rf", config={"negative_ratio": 0})
    assert store.get(run).protocol.negative_ratio == 0


# --------------------------------------------------------------------------- rows read one by one

RUN_COLUMNS = ["id", "created", "finished", "status", "kind", "dataset", "fingerprint", "backbone", "merge",
               "classifier", "split", "seed", "config", "metrics", "timings", "versions", "git", "error", "job_id",
               "artifacts", "owner_pid", "owner_started", "owner_host", "heartbeat", "threshold"]
PREDS = pd.DataFrame({"left_path": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "right_path": ["e.jpg"] * 4,
                      "left_group": ["1", "2", "3", "4"], "right_group": ["1", "3", "3", "5"],
                      "label": [1, 0, 1, 0], "prob": [0.9, 0.2, 0.6, 0.4]})

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=3), max_leaves=8)
#: Whatever SQLite can hold: NULL, integers, reals (inf included), text (JSON or not, and bytes that are not
#: UTF-8, written as text), blobs.
stored = (st.none() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20)
          | st.binary(max_size=20) | json_values.map(json.dumps)
          | st.binary(min_size=1, max_size=8).map(lambda b: ("text", b)))


def finished_run(store: Store, **fields) -> str:
    run_id = store.add_run(dataset="demo", backbone="b", merge="dot", classifier="cosine",
                           config={"backbones": ["b"], "merges": ["dot"], "seed": 0}, **fields)
    store.finish_run(run_id, {"accuracy": 0.75, "auc": 0.8, "accuracy_lo": 0.5, "accuracy_hi": 1.0, "n_test": 4},
                     PREDS, timings={"total": 1.5})
    return run_id


def write(path, sql: str, value) -> None:
    """Run ``sql`` with its one ``?`` bound to ``value`` as it is (``("text", bytes)``: those bytes stored as
    TEXT, UTF-8 or not)."""
    if isinstance(value, tuple):
        sql, value = sql.replace("?", "CAST(? AS TEXT)"), value[1]
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(sql, [value])


@pytest.fixture(scope="module")
def fuzzed_store(tmp_path_factory):
    return Store(tmp_path_factory.mktemp("fuzz") / "s.db")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(column=st.sampled_from(RUN_COLUMNS), value=stored)
def test_any_value_in_any_column_of_a_run_row_reads_or_is_one_corrupt_run(fuzzed_store, column, value):
    store = fuzzed_store
    good, bad = finished_run(store), finished_run(store)
    write(store.path, f"UPDATE runs SET {column} = ? WHERE id = '{bad}'", value)
    corrupt = store.corrupt_runs()
    listed = [r.id for r in store.list_runs()]
    assert good in listed and len(runs_frame(store.list_runs())) == len(listed)
    for run in store.list_runs():  # every run that reads can be drawn
        run.protocol.describe(), run.label, run.method, run.threshold_rule
        assert all(isinstance(run.metrics.get(k), (int, float, type(None))) for k in ("accuracy", "auc"))
        assert isinstance(run.created, (int, float)) and isinstance(run.status, str) and 0 <= run.threshold <= 1
    if corrupt:
        assert len(corrupt) == 1 and bad not in listed
        assert str(corrupt[0]).startswith("corrupt run ") and "\n" not in str(corrupt[0])
        assert corrupt[0].problem
    else:
        assert column == "id" or bad in listed
    for run_id in (good, bad, value if isinstance(value, str) else ""):
        store.delete_run(run_id)  # a corrupt row too
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        db.execute("DELETE FROM runs")
        db.execute("DELETE FROM predictions")
        db.commit()
    assert store.corrupt_runs() == [] and store.list_runs() == []


@pytest.mark.parametrize("column, value, problem", [
    ("metrics", "{not json", "metrics is not valid JSON"),
    ("metrics", "[0.5, 0.7]", "metrics is a JSON list, not a JSON object"),
    ("config", '"grid"', "config is a JSON string, not a JSON object"),
    ("created", "yesterday", "created is text 'yesterday', not a number"),
    ("seed", 2.5, "seed is 2.5, not a whole number"),
    ("threshold", 7.0, "threshold is 7.0, not between 0 and 1"),
    ("kind", "alien", "kind is text 'alien', not one of: pair, finetune"),
    ("metrics", '{"accuracy": "high"}', "metrics['accuracy'] is text 'high', not a number"),
    ("config", '{"backbones": 5}', "config['backbones'] is 5, not a list of names"),
    ("backbone", b"\x00\xff", "backbone is binary data (2 bytes), not text"),
])
def test_a_bad_column_is_named_and_the_row_can_be_deleted(tmp_path, column, value, problem):
    store = Store(tmp_path / "s.db")
    good, bad = finished_run(store), finished_run(store)
    write(store.path, f"UPDATE runs SET {column} = ? WHERE id = '{bad}'", value)
    assert [r.id for r in store.list_runs()] == [good]
    [corrupt] = store.corrupt_runs()
    assert str(corrupt).startswith(f"corrupt run {bad}: {problem}") and corrupt.run_id == bad
    with pytest.raises(CorruptRun, match=f"corrupt run {bad}: "):
        store.get(bad)
    assert store.get(good).id == good
    assert store.delete_run(bad) and store.corrupt_runs() == [] and not store.delete_run(bad)
    assert store.predictions(bad).empty


def test_text_that_is_not_utf8_makes_one_corrupt_run_not_an_unreadable_store(tmp_path):
    store = Store(tmp_path / "s.db")
    good, bad = finished_run(store), finished_run(store)
    write(store.path, f"UPDATE runs SET dataset = ? WHERE id = '{bad}'", ("text", b"caf\xe9"))
    assert [r.id for r in store.list_runs()] == [good]
    assert "dataset is not valid UTF-8 text" in str(store.corrupt_runs()[0])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(column=st.sampled_from(["label", "prob", "left_path", "right_group"]), value=stored, row=st.integers(0, 3))
def test_unreadable_predictions_are_left_out_and_named(fuzzed_store, column, value, row):
    store = fuzzed_store
    run_id = finished_run(store)
    write(store.path, f"UPDATE predictions SET {column} = ? WHERE run_id = '{run_id}' AND left_path = "
                      f"'{PREDS.left_path[row]}'", value)
    preds = store.predictions(run_id)
    assert preds["label"].dtype == "int64" and preds["prob"].dtype == "float64"
    assert set(preds["label"]) <= {0, 1} and preds["prob"].between(0, 1).all()
    problem = preds.attrs.get("problem")
    assert len(preds) == (3 if problem else 4)
    if problem:
        assert problem.startswith(f"corrupt run {run_id}: 1 of 4 predictions cannot be read") and "\n" not in problem
    store.delete_run(run_id)


def test_null_and_text_probabilities_and_text_labels_are_named(tmp_path):
    store = Store(tmp_path / "s.db")
    run_id = finished_run(store)
    write(store.path, f"UPDATE predictions SET prob = ? WHERE run_id = '{run_id}' AND left_path = 'a.jpg'", None)
    write(store.path, f"UPDATE predictions SET prob = ? WHERE run_id = '{run_id}' AND left_path = 'b.jpg'", "high")
    write(store.path, f"UPDATE predictions SET label = ? WHERE run_id = '{run_id}' AND left_path = 'c.jpg'", "same")
    preds = store.predictions(run_id)
    assert list(preds["left_path"]) == ["d.jpg"]
    assert preds.attrs["problem"] == (
        f"corrupt run {run_id}: 3 of 4 predictions cannot be read and are left out (row 1: prob is NULL, not a "
        "probability; row 2: prob is text 'high', not a probability; row 3: label is text 'same', not 0 or 1)")
    assert [r.id for r in store.list_runs()] == [run_id]  # the run itself reads


def test_a_store_from_a_newer_simlab_and_a_damaged_file_are_one_line(tmp_path):
    newer = tmp_path / "newer.db"
    Store(newer)
    with contextlib.closing(sqlite3.connect(newer)) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreTooNew, match="has schema version 99; this simlab knows up to"):
        Store(newer)
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"this is not an SQLite file " * 200)
    with pytest.raises(StoreCorrupt) as caught:
        Store(damaged)
    message = str(caught.value)
    assert "the store is damaged (file is not a database)" in message and "Move the file aside" in message
    assert "\n" not in message and "writable" not in message
