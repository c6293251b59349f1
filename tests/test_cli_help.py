"""Every subcommand's options explain themselves, and bad list values are refused with a clear message."""

from __future__ import annotations

import argparse
import re

import pytest

from dltune.cli import build_parser

from conftest import ROOT, run_cli


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


# Options whose help does not show the default yet; strict: the test fails once they do, so remove them here.
PENDING: set[str] = set()  # labels of options still missing their default, as strict expected failures


def options() -> list:
    params = []
    for name, parser in subparsers().items():
        for action in parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                label = f"{name} {action.option_strings[-1]}"
                marks = pytest.mark.xfail(strict=True, reason="help without its default") if label in PENDING else ()
                params.append(pytest.param(name, parser, action, id=label, marks=marks))
    return params


@pytest.mark.parametrize(("command", "parser", "action"), options())
def test_every_option_has_help_and_shows_its_default(command: str, parser: argparse.ArgumentParser,
                                                     action: argparse.Action) -> None:
    assert action.help and action.help.strip() and action.help != argparse.SUPPRESS
    text = parser._get_formatter()._expand_help(action)  # as --help prints it: %(default)s filled in
    if action.default not in (None, False) and action.default != []:  # [] is an append option's empty start
        assert f"default: {action.default}" in text, text


def test_every_subcommand_is_checked() -> None:
    assert {"train", "ablate", "report", "tune", "worker", "lr-find", "batch-find", "loader-find", "config",
            "datasets", "models"} <= set(subparsers())


def test_batch_find_help_shows_a_plain_percent() -> None:
    r = run_cli("batch-find", "--help")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())  # argparse wraps lines
    assert "within 5% of" in text and "5%%" not in text


@pytest.mark.parametrize(("command", "option", "value"), [
    ("loader-find", "--workers", "a,b"),
    ("loader-find", "--threads", "0,2"),
    ("batch-find", "--sizes", "32,,64"),
])
def test_a_bad_number_list_names_the_option_and_the_value(command: str, option: str, value: str) -> None:
    r = run_cli(command, "examples/seed_mnist.toml", f"{option}={value}")
    assert r.returncode == 2
    assert f"argument {option}: expected comma-separated whole numbers" in r.stderr
    assert repr(value) in r.stderr
    assert "Traceback" not in r.stderr and "<lambda>" not in r.stderr


@pytest.mark.parametrize(("minimum", "text", "expected"), [
    (0, "0,1,2", [0, 1, 2]), (0, " 4", [4]), (1, "32,64", [32, 64]),
    (0, "0,-1", None), (1, "0", None), (1, "1.5", None), (0, "", None), (0, "1,", None),
])
def test_int_list(minimum: int, text: str, expected: list[int] | None) -> None:
    from dltune.cli.common import int_list

    if expected is not None:
        assert int_list(minimum)(text) == expected
    else:
        with pytest.raises(argparse.ArgumentTypeError, match=f">= {minimum}, e.g. .*; got {text!r}"):
            int_list(minimum)(text)


def readme_commands() -> dict[str, str]:
    """Each row of the README's Commands table: command -> its synopsis."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `dltune ([\w-]+)(.*?)` \|", section, re.M)}


def test_readme_lists_every_command() -> None:
    assert sorted(readme_commands()) == sorted(subparsers())


@pytest.mark.parametrize("command", sorted(subparsers()))
def test_readme_lists_every_option_of_a_command(command: str) -> None:
    options = {s for a in subparsers()[command]._actions if not isinstance(a, argparse._HelpAction)
               for s in a.option_strings}
    listed = set(re.findall(r"(?<![\w-])--?[a-z][\w-]*", readme_commands()[command]))
    assert listed == options, f"README: {sorted(listed)}; dltune {command} --help: {sorted(options)}"
