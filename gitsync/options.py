"""Option tables: one declaration per option, read by argparse, the environment and the docs.

Both programs (gitsync and gitsync-reload) declare their options as a `Table` of
`Option`s: flag, value parser, default, help, group. From a table come the argparse
parser (--help grouped), the environment lookup (PREFIX + FLAG_NAME), the one-line
errors that name the flag or the variable, and the configuration reference that a test
holds the docs to. The value parsers are shared, so both programs read `t`, `yes` or
`500ms` the same way. A flag on the command line wins over its variable; an empty
variable counts as unset.
"""

from __future__ import annotations

import argparse
import difflib
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from .durations import format_duration, parse_duration

TRUE_WORDS = ("1", "t", "true", "yes", "on")
FALSE_WORDS = ("0", "f", "false", "no", "off")


class ConfigError(Exception):
    """A bad or missing setting; the message is the one line shown to the user."""


# -- value parsers: text -> value, or ValueError saying what was expected -------------

def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None


def parse_seconds(text: str) -> float:
    """A Go-style duration that must not be negative."""
    seconds = parse_duration(text)
    if seconds < 0:
        raise ValueError(f"{text!r} is negative")
    return seconds


def parse_signal(text: str) -> signal.Signals:
    """TERM, SIGTERM, term or 15."""
    name = text.strip().upper()
    try:
        if name.isdigit():
            return signal.Signals(int(name))
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except (KeyError, ValueError):
        raise ValueError(f"unknown signal {text!r} (use e.g. TERM, INT, HUP or 15)") from None


def parse_bytes(text: str) -> int:
    """A size in bytes, with an optional B, KiB, MiB or GiB suffix."""
    value = text.strip()
    for suffix, factor in (("KiB", 1024), ("MiB", 1024 ** 2), ("GiB", 1024 ** 3), ("B", 1)):
        if value.endswith(suffix):
            return parse_int(value[: -len(suffix)]) * factor
    return parse_int(value)


