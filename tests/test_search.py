"""FAISS search: index kinds, exactness, the index cache, the search CLI, re-ranking, mAP, hard negatives,
and the Search page (AppTest). Real parts throughout: FAISS, the bundled Keras backbone (random
weights), SQLite, Streamlit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image

import simlab.neighbours as neighbours
import simlab.search as search
from helpers import simlab_cache_at, write_group_folder
from simlab import cli
from simlab.data import file_digest, load_dataset
from simlab.evaluate import retrieval_map
from simlab.fitting import FittedCell
from simlab.jobs import kinds
from simlab.options import choice_label, default
from simlab.pairs import hard_negative_pairs, mine_hard_negatives
from simlab.paths import REPO_ROOT
from simlab.search import (
    build_index,
    choose_kind,
    index_path,
    retrieval_map_index,
    run_model_path,
)
from simlab.store import Store

BACKBONE = "efficientnet_lite0"


def clustered(n_groups: int = 40, per_group: int = 5, dim: int = 32, noise: float = 1.5, seed: int = 0):
    """Vectors in groups (a centre each plus noise): hard enough that rankings are not trivial."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), per_group)
    vectors = rng.standard_normal((n_groups, dim))[groups] + noise * rng.standard_normal((len(groups), dim))
    return vectors.astype(np.float32), [f"g{g:03d}" for g in groups]


# --------------------------------------------------------------------------- the index


def test_kind_is_chosen_by_size_and_can_be_overridden():
    assert choose_kind(10) == "flat"
    assert choose_kind(search.FLAT_MAX) == "flat"
    assert choose_kind(search.FLAT_MAX + 1) == "ivf"
    assert choose_kind(search.IVF_MAX + 1) == "ivfpq"
    for kind in ("flat", "ivf", "ivfpq", "hnsw"):
        assert choose_kind(10, kind) == kind
    with pytest.raises(ValueError, match="index kind must be one of"):
        choose_kind(10, "annoy")


def test_auto_builds_the_right_faiss_index(monkeypatch):
    vectors, _ = clustered(n_groups=100, per_group=5)
    assert isinstance(build_index(vectors).index, faiss.IndexFlatIP)
    monkeypatch.setattr(neighbours, "FLAT_MAX", 100)  # 500 vectors are now "large" (the index is its module's)
    auto = build_index(vectors)
    assert auto.kind == "ivf" and isinstance(auto.index, faiss.IndexIVFFlat)
    assert auto.params["nlist"] >= 1 and auto.index.nprobe == auto.params["nprobe"]
    assert isinstance(build_index(vectors, "hnsw").index, faiss.IndexHNSWFlat)
    assert isinstance(build_index(vectors, "flat").index, faiss.IndexFlatIP)
    assert isinstance(build_index(vectors, "ivfpq").index, faiss.IndexIVFPQ)


def test_flat_search_equals_brute_force():
    vectors, _ = clustered()
    queries = np.random.default_rng(1).standard_normal((7, vectors.shape[1])).astype(np.float32)
    scores, ids = build_index(vectors, "flat").search(queries, 10)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, axis=1), rtol=1e-5, atol=1e-5)


