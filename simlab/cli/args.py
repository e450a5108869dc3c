"""Arguments shared by several sub-commands."""

from __future__ import annotations

import argparse

from simlab.cli.guard import option_flag

RAY_HELP = ("run on Ray: local, auto, HOST:6379 or ray://HOST:10001 (default $SIMLAB_RAY_ADDRESS; "
            "see docs/scaling.md)")


def data_args(p: argparse.ArgumentParser) -> None:
    """``--dataset``, ``--weights`` and ``--json``: every command that reads a dataset takes them."""
    p.add_argument("--dataset", default="demo", help="demo | holidays:DIR | folder:DIR | csv:FILE (default demo)")
    option_flag(p, "--weights", "weights")
    p.add_argument("--json", action="store_true", help="machine-readable output")
