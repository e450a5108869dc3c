"""``python -m simlab report``: one self-contained HTML file about a dataset's runs, to share."""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path

from simlab.cli.guard import option_flag
from simlab.report import DEFAULT_ERRORS, DEFAULT_TOP, select_runs, write_report
from simlab.store import Store


class OutNotWritable(ValueError):
    """--out cannot be written: one line naming the path and why."""


def add_cli(subparsers, data_args) -> None:
    p = subparsers.add_parser(
        "report", help="write one self-contained HTML report of a dataset's runs (opens offline)",
        description="Protocol, heatmaps, leaderboard with 95% intervals, the 2017 study beside ours where it "
                    "applies, and chosen runs in detail (confusion matrix, most confident errors as image pairs), "
                    "in one HTML file that fetches nothing.")
    p.add_argument("--dataset", default="demo", help="demo | holidays:DIR | folder:DIR | csv:FILE (default demo)")
    p.add_argument("--run", nargs="+", action="extend", metavar="ID", default=[],
                   help="runs to show in detail (default: the best runs of the dataset)")
    p.add_argument("--out", required=True, metavar="FILE.html", help="the HTML file to write")
    option_flag(p, "--split", "split", default=None, help="only runs with this split (default: all)")
    option_flag(p, "--weights", "weights", default=None, help="only runs with these weights (default: all)")
    p.add_argument("--top", type=int, default=DEFAULT_TOP, metavar="N",
                   help=f"without --run, how many of the best runs to show in detail (default {DEFAULT_TOP})")
    p.add_argument("--errors", type=int, default=DEFAULT_ERRORS, metavar="N",
                   help=f"most confident errors shown per run (default {DEFAULT_ERRORS})")
    p.set_defaults(func=cmd_report, check=check_report)


def check_report(args) -> None:
    """Before any work: the counts in bounds, --out writable, the --run ids finished runs of --dataset."""
    for flag, value in (("--top", args.top), ("--errors", args.errors)):
        if not 0 <= value <= 100:
            raise ValueError(f"{flag} must be between 0 and 100, not {value}.")
    check_out(Path(args.out))
    select_runs(args.dataset, args.run, store=Store(), split=args.split, weights=args.weights, top=args.top)


def check_out(out: Path) -> None:
    """Raise :class:`OutNotWritable` unless a file can be written at ``out`` (its folder exists and takes a file)."""
    if out.is_dir():
        raise OutNotWritable(f"--out {out} is a folder: name the HTML file to write, e.g. {out / 'report.html'}.")
    folder = out.parent if str(out.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise OutNotWritable(f"--out {out}: {folder} is not a folder.")
    if not folder.is_dir():
        raise OutNotWritable(f"--out {out}: the folder {folder} does not exist.")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
        if out.exists() and not os.access(out, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise OutNotWritable(f"--out {out} cannot be written ({exc.strerror or exc}).") from None


def cmd_report(args) -> int:
    command = shlex.join(["python", "-m", "simlab", "report", "--dataset", args.dataset,
                          *(["--run", *args.run] if args.run else []), "--out", os.path.basename(args.out)])
    size = write_report(args.out, args.dataset, args.run, split=args.split, weights=args.weights, top=args.top,
                        errors=args.errors, command=command)
    print(f"wrote {args.out} ({size / 2**20:.1f} MB)")
    return 0