def test_approximate_indexes_find_most_true_neighbours():
    vectors, _ = clustered(n_groups=100, per_group=5)
    _, exact = build_index(vectors, "flat").search(vectors[:50], 10)
    for kind in ("ivf", "hnsw"):
        _, ids = build_index(vectors, kind).search(vectors[:50], 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
        assert recall > 0.8, (kind, recall)


def test_the_index_is_cached_and_the_second_build_is_a_load(tmp_cache):
    vectors, _ = clustered()
    first = build_index(vectors, "hnsw", cache_key=("setkey", "fp1"))
    assert not first.from_cache and first.path == index_path("setkey", "fp1", "hnsw", len(vectors))
    assert first.path.exists() and first.path.is_relative_to(tmp_cache / "index" / "setkey")
    assert not [p for p in first.path.parent.iterdir() if p.name.startswith(".")]  # no temp file left
    second = build_index(vectors, "hnsw", cache_key=("setkey", "fp1"))
    assert second.from_cache and second.kind == "hnsw"
    np.testing.assert_array_equal(first.search(vectors[:5], 5)[1], second.search(vectors[:5], 5)[1])
    other = build_index(vectors, "flat", cache_key=("setkey", "fp1"))  # another kind: another file
    assert not other.from_cache and other.path != first.path
    assert not build_index(vectors, "hnsw", cache_key=("setkey", "fp2")).from_cache  # another dataset


def test_map_through_a_flat_index_equals_retrieval_map():
    vectors, groups = clustered()
    exact = retrieval_map(vectors, groups)
    assert 0.2 < exact < 0.99  # a ranking with mistakes, so the comparison means something
    assert retrieval_map_index(build_index(vectors, "flat"), vectors, groups) == pytest.approx(exact, abs=1e-9)
    queries = [0, 7, 13, 101]
    assert retrieval_map_index(build_index(vectors, "flat"), vectors, groups, queries) == pytest.approx(
        retrieval_map(vectors, groups, queries), abs=1e-9)
    truncated = retrieval_map_index(build_index(vectors, "flat"), vectors, groups, k=3)
    assert truncated <= exact  # what a short list misses counts as not found


def test_hard_negatives_come_from_other_groups_and_are_near():
    vectors, groups = clustered()
    g = np.asarray(groups)
    pairs = mine_hard_negatives(vectors, groups, k=3)
    assert pairs.ndim == 2 and pairs.shape[1] == 2 and len(pairs) > len(vectors)
    assert (g[pairs[:, 0]] != g[pairs[:, 1]]).all()
    assert len({tuple(p) for p in pairs}) == len(pairs) and (pairs[:, 0] < pairs[:, 1]).all()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    hard_sims = np.sum(unit[pairs[:, 0]] * unit[pairs[:, 1]], axis=1)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(g), 2000), rng.integers(0, len(g), 2000)
    random_sims = np.sum(unit[a] * unit[b], axis=1)[g[a] != g[b]]
    assert hard_sims.mean() > random_sims.mean() + 0.2
    from simlab.pairs import build_pairs

    p, train, test = build_pairs(groups, hard_negatives=hard_negative_pairs(vectors, groups))
    negatives = p.label == 0
    mined = {tuple(x) for x in pairs}
    used = sum((min(a, b), max(a, b)) in mined for a, b in zip(p.left[negatives], p.right[negatives]))
    assert used > 0.5 * negatives.sum()  # mostly hard ones, topped up at random


