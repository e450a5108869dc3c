"""``python -m simlab vectorize``: one vector per image, cached."""

from __future__ import annotations

import json
import sys

from simlab.backbones import DEFAULT_BACKBONE, get_backbone
from simlab.cli.args import RAY_HELP
from simlab.cli.guard import backbone_flag
from simlab.cli.progress_bar import ProgressBar, show_speed
from simlab.data import load_dataset
from simlab.vectors import vectorize


def add_cli(subparsers, data_args) -> None:
    p = subparsers.add_parser("vectorize", help="one vector per image, cached")
    data_args(p)
    backbone_flag(p, "--backbone", "backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--fit", default="crop", choices=["crop", "pad"], help="aspect-preserving center crop or pad")
    p.add_argument("--out", help="write vectors, paths and groups to this .npz")
    p.add_argument("--ray", metavar="ADDRESS", help=RAY_HELP)
    p.set_defaults(func=cmd_vectorize, check=lambda args: get_backbone(args.backbone))  # before any work


def cmd_vectorize(args) -> int:
    dataset = load_dataset(args.dataset)
    vs = vectorize(dataset, args.backbone, args.weights, fit=args.fit, ray=args.ray,
                   progress=ProgressBar(describe=show_speed))
    for p in [*dataset.problems, *vs.problems]:
        print(f"skipped {p.path}: {p.reason}", file=sys.stderr)
    if args.out:
        vs.save_npz(args.out)
    summary = {"dataset": args.dataset, "backbone": vs.backbone, "weights": vs.weights, "images": len(vs.paths),
               "dim": int(vs.vectors.shape[1]), "computed": vs.computed,
               "skipped": len(dataset.problems) + len(vs.problems), "out": args.out}
    print(json.dumps(summary) if args.json else
          f"{summary['images']} vectors of {summary['dim']} ({vs.computed} computed, the rest cached)"
          + (f" -> {args.out}" if args.out else ""))
    return 0
