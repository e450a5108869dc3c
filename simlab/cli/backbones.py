"""``python -m simlab backbones``: the backbone registry and each one's weights status."""

from __future__ import annotations

import json

from simlab.backbones import list_backbones, weights_status
from simlab.cli.table import print_table


def add_cli(subparsers, data_args) -> None:
    p = subparsers.add_parser("backbones", help="list the backbones and their weights status")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backbones)


def cmd_backbones(args) -> int:
    rows = [{"name": b.name, "input": b.input_size, "dim": b.dim, "weights": weights_status(b.name),
             "description": b.description} for b in list_backbones()]
    if args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print_table(rows, ["name", "input", "dim", "weights", "description"])
    return 0
