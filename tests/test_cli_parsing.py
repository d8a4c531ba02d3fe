"""The shared flag conventions of cli/parsing.py: one-line errors, no abbreviations, defaults in help,
bare --progress and --bf16."""
from __future__ import annotations

import io
import re
import sys

import pytest

from guided_diffusion.cli.parsing import OneLineParser, add_bf16_flag, add_progress_flag, progress_enabled
from guided_diffusion.runtime.errors import UserError


def _parser() -> OneLineParser:
    parser = OneLineParser(prog="guided-diffusion thing")
    parser.add_argument("--iterations", type=int, default=5, help="stop after this many steps")
    parser.add_argument("--name", default="", help="a name")
    parser.add_argument("--preset", default=None, help="a preset")
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0, the first one)")
    add_progress_flag(parser)
    add_bf16_flag(parser)
    return parser


def test_a_misspelled_flag_is_one_line_naming_it_and_the_help_command():
    with pytest.raises(UserError) as caught:
        _parser().parse_args(["--iteration", "3"])
    message = str(caught.value)
    assert "\n" not in message
    assert "--iteration" in message and "(see `guided-diffusion thing --help`)" in message


def test_abbreviations_are_refused_even_when_asked_for():
    parser = OneLineParser(prog="p", allow_abbrev=True)
    parser.add_argument("--iterations", type=int, default=5)
    with pytest.raises(UserError, match="--iter"):
        parser.parse_args(["--iter", "3"])


def test_a_bad_value_is_one_line_too():
    with pytest.raises(UserError, match="invalid int value: 'x'"):
        _parser().parse_args(["--iterations", "x"])


@pytest.mark.parametrize("argv, expected", [([], None), (["--progress"], True), (["--progress", "false"], False),
                                            (["--progress", "True"], True), (["--progress", "0"], False)])
def test_progress_is_a_bare_flag_or_a_boolean(argv, expected):
    assert _parser().parse_args(argv).progress is expected


@pytest.mark.parametrize("argv, expected", [([], False), (["--bf16"], True), (["--bf16", "no"], False)])
def test_bf16_is_a_bare_flag_or_a_boolean(argv, expected):
    assert _parser().parse_args(argv).bf16 is expected


def test_progress_enabled_follows_the_terminal_only_when_not_given(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    assert progress_enabled(None) is False
    assert progress_enabled(True) is True
    tty = io.StringIO()
    tty.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stderr", tty)
    assert progress_enabled(None) is True
    assert progress_enabled(False) is False


def test_help_shows_defaults_once_and_not_for_switches_or_empty_values(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per flag
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # help as one line of single spaces
    entries = {entry.split()[0]: entry for entry in re.split(r" (?=--[a-z])", text.split("options: ")[1])}
    assert entries["--iterations"].endswith("stop after this many steps (default: 5)")
    assert entries["--bf16"].endswith("(default: False)")
    assert all("default" not in entries[flag] for flag in ("--name", "--preset", "--quick"))
    assert entries["--seed"].count("default") == 1
    assert "10% or 30 s" in entries["--progress"]
