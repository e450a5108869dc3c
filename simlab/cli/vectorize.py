"""``python -m simlab vectorize``: one vector per image, cached; several backbones from one decode."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from simlab.backbones import DEFAULT_BACKBONE, get_backbone
from simlab.cli import attach
from simlab.cli.args import RAY_HELP
from simlab.cli.guard import backbone_flag
from simlab.cli.output import print_problems
from simlab.cli.progress_bar import ProgressBar, show_speed
from simlab.data import load_dataset
from simlab.vectors import choose_decoder, vectorize_many


def add_cli(subparsers, data_args) -> None:
    p = subparsers.add_parser("vectorize", help="one vector per image, cached")
    data_args(p)
    backbone_flag(p, "--backbone", "backbone", default=[DEFAULT_BACKBONE], nargs="+",
                  help="the image backbone(s); several are fed from one decode of each image")
    p.add_argument("--fit", default="crop", choices=["crop", "pad"], help="aspect-preserving center crop or pad")
    p.add_argument("--out", help="write vectors, paths and groups to this .npz (several backbones: "
                                 "one file each, OUT-BACKBONE.npz)")
    p.add_argument("--ray", metavar="ADDRESS", help=RAY_HELP)
    p.set_defaults(func=cmd_vectorize, check=_check)  # before any work


def _check(args) -> None:
    for name in args.backbone:
        get_backbone(name)
    choose_decoder()  # $SIMLAB_DECODE naming a decoder that cannot run here: one line, before any work


def _out(out: str | None, backbone: str, several: bool) -> str | None:
    if not out or not several:
        return out
    p = Path(out)
    return str(p.with_name(f"{p.stem}-{backbone}{p.suffix or '.npz'}"))


def _one_bar(bar):
    """Every backbone's progress on one bar: the images done by all of them, out of all they have to do."""
    done: dict[str, int] = {}
    total: dict[str, int] = {}

    def progress_for(backbone: str):
        def report(n: int, of: int, message: str = "", **fields) -> None:
            done[backbone], total[backbone] = n, of
            bar(sum(done.values()), sum(total.values()), message, **fields)

        return report

    return progress_for


def cmd_vectorize(args) -> int:
    dataset = load_dataset(args.dataset)
    backbones = list(dict.fromkeys(args.backbone))
    several = len(backbones) > 1
    if not args.ray and args.fit == "crop":  # the app's jobs vectorise with these settings
        attach.wait_for(attach.vectorize_jobs(dataset.spec, backbones, args.weights))
    stats: list = []
    sets = vectorize_many(dataset, backbones, args.weights, fit=args.fit, ray=args.ray,
                          progress_for=_one_bar(ProgressBar(describe=show_speed)), stats=stats)
    vs0 = sets[backbones[0]]
    print_problems([*dataset.problems, *vs0.problems], sys.stderr)  # a decoding problem is the same for all
    summaries = []
    for name in backbones:
        vs, out = sets[name], _out(args.out, name, several)
        if out:
            vs.save_npz(out)
        summaries.append({"dataset": args.dataset, "backbone": vs.backbone, "weights": vs.weights,
                          "images": len(vs.paths), "dim": int(vs.vectors.shape[1]), "computed": vs.computed,
                          "skipped": len(dataset.problems) + len(vs.problems), "out": out})
    decoding = ({"decoder": stats[0].decoder, "decoded": stats[0].decodes, "decoded_images": stats[0].images,
                 "fallbacks": stats[0].fallbacks} if stats else
                {"decoder": None, "decoded": 0, "decoded_images": 0, "fallbacks": 0})
    if args.json:
        print(json.dumps(summaries[0] | decoding if not several else {"backbones": summaries, **decoding}))
        return 0
    for s in summaries:
        print(f"{s['backbone'] + ': ' if several else ''}{s['images']} vectors of {s['dim']} "
              f"({s['computed']} computed, the rest cached)" + (f" -> {s['out']}" if s["out"] else ""))
    if several and decoding["decoded"]:
        print(f"{decoding['decoded_images']} images, {decoding['decoded']} decodes for {len(backbones)} backbones "
              f"({decoding['decoder']})")
    return 0