def parse_list(text: str) -> tuple[str, ...]:
    """'a, b,,c' -> ('a', 'b', 'c')."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_host_port(text: str) -> tuple[str, int] | None:
    """'HOST:PORT' (IPv6 in brackets; an empty host means every address); '' -> None."""
    if not text.strip():
        return None
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} is out of range")
    return host.strip("[]") or "0.0.0.0", number


_METAVARS: dict[Callable[[str], Any], str] = {
    parse_int: "N", parse_duration: "DURATION", parse_seconds: "DURATION", parse_signal: "SIGNAL",
    parse_bytes: "SIZE", parse_list: "LIST", parse_host_port: "HOST:PORT",
}


# -- the table --------------------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    flag: str                                 # "--sync-timeout"
    parse: Callable[[str], Any]               # one of the parsers above, or str
    default: Any
    help: str
    group: str = "options"
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    required: bool = False
    repeatable: bool = False                  # the flag may be given several times (values joined)
    aliases: tuple[str, ...] = ()             # e.g. ("-v",)
    bare_value: str | None = None             # the value of the flag given alone ("-v" means "-v=1")
    default_text: str | None = None           # what --help and the docs say the default is

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def is_bool(self) -> bool:
        return self.parse is parse_bool

    def describe_default(self) -> str:
        """The default as a person reads it ('10s', 'true', ''), for help and docs."""
        if self.default_text is not None:
            return self.default_text
        if self.required or self.default in (None, "", ()):
            return ""
        if self.parse in (parse_duration, parse_seconds):
            return format_duration(self.default)
        if self.is_bool:
            return str(self.default).lower()
        if isinstance(self.default, tuple):
            return ",".join(str(item) for item in self.default)
        if isinstance(self.default, signal.Signals):
            return self.default.name.removeprefix("SIG")
        return str(self.default)


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line) instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


@dataclass(frozen=True)
class Table:
    """One program's options and how they are read."""

    prog: str
    env_prefix: str                            # "GITSYNC_" or "GITSYNC_RELOAD_"
    options: tuple[Option, ...]
    description: str = ""
    epilog: str = ""
    usage: str | None = None
    version: str | None = None
    command: bool = False                      # takes `-- CMD ARGS...` after the options
    extra_env: tuple[str, ...] = field(default=())  # variables read elsewhere (e.g. GITSYNC_PASSWORD)

    def env(self, option: Option) -> str:
        return self.env_prefix + option.dest.upper()

    def parser(self) -> argparse.ArgumentParser:
        # No abbreviations: "--git=x" must not quietly mean --git-config.
        parser = _Parser(prog=self.prog, usage=self.usage, description=self.description,
                         epilog=self.epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
                         allow_abbrev=False)
        groups: dict[str, Any] = {}
        for option in self.options:
            group = groups.get(option.group)
            if group is None:
                group = groups[option.group] = parser.add_argument_group(option.group)
            self._add(group, option)
        if self.version:
            parser.add_argument("--version", action="version", version=f"{self.prog} {self.version}")
        if self.command:
            parser.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        return parser

    def _add(self, group: Any, option: Option) -> None:
        default = option.describe_default()
        text = f"{option.help} [env {self.env(option)}{f'; default {default}' if default else ''}]"
        names = (option.flag, *option.aliases)
        if option.is_bool:
            group.add_argument(*names, dest=option.dest, nargs="?", const="true", default=None,
                               metavar="BOOL", help=text)
            group.add_argument(f"--no-{option.flag[2:]}", dest=option.dest, action="store_const",
                               const="false", help=argparse.SUPPRESS)
        else:
            metavar = option.metavar or ("|".join(option.choices) if option.choices
                                         else _METAVARS.get(option.parse, "VALUE"))
            extra: dict[str, Any] = {"nargs": "?", "const": option.bare_value} if option.bare_value else {}
            group.add_argument(*names, dest=option.dest, default=None, metavar=metavar, help=text,
                               action="append" if option.repeatable else "store", **extra)

    def parse(self, argv: Sequence[str], environ: Mapping[str, str]) -> dict[str, Any]:
        """Every option's value by dest (plus `command` when the table takes one);
        raise ConfigError naming the flag or variable that is wrong."""
        namespace = self.parser().parse_args(list(argv))
        values = {option.dest: self._value(option, namespace, environ) for option in self.options}
        if self.command:
            words = list(namespace.command)
            values["command"] = tuple(words[1:] if words[:1] == ["--"] else words)
        return values

    def _value(self, option: Option, namespace: argparse.Namespace, environ: Mapping[str, str]) -> Any:
        raw = getattr(namespace, option.dest)
        source = option.flag
        env_name = self.env(option)
        if raw is None and environ.get(env_name, "").strip() != "":
            raw, source = environ[env_name], f"{option.flag} ({env_name})"
        if raw is None:
            if option.required:
                raise ConfigError(f"{option.flag} is required (or set {env_name})")
            return option.default
        try:
            if isinstance(raw, list):  # a repeated flag: each occurrence may hold a list too
                value = tuple(item for text in raw for item in option.parse(text))
            else:
                value = option.parse(raw)
        except ValueError as error:
            raise ConfigError(f"{source}: {error}") from None
        if option.choices and value not in option.choices:
            raise ConfigError(f"{source}: must be one of {', '.join(option.choices)}, got {value!r}")
        return value

    def unknown_env(self, environ: Mapping[str, str], ignore_prefixes: Sequence[str] = ()) -> list[str]:
        """One warning per variable with this table's prefix that names no option, with the
        closest name ('GITSYNC_PERIOUD is not a gitsync setting; did you mean GITSYNC_PERIOD?')."""
        known = {self.env(option) for option in self.options} | set(self.extra_env)
        warnings = []
        for name in sorted(environ):
            if not name.startswith(self.env_prefix) or name in known:
                continue
            if any(name.startswith(prefix) for prefix in ignore_prefixes):
                continue
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]}?" if close else ""
            warnings.append(f"{name} is not a {self.prog} setting and is ignored{hint}")
        return warnings

    def reference(self) -> str:
        """The configuration reference as Markdown tables, one per group (docs/configuration.md)."""
        lines: list[str] = []
        groups = list(dict.fromkeys(option.group for option in self.options))
        for group in groups:
            if len(groups) > 1:
                lines += [f"### {group}", ""]
            lines += ["| flag | variable | default | meaning |", "|---|---|---|---|"]
            for option in self.options:
                if option.group != group:
                    continue
                flag = ", ".join(f"`{name}`" for name in (option.flag, *option.aliases))
                default = option.describe_default()
                default = "required" if option.required else f"`{default}`" if default else ""
                lines.append(f"| {flag} | `{self.env(option)}` | {default} | {option.help.replace('|', '/')} |")
            lines.append("")
        return "\n".join(lines)
