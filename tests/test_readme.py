"""The README is the configuration reference: it must name every flag the code has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gitsync.config import OPTIONS, TABLE

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.flag)
def test_every_flag_is_in_the_reference_with_its_variable_and_default(option):
    rows = [line for line in README.splitlines() if line.startswith(f"| `{option.flag}` |")]
    assert rows, f"{option.flag} is missing from the README's configuration reference"
    assert f"`{TABLE.env(option)}`" in rows[0]
    default = option.describe_default()
    if default:
        assert f"| {default} |" in rows[0], f"{option.flag}: README default differs from the code"


def test_the_readme_names_no_flag_the_code_lacks():
    known = {o.flag for o in OPTIONS} | {"--help", "--version"}
    table = README.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(--[a-z][a-z-]+)`", table))
    assert named <= known, f"README documents unknown flags: {sorted(named - known)}"


def test_the_two_commands_come_first():
    first_block = README.split("```", 2)[1]
    assert "make demo" in first_block and "make test" in first_block
