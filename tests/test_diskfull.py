"""A full volume (a real tmpfs): nothing published is lost, and a commit that fits still goes out.

Needs root to mount the tmpfs: skipped with the reason elsewhere, and run in CI (as root).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from support.repos import git, published_sha
from support.waiting import wait_for

VOLUME_MB = 20


@pytest.fixture
def volume(tmp_path):
    """A 20 MiB tmpfs, unmounted at the end whatever happens."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the disk-full tests need root to mount a tmpfs")
        pytest.skip("needs root to mount a tmpfs (run as root, as CI does)")
    path = tmp_path / "volume"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={VOLUME_MB}m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def big_file(remote, name: str, megabytes: int, *, compressible: bool) -> str:
    # Text, not zeros: a file of zeros can land on tmpfs as a hole that never needs the space.
    line = b"a line that packs small but checks out large\n"
    data = line * ((megabytes << 20) // len(line)) if compressible else os.urandom(megabytes << 20)
    (remote.work / name).write_bytes(data)
    git("add", "-A", cwd=remote.work)
    git("commit", "--quiet", "-m", f"add {name}", cwd=remote.work)
    git("push", "--quiet", "origin", remote.branch, cwd=remote.work)
    return remote.head()


def leftovers(root: Path) -> list[str]:
    objects = root / ".git" / "objects"
    temporary = [p for p in objects.rglob("*") if p.name.startswith(("tmp_obj_", "tmp_pack_", "tmp_idx_"))]
    builds = [p for p in (root / ".worktrees").iterdir() if p.name.startswith(".build-")]
    return [str(p.relative_to(root)) for p in (*temporary, *builds)]


@pytest.mark.parametrize("compressible", [False, True], ids=["fetch-fills-it", "checkout-fills-it"])
def test_a_commit_that_fits_publishes_after_one_that_did_not(volume, remote, gitsync, compressible):
    root = volume / "root"
    link = root / "app"
    args = ("--repo", remote.url, "--root", str(root), "--link", "app", "--period", "200ms",
            "--max-failures", "-1", "--http-bind", "")
    proc = gitsync(*args)
    first = remote.head()
    wait_for(lambda: published_sha(link) == first, timeout=60, message="the first publish")

    big_file(remote, "big.bin", 2 * VOLUME_MB, compressible=compressible)
    wait_for(lambda: "sync failed" in proc.output, timeout=60, message="a sync to run out of space")
    assert published_sha(link) == first and (link / "README.md").read_text() == "hello\n"

    fits = remote.commit_and_push({"big.bin": None, "README.md": "fits\n"})
    wait_for(lambda: published_sha(link) == fits, timeout=60, message="the commit that fits")
    assert (link / "README.md").read_text() == "fits\n"
    assert leftovers(root) == []

    # Killed while the volume is full of what a failed sync left: the next start recovers too.
    failures = proc.output.count("sync failed")
    big_file(remote, "big2.bin", 2 * VOLUME_MB, compressible=compressible)
    wait_for(lambda: proc.output.count("sync failed") > failures, timeout=60, message="a second full volume")
    proc.proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    fits_again = remote.commit_and_push({"big2.bin": None, "README.md": "fits again\n"})
    again = gitsync(*args)
    wait_for(lambda: published_sha(link) == fits_again, timeout=60, message="a publish after the restart")
    assert again.proc.poll() is None, again.output
    assert (link / "README.md").read_text() == "fits again\n"
