"""``python -m simlab report``: one self-contained HTML file from runs stored by the CLI on the demo dataset.

The runs are real (``python -m simlab run`` on the demo, once per module); the checks read the file the
command writes: nothing in it is fetched from the network, plotly's JavaScript is embedded once, the
thumbnails are data URIs, and each run's confusion matrix equals its stored predictions at its stored
threshold. Refusals are one line (exit 2) before any work.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import seed_cache

from simlab.evaluate import pair_metrics
from simlab.paths import REPO_ROOT
from simlab.reference import published_accuracy
from simlab.report import render_report
from simlab.store import Store

# The grid seeded once per module: 4 group-split runs and 1 pair-split run (the 2017 protocol's settings).
GROUP_GRID = ("--merge", "dot", "l1", "--classifier", "cosine", "logreg")
PAIR_GRID = ("--split", "pair", "--negatives", "same_left", "--library-defaults", "--merge", "dot",
             "--classifier", "gnb")


def simlab(*args, cache, timeout=900):
    env = os.environ | {"SIMLAB_CACHE": str(cache), "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "simlab", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, demo_seed) -> Path:
    """A cache whose store holds the demo's runs, made by the CLI (on the session's demo and vectors)."""
    cache = seed_cache(tmp_path_factory.mktemp("report_cache"), demo_seed)
    for grid in (GROUP_GRID, PAIR_GRID):
        res = simlab("run", "--dataset", "demo", *grid, "--json", cache=cache)
        assert res.returncode == 0, res.stderr[-3000:]
    return cache


@pytest.fixture(scope="module")
def store(cache) -> Store:
    return Store(cache / "simlab.db")


@pytest.fixture(scope="module")
def report(cache, tmp_path_factory) -> str:
    """The report of the demo without --run (the best runs in detail)."""
    out = tmp_path_factory.mktemp("report") / "demo report.html"
    res = simlab("report", "--dataset", "demo", "--out", out, cache=cache)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith(f"wrote {out} (") and res.stdout.strip().endswith("MB)"), res.stdout
    return out.read_text(encoding="utf-8")


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text of <style> elements and of the scripts' openings."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.styles: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in = tag

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "style":
            self.styles.append(data)


def parse(text: str) -> Tags:
    parser = Tags()
    parser.feed(text)
    return parser


def confusion_cells(text: str, run_id: str) -> list[int]:
    """The four counts of a run's confusion matrix in the report: tp, fn, fp, tn (rows truth, columns predicted)."""
    start = text.index(f'id="run-{run_id}"')
    table = text[text.index('<table class="cm">', start):]
    table = table[:table.index("</table>")]
    return [int(n.replace(",", "")) for n in re.findall(r'<div class="cm-n">([\d,]+)</div>', table)]


def stored_confusion(store: Store, run_id: str) -> list[int]:
    """tp, fn, fp, tn of the stored predictions at the run's stored threshold, counted here."""
    run = store.get(run_id)
    preds = store.predictions(run_id)
    said = preds["prob"].to_numpy() >= run.threshold
    same = preds["label"].to_numpy() == 1
    return [int((said & same).sum()), int((~said & same).sum()), int((said & ~same).sum()), int((~said & ~same).sum())]


# --------------------------------------------------------------------------- the file


def test_the_report_fetches_nothing(report):
    tags = parse(report)
    for tag, attrs in tags.tags:
        for name in ("src", "href", "srcset", "poster", "data", "action", "background"):
            value = (attrs.get(name) or "").strip().lower()
            assert not re.match(r"^(https?:)?//", value), f"<{tag} {name}={value[:80]}>"
            if name == "src" and value:
                assert value.startswith("data:image/jpeg;base64,"), f"<{tag} src={value[:60]}>"
        if tag == "link":
            raise AssertionError(f"a <link> element: {attrs}")
        if tag == "script":
            assert "src" not in attrs, attrs
    css = "".join(tags.styles)
    assert "@import" not in css and "@font-face" not in css
    assert not re.search(r"url\(", css), "CSS fetches an url()"


