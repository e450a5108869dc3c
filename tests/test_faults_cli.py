"""The command line under bad input and faults: refused before any work, one line, nothing left running.

Real subprocesses (``python -m simlab ...``) on a tiny generated Holidays folder with random weights,
a real read-only file (``chattr +i``), real signals; and Hypothesis fuzzing the numeric flags in process.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_holidays
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from helpers import sigint_default
from simlab import cli
from simlab.store import Store

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--weights", "random", "--merge", "dot", "--classifier", "cosine"]


def simlab(*args, cache: Path, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    env = os.environ | {"SIMLAB_CACHE": str(cache), "PYTHONPATH": str(ROOT), "SIMLAB_GRID_WORKERS": "1"}
    return subprocess.run([sys.executable, "-m", "simlab", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, **popen)


def stored_runs(cache: Path) -> list[tuple[str, str, str | None]]:
    """(id, status, error) of every run in the cache's store; none if there is no store."""
    db = cache / "simlab.db"
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone():
            return []  # being created right now
        return con.execute("SELECT id, status, error FROM runs").fetchall()


def vector_files(cache: Path) -> list[Path]:
    return [p for p in (cache / "vectors").rglob("*") if p.is_file()] if (cache / "vectors").exists() else []


def error_lines(stderr: str) -> list[str]:
    """What the command said on stderr (TensorFlow's start-up chatter left out)."""
    noise = ("WARNING: All log messages before absl", "I0000 ", "E0000 ", "W0000 ")
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(noise)]


@pytest.fixture(scope="module")
def six_groups(tmp_path_factory) -> str:
    """The 6-group Holidays folder of conftest's ``holidays_dir`` (15 images)."""
    folder = tmp_path_factory.mktemp("faults_cli") / "holidays"
    make_holidays(folder, [3, 2, 1, 4, 2, 3])
    return f"holidays:{folder}"


# --------------------------------------------------------------------------- bad values, refused before any work


@pytest.mark.parametrize("flags, option, allowed", [
    (["--negative-ratio", "inf"], "negative_ratio", "(0, 100]"),
    (["--negative-ratio", "nan"], "negative_ratio", "(0, 100]"),
    (["--negative-ratio", "0"], "negative_ratio", "(0, 100]"),
    (["--seed", "99999999999999999999999"], "seed", "[0, "),
    (["--seed", "-1"], "seed", "[0, "),
    (["--test-size", "0.01"], "test_size", "allows test_size from 0.33 to 0.67"),
    (["--test-size", "1"], "test_size", "(0, 1)"),
    (["--merge", "sum"], "--merge", "choose from"),
])
def test_a_bad_value_exits_2_with_one_line_and_stores_nothing(six_groups, tmp_path, flags, option, allowed):
    res = simlab("run", "--dataset", six_groups, *FAST, *flags, cache=tmp_path)
    lines = error_lines(res.stderr)
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert option in lines[0] and allowed in lines[0], lines[0]
    assert stored_runs(tmp_path) == [] and vector_files(tmp_path) == []  # nothing ran, nothing stored


# --------------------------------------------------------------------------- a store that cannot be written


def test_a_read_only_store_is_refused_before_vectorising(six_groups, tmp_path):
    Store(tmp_path / "simlab.db")  # a store of today's schema, then made immutable (root ignores chmod)
    db = tmp_path / "simlab.db"
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (needs an ext2/3/4-like filesystem and root)")
    try:
        res = simlab("run", "--dataset", six_groups, *FAST, cache=tmp_path)
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    lines = error_lines(res.stderr)
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and str(db) in lines[0] and "cannot be written" in lines[0], res.stderr
    assert "SIMLAB_CACHE" in lines[0]  # says what to do
    assert vector_files(tmp_path) == [] and stored_runs(tmp_path) == []


# --------------------------------------------------------------------------- an unexpected error

