"""A store written by simlab before schema versions (tests/data/store_v0.sql) opens, migrates and reads back."""

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from simlab.store import MIGRATIONS, SCHEMA_VERSION, Run, Store, StoreTooNew
from simlab.store.schema import JSON_COLUMNS

FIXTURE = Path(__file__).parent / "data" / "store_v0.sql"


def old_store(tmp_path) -> Path:
    path = tmp_path / "simlab.db"
    db = sqlite3.connect(path)
    db.executescript(FIXTURE.read_text())
    db.close()
    return path


def user_version(path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def stored_row(path, table: str, id_: str) -> dict:
    """One row as SQLite holds it (read past the store), its JSON columns decoded."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        row = dict(db.execute(f"SELECT * FROM {table} WHERE id = ?", [id_]).fetchone())
    finally:
        db.close()
    return {k: json.loads(v) if k in JSON_COLUMNS and v is not None else v for k, v in row.items()}


def test_the_fixture_is_an_unversioned_store(tmp_path):
    assert user_version(old_store(tmp_path)) == 0


def test_an_old_store_migrates_in_place_and_keeps_its_rows(tmp_path):
    path = old_store(tmp_path)
    store = Store(path)
    assert user_version(path) == SCHEMA_VERSION == len(MIGRATIONS)
    assert [r.id for r in store.list_runs()] == ["f0tune00001", "r0grid00001"]
    assert stored_row(path, "runs", "r0grid00001")["kind"] == "pair"  # stored values unchanged
    assert stored_row(path, "runs", "f0tune00001")["merge"] == "siamese"
    assert list(store.predictions("r0grid00001")["prob"]) == [0.875, 0.25, 0.0625]
    assert list(store.curves("f0tune00001")["value"]) == [0.75, 0.5, 0.625]
    job = store.job("j0job000001")
    assert (job.status, job.done, job.result) == ("done", 3, {"runs": ["r0grid00001"]})
    Store(path)  # opening again is a no-op
    assert user_version(path) == SCHEMA_VERSION


def test_old_runs_read_back_as_typed_runs_with_the_same_numbers(tmp_path):
    path = old_store(tmp_path)
    store = Store(path)
    grid = store.get("r0grid00001")
    assert isinstance(grid, Run) and grid.kind == "grid" and grid.is_grid and not grid.is_finetune
    assert (grid.backbone, grid.merge, grid.classifier) == ("efficientnet_lite0", "dot", "xgboost")
    assert grid.metrics == {"accuracy": 0.9375, "accuracy_lo": 0.875, "accuracy_hi": 1.0, "auc": 0.96875,
                            "f1": 0.9, "map": 0.53125, "n_test": 3, "n_train": 12}
    assert (grid.seconds, grid.created, grid.finished, grid.job_id) == (1.5, 1700000001.0, 1700000002.0, "j0job000001")
    assert grid.protocol.to_dict() == {"split": "group", "test_size": 0.3, "negatives": "hard", "negative_ratio": 1.0,
                                       "seed": 4, "weights": "imagenet", "hard_k": None}
    assert grid.label == "efficientnet_lite0 + dot + xgboost" and grid.mode is None

    tuned = store.get("f0tune00001")
    assert tuned.kind == "finetune" and tuned.is_finetune
    assert (tuned.mode, tuned.loss, tuned.head_merge) == ("siamese", "contrastive", None)
    assert tuned.method == "siamese, contrastive loss"
    assert tuned.label == "fine-tune of efficientnet_lite0: siamese, contrastive loss"
    assert tuned.metrics["map"] == 0.734375 and tuned.metrics["map_frozen"] == 0.71875
    assert tuned.artifacts == {"folder": "cache/runs/f0tune00001"}
    assert tuned.protocol.to_dict() == {"split": "group", "test_size": 0.25, "negatives": "same_left",
                                        "negative_ratio": 2.0, "seed": 7, "weights": "imagenet", "hard_k": None}
    assert tuned.to_row() == stored_row(path, "runs", "f0tune00001")


def test_list_runs_filters_by_run_kind(tmp_path):
    store = Store(old_store(tmp_path))
    assert [r.id for r in store.list_runs()] == ["f0tune00001", "r0grid00001"]
    assert [r.id for r in store.list_runs(kind="grid")] == ["r0grid00001"]
    assert [r.id for r in store.list_runs(kind="finetune", status="done", fingerprint="fp123")] == ["f0tune00001"]
    assert store.list_runs(fingerprint="other") == [] and store.get("nope") is None


def test_processes_opening_an_old_store_at_once_migrate_it_once(tmp_path):
    path = old_store(tmp_path)
    errors = []

    def open_it():
        try:
            Store(path)
        except Exception as exc:  # noqa: BLE001 - collected, asserted empty below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and user_version(path) == SCHEMA_VERSION
    assert len(Store(path).list_runs()) == 2


def test_a_store_from_a_newer_simlab_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "simlab.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreTooNew, match="Update simlab"):
        Store(path)


def test_a_new_store_starts_at_the_current_version(tmp_path):
    path = tmp_path / "new.db"
    Store(path)
    assert user_version(path) == SCHEMA_VERSION


def test_each_stored_map_says_what_it_was_measured_on(tmp_path):
    from simlab.evaluate import metric_label, run_metric_scope

    store = Store(old_store(tmp_path))
    grid, tuned = store.get("r0grid00001"), store.get("f0tune00001")
    assert run_metric_scope(grid, "map").startswith("retrieval mAP of efficientnet_lite0 vectors on all images")
    assert run_metric_scope(tuned, "map") == "retrieval mAP of the fine-tuned embeddings on the test scenes"
    assert run_metric_scope(tuned, "map_frozen") == ("retrieval mAP of the frozen efficientnet_lite0 vectors on "
                                                     "the test scenes")
    assert metric_label("auc") == "ROC AUC" and run_metric_scope(grid, "unknown") == "unknown"


def test_migration_adds_owners_fields_and_request_keys_and_an_old_active_job_is_attached_to(tmp_path):
    path = old_store(tmp_path)
    db = sqlite3.connect(path)
    db.execute("INSERT INTO jobs (id, kind, created, status, params) VALUES "
               "('j0running01', 'grid', 1700000005.0, 'running', '{\"seed\": 1, \"dataset\": \"demo\"}')")
    db.commit()
    db.close()
    store = Store(path)
    db = sqlite3.connect(path)
    columns = {table: {r[1] for r in db.execute(f"PRAGMA table_info({table})")} for table in ("runs", "jobs")}
    db.close()
    assert {"owner_pid", "owner_started", "owner_host", "heartbeat"} <= columns["runs"]
    assert {"pid_started", "host", "fields", "params_key"} <= columns["jobs"]
    assert stored_row(path, "jobs", "j0job000001")["fields"] is None and store.job("j0job000001").fields == {}
    assert store.add_job_once("grid", {"dataset": "demo", "seed": 1}) == ("j0running01", False)
    old = store.get("r0grid00001")  # runs of an older simlab have no owner: left as they are
    assert (old.status, old.owner_pid, old.heartbeat) == ("done", None, None)
