"""``python -m simlab backbones``: the backbone registry, each one's weights status and what its vector is."""

from __future__ import annotations

import json

from simlab.backbones import list_backbones, weights_status
from simlab.cli.table import print_table

#: weights status -> what it means, for the text table's legend
LEGEND = {"bundled": "ship with simlab (offline)", "cached": "downloaded, on disk (offline)",
          "download": "downloaded on first use (internet needed once)"}


def add_cli(subparsers, data_args) -> None:
    p = subparsers.add_parser("backbones", help="list the backbones, their weights status and vectors")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per backbone: name, input, dim, weights (bundled|cached|download), "
                        "weights_present, source, embedding, description")
    p.set_defaults(func=cmd_backbones)


def backbone_rows() -> list[dict]:
    rows = []
    for b in list_backbones():
        status = weights_status(b.name)
        rows.append({"name": b.name, "input": b.input_size, "dim": b.dim, "weights": status,
                     "weights_present": status != "download",
                     "source": f"keras_hub:{b.options['preset']}" if "preset" in b.options else None,
                     "embedding": b.options.get("embedding"), "description": b.description})
    return rows


def cmd_backbones(args) -> int:
    rows = backbone_rows()
    if args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print_table(rows, ["name", "input", "dim", "weights", "description"])
        print("\nweights: " + "; ".join(f"{k} = {v}" for k, v in LEGEND.items()))
    return 0
