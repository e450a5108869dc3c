"""Render time of each app page, cold and warm, on a store holding the benchmark grid.

Runs the real app (``streamlit.testing.v1.AppTest.from_file("app.py")``) in-process, on the
benchmarks' isolated cache: the Holidays-shaped dataset and the run store that grid.py fills
(if that store holds no grid yet, this script runs it first). Each page listed in app.py is opened
by switching to it, ``--warm`` times more after its first (cold) render;
the table shows the cold time, the median and worst warm time, and any exception a page raised.

    .venv/bin/python benchmarks/pages.py [--warm 3] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root first; and not this folder, which Python puts first and whose script names
# (pages, grid, ...) would shadow the app's own modules.
sys.path[:] = [str(Path(__file__).resolve().parent.parent)] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

from streamlit.testing.v1 import AppTest  # noqa: E402

from benchmarks import grid  # noqa: E402
from benchmarks._common import REPO_ROOT, emit, log, machine, make_holidays, median, table, use_bench_cache, verdict  # noqa: E402
from simlab.store import Store  # noqa: E402

GOAL_S = 1.0
APP = REPO_ROOT / "app.py"


def app_pages() -> list[str]:
    """Page files app.py lists, in navigation order."""
    return list(dict.fromkeys(re.findall(r"""["'](pages/[\w-]+\.py)["']""", APP.read_text())))


def ensure_grid(quick: bool) -> int:
    """The store's finished runs; runs the benchmark grid first when the store holds none."""
    store = Store()
    done = store.list_runs(status="done")
    if not done:
        log("the benchmark store holds no grid yet: running benchmarks/grid.py first"
            + (" (quick: cosine, gnb, logreg)" if quick else ""))
        grid.run(classifiers=["cosine", "gnb", "logreg"] if quick else None, fresh_store=False)
        done = store.list_runs(status="done")
    return len(done)


def _errors(at) -> list[str]:
    out = [f"exception: {str(e.value)[:200]}" for e in at.exception]
    out += [f"error: {str(e.value)[:200]}" for e in at.error]
    return out


def _render(at, page: str | None, timeout: float) -> float:
    t0 = time.perf_counter()
    if page is None:
        at.run(timeout=timeout)
    else:
        at.switch_page(page).run(timeout=timeout)
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warm", type=int, default=3, help="warm renders per page (median and worst reported)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds one render may take")
    ap.add_argument("--quick-grid", action="store_true", help="if no grid is stored, run a 3-classifier one")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    use_bench_cache()
    spec = f"holidays:{make_holidays()}"
    os.environ["SIMLAB_DATASET"] = spec  # the app's default dataset: the one the grid ran on
    n_runs = ensure_grid(args.quick_grid)
    pages = app_pages()
    log(f"pages benchmark: {len(pages)} pages, store with {n_runs} runs, dataset {spec}")
    os.chdir(REPO_ROOT)  # app.py resolves pages/ from its own folder; AppTest from the cwd too
    at = AppTest.from_file(str(APP), default_timeout=args.timeout)
    t_start = _render(at, None, args.timeout)  # the default page (home), imports and all
    rows = []
    for page in pages:
        cold = _render(at, page, args.timeout)
        errors = _errors(at)
        warm = [_render(at, page, args.timeout) for _ in range(args.warm)]
        errors = list(dict.fromkeys(errors + _errors(at)))
        rows.append({"page": page, "elements": len(list(at.main)), "cold_s": round(cold, 3),
                     "warm_median_s": round(median(warm), 3), "warm_max_s": round(max(warm), 3),
                     "verdict": "ERROR" if errors else verdict(median(warm) < GOAL_S),
                     "errors": "; ".join(errors)[:160] or "-"})
        log(f"  {page}: cold {cold:.2f} s, warm {median(warm):.2f} s" + (f"  [{errors[0][:100]}]" if errors else ""))
    out = {"benchmark": "pages", "dataset": spec, "runs_in_store": n_runs, "first_run_s": round(t_start, 2),
           "pages": rows, "goal_s": GOAL_S,
           "goal_met": all(r["warm_median_s"] < GOAL_S and r["errors"] == "-" for r in rows),
           "machine": machine()}
    text = (f"Pages: warm render (median of {args.warm}) per page, store with {n_runs} runs "
            f"({out['machine']['device']}, load {out['machine'].get('load_avg')}); "
            f"first app run (imports) {t_start:.1f} s\n\n" + table(rows, floatfmt="{:.3f}"))
    emit(out, args.json, text)
    return out


if __name__ == "__main__":
    main()