INJECT = """
import sys
import simlab.cli as cli
import simlab.cli.backbones as command

def broken():
    return {}["no such key"]

command.list_backbones = broken  # an error nobody foresaw, deep inside a command
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("debug", [False, True])
def test_an_unexpected_error_is_one_line_naming_its_traceback_log(tmp_path, debug):
    env = os.environ | {"SIMLAB_CACHE": str(tmp_path), "PYTHONPATH": str(ROOT)}
    args = ["--debug", "backbones"] if debug else ["backbones"]
    res = subprocess.run([sys.executable, "-c", INJECT, *args], env=env, capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 1, res.stderr
    logs = list((tmp_path / "logs").glob("cli-*.log"))
    assert len(logs) == 1
    assert "Traceback" in logs[0].read_text() and "no such key" in logs[0].read_text()
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: unexpected KeyError") and str(logs[0]) in last
    if debug:
        assert "Traceback" in res.stderr and "in broken" in res.stderr
    else:
        assert error_lines(res.stderr) == [last] and "Traceback" not in res.stderr


# --------------------------------------------------------------------------- stopped by a signal


@pytest.fixture(scope="module")
def slow_groups(tmp_path_factory) -> str:
    """Enough pairs that the neural head takes a few seconds a cell."""
    folder = tmp_path_factory.mktemp("faults_cli_slow") / "holidays"
    make_holidays(folder, [4] * 12)
    return f"holidays:{folder}"


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_run_leaves_no_run_running(slow_groups, tmp_path, signum, code):
    env = os.environ | {"SIMLAB_CACHE": str(tmp_path), "PYTHONPATH": str(ROOT), "SIMLAB_GRID_WORKERS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "simlab", "run", "--dataset", slow_groups, "--weights", "random",
                             "--merge", "dot", "l1", "l2", "--classifier", "mlp", "--json"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_default)
    try:
        deadline = time.monotonic() + 240
        while not any(status == "running" for _, status, _ in stored_runs(tmp_path)):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no run started"
            time.sleep(0.1)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr
    runs = stored_runs(tmp_path)
    assert runs and "running" not in {status for _, status, _ in runs}, runs
    interrupted = [error for _, status, error in runs if status == "failed"]
    assert interrupted and all("interrupted" in error for error in interrupted), runs
    assert "Traceback" not in stderr


# --------------------------------------------------------------------------- fuzzing the numeric flags

BAR = re.compile(r"\[[#.]+\] \d+/\d+ ")  # the progress bar's line
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["0", "1", "-0", "1e-300", "1e300", "0.5", "100", "100.0001", "4294967295", "4294967296",
                     "0x10", "", " ", "1_000", "nan", "-inf", "abc"]),
)


@pytest.fixture(scope="module")
def fuzz_cache(tmp_path_factory, six_groups):
    """A cache where the tiny dataset's random-weight vectors are already computed (a valid case runs fast)."""
    cache = tmp_path_factory.mktemp("fuzz_cache")
    assert simlab("vectorize", "--dataset", six_groups, "--weights", "random", cache=cache).returncode == 0
    return cache


def inside_or_anything(inside: st.SearchStrategy) -> st.SearchStrategy:
    """Text of a value in the allowed range half the time, of any number (or not a number) otherwise."""
    return st.one_of(inside.map(repr), NUMBERS)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ratio=inside_or_anything(st.floats(0.5, 100)), test_size=inside_or_anything(st.floats(0.34, 0.66)),
       seed=inside_or_anything(st.integers(0, 2**32 - 1)))
def test_fuzzed_numeric_flags_work_or_exit_2_with_one_line_and_store_nothing(six_groups, fuzz_cache, monkeypatch,
                                                                               ratio, test_size, seed):
    monkeypatch.setenv("SIMLAB_CACHE", str(fuzz_cache))
    before = stored_runs(fuzz_cache)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(["run", "--dataset", six_groups, *FAST, "--json", f"--negative-ratio={ratio}",
                             f"--test-size={test_size}", f"--seed={seed}"])
        except SystemExit as exc:  # argparse refused a flag
            code = exc.code
    after = stored_runs(fuzz_cache)
    lines = [line for line in err.getvalue().splitlines() if line.strip() and not BAR.match(line)]
    assert "Traceback" not in err.getvalue()
    event(f"exit {code}")
    if code == 0:
        new = set(after) - set(before)
        assert new and {status for _, status, _ in new} == {"done"}
        assert 0 < float(test_size) < 1 and 0 < float(ratio) <= 100 and math.isfinite(float(ratio))
    else:
        assert code == 2, err.getvalue()
        assert len(lines) == 1 and "error: " in lines[0], lines
        assert any(name in lines[0] for name in ("negative_ratio", "test_size", "seed", "--negative-ratio",
                                                 "--test-size", "--seed")), lines
        assert after == before  # nothing stored


# --------------------------------------------------------------------------- untrusted names, long problem lists

ESCAPES = "\x1b]0;pwned\x07\x1b[31mred\u202e"  # sets the terminal's title, colours, reverses the line


