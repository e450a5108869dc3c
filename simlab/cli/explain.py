"""``python -m simlab explain A B``: which regions of two images make their vectors alike."""

from __future__ import annotations

import json
from pathlib import Path

from simlab.backbones import DEFAULT_BACKBONE, get_backbone
from simlab.cli.guard import backbone_flag, option_flag
from simlab.explain import DEFAULT_DETAIL, DETAILS, NoSpatialMap, can_explain, explain_pair, no_map_reason, pair_picture


def add_cli(subparsers, data_args) -> None:
    p = subparsers.add_parser("explain", help="similarity maps of two images: which regions make them look alike")
    p.add_argument("image_a", metavar="IMAGE_A")
    p.add_argument("image_b", metavar="IMAGE_B")
    backbone_flag(p, "--backbone", "backbone", default=DEFAULT_BACKBONE,
                  help=f"the backbone whose cosine is explained (default {DEFAULT_BACKBONE})")
    option_flag(p, "--weights", "weights")
    p.add_argument("--out", required=True, help="write grid_a, grid_b, map_a, map_b and score to this .npz")
    p.add_argument("--png", help="also draw both images side by side with the map and the matched regions")
    p.add_argument("--detail", default=DEFAULT_DETAIL, choices=DETAILS,
                   help="map_a / map_b: 'views' sharpened by local views of each image (default), 'native' the "
                        "grid upsampled")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_explain, check=_check)


def _check(args) -> None:
    get_backbone(args.backbone)
    if not can_explain(args.backbone):
        raise NoSpatialMap(no_map_reason(args.backbone))
    for image in (args.image_a, args.image_b):
        if not Path(image).is_file():
            raise FileNotFoundError(f"{image}: no such file")


def cmd_explain(args) -> int:
    e = explain_pair(args.image_a, args.image_b, args.backbone, args.weights, detail=args.detail)
    e.save_npz(args.out)
    if args.png:
        pair_picture(args.image_a, args.image_b, e).save(args.png)
    if args.json:
        print(json.dumps(e.summary() | {"image_a": args.image_a, "image_b": args.image_b, "out": args.out,
                                        "png": args.png}))
        return 0
    exact = "exact" if e.exact else "scaled to the score (an approximation)"
    print(f"cosine {e.score:.4f} ({e.backbone}, {e.weights} weights); grid {e.grid_a.shape[0]}x{e.grid_a.shape[1]}, "
          f"sums {e.grid_a.sum():.4f} / {e.grid_b.sum():.4f} ({exact})")
    if e.matches:
        print(f"top {len(e.matches)} matched regions carry {e.matched_share:.0%} of the score:")
        for k, m in enumerate(e.matches, 1):
            print(f"  {k}. A row {m.a[0]} col {m.a[1]} <-> B row {m.b[0]} col {m.b[1]}: "
                  f"{m.share:.1%} of the score, feature cosine {m.similarity:.2f}")
    print(f"wrote {args.out}" + (f" and {args.png}" if args.png else ""))
    return 0
