"""The README opens with the two commands; docs/configuration.md is the configuration
reference of both programs: it must name every flag the code has, and no other."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gitsync import reload
from gitsync.config import OPTIONS, TABLE

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
REFERENCE = (ROOT / "docs" / "configuration.md").read_text()


def section(text: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same level."""
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


GITSYNC_TABLE = section(REFERENCE, "## gitsync")
RELOAD_TABLE = section(REFERENCE, "## gitsync-reload")
RELOAD_FLAGS = [a for a in reload._parser()._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.flag)
def test_every_flag_is_in_the_reference_with_its_variable_and_default(option):
    rows = [line for line in GITSYNC_TABLE.splitlines() if line.startswith(f"| `{option.flag}` |")]
    assert rows, f"{option.flag} is missing from docs/configuration.md"
    assert f"`{TABLE.env(option)}`" in rows[0]
    default = option.describe_default()
    if default:
        assert f"| {default} |" in rows[0], f"{option.flag}: docs/configuration.md default differs from the code"


def test_the_reference_names_no_flag_the_code_lacks():
    known = {o.flag for o in OPTIONS} | {"--help", "--version"}
    named = set(re.findall(r"`(--[a-z][a-z-]+)`", GITSYNC_TABLE))
    assert named <= known, f"docs/configuration.md documents unknown flags: {sorted(named - known)}"


@pytest.mark.parametrize("action", RELOAD_FLAGS, ids=lambda a: a.option_strings[0])
def test_every_reload_flag_is_in_the_reference_with_its_variable(action):
    flag = action.option_strings[0]
    rows = [line for line in RELOAD_TABLE.splitlines() if re.match(rf"\| `{flag}[ `]", line)]
    assert rows, f"gitsync-reload {flag} is missing from docs/configuration.md"
    assert f"`{reload.ENV_PREFIX}{action.dest.upper()}`" in rows[0]


def test_the_reload_reference_names_no_flag_the_code_lacks():
    known = {s for a in reload._parser()._actions for s in a.option_strings}
    named = set(re.findall(r"`(--[a-z][a-z-]+)", RELOAD_TABLE))
    assert named <= known, f"docs/configuration.md documents unknown gitsync-reload flags: {sorted(named - known)}"


def test_the_two_commands_come_first():
    first_block = README.split("```", 2)[1]
    assert "make demo" in first_block and "make test" in first_block
