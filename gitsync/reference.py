"""Write both programs' option tables into docs/configuration.md: `make docs`.

The reference is generated from the tables the programs read (gitsync.flags and
gitsync.reload.config), between markers; tests/test_readme.py fails when the file
and the code disagree. Nothing imports this module.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

from gitsync.flags import TABLE as GITSYNC
from gitsync.options import Table
from gitsync.reload.config import TABLE as RELOAD

TABLES: dict[str, Table] = {"gitsync": GITSYNC, "gitsync-reload": RELOAD}
DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- options: {re.escape(name)} -->\n)(.*?)(<!-- end options -->)", re.S)


def rendered(text: str) -> str:
    """The document with every table block written afresh from the code."""
    for name, table in TABLES.items():
        text, count = block(name).subn(functools.partial(_fill, table.reference()), text)
        if count != 1:
            raise SystemExit(f"{DOC}: expected one '<!-- options: {name} -->' block, found {count}")
    return text


def _fill(reference: str, match: re.Match[str]) -> str:
    return match.group(1) + reference + match.group(3)


def main() -> int:
    text = DOC.read_text()
    new = rendered(text)
    if new != text:
        DOC.write_text(new)
        print(f"rewrote the option tables in {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
