"""``python -m simlab run`` (a grid of runs) and ``python -m simlab runs`` (the stored runs)."""

from __future__ import annotations

import json
import sys

from simlab.backbones import DEFAULT_BACKBONE
from simlab.cli.args import RAY_HELP
from simlab.cli.guard import backbone_flag, option_flag
from simlab.cli.progress_bar import ProgressBar
from simlab.cli.table import print_table
from simlab.experiment import GridConfig, run_grid
from simlab.store import Store
from simlab.store.run import runs_frame

RUN_COLUMNS = ["run_id", "backbone", "merge", "classifier", "accuracy", "accuracy_lo", "accuracy_hi", "auc", "f1",
               "map", "seconds"]
STORED_COLUMNS = ["id", "status", "dataset", "backbone", "merge", "classifier", "split", "accuracy", "auc", "map"]


def add_cli(subparsers, data_args) -> None:
    p = subparsers.add_parser("run", help="train and score every backbone x merge x classifier")
    data_args(p)
    backbone_flag(p, "--backbone", "backbones", default=[DEFAULT_BACKBONE])
    option_flag(p, "--merge", "merges")
    option_flag(p, "--classifier", "classifiers")
    option_flag(p, "--split", "split")
    option_flag(p, "--test-size", "test_size")
    option_flag(p, "--negative-ratio", "negative_ratio")
    option_flag(p, "--negatives", "negatives")
    p.add_argument("--ray", metavar="ADDRESS", help=RAY_HELP + "; XGBoost cells train with Ray Train")
    p.add_argument("--fusion", action="store_true", help="also run the backbones' vectors concatenated")
    p.add_argument("--library-defaults", action="store_true",
                   help="LinearSVC and XGBoost with the libraries' defaults, as the 2017 study ran them")
    option_flag(p, "--seed", "seed")
    p.add_argument("--reuse", action="store_true",
                   help="cells whose configuration, data and seed already have a finished run are not run again: "
                        "their stored runs are printed (marked existing)")
    p.set_defaults(func=cmd_run, check=grid_config)

    p = subparsers.add_parser("runs", help="list stored runs (a row that cannot be read is named on stderr)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--delete", metavar="ID", nargs="+",
                   help="delete these runs (their predictions and curves too), a corrupt one included")
    p.set_defaults(func=cmd_runs)


def grid_config(args) -> GridConfig:
    """The validated grid the command line describes (a one-line ValueError naming a setting out of bounds)."""
    return GridConfig(dataset=args.dataset, backbones=args.backbone, merges=args.merge,
                      classifiers=args.classifier, split=args.split, test_size=args.test_size,
                      negative_ratio=args.negative_ratio, negatives=args.negatives, seed=args.seed,
                      weights=args.weights, fusion=args.fusion, ray=args.ray,
                      library_defaults=args.library_defaults, reuse=args.reuse).validate()


def cmd_run(args) -> int:
    config = grid_config(args)
    rows = []
    for result in run_grid(config, progress=ProgressBar()):
        rows.append(result)
        if args.json:
            print(json.dumps(result), flush=True)
    if not args.json:
        print_table(rows, RUN_COLUMNS)
    return 0


def cmd_runs(args) -> int:
    store = Store()
    if args.delete:
        return delete_runs(store, args.delete)
    frame = runs_frame(store.list_runs())  # a corrupt row is left out, and named on stderr
    if args.json:
        for r in frame.to_dict(orient="records"):
            print(json.dumps(r, default=str))
    elif frame.empty:
        print("No runs yet. Start one with: python -m simlab run --dataset demo")
    else:
        print_table(frame.to_dict(orient="records"), [c for c in STORED_COLUMNS if c in frame])
    return 0


def delete_runs(store: Store, run_ids: list[str]) -> int:
    """Delete each run; 2 when one of them is not in the store (the others are deleted)."""
    missing = []
    for run_id in run_ids:
        if store.delete_run(run_id):
            print(f"deleted run {run_id}")
        else:
            missing.append(run_id)
    if missing:
        print(f"error: no run {', '.join(missing)} in {store.path} (see python -m simlab runs)", file=sys.stderr)
        return 2
    return 0
