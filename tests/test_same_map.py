"""One retrieval mAP per run: every page that shows a run's mAP shows the value stored with it.

Real runs on a small generated folder dataset: a grid started as a job (so the Train page lists its results),
and a fine-tuned head trained with the CLI (so Fine-tune and Compare list it beside its frozen baselines).
The pages are run by Streamlit's AppTest through app.py; their tables are read as rendered (raw values).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest
from streamlit.testing.v1 import AppTest

from helpers import simlab_cache_at, write_group_folder
from pages._ui.formatting import classifier_name
from simlab import jobs
from simlab.paths import REPO_ROOT
from simlab.store import Store

APP = str(REPO_ROOT / "app.py")
MAP_COLUMNS = ("map", "mAP", "retrieval mAP")
ID_COLUMNS = ("id", "run", "Run")
JOB_TIMEOUT = 600  # s


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("same_map")
    spec = f"folder:{write_group_folder(tmp_path_factory.mktemp('same_map_ds') / 'ds', n_groups=14, per_group=3)}"
    with simlab_cache_at(cache):
        grid = {"dataset": spec, "backbones": ["efficientnet_lite0"], "merges": ["dot", "l1"],
                "classifiers": ["cosine", "logreg"], "weights": "random"}
        job_id = jobs.start_job("grid", grid, cache / "simlab.db")
        deadline = time.monotonic() + JOB_TIMEOUT
        while (job := jobs.get_job(job_id, cache / "simlab.db")).active:
            assert time.monotonic() < deadline, "the grid job did not finish in time"
            time.sleep(1)
        assert job.status == "done", job.error
    env = dict(os.environ, SIMLAB_CACHE=str(cache), TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-m", "simlab", "finetune", "--dataset", spec, "--mode", "head",
                          "--backbone", "efficientnet_lite0", "--weights", "random", "--epochs", "1"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    return cache, spec


def shown_maps(at: AppTest) -> dict[str, list[float]]:
    """Run id -> the mAP values the page's tables show for it (a table without a run id column: matched by
    backbone, merge and classifier name, unique among the runs of this test)."""
    found: dict[str, list[float]] = {}
    for table in at.dataframe:
        frame = table.value
        col = next((c for c in MAP_COLUMNS if c in frame.columns), None)
        if col is None:
            continue
        ids = next((c for c in ID_COLUMNS if c in frame.columns), None)
        for _, row in frame.reset_index(drop=True).iterrows():
            key = row[ids] if ids else "|".join(str(row.get(c)) for c in ("backbone", "merge", "classifier"))
            if isinstance(key, str) and key and row[col] == row[col]:
                found.setdefault(key, []).append(float(row[col]))
    return found


def test_every_page_shows_a_runs_stored_map(cache, monkeypatch):
    cache, spec = cache
    monkeypatch.setenv("SIMLAB_CACHE", str(cache))
    monkeypatch.setenv("SIMLAB_DATASET", spec)
    store = Store(cache / "simlab.db")
    runs = [r for r in store.list_runs() if r.done]
    assert {r.kind for r in runs} == {"grid", "finetune"}
    by_cell = {f"{r.backbone}|{r.merge}|{classifier_name(r.classifier)}": r for r in runs if r.is_grid}
    stored = {r.id: r.metrics.get("map") for r in runs} | {k: r.metrics.get("map") for k, r in by_cell.items()}
    stored = {k: v for k, v in stored.items() if v is not None}

    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    seen: dict[str, dict[str, list[float]]] = {}
    for page in ("pages/home.py", "pages/runs.py", "pages/compare.py", "pages/train.py", "pages/finetune.py",
                 "pages/inspect.py"):
        at.switch_page(page)
        at.run()
        assert not at.exception, (page, [e.value for e in at.exception])
        seen[page] = shown_maps(at)
    for page in ("pages/home.py", "pages/runs.py", "pages/compare.py", "pages/train.py", "pages/finetune.py"):
        assert seen[page], f"{page} shows no run's mAP"
    wrong = [(page, key, values, stored.get(key)) for page, maps in seen.items() for key, values in maps.items()
             if key in stored and any(not math.isclose(v, stored[key], rel_tol=1e-9) for v in values)]
    assert not wrong, "pages showing another mAP than the run's stored one: " + "; ".join(
        f"{page}: run {key} shows {[round(v, 3) for v in values]}, stored {value:.3f}"
        for page, key, values, value in wrong)
    unknown = [(page, key) for page, maps in seen.items() for key in maps if key not in stored]
    assert not unknown, unknown  # every mAP shown is matched to a run
    # the same run, on every page that shows it: one value
    grid_ids = {r.id for r in runs if r.is_grid}
    for run_id in grid_ids:
        pages = [page for page, maps in seen.items() if run_id in maps]
        assert len(pages) >= 2, (run_id, pages)
