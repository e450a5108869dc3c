"""``python -m simlab run`` (a grid of runs) and ``python -m simlab runs`` (the stored runs)."""

from __future__ import annotations

import json

from simlab.backbones import DEFAULT_BACKBONE
from simlab.classifiers import CLASSIFIERS
from simlab.cli.args import RAY_HELP
from simlab.cli.progress_bar import ProgressBar
from simlab.cli.table import print_table
from simlab.experiment import GridConfig, run_grid
from simlab.merge import MERGES
from simlab.pairs import NEGATIVE_SCHEMES, SPLITS
from simlab.store import Store

RUN_COLUMNS = ["run_id", "backbone", "merge", "classifier", "accuracy", "accuracy_lo", "accuracy_hi", "auc", "f1",
               "map", "seconds"]
STORED_COLUMNS = ["id", "status", "dataset", "backbone", "merge", "classifier", "split", "accuracy", "auc", "map"]


def add_cli(subparsers, data_args) -> None:
    p = subparsers.add_parser("run", help="train and score every backbone x merge x classifier")
    data_args(p)
    p.add_argument("--backbone", nargs="+", default=[DEFAULT_BACKBONE])
    p.add_argument("--merge", nargs="+", default=["dot", "l1", "l2"], choices=list(MERGES))
    p.add_argument("--classifier", nargs="+", default=["cosine", "logreg", "xgboost"], choices=list(CLASSIFIERS))
    p.add_argument("--split", default="group", choices=SPLITS,
                   help="group (default, no image in both train and test) or pair (the 2017 study's, leaky)")
    p.add_argument("--test-size", type=float, default=0.3)
    p.add_argument("--negative-ratio", type=float, default=1.0, help="negatives per positive (default 1)")
    p.add_argument("--negatives", default="random", choices=[*NEGATIVE_SCHEMES, "hard"],
                   help="random, same_left (the 2017 study's) or hard (mined near neighbours, FAISS)")
    p.add_argument("--ray", metavar="ADDRESS", help=RAY_HELP + "; XGBoost cells train with Ray Train")
    p.add_argument("--fusion", action="store_true", help="also run the backbones' vectors concatenated")
    p.add_argument("--library-defaults", action="store_true",
                   help="LinearSVC and XGBoost with the libraries' defaults, as the 2017 study ran them")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("runs", help="list stored runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)


def cmd_run(args) -> int:
    config = GridConfig(dataset=args.dataset, backbones=args.backbone, merges=args.merge,
                        classifiers=args.classifier, split=args.split, test_size=args.test_size,
                        negative_ratio=args.negative_ratio, negatives=args.negatives, seed=args.seed,
                        weights=args.weights, fusion=args.fusion, ray=args.ray, library_defaults=args.library_defaults)
    rows = []
    for result in run_grid(config, progress=ProgressBar()):
        rows.append(result)
        if args.json:
            print(json.dumps(result), flush=True)
    if not args.json:
        print_table(rows, RUN_COLUMNS)
    return 0


def cmd_runs(args) -> int:
    frame = Store().runs_frame()
    if args.json:
        for r in frame.to_dict(orient="records"):
            print(json.dumps(r, default=str))
    elif frame.empty:
        print("No runs yet. Start one with: python -m simlab run --dataset demo")
    else:
        print_table(frame.to_dict(orient="records"), [c for c in STORED_COLUMNS if c in frame])
    return 0
