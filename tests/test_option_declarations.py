"""Every declared option refuses a value outside its declaration with one line naming it, in validation and on
the command line (scikit-learn's generate_invalid_param_val idea, over the whole table)."""

from __future__ import annotations

import argparse
import math

import pytest

import simlab.backbones  # noqa: F401 - registers the backbone names
import simlab.classifiers  # noqa: F401 - registers the classifier names
from simlab import options


def invalid_values(opt: options.Option) -> list:
    """Values just outside ``opt``'s constraint, and values of the wrong kind."""
    c = opt.constraint
    if isinstance(c, options.Choices):
        return ["no-such-choice", 3]
    out = ["text", math.inf, math.nan, True]
    if c.left is not None:
        out.append(c.type(c.left) - (1 if c.type is int else 1e-9) if c.closed in ("both", "left") else c.left)
    if c.right is not None:
        out.append(c.type(c.right) + (1 if c.type is int else 1e-9) if c.closed in ("both", "right") else c.right)
    if c.type is int:
        out.append(1.5)
    return out


@pytest.mark.parametrize("name", sorted(options.OPTIONS))
def test_every_declared_option_refuses_what_it_does_not_declare(name):
    opt = options.option(name)
    for value in invalid_values(opt):
        with pytest.raises(ValueError, match=rf"^{name} must be") as err:
            options.validate(name, [value] if opt.many else value)
        assert "\n" not in str(err.value)
    if opt.default is not None:  # the default itself is allowed
        assert options.validate(name, opt.default) is not None


@pytest.mark.parametrize("name", sorted(options.OPTIONS))
def test_every_declared_option_makes_a_flag_that_refuses_the_same_values(name):
    opt = options.option(name)
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--x", **options.argparse_kwargs(name))
    for value in invalid_values(opt):
        if isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value) and
                                       isinstance(opt.constraint, options.Choices)):
            continue
        with pytest.raises(argparse.ArgumentError):
            parser.parse_args(["--x", str(value)])
    for choice, label in (options.choice_labels(name).items() if isinstance(opt.constraint, options.Choices) else ()):
        assert label and isinstance(label, str), (name, choice)
