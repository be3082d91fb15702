"""The flag language every tool shares: one-line `tool: message` errors with exit 2, and config overrides.

Every tool and benchmark takes `--config.SECTION.FIELD=VALUE` to override a preset field, `--json PATH` to write
its figures to a file and `--out FOLDER` for what it writes; a bad flag is one line on stderr, `tool: message`,
and exit status 2. Old spellings stay as aliases that print a one-line deprecation note.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from musicgpt_jax import configs

USAGE_ERROR = 2


class Parser(argparse.ArgumentParser):
    """argparse with the project's error style: one line, `tool: message`, exit 2 (argparse adds the usage).

    `tool` is the short name errors start with (`aot`, `stats`); by default the program's name.
    """

    def __init__(self, *args, tool: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tool = tool or self.prog

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.tool}: {message}\n")


def parse_with_overrides(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The parsed flags and the `--config.SECTION.FIELD=VALUE` overrides as "SECTION.FIELD=VALUE" strings."""
    args, rest = parser.parse_known_args(list(argv))
    try:
        return args, configs.split_overrides(rest)
    except configs.ConfigError as error:
        parser.error(str(error))


def deprecated(prog: str, old: str, new: str) -> None:
    """One line on stderr: an old spelling still works, and which one to use instead."""
    print(f"{prog}: {old} is deprecated; use {new}", file=sys.stderr)


def fail(tool: str, message: str) -> int:
    """Report bad usage in one line and return the exit status for it."""
    print(f"{tool}: {message}", file=sys.stderr)
    return USAGE_ERROR
