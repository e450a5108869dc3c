"""``python -m simlab search``: the images most like a query image (FAISS index), optionally re-ranked."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from simlab.cli.guard import backbone_flag, option_flag
from simlab.cli.progress_bar import ProgressBar
from simlab.data import load_dataset
from simlab.search import FLAT_MAX, INDEX_KINDS, SearchResult, search_dataset


def add_cli(subparsers, data_args) -> None:
    p = subparsers.add_parser("search", help="the images most like a query image (FAISS index)")
    data_args(p)
    backbone_flag(p, "--backbone", "backbone", default=None,
                  help="backbone of the vectors (default: the bundled one, or the --rerank run's)")
    p.add_argument("--query", required=True, help="path of the query image (in the dataset or not)")
    option_flag(p, "--k", "k")
    p.add_argument("--rerank", metavar="RUN_ID", help="re-order by this run's pair classifier (P same scene)")
    p.add_argument("--shortlist", type=int, help="with --rerank: neighbours re-ranked (default 3k)")
    p.add_argument("--index", default="auto", choices=INDEX_KINDS,
                   help=f"auto (flat up to {FLAT_MAX:,} vectors, then IVF), flat, ivf, ivfpq or hnsw")
    p.add_argument("--stages", action="store_true", help="print each step on stderr as 'stage: MESSAGE'")
    p.set_defaults(func=cmd_search, weights=None)  # None: imagenet, or the --rerank run's weights


class StageLines:
    """A search's progress on stderr: each step as a ``stage: MESSAGE`` line, a vectorisation as a bar."""

    def __init__(self, stages: bool, bar: bool):
        self.stages = stages
        self.bar = ProgressBar(describe=vectorising) if bar else None

    def __call__(self, done: int, total: int, message: str = "", **fields: Any) -> None:
        if fields.get("stage") == "vectorize":
            if self.bar:
                self.bar(done, total, message, **fields)
        elif self.stages:
            print(f"stage: {message}", file=sys.stderr, flush=True)


def vectorising(message: str, fields: dict) -> str:
    return f"vectorising: {fields.get('rate') or 0.0:.1f} img/s, ETA {fields.get('eta') or 0.0:.0f} s"


def cmd_search(args) -> int:
    dataset = load_dataset(args.dataset)
    report = StageLines(stages=args.stages or not args.json, bar=not args.json)
    result = search_dataset(dataset, args.query, args.backbone, args.weights, k=args.k, rerank=args.rerank,
                            kind=args.index, shortlist=args.shortlist, progress=report)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print_result(result, args.query, dataset.root)
    return 0


def print_result(result: SearchResult, query: str, root) -> None:
    where = f"group {result.query_group}" if result.query_group is not None else "not in the dataset"
    print(f"{len(result.results)} nearest to {query} ({where}) in {root} · {result.backbone} ({result.weights}) · "
          f"{result.kind} index" + (f" · re-ranked by run {result.rerank}" if result.rerank else ""))
    cols = ["rank", "score", "prob", "group", "path"] if result.rerank else ["rank", "score", "group", "path"]
    rows = [{**r, "path": _relative(r["path"], root), "score": f"{r['score']:.4f}",
             **({"prob": f"{r['prob']:.3f}"} if "prob" in r else {})} for r in result.results]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        same = " *" if result.query_group is not None and r["group"] == result.query_group else ""
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols) + same)
    if result.query_group is not None:
        print("* same group as the query")
    if result.close_match is False:
        print(f"no close match: the best result looks less alike than 95% of run {result.rerank}'s validation "
              "same-scene pairs; its P(same) values are not to be trusted")


def _relative(path: str, root) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path
