"""The one flag and override parser of every command-line entry point.

`seedjax.main`, `seedjax.pipeline`, the tools (`seedjax.tools.*`, `seedjax.eval.report`) and
data_pipelines' CLIs (`prepare`, `report`, `measure`) build their flags with `Parser` (argparse,
so `--k=v` and `--k v` both work) and wrap `main` in `entry`. Overrides `--config.<key>=<value>`
(or `--data.<key>=<value>`) are collected by the parser and applied by
`seedjax.config.apply_overrides`, which knows the keys and coerces each value to its key's type.
So everywhere: `--help`/`-h` prints the module's docstring and exits 0; an unknown flag, a
missing or mistyped value, an unknown config key or a value of the wrong type prints one line
on stderr and exits 2, before the entry point does anything.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from typing import Callable, Sequence

from seedjax.config import ConfigError


class UsageError(ConfigError):
    """Bad command-line flags (exit code 2)."""


class _HelpRequested(Exception):
    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


class _HelpAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        raise _HelpRequested(parser.doc)


def parse_bool(text: str) -> bool:
    """A flag's bool value; anything but a clear yes/no is an error (never silently False)."""
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors, the module docstring as help, and prefixed overrides.

    `overrides='config'` collects `--config.a.b=v` into `args.overrides` ({'a.b': 'v'}); any other
    flag argparse does not know is an error. Abbreviated flags are not accepted (`--work` is not
    `--workdir`), so a typo cannot silently select another flag.
    """

    def __init__(self, prog: str, doc: str | None, overrides: str = ""):
        super().__init__(prog=prog, add_help=False, allow_abbrev=False)
        self.doc = (doc or f"usage: python -m {prog} [flags]").strip("\n")
        self.override_prefix = overrides
        self.add_argument("-h", "--help", action=_HelpAction, nargs=0, help="print this help and exit")

    def error(self, message: str):  # argparse's own errors: one line instead of usage + message + exit
        raise UsageError(message)

    def parse(self, argv: Sequence[str]) -> argparse.Namespace:
        args, rest = self.parse_known_args(list(argv))
        args.overrides = self._overrides(rest)
        return args

    def _overrides(self, rest: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        lead = f"--{self.override_prefix}." if self.override_prefix else None
        i = 0
        while i < len(rest):
            token = rest[i]
            if lead is None or not token.startswith(lead):
                name = token.split("=", 1)[0]
                what = f"unknown flag {name!r}" if token.startswith("-") else f"unexpected argument {token!r}"
                raise UsageError(f"{what} (see --help)")
            key, eq, value = token[len(lead):].partition("=")
            if not eq:  # `--config.key value`
                if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
                    raise UsageError(f"{lead}{key} needs a value ({lead}{key}=VALUE)")
                value = rest[i + 1]
                i += 1
            if not key:
                raise UsageError(f"{token!r}: expected {lead}<key>=<value>")
            out[key] = value
            i += 1
        return out


def int_list(flag: str, text: str, least: int, distinct: bool = False) -> list[int]:
    """`--flag=1,2,3` as integers >= `least` (and no repeats if `distinct`); UsageError otherwise."""
    values = [int(v) for v in text.split(",") if re.fullmatch(r"\s*-?\d+\s*", v)]
    if len(values) != text.count(",") + 1 or min(values) < least or (distinct and len(set(values)) != len(values)):
        what = "distinct comma-separated" if distinct else "comma-separated"
        raise UsageError(f"--{flag}: expected {what} integers >= {least}, got {text!r}")
    return values


def entry(prog: str) -> Callable[[Callable[[list[str]], int]], Callable[..., int]]:
    """Decorate `main(argv) -> exit code`: argv defaults to sys.argv[1:]; help -> 0; ConfigError -> 2.

    A ConfigError is bad input wherever it is detected (flags, config keys and values, a
    workdir that does not fit the config), so it is one line on stderr and exit code 2.
    """

    def wrap(fn: Callable[[list[str]], int]) -> Callable[..., int]:
        @functools.wraps(fn)
        def main(argv: Sequence[str] | None = None) -> int:
            argv = sys.argv[1:] if argv is None else list(argv)
            try:
                return fn(argv)
            except _HelpRequested as h:
                print(h.text)
                return 0
            except ConfigError as e:
                print(f"{prog}: error: {e}", file=sys.stderr)
                return 2

        return main

    return wrap
