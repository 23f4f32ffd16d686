"""`make harden`, engine part: faults under a real gitsync, and what a reader of the link saw.

    .venv/bin/python bench/faults.py               # every fault; appends to docs/reliability.md
    .venv/bin/python bench/faults.py --quick --no-write

Each fault runs against its own gitsync (`--period 100ms`, a real file:// remote) while
a reader thread follows the link as an app would: every tree it opens must hold a
`version` file and a `check` file that agree (both written in each commit). A bad read
is a tree missing either file, or with them disagreeing. The faults:

- sigkill: commits pushed every 0.2 s while gitsync is killed with SIGKILL at random
  moments and started again;
- diskfull (root only): the volume is a 20 MiB tmpfs; a commit too large for it, then
  one that fits, which must be published;
- directory: a directory a user left where the link goes; it must be kept and the
  commit published.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from support.repos import Remote  # noqa: E402

GITSYNC = str(Path(sys.executable).with_name("gitsync"))
HEADING = "## Faults in the engine"


@dataclass
class Row:
    fault: str
    injected: str
    reads: int = 0
    bad_reads: int = 0
    outcome: str = ""


class Reader(threading.Thread):
    """Follows the link like an app: open the tree, read both files, compare."""

    def __init__(self, link: Path):
        super().__init__(daemon=True)
        self.link, self.stop, self.reads, self.bad = link, threading.Event(), 0, 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                tree = self.link.resolve(strict=True)
            except OSError:
                time.sleep(0.001)
                continue
            try:
                good = (tree / "version").read_text() == (tree / "check").read_text()
            except OSError:
                good = False
            self.reads += 1
            self.bad += not good


def commit(remote: Remote, version: int, extra: dict | None = None) -> str:
    text = f"{version}\n"
    return remote.commit_and_push({"version": text, "check": text, **(extra or {})}, f"v{version}")


def start(root: Path, remote: Remote) -> subprocess.Popen:
    return subprocess.Popen([GITSYNC, "--repo", remote.url, "--root", str(root), "--link", "app",
                             "--period", "100ms", "--max-failures", "-1", "--http-bind", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def published(root: Path) -> str | None:
    try:
        return Path(os.readlink(root / "app")).name
    except OSError:
        return None


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def fault_sigkill(base: Path, kills: int) -> Row:
    remote, root = Remote(base / "remotes"), base / "root"
    commit(remote, 0)
    proc = start(root, remote)
    wait_for(lambda: published(root) == remote.head(), 60)
    reader = Reader(root / "app")
    reader.start()
    version = 0
    try:
        for _ in range(kills):
            version += 1
            commit(remote, version)
            time.sleep(random.uniform(0.0, 0.3))
            kill(proc)
            proc = start(root, remote)
        head = remote.head()
        ok = wait_for(lambda: published(root) == head, 60)
    finally:
        reader.stop.set()
        reader.join(5)
        kill(proc)
    return Row("sigkill", f"{kills} SIGKILLs during {version} pushes", reader.reads, reader.bad,
               "newest commit published after the last restart" if ok else "NOT published")


def fault_diskfull(base: Path) -> Row:
    if os.geteuid() != 0:
        return Row("diskfull", "skipped: needs root to mount a tmpfs", outcome="-")
    volume = base / "volume"
    volume.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(volume)], check=True)
    remote, root = Remote(base / "remotes"), volume / "root"
    proc = None
    try:
        commit(remote, 0)
        proc = start(root, remote)
        wait_for(lambda: published(root) == remote.head(), 60)
        reader = Reader(root / "app")
        reader.start()
        commit(remote, 1, {"big.bin": os.urandom(2 << 20).hex() * 10})  # ~40 MB of text
        time.sleep(3)  # let it fail a few times on the full volume
        fits = commit(remote, 2, {"big.bin": None})
        started = time.monotonic()
        ok = wait_for(lambda: published(root) == fits, 60)
        took = time.monotonic() - started
        reader.stop.set()
        reader.join(5)
    finally:
        if proc is not None:
            kill(proc)
        subprocess.run(["umount", "-l", str(volume)], check=False)
    outcome = f"the commit that fits published {took:.1f} s after its push" if ok else "NOT published"
    return Row("diskfull", "a 40 MB commit on a 20 MiB volume, then one that fits", reader.reads,
               reader.bad, outcome)


def fault_directory(base: Path) -> Row:
    remote, root = Remote(base / "remotes"), base / "root"
    (root / "app").mkdir(parents=True)
    (root / "app" / "mine.txt").write_text("a user's file\n")
    sha = commit(remote, 0)
    proc = start(root, remote)
    try:
        ok = wait_for(lambda: published(root) == sha, 60)
    finally:
        kill(proc)
    kept = [p for p in root.glob(".app.kept-*") if (p / "mine.txt").read_text() == "a user's file\n"]
    outcome = ("published; the directory kept beside the link" if ok and kept
               else f"published={ok}, kept={bool(kept)}")
    return Row("directory", "a directory where the link goes", outcome=outcome)


def table(rows: list[Row]) -> str:
    lines = [HEADING, "",
             "Produced by `make harden` (bench/faults.py). Each fault runs against its own gitsync",
             "(`--period 100ms`, a file:// remote) while a reader follows the link as an app would and",
             "checks every tree it opens (two files written in each commit must agree).", "",
             "| fault | injected | reads | bad reads | outcome |", "|---|---|---|---|---|"]
    lines += [f"| {r.fault} | {r.injected} | {r.reads} | {r.bad_reads} | {r.outcome} |" for r in rows]
    lines += ["", "Kept fixed by tests too: tests/test_crash.py (SIGKILLs with a self-checking reader),",
              "tests/test_diskfull.py (a real tmpfs), tests/test_publish.py (a file git could not",
              "write, a directory at the link), tests/test_shutdown.py (SIGTERM during a checkout:",
              "no git starts after it, none outlives gitsync).", ""]
    return "\n".join(lines)


def write(doc: Path, text: str) -> None:
    old = doc.read_text() if doc.exists() else ""
    keep = old.split(HEADING, 1)[0].rstrip() + "\n\n" if old else ""
    doc.write_text(keep + text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer kills: a smoke run")
    parser.add_argument("--write", type=Path, default=HERE.parent / "docs" / "reliability.md")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gitsync-faults-") as scratch:
        base = Path(scratch)
        rows = []
        for name, fault in (("sigkill", lambda b: fault_sigkill(b, 5 if opts.quick else 20)),
                            ("diskfull", fault_diskfull), ("directory", fault_directory)):
            print(f"== {name}", flush=True)
            (base / name).mkdir()
            rows.append(fault(base / name))
            print(f"   {rows[-1]}", flush=True)
    text = table(rows)
    print(text)
    if not opts.no_write:
        write(opts.write, text)
        print(f"written to {opts.write}")
    bad = any(r.bad_reads or "NOT" in r.outcome for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