# --------------------------------------------------------------------------- the CLI on a real dataset


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small folder dataset and a cache holding its (random-weight) vectors and one finished run."""
    root = write_group_folder(tmp_path_factory.mktemp("ds"), n_groups=6, per_group=3, size=64, seed=3)
    cache = tmp_path_factory.mktemp("cache")
    with simlab_cache_at(cache):
        from simlab.experiment import GridConfig, run_grid
        from simlab.store import Store

        config = GridConfig(dataset=f"folder:{root}", backbones=[BACKBONE], merges=["l1"], classifiers=["logreg"],
                            weights="random", split="pair")
        run_id = next(run_grid(config, Store()))["run_id"]
    return {"spec": f"folder:{root}", "root": root, "cache": cache, "run": run_id}


@pytest.fixture
def in_small(small, monkeypatch):
    monkeypatch.setenv("SIMLAB_CACHE", str(small["cache"]))
    return small


def search_json(capsys, *args) -> dict:
    assert cli.main(["search", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_answers_with_the_query_itself_first(in_small, capsys):
    query = str(in_small["root"] / "g002" / "v1.jpg")
    out = search_json(capsys, "--dataset", in_small["spec"], "--weights", "random", "--backbone", BACKBONE,
                      "--query", query, "--k", "5")
    assert out["k"] == 5 and len(out["results"]) == 5 and out["index"] == "flat"
    first = out["results"][0]
    assert Path(first["path"]).resolve() == Path(query).resolve() and first["score"] == pytest.approx(1, abs=1e-4)
    assert out["query_group"] == "g002" and first["group"] == "g002"
    scores = [r["score"] for r in out["results"]]
    assert scores == sorted(scores, reverse=True) and [r["rank"] for r in out["results"]] == [1, 2, 3, 4, 5]
    assert list((in_small["cache"] / "index").rglob("*.faiss"))  # cached beside the vectors


def test_cli_vectorises_a_query_from_outside_the_dataset(in_small, capsys, tmp_path):
    outside = tmp_path / "elsewhere.jpg"
    shutil.copy(in_small["root"] / "g004" / "v0.jpg", outside)
    out = search_json(capsys, "--dataset", in_small["spec"], "--weights", "random", "--query", str(outside),
                      "--k", "3")
    assert out["query_group"] is None and len(out["results"]) == 3
    assert out["results"][0]["path"].endswith("g004/v0.jpg")  # the same pixels
    assert out["results"][0]["score"] == pytest.approx(1, abs=1e-4)
    assert out["results"][0]["same_file"] is True  # the very same bytes, found by content digest
    assert [r["same_file"] for r in out["results"][1:]] == [False, False]


def test_a_query_from_outside_is_vectorised_once_and_kept_by_its_content(in_small, tmp_path):
    outside = tmp_path / "mirrored.png"
    Image.open(in_small["root"] / "g003" / "v2.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(outside)
    dataset = load_dataset(in_small["spec"])
    stages = []
    first = search.search_dataset(dataset, str(outside), BACKBONE, "random", k=4,
                                  progress=lambda d, t, m="", **f: stages.append(f.get("stage")))
    assert "query" in stages and not any(r["same_file"] for r in first.results)
    kept = list((in_small["cache"] / "queries").rglob("*.npy"))
    assert len(kept) == 1 and kept[0].stem == file_digest(outside)
    copy = tmp_path / "copy.png"  # another name, the same bytes: the kept vector answers
    shutil.copy(outside, copy)
    stages.clear()
    again = search.search_dataset(dataset, str(copy), BACKBONE, "random", k=4,
                                  progress=lambda d, t, m="", **f: stages.append(f.get("stage")))
    assert "query" not in stages  # not vectorised again
    assert [(r["path"], round(r["score"], 5)) for r in again.results] == [
        (r["path"], round(r["score"], 5)) for r in first.results]


def test_cli_text_output_and_clear_errors(in_small, capsys, tmp_path):
    assert cli.main(["search", "--dataset", in_small["spec"], "--weights", "random", "--query",
                     str(in_small["root"] / "g000" / "v0.jpg"), "--k", "4"]) == 0
    text = capsys.readouterr().out
    assert "rank" in text and "same group as the query" in text and text.count("g000/") >= 1
    assert cli.main(["search", "--dataset", in_small["spec"], "--query", str(tmp_path / "nope.jpg")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not list((in_small["cache"] / "vectors").glob("*imagenet*"))  # failed before vectorising anything
    assert cli.main(["search", "--dataset", in_small["spec"], "--query", str(tmp_path), "--rerank", "r_missing"]) == 2
    assert "No run 'r_missing'" in capsys.readouterr().err


def test_rerank_orders_by_the_runs_probability_and_caches_the_model(in_small, capsys):
    run = in_small["run"]
    query = str(in_small["root"] / "g001" / "v0.jpg")
    assert not run_model_path(run).exists()
    out = search_json(capsys, "--dataset", in_small["spec"], "--query", query, "--k", "6", "--rerank", run)
    assert out["rerank"] == run and out["weights"] == "random"  # the run's backbone and weights
    probs = [r["prob"] for r in out["results"]]
    assert len(probs) == 6 and probs == sorted(probs, reverse=True)
    assert all(0 <= p <= 1 for p in probs)
    assert run_model_path(run).exists()
    model = search.run_classifier(run)  # now a load, not a refit
    assert isinstance(model, FittedCell) and model.spec.classifier == "logreg"
    again = search_json(capsys, "--dataset", in_small["spec"], "--query", query, "--k", "6", "--rerank", run)
    assert [r["path"] for r in again["results"]] == [r["path"] for r in out["results"]]
    assert cli.main(["search", "--dataset", in_small["spec"], "--query", query, "--rerank", run,
                     "--backbone", "resnet50"]) == 2
    assert "trained on efficientnet_lite0" in capsys.readouterr().err


def test_search_reports_each_step_in_the_stage_field(in_small):
    calls = []
    query = str(in_small["root"] / "g001" / "v0.jpg")
    dataset = load_dataset(in_small["spec"])
    search.search_dataset(dataset, query, k=3, rerank=in_small["run"],
                          progress=lambda done, total, message="", **fields: calls.append((done, total, fields)))
    steps = [(done, fields["stage"]) for done, total, fields in calls if fields["stage"] != "vectorize"]
    stages = [stage for _, stage in steps]
    assert [s for s in stages if s != "refit"] == ["load", "search", "rerank"]  # index cached, query in the dataset
    assert [done for done, _ in steps] == [search.SEARCH_STAGES.index(s) for _, s in steps]
    assert {total for _, total, fields in calls if fields["stage"] != "vectorize"} == {len(search.SEARCH_STAGES)}


def test_the_search_job_kind_answers_as_the_cli_does(in_small, capsys):
    query = str(in_small["root"] / "g002" / "v1.jpg")
    args = {"dataset": in_small["spec"], "weights": "random", "backbone": BACKBONE, "query": query, "k": 4}
    calls = []
    result = kinds.search_job(args, Store(), lambda d, t, m="", **f: calls.append(f.get("stage")), lambda: False)
    out = search_json(capsys, "--dataset", in_small["spec"], "--weights", "random", "--backbone", BACKBONE,
                      "--query", query, "--k", "4")
    assert {k: v for k, v in result.items() if k != "seconds"} == {k: v for k, v in out.items() if k != "seconds"}
    assert "load" in calls and "search" in calls
    with pytest.raises(ValueError, match="Unknown search setting"):
        kinds.search_job({**args, "kk": 3}, Store(), lambda *a, **f: None, lambda: False)


def test_searching_a_cached_set_in_process_answers_as_search_dataset(in_small):
    """The page's in-process search (a row of the cached set, or a kept vector) and the CLI's pipeline give
    the same index kind, neighbours and scores."""
    dataset = load_dataset(in_small["spec"])
    vs = search.vectorize(dataset, BACKBONE, "random")
    query = str(in_small["root"] / "g003" / "v2.jpg")
    full = search.search_dataset(dataset, query, BACKBONE, "random", k=7)
    row = search.query_position(vs.paths, query)
    scores, ids, index = search.search_set(vs.vectors, row, 7, cache_key=(vs.key, dataset.fingerprint))
    assert index.kind == full.kind and index.from_cache  # search_dataset built and cached the same index
    here = search.neighbour_rows(ids, scores, vs.paths, vs.groups)
    assert [(r["path"], r["group"]) for r in here] == [(r["path"], r["group"]) for r in full.results]
    assert np.allclose([r["score"] for r in here], [r["score"] for r in full.results], atol=1e-6)
    by_vector = search.search_set(vs.vectors, vs.vectors[row], 7, index=index)
    assert list(by_vector[1]) == list(ids)


def test_a_search_runs_in_process_only_with_the_vector_at_hand_and_no_rerank(in_small, tmp_path):
    dataset = load_dataset(in_small["spec"])
    vs = search.vectorize(dataset, BACKBONE, "random")
    assert search.local_query(4, vs.key, vs.digests[4]) == 4
    assert search.search_in_process(4, vs.key, vs.digests[4])
    assert not search.search_in_process(4, vs.key, vs.digests[4], rerank=in_small["run"])  # refits: a job
    upload = tmp_path / "unseen.png"
    Image.open(in_small["root"] / "g004" / "v1.jpg").rotate(11).save(upload)
    digest = file_digest(upload)
    assert not search.search_in_process(None, vs.key, digest)  # never vectorised: a job
    search.search_dataset(dataset, str(upload), BACKBONE, "random", k=3)  # vectorises it once and keeps it
    kept = search.local_query(None, vs.key, digest)
    assert kept is not None and kept.shape == (vs.vectors.shape[1],)
    assert search.search_in_process(None, vs.key, digest)
    assert not search.search_in_process(None, vs.key, digest, rerank=in_small["run"])


def test_neighbours_of_a_row_leave_it_out_and_match_brute_force():
    vectors, _ = clustered(n_groups=10, per_group=4)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit[5]
    sims[5] = -np.inf
    found = search.neighbours_of(vectors, 5, k=6)
    assert [i for i, _ in found] == list(np.argsort(-sims)[:6])
    assert np.allclose([s for _, s in found], np.sort(sims)[::-1][:6], atol=1e-5)
    assert search.neighbours_of(vectors, len(vectors), k=3) == []


def test_hard_negatives_mine_through_the_one_index():
    """simlab.pairs mines with simlab.neighbours' flat index: the same answer as passing it in."""
    from simlab.neighbours import build_index as neighbours_index
    from simlab.pairs import build_index as pairs_index

    assert pairs_index is neighbours_index is search.build_index
    vectors, groups = clustered()
    own = mine_hard_negatives(vectors, groups, k=2)
    assert np.array_equal(own, mine_hard_negatives(vectors, groups, k=2, index=build_index(vectors, "flat")))