def test_skipped_files_are_summarised_and_their_names_escaped(tmp_path):
    """300 missing files are a few lines (counts, the first few), not 300; a name's escape codes are
    printed as text, never sent to the terminal."""
    make_holidays(tmp_path / "imgs", [2, 2])
    odd = tmp_path / "imgs" / f"odd{ESCAPES}.jpg"
    odd.write_bytes(b"not an image")
    rows = [f"{p.name},{p.name[:4]}" for p in sorted((tmp_path / "imgs").glob("1*.jpg"))]
    rows += [f"missing{i}.jpg,g{i % 5}" for i in range(300)] + [f"{odd.name},odd"]
    csv = tmp_path / "imgs" / "list.csv"
    csv.write_text("path,group\n" + "\n".join(rows) + "\n")
    res = simlab("vectorize", "--dataset", f"csv:{csv}", "--weights", "random", cache=tmp_path / "cache")
    assert res.returncode == 0, res.stderr[-3000:]
    said = [line.split("\r")[-1] for line in error_lines(res.stderr) if not line.startswith("\r[")]
    said = [line for line in said if not line.startswith("[")]  # the progress bar's last line
    assert said[0] == "skipped 301 file(s): file not found 300, not an image 1", said
    assert len(said) <= 12 and said[-1] == "  ... and 291 more (the app's Data page lists them all)", said
    assert "\x1b" not in res.stderr + res.stdout and "\x07" not in res.stderr and "\u202e" not in res.stderr
    assert "odd\\x1b]0;pwned\\x07\\x1b[31mred\\u202e.jpg: not an image" in res.stderr
    assert res.stdout.startswith("4 vectors of 1280")


def test_an_error_naming_a_hostile_path_is_escaped():
    missing = f"/nonexistent/{ESCAPES}"
    res = simlab("vectorize", "--dataset", f"folder:{missing}", "--weights", "random", cache=Path("/tmp/none"))
    assert res.returncode == 2
    assert "\x1b" not in res.stderr and "\x07" not in res.stderr
    line, = [x for x in error_lines(res.stderr) if x.startswith("error:")]
    assert line.startswith("error: Folder not found: /nonexistent/\\x1b]0;pwned\\x07\\x1b[31mred\\u202e.")


# --------------------------------------------------------------------------- a store that degrades row by row


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory, six_groups) -> Path:
    """A cache whose store holds four finished grid runs (random weights)."""
    from helpers import simlab_cache_at
    from simlab.experiment import GridConfig, run_grid
    cache = tmp_path_factory.mktemp("grid_store")
    with simlab_cache_at(cache):
        config = GridConfig(dataset=six_groups, merges=["dot", "l1"], classifiers=["cosine", "logreg"],
                            weights="random")
        assert len(list(run_grid(config, Store()))) == 4
    return cache


def copy_of(cache: Path, tmp_path: Path) -> Path:
    import shutil
    shutil.copytree(cache, tmp_path / "cache")
    return tmp_path / "cache"


def test_runs_and_report_read_past_corrupt_rows_and_runs_delete_removes_them(grid_store, six_groups, tmp_path):
    cache = copy_of(grid_store, tmp_path)
    bad_json, json_list, bad_preds, fine = [r.id for r in Store(cache / "simlab.db").list_runs()]
    with contextlib.closing(sqlite3.connect(cache / "simlab.db")) as con, con:
        con.execute("UPDATE runs SET metrics = '{\"accuracy\": 0.9,' WHERE id = ?", [bad_json])
        con.execute("UPDATE runs SET metrics = '[0.9]' WHERE id = ?", [json_list])
        first = con.execute("SELECT min(rowid) FROM predictions WHERE run_id = ?", [bad_preds]).fetchone()[0]
        con.execute("UPDATE predictions SET prob = NULL WHERE rowid = ?", [first])
        con.execute("UPDATE predictions SET label = 'same' WHERE rowid = ?", [first + 1])
    listed = simlab("runs", cache=cache)
    assert listed.returncode == 0, listed.stderr
    assert {bad_preds, fine} <= set(listed.stdout.split()) and bad_json not in listed.stdout
    said = "\n".join(error_lines(listed.stderr))
    assert f"corrupt run {bad_json}: metrics is not valid JSON" in said
    assert f"corrupt run {json_list}: metrics is a JSON list, not a JSON object" in said
    assert f"python -m simlab runs --delete {bad_json}" in said and "Traceback" not in said

    out = tmp_path / "report.html"
    report = simlab("report", "--dataset", six_groups, "--run", bad_preds, fine, "--out", str(out), cache=cache)
    assert report.returncode == 0, report.stderr
    assert "invalid literal" not in report.stderr and "Traceback" not in report.stderr
    assert f"corrupt run {bad_preds}: 2 of " in out.read_text()  # the unreadable pairs named in the report

    deleted = simlab("runs", "--delete", bad_json, json_list, cache=cache)
    assert deleted.returncode == 0 and deleted.stdout.split("\n")[:2] == [f"deleted run {bad_json}",
                                                                         f"deleted run {json_list}"]
    assert Store(cache / "simlab.db").corrupt_runs() == []
    missing = simlab("runs", "--delete", "r-no-such-run", cache=cache)
    assert missing.returncode == 2 and error_lines(missing.stderr) == [
        f"error: no run r-no-such-run in {cache / 'simlab.db'} (see python -m simlab runs)"]


