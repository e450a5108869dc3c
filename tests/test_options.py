"""Each choice and bound is declared once; validation, argparse and widgets come from the declaration."""

import argparse
import math

import pytest

from simlab import options
from simlab.merge import MERGES
from simlab.pairs import NEGATIVE_SCHEMES, SPLITS


def test_the_pair_builder_uses_the_declared_choices():
    assert SPLITS is options.SPLITS and NEGATIVE_SCHEMES is options.NEGATIVE_SCHEMES
    assert options.NEGATIVES == ("random", "same_left", "hard")


@pytest.mark.parametrize("name, value, expected", [
    ("test_size", 0.3, 0.3), ("test_size", 0.999, 0.999),
    ("negative_ratio", 100, 100.0), ("negative_ratio", 0.25, 0.25),
    ("seed", 0, 0), ("seed", 2**32 - 1, 2**32 - 1), ("split", "pair", "pair"), ("negatives", "hard", "hard"),
    ("weights", "random", "random"), ("hard_k", None, None), ("merge", "concat", "concat"),
    ("merges", ["dot", "l1"], ["dot", "l1"])])
def test_allowed_values_pass(name, value, expected):
    assert options.validate(name, value) == expected


@pytest.mark.parametrize("name, value, allowed", [
    ("test_size", 0, r"in \(0, 1\)"), ("test_size", 1, r"in \(0, 1\)"), ("test_size", "0.3", r"in \(0, 1\)"),
    ("negative_ratio", 0, r"in \(0, 100\]"), ("negative_ratio", math.inf, r"in \(0, 100\]"),
    ("negative_ratio", math.nan, r"in \(0, 100\]"), ("seed", 2**32, r"in \[0, 4294967295\]"),
    ("seed", 1.5, "in"), ("seed", True, "in"), ("split", "rows", "one of group, pair"),
    ("negatives", "easy", "one of random, same_left, hard"), ("merge", "sum", "one of dot, l1, l2, concat"),
    ("merges", [], "non-empty list"), ("hard_k", 0, "or None")])
def test_refusals_are_one_line_naming_the_option_and_its_range(name, value, allowed):
    with pytest.raises(ValueError, match=f"^{name} must be .*{allowed}") as info:
        options.validate(name, value)
    assert "\n" not in str(info.value) and repr(value) in str(info.value)


def test_minimum_groups_on_each_side_of_a_group_split():
    options.check_groups(0.3, 10)
    options.check_groups(0.3, 3, split="pair")
    with pytest.raises(ValueError, match="holds out 1 and trains on 4: each side needs at least 2 groups"):
        options.check_groups(0.2, 5)


def test_argparse_gets_choices_types_defaults_and_help_from_the_declaration():
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", **options.argparse_kwargs("split"))
    parser.add_argument("--test-size", **options.argparse_kwargs("test_size"))
    parser.add_argument("--merge", **options.argparse_kwargs("merges"))
    args = parser.parse_args(["--test-size", "0.25", "--merge", "dot", "l2"])
    assert (args.split, args.test_size, args.merge) == ("group", 0.25, ["dot", "l2"])
    assert parser.parse_args([]).merge == ["dot", "l1", "l2"]
    kwargs = options.argparse_kwargs("split")
    assert kwargs["choices"] == ["group", "pair"] and "default group" in kwargs["help"]


def test_argparse_refuses_out_of_bounds_numbers_with_the_same_sentence(capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--test-size", **options.argparse_kwargs("test_size"))
    for bad in ("1.5", "abc"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--test-size", bad])
        assert "test_size must be in (0, 1)" in capsys.readouterr().err


def test_widget_options():
    assert options.widget_options("split")["options"] == ["group", "pair"]
    assert options.widget_options("merge")["options"] == list(MERGES)
    test_size = options.widget_options("test_size")
    assert (test_size["min_value"], test_size["max_value"], test_size["step"]) == (0.1, 0.5, 0.05)
    assert options.widget_options("seed")["max_value"] == 2**31 - 1
    assert options.widget_options("hard_k") | {"help": ""} == {"min_value": 1, "max_value": 50, "help": ""}


def test_registry_choices_come_from_the_registry_that_hands_them_over(monkeypatch):
    monkeypatch.setattr(options, "OPTIONS", dict(options.OPTIONS))
    monkeypatch.setattr(options, "_REGISTRIES", dict(options._REGISTRIES))
    options.register_choices("example_registry", lambda: ["a", "b"])
    options.declare(options.Option("example", options.Choices(registry="example_registry"), "a", "an example"))
    assert options.validate("example", "b") == "b"
    with pytest.raises(ValueError, match="one of a, b"):
        options.validate("example", "c")
    with pytest.raises(LookupError, match="import the module"):
        options.Choices(registry="nowhere").names()
    with pytest.raises(ValueError, match="already declared differently"):
        options.declare(options.Option("example", options.Choices(("x",)), "x", "another"))


def test_every_default_is_allowed():
    for opt in options.OPTIONS.values():
        if opt.default is not None and opt.constraint != options.Choices(registry="backbone") \
                and opt.constraint != options.Choices(registry="classifier"):
            options.validate(opt.name, list(opt.default) if opt.many else opt.default)
