"""gitsync-reload with a command that does not exist: one line and exit 127, not retries for ever."""

from __future__ import annotations

import subprocess
import sys

import pytest

from test_reload import trees  # noqa: F401  (a fixture)


@pytest.mark.parametrize("command, says", [
    (["no-such-program-gitsync"], "cannot run no-such-program-gitsync: no such file on PATH"),
    (["./missing.sh"], "cannot run ./missing.sh: no such file in "),
])
@pytest.mark.parametrize("listen", [False, True], ids=["restart", "listen"])
def test_a_command_that_does_not_exist_exits_127_with_one_line(trees, command, says, listen):
    trees.flip(trees.make())
    args = ["--link", str(trees.link), "--status-bind", ""]
    if listen:
        args += ["--listen", "127.0.0.1:0"]
    result = subprocess.run([sys.executable, "-m", "gitsync.reload", *args, "--", *command],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 127, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and says in errors[0], result.stderr
