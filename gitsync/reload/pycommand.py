"""CMD as Python reads it, for --preload: `python [OPTIONS] SCRIPT` or `python [OPTIONS] -m MODULE`."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

PYTHON_NAME = re.compile(r"^(python|pypy)[0-9.]*$")
MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
BARE_FLAGS = set("bBdEIOPqsSuv")  # interpreter options without a value, alone or grouped (-uB)
VALUE_FLAGS = ("-X", "-W")  # options that take a value, attached (-Xdev) or as the next word


@dataclass(frozen=True)
class PythonCommand:
    """CMD split as Python reads it: `python [OPTIONS] SCRIPT ARGS` or `python [OPTIONS] -m MODULE ARGS`."""

    interpreter: tuple[str, ...]  # the executable and its options
    script: str | None
    module: str | None
    args: tuple[str, ...]

    @property
    def argv(self) -> list[str]:
        """sys.argv as the program sees it (run_module puts the module's file in argv[0])."""
        return [self.script or "-m", *self.args]

    @property
    def words(self) -> tuple[str, ...]:
        """What follows the interpreter's options on the command line."""
        return (self.script,) if self.script else ("-m", self.module or "")


def parse_python_command(command: Sequence[str]) -> PythonCommand:
    """Split CMD, or raise ValueError saying which forms --preload can run."""
    if not PYTHON_NAME.match(os.path.basename(command[0])):
        raise ValueError(f"CMD must start with python (python SCRIPT or python -m MODULE), got {command[0]!r}")
    if "/" in command[0] and not os.path.isabs(command[0]):
        # A fresh start finds it from inside the tree; the spare starts before there is one.
        raise ValueError(f"CMD's python must be on PATH or an absolute path, got {command[0]!r}")
    options: list[str] = []
    words = list(command[1:])
    while words:
        word = words.pop(0)
        if word == "-m":
            if not words:
                raise ValueError("python -m needs a module name")
            return PythonCommand((command[0], *options), None, words[0], tuple(words[1:]))
        if word.startswith(VALUE_FLAGS):
            options.append(word)
            if len(word) == 2:
                if not words:
                    raise ValueError(f"python {word} needs a value")
                options.append(words.pop(0))
        elif len(word) > 1 and word[0] == "-" and set(word[1:]) <= BARE_FLAGS:
            options.append(word)
        elif word.startswith("-"):
            raise ValueError(f"python option {word!r} is not supported (python SCRIPT or python -m MODULE)")
        else:
            return PythonCommand((command[0], *options), word, None, tuple(words))
    raise ValueError("python without a script: use python SCRIPT or python -m MODULE")


def parse_modules(text: str) -> tuple[str, ...]:
    """'flask, waitress' -> ('flask', 'waitress'); raise ValueError naming a bad name."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        if not MODULE_NAME.match(name):
            raise ValueError(f"{name!r} is not a module name (e.g. flask or jinja2.ext)")
    return names
