"""The flag conventions every subcommand shares.

- `OneLineParser`: a bad or misspelled flag is one line ("error: unrecognized arguments: --iteration 5
  (see `guided-diffusion image_train --help`)", exit code 2 through `cli.main`) instead of the usage of
  sixty flags; no abbreviations (`--iter` is a typo, not `--iterations`); `--help` shows each flag's
  default.
- `add_progress_flag`: `--progress` (bare, or `--progress true/false`), default "when stderr is a
  terminal"; `progress_enabled` resolves it.
- `add_bf16_flag`: `--bf16` (bare, or `--bf16 true/false`).
- `parse_class_labels`: `--class_labels 207` or `1,2,3`, as the sampling and editing commands read it.
"""
from __future__ import annotations

import argparse
import copy
import sys
from typing import Any, NoReturn

from guided_diffusion.config.flags import str2bool
from guided_diffusion.runtime.errors import UserError

__all__ = ["OneLineParser", "DefaultsHelpFormatter", "add_progress_flag", "add_bf16_flag", "parse_class_labels",
           "progress_enabled"]


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that ends each flag's text with its default, unless the text already states one, the flag
    takes no value (`--quick`), or there is nothing to show (None, an empty string)."""

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None:  # argparse prints nothing for a flag without help: show its default anyway
            shown = self._get_help_string(action)
            if shown:
                action = copy.copy(action)
                action.help = shown
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is argparse.SUPPRESS or action.default is None or action.default == "":
            return text
        if action.nargs == 0 or not action.option_strings:  # switches, positionals
            return text
        if "default" in text.lower():  # "(default: on when stderr is a terminal)" says more than a value
            return text
        shown = _default_text(action.default).replace("%", "%%")  # the help is %-formatted after this
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


def _default_text(value: Any) -> str:
    """A default as a person would type it: 0.6667 rather than 0.6666666666666666."""
    if isinstance(value, float) and len(repr(value)) > 8:
        return f"{value:.4g}"
    return str(value)


class OneLineParser(argparse.ArgumentParser):
    """argparse for the subcommands: errors are one line, abbreviations are refused, help shows
    defaults. `error()` raises `UserError` rather than printing the usage and exiting, so `cli.main`
    prints "error: MESSAGE (see `PROG --help`)" and returns 2; `--help` still prints and exits 0."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["allow_abbrev"] = False  # `--iteration 5` is a typo to report, not silently --iterations
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see `{self.prog} --help`)")


def add_progress_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, help: str | None = None) -> None:
    """Add `--progress` (bare means true; `--progress false` turns progress off); default None, which
    `progress_enabled` reads as "when stderr is a terminal"."""
    parser.add_argument(
        "--progress", type=str2bool, nargs="?", const=True, default=None, metavar="BOOL",
        help=help or "progress bars (default: on when stderr is a terminal; outside one, "
                     "a plain line every 10%% or 30 s)",
    )


def add_bf16_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, help: str | None = None, *,
                  aliases: tuple[str, ...] = (), dest: str = "bf16") -> None:
    """Add `--bf16` (bare means true; `--bf16 false` is the default). `aliases` are other spellings of
    the same flag (training keeps its earlier `--use_bf16`); `dest` is the attribute it sets."""
    parser.add_argument(
        "--bf16", *aliases, dest=dest, type=str2bool, nargs="?", const=True, default=False, metavar="BOOL",
        help=help or "bfloat16 autocast with float32 weights",
    )


def progress_enabled(value: bool | None) -> bool:
    """Whether to draw progress bars for a `--progress` value: as given, or (None) when stderr is a
    terminal."""
    if value is None:
        return sys.stderr.isatty()
    return bool(value)


def parse_class_labels(text: str | None) -> tuple[int, ...] | None:
    """`--class_labels`: one class, or a comma list (cycled over the images); None when not given."""
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"--class_labels {text!r} must be an integer or a comma list of integers, e.g. 207 or 1,2,3") from None