def test_k_is_declared_once_for_the_cli_and_the_page(capsys):
    from pages._ui.options import widget_range

    assert default("k") == 10
    assert widget_range("k") == {"min_value": 3, "max_value": 48, "step": 1}
    with pytest.raises(SystemExit) as stop:
        cli.main(["search", "--query", "x.jpg", "--k", "0"])
    assert stop.value.code == 2
    assert "k must be in [1, 1000] (neighbours returned), not 0" in capsys.readouterr().err


# --------------------------------------------------------------------------- the Search page


def page_test(spec: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO_ROOT / "pages" / "search.py"), default_timeout=180)
    at.session_state["dataset_spec"] = spec
    return at


def test_search_page_empty_state(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path / "cache"))
    root = write_group_folder(tmp_path / "fresh", n_groups=3, per_group=2, size=48, seed=5)
    at = page_test(f"folder:{root}").run()
    assert not at.exception
    assert any("No vectors for" in i.value for i in at.info)
    assert any(b.label.startswith("Vectorize with") for b in at.button)


def cards(at) -> list[str]:
    """The result cards of the Search page, as HTML (one per neighbour)."""
    grid = next(h.value for h in at.html if "similarity " in h.value)
    return grid.split('title="')[1:]


def choose_random_set(at):
    vector_set = at.selectbox(key="search_set")
    random_set = next(i for i, label in enumerate(vector_set.options) if choice_label("weights", "random") in label)
    vector_set.set_value(random_set).run()
    assert not at.exception, at.exception
    return at


