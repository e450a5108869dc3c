"""Widget choices, ranges and defaults from simlab.options, where every choice and bound is declared once.

The pages word their own labels and help for their forms; what may be picked comes from here.
"""

from __future__ import annotations

from collections.abc import Callable

from simlab.options import choice_label, default, widget_options

__all__ = ["choice_label", "default", "format_choice", "widget_choices", "widget_range"]


def format_choice(name: str) -> Callable:
    """A widget's ``format_func`` for option ``name``: each choice's declared label."""
    return lambda value: choice_label(name, value)


def widget_choices(name: str) -> list:
    """The values a radio, selectbox or multiselect offers for option ``name``."""
    return widget_options(name)["options"]


def widget_range(name: str) -> dict:
    """``min_value``, ``max_value`` and ``step`` of a slider or number input for option ``name``."""
    return {k: v for k, v in widget_options(name).items() if k in ("min_value", "max_value", "step")}
