"""The module map's arrows (docs/development.md), checked on the code itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, absolute, including imports inside functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
                found.update(f"{prefix}.{alias.name}" for alias in node.names) if not node.module \
                    else found.add(prefix)
            else:  # `from gitsync import procs` imports gitsync.procs
                found.add(node.module or "")
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


SOURCES = sorted([*ROOT.glob("gitsync/**/*.py"), *ROOT.glob("webhook/*.py")])
IMPORTS = {module_name(path): imports_of(path) for path in SOURCES}


def importers_of(prefix: str) -> list[str]:
    return sorted(name for name, found in IMPORTS.items()
                  if any(imp == prefix or imp.startswith(prefix + ".") for imp in found))


def test_nothing_imports_the_cli():
    assert importers_of("gitsync.cli") == []


def test_only_the_cli_knows_the_web_api():
    outside = [name for name in importers_of("webhook") + importers_of("flask") + importers_of("waitress")
               if name.startswith("gitsync")]
    assert outside == ["gitsync.cli"]


@pytest.mark.parametrize("name", [n for n in IMPORTS if n.startswith("gitsync.reload")])
def test_the_reloader_imports_only_options_durations_procs_and_itself(name):
    ours = {imp for imp in IMPORTS[name] if imp.split(".")[0] in ("gitsync", "webhook")}
    allowed = ("gitsync.reload", "gitsync.options", "gitsync.durations", "gitsync.procs", "gitsync.__version__")
    stray = [imp for imp in ours if imp != "gitsync" and not imp.startswith(allowed)]
    assert stray == [], f"{name} imports {stray}"


def test_the_engine_side_knows_neither_the_api_nor_the_reloader():
    engine_side = [n for n in IMPORTS if n.startswith("gitsync") and not n.startswith("gitsync.reload")
                   and n not in ("gitsync.cli", "gitsync.reference")]
    for name in engine_side:
        assert not any(imp.startswith(("webhook", "gitsync.reload", "flask")) for imp in IMPORTS[name]), name


def test_watchfiles_lives_in_one_module():
    assert importers_of("watchfiles") == ["gitsync.reload.watch"]
