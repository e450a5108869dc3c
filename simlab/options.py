"""Every choice and bound a user can set, declared once: validation, CLI flags and widgets come from here.

Modelled on scikit-learn's ``_parameter_constraints``: an :class:`Option` names its constraint
(an :class:`Interval` or a set of :class:`Choices`), its default and a one-line help. Then

>>> validate("test_size", 1.5)
ValueError: test_size must be in (0, 1) (a share of the groups or pairs held out for testing), not 1.5
>>> parser.add_argument("--test-size", **argparse_kwargs("test_size"))
>>> st.slider("Test fraction", **widget_options("test_size"))

Choices that live in a registry (backbones, classifiers) are not copied here: the registry hands
its names over with :func:`register_choices` when it is imported, so this module imports nothing
above it. Merges are a base module and are read directly.
"""

from __future__ import annotations

import argparse
import logging
import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from simlab.merge import MERGES

log = logging.getLogger(__name__)

SPLITS = ("group", "pair")
NEGATIVE_SCHEMES = ("random", "same_left")  # drawn at random
NEGATIVES = (*NEGATIVE_SCHEMES, "hard")  # plus mined near neighbours (FAISS)
WEIGHTS = ("imagenet", "random")
MIN_GROUPS_PER_SIDE = 2  # a side of a group split needs two groups to have negative pairs


# --------------------------------------------------------------------------- constraints


@dataclass(frozen=True)
class Interval:
    """Numbers of ``type`` between ``left`` and ``right`` (None: unbounded); ``closed`` as in scikit-learn:
    "both", "left", "right" or "neither". Always finite."""

    type: type
    left: float | None
    right: float | None
    closed: str = "both"

    def accepts(self, value) -> bool:
        kind = numbers.Integral if self.type is int else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
            return False
        above_left = self.left is None or value > self.left or (value == self.left and self.closed in ("both", "left"))
        below_right = self.right is None or value < self.right or (
            value == self.right and self.closed in ("both", "right"))
        return above_left and below_right

    def convert(self, text):
        return self.type(text)

    def _fmt(self, bound) -> str:
        return str(int(bound)) if self.type is int else f"{bound:g}"

    def describe(self) -> str:
        if self.left is None and self.right is None:
            return f"a finite {self.type.__name__}"
        if self.right is None:
            return f"{'>=' if self.closed in ('both', 'left') else '>'} {self._fmt(self.left)}"
        if self.left is None:
            return f"{'<=' if self.closed in ('both', 'right') else '<'} {self._fmt(self.right)}"
        lo = "[" if self.closed in ("both", "left") else "("
        hi = "]" if self.closed in ("both", "right") else ")"
        return f"in {lo}{self._fmt(self.left)}, {self._fmt(self.right)}{hi}"


@dataclass(frozen=True)
class Choices:
    """One of a fixed tuple of names, or of the names a registry hands over (``registry``)."""

    values: tuple = ()
    registry: str | None = None

    def names(self) -> tuple:
        if self.registry is None:
            return tuple(self.values)
        try:
            return tuple(_REGISTRIES[self.registry]())
        except KeyError:
            raise LookupError(f"No {self.registry} registry has handed over its names yet: import "
                              f"the module that declares the {self.registry}s first.") from None

    def accepts(self, value) -> bool:
        return value in self.names()

    def convert(self, text):
        return text

    def describe(self) -> str:
        return "one of " + ", ".join(map(str, self.names()))


_REGISTRIES: dict[str, Callable[[], Iterable[str]]] = {"merge": lambda: list(MERGES)}
_REGISTRY_LABELS: dict[str, Callable[[str], str]] = {}


