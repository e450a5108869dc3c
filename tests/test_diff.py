"""Two runs, pair by pair: pair_diff's counts against the runs' stored predictions, and the Two-runs page.

The runs are real: made with the CLI on the demo (the weight-free phash backbone, seconds), one grid on
seed 0 and one run on seed 1 (other test pairs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import seed_cache
from streamlit.testing.v1 import AppTest

from simlab.evaluate import DifferentTestPairs, pair_diff
from simlab.paths import REPO_ROOT
from simlab.store import Store

PAGE = str(REPO_ROOT / "pages" / "diff.py")


def cli_run(cache, *args) -> list[dict]:
    env = dict(os.environ, SIMLAB_CACHE=str(cache), TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-m", "simlab", "run", "--dataset", "demo", "--backbone", "phash",
                          "--json", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory, demo_seed):
    cache = seed_cache(tmp_path_factory.mktemp("diff_cache"), demo_seed)
    grid = cli_run(cache, "--merge", "dot", "l1", "--classifier", "cosine", "logreg")
    other = cli_run(cache, "--merge", "dot", "--classifier", "logreg", "--seed", "1")
    assert len(grid) == 4 and len(other) == 1
    return cache, {(r["merge"], r["classifier"]): r["run_id"] for r in grid}, other[0]["run_id"]


def by_hand(store: Store, a: str, b: str) -> dict[str, int]:
    """The four counts straight from the stored predictions, each run at its stored threshold."""
    ra, rb = store.get(a), store.get(b)
    pa, pb = store.predictions(a), store.predictions(b)
    right_b = {(row.left_path, row.right_path): (row.prob >= rb.threshold) == row.label for row in pb.itertuples()}
    counts = {"fixed": 0, "broken": 0, "both_wrong": 0, "both_right": 0}
    for row in pa.itertuples():
        ok_a, ok_b = (row.prob >= ra.threshold) == row.label, right_b[(row.left_path, row.right_path)]
        counts[{(False, True): "fixed", (True, False): "broken", (False, False): "both_wrong",
                (True, True): "both_right"}[(ok_a, ok_b)]] += 1
    return counts


def test_the_counts_match_the_stored_predictions(demo_runs):
    cache, ids, _ = demo_runs
    store = Store(cache / "simlab.db")
    a, b = ids[("dot", "cosine")], ids[("dot", "logreg")]
    ra, rb = store.get(a), store.get(b)
    diff = pair_diff(store.predictions(a), store.predictions(b), ra.threshold, rb.threshold)
    counts = diff.counts
    assert counts == by_hand(store, a, b)
    n = ra.metrics["n_test"]
    assert sum(counts.values()) == len(diff.pairs) == n
    # each run's stored accuracy is the share it gets right at its stored threshold
    assert (counts["both_right"] + counts["broken"]) / n == pytest.approx(ra.metrics["accuracy"])
    assert (counts["both_right"] + counts["fixed"]) / n == pytest.approx(rb.metrics["accuracy"])
    assert counts["fixed"] + counts["broken"] > 0  # a trained classifier and a threshold disagree somewhere
    shown = diff.disagreeing
    assert len(shown) == counts["fixed"] + counts["broken"]
    assert set(shown["outcome"]) <= {"fixed", "broken"} and (shown["correct_a"] != shown["correct_b"]).all()
    # swapping the runs swaps fixed and broken
    back = pair_diff(store.predictions(b), store.predictions(a), rb.threshold, ra.threshold).counts
    assert (back["fixed"], back["broken"], back["both_wrong"]) == (counts["broken"], counts["fixed"],
                                                                   counts["both_wrong"])


def test_runs_on_other_test_pairs_are_refused(demo_runs):
    cache, ids, other = demo_runs
    store = Store(cache / "simlab.db")
    a = ids[("dot", "logreg")]
    with pytest.raises(DifferentTestPairs, match="different test pairs"):
        pair_diff(store.predictions(a), store.predictions(other))
    keys = store.test_pairs_keys()
    assert len({keys[i] for i in ids.values()}) == 1 and keys[other] != keys[a]


def test_the_two_runs_page(demo_runs, monkeypatch):
    cache, ids, other = demo_runs
    monkeypatch.setenv("SIMLAB_CACHE", str(cache))
    store = Store(cache / "simlab.db")
    a, b = ids[("l1", "cosine")], ids[("l1", "logreg")]
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.query_params["a"] = a
    at.query_params["b"] = b
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    pick_a, pick_b = at.selectbox
    assert (pick_a.value, pick_b.value) == (a, b)
    listed = {i for i in [*ids.values(), other] if any(i in option for option in pick_b.options)}
    assert listed == set(ids.values()) - {a}  # only runs on A's test pairs, A left out
    expected = by_hand(store, a, b)
    shown = {m.label: int(m.value) for m in at.metric}
    assert shown == {"Fixed by B": expected["fixed"], "Broken by B": expected["broken"],
                     "Both wrong": expected["both_wrong"], "Both right": expected["both_right"]}
    said = next(c.value for c in at.caption if "test pairs:" in c.value)
    for run_id in (a, b):  # each run's accuracy as stored, at its stored threshold
        run = store.get(run_id)
        assert f"{run_id}, accuracy {run.metrics['accuracy']:.3f} at threshold {run.threshold:.2f}" in said, said
    cards = [m.value for m in at.markdown if "P(same)" in m.value]
    assert len(cards) == min(18, expected["fixed"] + expected["broken"])
    assert at.query_params["a"] == a and at.query_params["b"] == b

    pick_b.set_value(ids[("dot", "logreg")]).run()  # another B: the URL follows
    assert not at.exception
    assert at.query_params["b"] == ids[("dot", "logreg")]
