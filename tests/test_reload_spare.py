"""One spare interpreter, driven directly: it imports ahead, shows what it is, runs where told."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import pytest

from gitsync.reload.pycommand import PythonCommand
from gitsync.reload.spare import SPARE_MAIN, Spare
from test_reload import alive, wait_for

# Writes what it sees to $OUT: the spare had imported json before this program ran.
APP = r"""
import os, sys
preloaded = "json" in sys.modules
import json
with open(os.environ["OUT"], "w") as out:
    json.dump({"cwd": os.getcwd(), "argv": sys.argv, "file": __file__, "path": sys.path,
               "preloaded": preloaded, "hash": os.environ.get("GITSYNC_HASH")}, out)
"""


@pytest.fixture
def spares():
    made: list[Spare] = []

    def make(command: PythonCommand, modules=("json",), forbidden="/nonexistent-gitsync") -> Spare:
        made.append(Spare(command, modules, dict(os.environ), forbidden=forbidden))
        return made[-1]

    yield make
    for spare in made:
        spare.discard()


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def test_a_spare_shows_its_program_and_cmd_in_ps_then_runs_the_script_in_the_tree(tmp_path, spares):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "app.py").write_text(APP)
    out = tmp_path / "out.json"
    spare = spares(PythonCommand((sys.executable, "-u"), "app.py", None, ("--flag",)))
    assert spare.wait(60, threading.Event()) == "ready", spare.error
    assert cmdline(spare.pid) == [sys.executable, "-u", SPARE_MAIN, "app.py", "--flag"]
    process = spare.hand_over(str(tree), {"GITSYNC_HASH": "abc", "OUT": str(out)})
    assert process.wait(timeout=60) == 0
    seen = json.loads(out.read_text())
    assert seen["cwd"] == str(tree) and seen["argv"] == ["app.py", "--flag"] and seen["hash"] == "abc"
    assert seen["file"] == str(tree / "app.py") and seen["preloaded"]
    assert seen["path"][0] == str(tree)  # the script's directory, as `python app.py` puts it
    assert os.path.dirname(SPARE_MAIN) not in seen["path"]  # gitsync's own directory is not


def test_an_import_that_fails_is_reported_in_one_line(spares):
    spare = spares(PythonCommand((sys.executable,), "app.py", None, ()), modules=("no_such_module_gitsync",))
    assert spare.wait(60, threading.Event()) == "failed"
    assert spare.error.startswith("cannot import 'no_such_module_gitsync' with ")
    wait_for(lambda: not alive(spare.pid), "the failed spare to exit", timeout=30)


def test_discard_ends_an_idle_spare(spares):
    spare = spares(PythonCommand((sys.executable,), "app.py", None, ()))
    assert spare.wait(60, threading.Event()) == "ready", spare.error
    spare.discard()
    assert spare.process.returncode is not None


def test_wait_ends_at_once_when_interrupted(spares):
    spare = spares(PythonCommand((sys.executable,), "app.py", None, ()), modules=("json",))
    stop = threading.Event()
    stop.set()
    assert spare.wait(60, stop) in ("warming", "ready")
