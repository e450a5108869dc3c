"""Command line: ``python -m simlab COMMAND ...`` (see ``--help``).

All of simlab's argparse lives in this package, one module per command group; each module's
``add_cli(subparsers, data_args)`` adds its sub-commands. Nothing in simlab imports this package
(only ``simlab/__main__.py`` does).

Exit codes: 0 done; 2 refused before any work (a flag out of bounds, a dataset too small, a store that
cannot be written) or an error that says what to do; 1 an unexpected error (one line, the traceback in
a log file); 130 Ctrl-C; 143 SIGTERM (runs in progress are marked failed first).
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

import simlab.finetune  # noqa: F401  (registers the siamese-<run id> backbones before any command)
from simlab.cli import backbones, explain, finetune, report, runs, search, vectorize
from simlab.cli.args import data_args
from simlab.cli.guard import (
    Parser,
    Terminated,
    check_writable,
    interrupt_own_runs,
    is_ours,
    one_line,
    report_unexpected,
    sigterm_raises,
)
from simlab.cli.output import escaped_output
from simlab.progress import Cancelled

log = logging.getLogger(__name__)

#: Each adds its sub-command(s) to the parser, in this order.
COMMANDS = (backbones.add_cli, vectorize.add_cli, runs.add_cli, finetune.add_cli, search.add_cli, report.add_cli,
            explain.add_cli)
#: Commands that store runs (the run store must be writable) and those that write the cache folder.
STORE_WRITERS = {"run", "finetune"}
CACHE_WRITERS = STORE_WRITERS | {"vectorize", "search"}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m simlab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true",
                        help="log simlab's debug messages on stderr, and an unexpected error's traceback")
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
    with escaped_output():  # a file name's escape codes are shown, never run by the terminal
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.debug)
    with sigterm_raises():
        try:
            if check := getattr(args, "check", None):  # the command's settings, before anything is written
                check(args)
            if args.command in CACHE_WRITERS:
                check_writable(store=args.command in STORE_WRITERS)
            return args.func(args)
        except Terminated:
            stopped(args, "interrupted (SIGTERM)")
            print("\nterminated (SIGTERM); runs in progress were marked failed, the cache is intact", file=sys.stderr)
            return 143
        except (KeyboardInterrupt, Cancelled) as exc:
            stopped(args, "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else f"cancelled: {exc}")
            print("\ninterrupted; the cache is intact", file=sys.stderr)
            return 130
        except Exception as exc:  # noqa: BLE001 - one line on stderr; an unforeseen error's traceback goes to a log
            return report(exc, args)


def stopped(args: argparse.Namespace, reason: str) -> None:
    """After a stop, no run of this process stays "running" (those the command did not close itself)."""
    if args.command in STORE_WRITERS:
        interrupt_own_runs(reason)


def report(exc: Exception, args: argparse.Namespace) -> int:
    """One line on stderr: 2 for an error that says what to do, 1 (and a traceback log file) for any other."""
    if is_ours(exc):
        log.debug("%s failed", args.command, exc_info=exc)
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    path = report_unexpected(exc, args.command)
    if args.debug:
        traceback.print_exception(exc, file=sys.stderr)
    where = f"the traceback is in {path}" if path else "no log file could be written; rerun with --debug"
    print(f"error: unexpected {type(exc).__name__}: {one_line(exc)} ({where})", file=sys.stderr)
    return 1
