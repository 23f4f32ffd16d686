"""The README opens with the two commands; docs/configuration.md is the configuration
reference of both programs, its option tables generated from the tables the programs read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gitsync.flags import TABLE as GITSYNC
from gitsync.reference import DOC, TABLES, block, rendered
from gitsync.reload.config import TABLE as RELOAD

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
REFERENCE = DOC.read_text()


def test_the_reference_tables_are_the_code_s():
    assert rendered(REFERENCE) == REFERENCE, "docs/configuration.md is out of date: run `make docs`"


@pytest.mark.parametrize("name", TABLES)
def test_every_option_has_a_row_with_its_variable(name):
    table, text = TABLES[name], block(name).search(REFERENCE).group(2)
    for option in table.options:
        rows = [line for line in text.splitlines() if line.startswith(f"| `{option.flag}`")]
        assert len(rows) == 1, f"{table.prog} {option.flag}: expected one row in docs/configuration.md"
        assert f"`{table.env(option)}`" in rows[0]


@pytest.mark.parametrize("table", [GITSYNC, RELOAD], ids=["gitsync", "gitsync-reload"])
def test_help_names_every_option_with_its_variable(table):
    text = re.sub(r"\s+", " ", table.parser().format_help())
    for option in table.options:
        assert option.flag in text and table.env(option) in text


def test_the_two_commands_come_first():
    first_block = README.split("```", 2)[1]
    assert "make demo" in first_block and "make test" in first_block
