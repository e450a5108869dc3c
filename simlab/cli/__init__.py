"""Command line: ``python -m simlab COMMAND ...`` (see ``--help``).

All of simlab's argparse lives in this package, one module per command group; each module's
``add_cli(subparsers, data_args)`` adds its sub-commands. Nothing in simlab imports this package
(only ``simlab/__main__.py`` does).
"""

from __future__ import annotations

import argparse
import logging
import sys

from simlab.cli import backbones, finetune, runs, search, vectorize
from simlab.cli.args import data_args
from simlab.progress import Cancelled

log = logging.getLogger(__name__)

#: Each adds its sub-command(s) to the parser, in this order.
COMMANDS = (backbones.add_cli, vectorize.add_cli, runs.add_cli, finetune.add_cli, search.add_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simlab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="log simlab's debug messages on stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_cli in COMMANDS:
        add_cli(sub, data_args)
    return parser


def configure_logging(debug: bool = False) -> None:
    """Log records on stderr: warnings and errors, or everything of simlab's with ``--debug``."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if debug:
        logging.getLogger("simlab").setLevel(logging.DEBUG)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.debug)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:  # our errors say what to do
        log.debug("%s failed", args.command, exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Cancelled):
        print("\ninterrupted; the cache is intact", file=sys.stderr)
        return 130