@pytest.mark.parametrize("damage, line", [
    ("newer", r"error: \S+simlab\.db has schema version 99; this simlab knows up to \d+\. Update simlab, or set "
              r"SIMLAB_CACHE to another folder\."),
    ("damaged", r"error: \S+simlab\.db: the store is damaged \(file is not a database\), so no run in it can be "
                r"read\. Move the file aside .*"),
])
def test_every_command_on_a_store_it_cannot_open_says_so_in_one_line(grid_store, six_groups, tmp_path, damage,
                                                                     line):
    cache = copy_of(grid_store, tmp_path)
    db = cache / "simlab.db"
    if damage == "newer":
        with contextlib.closing(sqlite3.connect(db)) as con:
            con.execute("PRAGMA user_version = 99")
    else:
        for extra in cache.glob("simlab.db-*"):
            extra.unlink()
        db.write_bytes(b"not an SQLite file at all " * 400)
    before = db.read_bytes()
    for args in (["runs"], ["report", "--dataset", six_groups, "--out", str(tmp_path / "r.html")],
                 ["run", "--dataset", six_groups, *FAST]):
        res = simlab(*args, cache=cache)
        said = error_lines(res.stderr)
        assert res.returncode == 2 and len(said) == 1 and re.fullmatch(line, said[0]), (args, res.stderr)
        assert "writable" not in said[0]  # a damaged store is not a permissions problem
    assert db.read_bytes() == before and not (tmp_path / "r.html").exists()


# --------------------------------------------------------------------------- the CLI beside the app's job


def test_vectorize_attaches_to_the_apps_job_for_the_same_dataset_and_computes_nothing(tmp_path):
    """The app has queued a vectorisation of ``folder:X/``; ``vectorize --dataset folder:X`` (the same
    dataset, written otherwise) waits for that job and then reads its vectors: 0 computed here."""
    from conftest import make_folder

    from simlab.jobs.request import request_params

    make_folder(tmp_path / "ds", [3, 3, 3])
    cache = tmp_path / "cache"
    env = os.environ | {"SIMLAB_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    store = Store(cache / "simlab.db")
    params = request_params({"dataset": f"folder:{tmp_path / 'ds'}/", "backbones": ["efficientnet_lite0"],
                             "weights": "random"})
    job_id, _ = store.add_job_once("vectorize", params)  # as the app records it, its worker not started yet
    store.update_job(job_id, heartbeat=time.time())
    cli_proc = subprocess.Popen([sys.executable, "-m", "simlab", "vectorize", "--dataset", f"folder:{tmp_path}/ds",
                                 "--weights", "random"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    said = []
    try:
        for line in cli_proc.stderr:
            said.append(line)
            if "attached to job" in line:
                break
        assert said and said[-1].strip() == f"attached to job {job_id}, which vectorises this dataset in the app: " \
                                            "waiting for it", "".join(said)[-3000:]
        worker = subprocess.run([sys.executable, "-m", "simlab.jobs", job_id, str(store.path)], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        assert worker.returncode == 0 and store.job(job_id).status == "done", worker.stderr[-3000:]
        out, err = cli_proc.communicate(timeout=300)
    finally:
        cli_proc.kill()
    assert cli_proc.returncode == 0, err[-3000:]
    assert out.startswith("9 vectors of 1280 (0 computed, the rest cached)"), out + err[-2000:]
    assert "computing what is missing here" not in err


_REASONS = ["file not found", "not an image", "listed twice (line 12)", "listed twice (line 7)", "truncated",
            "decompression bomb (130000000 pixels)", "same file as /a/b.jpg: read once", "corrupt image (\x1b[2J)",
            "unreadable (permission denied)", "zero-byte file"]


@settings(max_examples=100, deadline=None)
@given(problems=st.lists(st.tuples(st.text(max_size=30), st.sampled_from(_REASONS)), max_size=300),
       first=st.integers(1, 12))
def test_a_problem_summary_is_a_few_escaped_lines_whatever_the_list(problems, first):
    from simlab.cli.output import problem_summary
    from simlab.data import Problem

    lines = problem_summary([Problem(p, r) for p, r in problems], first)
    if not problems:
        assert lines == []
        return
    assert len(lines) <= first + 2
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for line in lines for c in line)
    assert re.match(r"skipped ([\d,]+) file", lines[0])[1].replace(",", "") == str(len(problems))
    shown = {line.rsplit(": ", 1)[-1] for line in lines[1:] if not line.startswith("  ... and")}
    if len(problems) > first:
        assert lines[-1] == f"  ... and {len(problems) - first:,} more (the app's Data page lists them all)"
    kinds = {r.split(" (line")[0].split(": ")[0] for _, r in problems}
    assert len(shown) >= min(first, len(kinds) - 1)  # a rare reason is shown beside a common one