def register_choices(registry: str, names: Callable[[], Iterable[str]],
                     label: Callable[[str], str] | None = None) -> None:
    """Called by a registry module (backbones, classifiers) at import: where its names come from, and
    (``label``) how one is shown to people."""
    _REGISTRIES[registry] = names
    if label is not None:
        _REGISTRY_LABELS[registry] = label


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Option:
    """One setting: its constraint, default and help. ``optional``: None is also allowed.
    ``many``: the setting is a non-empty list of such values (e.g. a grid's backbones).
    ``widget``: the range a form offers when narrower than the valid one (min_value, max_value, step)."""

    name: str
    constraint: Interval | Choices
    default: Any
    help: str
    optional: bool = False
    many: bool = False
    widget: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)  # choice -> what a person reads (widgets, tables, reports)

    def allowed(self) -> str:
        text = self.constraint.describe()
        return text + (" or None" if self.optional else "")


OPTIONS: dict[str, Option] = {}


def declare(*options: Option) -> None:
    """Add options to the table; a name is declared once (declaring it again the same way is harmless)."""
    for option in options:
        known = OPTIONS.get(option.name)
        if known is not None and known != option:
            raise ValueError(f"Option {option.name!r} is already declared differently.")
        OPTIONS[option.name] = option


declare(
    Option("split", Choices(SPLITS), "group",
           "group (whole scenes held out, no image in both train and test) or pair (the 2017 study's, leaky)",
           labels={"group": "Group split: whole scenes held out (recommended)",
                   "pair": "Pair split: 2017 protocol, leaky"}),
    Option("test_size", Interval(float, 0, 1, closed="neither"), 0.3,
           "a share of the groups (group split) or of the pairs (pair split) held out for testing",
           widget={"min_value": 0.1, "max_value": 0.5, "step": 0.05}),
    Option("negatives", Choices(NEGATIVES), "random",
           "random, same_left (the 2017 study's) or hard (mined near neighbours, FAISS)",
           labels={"random": "Random pairs of different scenes",
                   "same_left": "Same left image as a positive (2017 study)",
                   "hard": "Hard: each image's nearest neighbours of other scenes (FAISS)"}),
    Option("negative_ratio", Interval(float, 0, 100, closed="right"), 1.0, "negatives per positive",
           widget={"min_value": 0.25, "max_value": 10.0, "step": 0.25}),
    Option("seed", Interval(int, 0, 2**32 - 1), 0,
           "seeds the split, the negatives and the classifiers: same seed, same numbers",
           widget={"min_value": 0, "max_value": 2**31 - 1, "step": 1}),
    Option("weights", Choices(WEIGHTS), "imagenet", "imagenet (real) or random (for tests only)",
           labels={"imagenet": "Pretrained (ImageNet, or the KerasHub preset's)",
                   "random": "Random: untrained, for tests only"}),
    Option("hard_k", Interval(int, 1, 50), None,
           "hard negatives: nearest other-scene neighbours mined per image (None: enough for the ratio)",
           optional=True),
    Option("backbone", Choices(registry="backbone"), None, "the image backbone"),
    Option("backbones", Choices(registry="backbone"), None, "backbones of a grid", many=True),
    Option("merge", Choices(registry="merge"), "dot", "how two vectors become one pair vector"),
    Option("merges", Choices(registry="merge"), ("dot", "l1", "l2"), "merges of a grid", many=True),
    Option("classifier", Choices(registry="classifier"), None, "the pair classifier"),
    Option("classifiers", Choices(registry="classifier"), ("cosine", "logreg", "xgboost"),
           "classifiers of a grid", many=True),
    Option("k", Interval(int, 1, 1000), 10, "neighbours returned",
           widget={"min_value": 3, "max_value": 48, "step": 1}),
)


def option(name: str) -> Option:
    try:
        return OPTIONS[name]
    except KeyError:
        raise KeyError(f"No option {name!r}; declared: {', '.join(OPTIONS)}") from None


def default(name: str):
    return option(name).default


def choice_label(name: str, value) -> str:
    """What a person reads for ``value`` of option ``name``: its declared label, the registry's, or itself."""
    opt = option(name)
    if value in opt.labels:
        return opt.labels[value]
    registry = getattr(opt.constraint, "registry", None)
    if registry in _REGISTRY_LABELS:
        try:
            return _REGISTRY_LABELS[registry](value)
        except (KeyError, ValueError, LookupError):
            pass
    return str(value)


