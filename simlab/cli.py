"""Command line: ``python -m simlab COMMAND ...`` (see ``--help``)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

from simlab.backbones import DEFAULT_BACKBONE, WEIGHTS_CHOICES, list_backbones, weights_status
from simlab.classifiers import CLASSIFIERS
from simlab.merge import MERGES
from simlab.pairs import NEGATIVE_SCHEMES, SPLITS


# Modules that bring their own sub-commands through ``add_cli(subparsers, data_args)``.
COMMAND_MODULES = ("simlab.finetune", "simlab.search")


RAY_HELP = ("run on Ray: local, auto, HOST:6379 or ray://HOST:10001 (default $SIMLAB_RAY_ADDRESS; "
            "see docs/scaling.md)")


class ProgressBar:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, stream=sys.stderr):
        self.stream, self.last = stream, 0.0

    def __call__(self, done: int, total: int, text: str = "") -> None:
        now = time.monotonic()
        if done < total and now - self.last < 0.1:
            return
        self.last = now
        width = 30
        filled = int(width * done / total) if total else width
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {text[:80]:<80}")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else "" if v is None else str(v)


def cmd_backbones(args) -> int:
    rows = [{"name": b.name, "input": b.input_size, "dim": b.dim, "weights": weights_status(b.name),
             "description": b.description} for b in list_backbones()]
    if args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        _print_table(rows, ["name", "input", "dim", "weights", "description"])
    return 0


def cmd_vectorize(args) -> int:
    from simlab.data import load_dataset
    from simlab.backbones import get_backbone
    from simlab.vectors import vectorize

    get_backbone(args.backbone)  # an unknown name fails before any dataset work
    dataset = load_dataset(args.dataset)
    bar = ProgressBar()
    vs = vectorize(dataset, args.backbone, args.weights, fit=args.fit, ray=args.ray,
                   progress=lambda d, t, rate, eta: bar(d, t, f"{rate:.1f} img/s, ETA {eta:.0f} s"))
    for p in [*dataset.problems, *vs.problems]:
        print(f"skipped {p.path}: {p.reason}", file=sys.stderr)
    if args.out:
        vs.save_npz(args.out)
    summary = {"dataset": args.dataset, "backbone": vs.backbone, "weights": vs.weights, "images": len(vs.paths),
               "dim": int(vs.vectors.shape[1]), "computed": vs.computed, "skipped": len(dataset.problems) + len(vs.problems),
               "out": args.out}
    print(json.dumps(summary) if args.json else
          f"{summary['images']} vectors of {summary['dim']} ({vs.computed} computed, the rest cached)"
          + (f" -> {args.out}" if args.out else ""))
    return 0


def cmd_run(args) -> int:
    from simlab.experiment import GridConfig, run_grid

    config = GridConfig(dataset=args.dataset, backbones=args.backbone, merges=args.merge,
                        classifiers=args.classifier, split=args.split, test_size=args.test_size,
                        negative_ratio=args.negative_ratio, negatives=args.negatives, seed=args.seed,
                        weights=args.weights, fusion=args.fusion, ray=args.ray, library_defaults=args.library_defaults)
    bar = ProgressBar()
    rows = []
    for result in run_grid(config, progress=lambda stage, d, t, msg: bar(d, t, msg)):
        rows.append(result)
        if args.json:
            print(json.dumps(result), flush=True)
    if not args.json:
        _print_table(rows, ["run_id", "backbone", "merge", "classifier", "accuracy", "accuracy_lo", "accuracy_hi",
                            "auc", "f1", "map", "seconds"])
    return 0


def cmd_runs(args) -> int:
    from simlab.store import Store

    frame = Store().runs_frame()
    if args.json:
        for r in frame.to_dict(orient="records"):
            print(json.dumps(r, default=str))
    elif frame.empty:
        print("No runs yet. Start one with: python -m simlab run --dataset demo")
    else:
        _print_table(frame.to_dict(orient="records"),
                     [c for c in ["id", "status", "dataset", "backbone", "merge", "classifier", "split", "accuracy",
                                  "auc", "map"] if c in frame])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("backbones", help="list the backbones and their weights status")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backbones)

    def data_args(p):
        p.add_argument("--dataset", default="demo", help="demo | holidays:DIR | folder:DIR | csv:FILE (default demo)")
        p.add_argument("--weights", default="imagenet", choices=WEIGHTS_CHOICES,
                       help="imagenet (real, default) or random (for tests only)")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("vectorize", help="one vector per image, cached")
    data_args(p)
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--fit", default="crop", choices=["crop", "pad"], help="aspect-preserving center crop or pad")
    p.add_argument("--out", help="write vectors, paths and groups to this .npz")
    p.add_argument("--ray", metavar="ADDRESS", help=RAY_HELP)
    p.set_defaults(func=cmd_vectorize)

    p = sub.add_parser("run", help="train and score every backbone x merge x classifier")
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

    p = sub.add_parser("runs", help="list stored runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)

    for module in COMMAND_MODULES:  # each adds its own sub-command(s); heavy imports stay inside its functions
        try:
            add_cli = importlib.import_module(module).add_cli
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        add_cli(sub, data_args)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:  # our errors say what to do
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; the cache is intact", file=sys.stderr)
        return 130
