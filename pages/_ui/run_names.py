"""One way to name a stored run on the Runs and Two-runs pages: backbone · merge · classifier · id, and when."""

from __future__ import annotations

from pages._ui.formatting import fmt_when
from simlab.report.tables import run_title as run_name
from simlab.store import Run


def run_title(run: Run) -> str:
    """'efficientnet_lite0 · dot · Logistic regression · r1a2b3c4d5': the report's name of the run, and its id."""
    return f"{run_name(run)} · {run.id}"


def run_title_when(run: Run) -> str:
    """:func:`run_title` and when the run was made."""
    return f"{run_title(run)}, made {fmt_when(run.created)}" if run.created else run_title(run)


def run_choice(run: Run) -> str:
    """A picker's line: the title and the accuracy at the run's threshold (the protocol is said beside it)."""
    acc = run.metrics.get("accuracy")
    return run_title(run) + (f" · accuracy {acc:.3f}" if isinstance(acc, (int, float)) else "")
