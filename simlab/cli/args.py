"""Arguments shared by several sub-commands."""

from __future__ import annotations

import argparse

from simlab.backbones import WEIGHTS_CHOICES

RAY_HELP = ("run on Ray: local, auto, HOST:6379 or ray://HOST:10001 (default $SIMLAB_RAY_ADDRESS; "
            "see docs/scaling.md)")


def data_args(p: argparse.ArgumentParser) -> None:
    """``--dataset``, ``--weights`` and ``--json``: every command that reads a dataset takes them."""
    p.add_argument("--dataset", default="demo", help="demo | holidays:DIR | folder:DIR | csv:FILE (default demo)")
    p.add_argument("--weights", default="imagenet", choices=WEIGHTS_CHOICES,
                   help="imagenet (real, default) or random (for tests only)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