def test_search_page_shows_neighbours_with_badges(in_small):
    at = page_test(in_small["spec"]).run()
    assert not at.exception, at.exception
    assert not at.error
    choose_random_set(at)
    found = cards(at)
    assert len(found) == default("k")  # the declared default
    assert "#1 · g000/<wbr>v0.<wbr>jpg" in found[0] and ">query<" in found[0]  # the first image finds itself
    for card in found[1:]:  # the badge says whether a neighbour is of the query's group
        assert (">✓ same group<" in card) == ("group g000<" in card), card
        assert (">other group<" in card) == ("group g000<" not in card), card
    assert any("nearest images" in m.value for m in at.markdown)
    assert "random weights" in " ".join(w.value for w in at.warning)
    at.selectbox(key="search_group").set_value("g003").run()
    assert not at.exception
    assert "#1 · g003/<wbr>" in cards(at)[0]
    at.selectbox(key="search_rerank").set_value(in_small["run"]).run()  # re-rank through the CLI
    assert not at.exception and not at.error
    assert any("P(same)" in c.value for c in at.caption)


def test_search_page_marks_an_upload_identical_to_a_dataset_image_as_the_same_file(in_small):
    store = Store(in_small["cache"] / "simlab.db")
    jobs_before = len(store.list_jobs())
    at = choose_random_set(page_test(in_small["spec"]).run())
    at.radio(key="search_source").set_value("Upload an image").run()
    data = (in_small["root"] / "g002" / "v1.jpg").read_bytes()
    at.file_uploader(key="search_upload").set_value(("holiday copy.jpg", data, "image/jpeg")).run()
    assert not at.exception, at.exception
    assert any("identical to" in i.value and "g002/v1" in i.value for i in at.info)
    found = cards(at)
    assert ">same file<" in found[0] and "similarity 1.000" in found[0] and "g002/<wbr>v1" in found[0]
    assert ">other group<" not in found[0]
    assert len(store.list_jobs()) == jobs_before  # searched here, from the cached vectors: no job, no model


def test_search_page_vectorises_an_upload_once_whatever_the_controls(in_small, tmp_path):
    store = Store(in_small["cache"] / "simlab.db")
    before = len([j for j in store.list_jobs() if j.kind == "search"])
    upload = tmp_path / "new.png"
    Image.open(in_small["root"] / "g005" / "v0.jpg").rotate(7).save(upload)
    at = choose_random_set(page_test(in_small["spec"]).run())
    at.radio(key="search_source").set_value("Upload an image").run()
    at.file_uploader(key="search_upload").set_value(("new.png", upload.read_bytes(), "image/png")).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert len(cards(at)) == default("k")
    searches = [j for j in store.list_jobs() if j.kind == "search"]
    assert len(searches) == before + 1 and searches[0].status == "done"  # the first search vectorised it
    at.slider(key="search_k").set_value(5).run()
    at.selectbox(key="search_kind").set_value("hnsw").run()
    assert not at.exception
    assert len(cards(at)) == 5
    assert len([j for j in store.list_jobs() if j.kind == "search"]) == before + 1  # no second vectorisation