def choice_labels(name: str) -> dict:
    """Every choice of option ``name`` -> :func:`choice_label` (for a widget's ``format_func``)."""
    return {value: choice_label(name, value) for value in option(name).constraint.names()}


def _coerce(opt: Option, value):
    """Plain ints are fine where floats are wanted (0 for 0.0), as numpy scalars are."""
    if isinstance(opt.constraint, Interval) and opt.constraint.type is float and isinstance(value, numbers.Real) \
            and not isinstance(value, bool):
        return float(value)
    if isinstance(opt.constraint, Interval) and opt.constraint.type is int and isinstance(value, numbers.Integral) \
            and not isinstance(value, bool):
        return int(value)
    return value


def validate(name: str, value):
    """``value`` if it is allowed for option ``name`` (ints widened to float where floats are wanted),
    else a one-line ``ValueError`` naming the option, what is allowed, and what it is for."""
    opt = option(name)
    if value is None and opt.optional:
        return None
    if opt.many:
        items = list(value) if isinstance(value, (list, tuple)) else None
        if not items:
            raise ValueError(f"{name} must be a non-empty list, each {opt.allowed()} ({opt.help}), not {value!r}")
        return [validate_one(opt, v) for v in items]
    return validate_one(opt, value)


def validate_one(opt: Option, value):
    value = _coerce(opt, value)
    if not opt.constraint.accepts(value):
        raise ValueError(f"{opt.name} must be {opt.allowed()} ({opt.help}), not {value!r}")
    return value


def check_groups(test_size: float, n_groups: int, split: str = "group") -> None:
    """A group split needs :data:`MIN_GROUPS_PER_SIDE` groups on each side; say how to get them."""
    if split != "group":
        return
    held = round(test_size * n_groups)
    if min(held, n_groups - held) < MIN_GROUPS_PER_SIDE:
        raise ValueError(f"test_size {test_size:g} of {n_groups} groups holds out {held} and trains on "
                         f"{n_groups - held}: each side needs at least {MIN_GROUPS_PER_SIDE} groups. Use a dataset "
                         "with more groups or a test size nearer 0.5.")


# --------------------------------------------------------------------------- generated front ends


def argparse_kwargs(name: str) -> dict:
    """``choices``/``type``/``default``/``help`` for ``parser.add_argument``; a number out of bounds is
    refused by argparse with the same sentence as :func:`validate`."""
    opt = option(name)
    kwargs: dict = {"default": list(opt.default) if opt.many and opt.default else opt.default}
    if isinstance(opt.constraint, Choices):
        kwargs["choices"] = list(opt.constraint.names())
    else:
        kwargs["type"] = _argparse_type(opt)
    if opt.many:
        kwargs["nargs"] = "+"
    default_text = "" if opt.default is None else f" (default {_show(opt.default)})"
    kwargs["help"] = opt.help + default_text
    return kwargs


def _show(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _argparse_type(opt: Option) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            value = opt.constraint.convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{opt.name} must be {opt.allowed()}, not {text!r}") from None
        try:
            return validate_one(opt, value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = opt.constraint.type.__name__  # argparse names the type in its own messages
    return parse


def widget_options(name: str) -> dict:
    """Keyword arguments for a Streamlit widget: ``options`` for a choice, else ``min_value``/
    ``max_value``/``step`` (the form's range where one is declared, else the bounds); ``help`` always."""
    opt = option(name)
    out: dict = {"help": opt.help[:1].upper() + opt.help[1:]}
    if isinstance(opt.constraint, Choices):
        out["options"] = list(opt.constraint.names())
        return out
    c = opt.constraint
    out |= {"min_value": c.type(c.left) if c.left is not None else None,
            "max_value": c.type(c.right) if c.right is not None else None} | opt.widget
    return out