def test_plotly_is_embedded_once_with_the_heatmaps(report):
    assert len(re.findall(r"plotly\.js v\d+\.\d+\.\d+", report[:5_000_000])) == 1
    assert report.count("Plotly.newPlot(") >= 2  # the group split's heatmap and the pair split's
    assert 'id="heatmap-0"' in report and 'id="heatmap-1"' in report


def test_thumbnails_are_small_jpeg_data_uris(report):
    uris = re.findall(r'<img src="(data:image/jpeg;base64,[A-Za-z0-9+/=]+)"', report)
    assert len(uris) >= 2 * 3  # at least one error pair for each of the three runs in detail
    sizes = [len(u) * 3 // 4 for u in uris]
    assert max(sizes) < 40_000, max(sizes)
    assert len(report.encode()) < 8 * 2**20


def test_sections_and_protocol(report, store):
    for section in ("protocol", "heatmaps", "leaderboard", "study", "runs"):
        assert f'<section id="{section}"' in report, section
    runs = [r for r in store.list_runs() if r.done]
    assert len(runs) == 5
    protocol = report[report.index('<section id="protocol"'):report.index('<section id="heatmaps"')]
    for r in runs:
        assert r.protocol.describe() in protocol
        assert r.git and r.git in protocol
        for lib, version in r.versions.items():
            assert f"<td>{lib}</td><td>{version}" in protocol
    n_test = sorted({r.metrics["n_test"] for r in runs})
    assert all(f"{n:,}" in protocol for n in n_test)
    board = report[report.index('<section id="leaderboard"'):report.index('<section id="study"')]
    for r in runs:  # every run with its accuracy and 95% interval
        m = r.metrics
        assert r.id in board
        assert f"{m['accuracy_lo']:.3f}–{m['accuracy_hi']:.3f}" in board


def test_the_best_runs_in_detail_with_their_confusion_at_the_stored_threshold(report, store):
    group = [r for r in store.list_runs() if r.done and r.protocol.split == "group"]
    best = sorted(group, key=lambda r: (r.metrics["accuracy"], r.created), reverse=True)[:3]
    for r in best:
        counts = confusion_cells(report, r.id)
        assert counts == stored_confusion(store, r.id), r.id
        assert sum(counts) == r.metrics["n_test"]
        assert f"{r.threshold:.3f}" in report[report.index(f'id="run-{r.id}"'):][:6000]
    assert len(re.findall(r'<h3 id="run-', report)) == 3


def test_named_runs_only_and_their_most_confident_errors(cache, store, tmp_path):
    pair_run = next(r for r in store.list_runs() if r.protocol.split == "pair")
    group_run = next(r for r in store.list_runs() if r.protocol.split == "group" and r.classifier == "cosine")
    out = tmp_path / "two.html"
    res = simlab("report", "--dataset", "demo", "--run", pair_run.id, group_run.id, "--errors", "3",
                 "--out", out, cache=cache)
    assert res.returncode == 0, res.stderr
    text = out.read_text()
    assert re.findall(r'<h3 id="run-(\w+)"', text) == [pair_run.id, group_run.id]
    for r in (pair_run, group_run):
        assert confusion_cells(text, r.id) == stored_confusion(store, r.id)
        preds = store.predictions(r.id)
        said = preds["prob"] >= r.threshold
        wrong = preds[said != (preds["label"] == 1)]
        top = wrong.assign(margin=(wrong["prob"] - r.threshold).abs()).nlargest(3, "margin", keep="first")
        section = text[text.index(f'id="run-{r.id}"'):]
        section = section[:section.index('<div class="run">') if '<div class="run">' in section else None]
        shown = re.findall(r"P\(same\) <b>([\d.]+)</b>", section)
        assert shown == [f"{p:.3f}" for p in top["prob"]]
        # each pair: its two images and the two with their similarity map
        assert len(re.findall(r"<img src=\"data:image/jpeg", section)) == 4 * len(top)
        assert section.count('alt="similarity map"') == 2 * len(top)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_render_report_matches_the_stored_metrics(store):
    """The Python entry point: the metrics recomputed for a run in detail equal those stored with it."""
    run = next(r for r in store.list_runs() if r.protocol.split == "group")
    text = render_report("demo", [run.id], store=store, errors=0)
    preds = store.predictions(run.id)
    m = pair_metrics(preds["label"], preds["prob"], threshold=run.threshold)
    assert m["accuracy"] == pytest.approx(run.metrics["accuracy"])
    section = text[text.index(f'id="run-{run.id}"'):]
    assert f"{m['accuracy']:.3f}" in section and f"95% CI {m['accuracy_lo']:.3f}–{m['accuracy_hi']:.3f}" in section
    assert "Most confident errors" not in section and "<img" not in section


def test_the_2017_table_beside_ours_where_it_applies(store, tmp_path):
    """Pair-split runs on a published cell (stored with the demo's real predictions) are set beside the study."""
    path = tmp_path / "simlab.db"
    shutil.copy(store.path, path)
    copy = Store(path)
    source = next(r for r in copy.list_runs() if r.protocol.split == "pair")
    preds = copy.predictions(source.id)
    ids = {}
    for merge in ("dot", "l1"):
        config = dict(source.config, backbones=["resnet50"], merges=[merge], classifiers=["xgboost"])
        rid = copy.add_run(dataset=source.dataset, fingerprint=source.fingerprint, backbone="resnet50", merge=merge,
                           classifier="xgboost", config=config, split="pair", seed=source.seed, git=source.git,
                           versions=source.versions)
        copy.finish_run(rid, pair_metrics(preds["label"], preds["prob"]), preds)
        ids[merge] = rid
    text = render_report("demo", store=copy, errors=0)  # the study section; no error cards (their maps)
    study = text[text.index('<section id="study"'):text.index('<section id="runs"')]
    assert "Cells reproduced" in study and ">2 / 60<" in study
    rows = re.findall(r"<tr><td>ResNet50</td><td>(\w+)</td><td>XGBoost</td><td class=\"num\">([\d.]+)</td>"
                      r"<td class=\"num strong\">([\d.]+)</td>", study)
    ours = pair_metrics(preds["label"], preds["prob"])["accuracy"]
    assert sorted(rows) == sorted((m, f"{published_accuracy('resnet50', m, 'xgboost'):.3f}", f"{ours:.3f}")
                                  for m in ids)
    assert "the differences compare different images" in study  # the demo is not INRIA Holidays
    without = render_report("demo", store=store, errors=0)
    assert "nothing to set beside it" in without[without.index('<section id="study"'):]


# --------------------------------------------------------------------------- refusals, one line each


@pytest.mark.parametrize("case", ["unknown run", "other dataset", "no runs", "missing folder", "folder as out",
                                  "file as folder", "bad count"])
def test_refusals_are_one_line(case, cache, store, tmp_path):
    run = store.list_runs()[0]
    out = tmp_path / "r.html"
    args = {"unknown run": ["--dataset", "demo", "--run", "r_nope", "--out", out],
            "other dataset": ["--dataset", f"folder:{tmp_path}", "--run", run.id, "--out", out],
            "no runs": ["--dataset", f"folder:{tmp_path}", "--out", out],
            "missing folder": ["--dataset", "demo", "--out", tmp_path / "nowhere" / "r.html"],
            "folder as out": ["--dataset", "demo", "--out", tmp_path],
            "file as folder": ["--dataset", "demo", "--out", Path(__file__) / "r.html"],
            "bad count": ["--dataset", "demo", "--errors", "-1", "--out", out]}[case]
    res = simlab("report", *args, cache=cache, timeout=120)
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    expect = {"unknown run": "r_nope", "other dataset": run.id, "no runs": "No finished runs",
              "missing folder": "does not exist", "folder as out": "is a folder", "file as folder": "is not a folder",
              "bad count": "--errors"}[case]
    assert expect in lines[0]
    assert not out.exists()
    assert not np.any([p.name.startswith(".r.html") for p in tmp_path.iterdir()])
