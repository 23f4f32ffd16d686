"""Crash safety, against the real `gitsync` CLI.

The main test kills gitsync with SIGKILL at random moments (seeded) while commits
keep arriving, starts it again over the same root each time, and runs a reader that
follows the link the whole time and checks every tree it reads: complete, of one
version, and still there when the read ends. The smaller tests hand-make what a kill
leaves behind (a temporary link, half-built trees, git's lock files), corrupt the
repository, force-push, delete the branch, and check that a published tree is never
written again.

A kill here is a container kill: gitsync AND every git it started die at once (git
runs in its own session, so killing gitsync's process group alone would let a
running git finish its work and tidy its lock files, which a real kill does not).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import stat
import string
import subprocess
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support.repos import Remote, git, published_sha
from support.waiting import stays, wait_for

LINK = "current"
MANIFEST = "MANIFEST.txt"
SHA_DIR = re.compile(r"^[0-9a-f]{40}$")


# -- the content: every version describes itself ---------------------------------------

class Model:
    """A repository whose every version carries a manifest that pins each file.

    Each file starts with its own path and the version that last wrote it; MANIFEST.txt
    names the version and lists every file with its sha256 and exec bit. So a reader can
    tell a complete tree of one version from a tree missing files, holding files of
    another version, holding files the version removed, or with a wrong mode. Most
    commits rewrite only some files (so a tree built from a hard-linked copy of the
    previous one really shares inodes with it), some add and remove files and whole
    directories, some change only a mode.
    """

    DIRS = ("src", "src/pkg", "assets/img", "docs")

    def __init__(self, seed: int, n_files: int = 200):
        self.rng = random.Random(seed)
        self.n_files = n_files
        self.version = -1
        self.files: dict[str, tuple[str, bool]] = {}   # path -> (content, executable)
        self._serial = 0

    def _text(self, path: str) -> str:
        filler = "".join(self.rng.choices(string.ascii_letters + "\n", k=self.rng.randint(0, 2500)))
        return f"path={path}\nversion={self.version}\n{filler}\n"

    def _new_path(self) -> str:
        self._serial += 1
        if self.rng.random() < 0.2:   # sometimes a directory of its own, so whole dirs come and go
            return f"fresh/v{self.version}/f{self._serial}.txt"
        return f"{self.rng.choice(self.DIRS)}/f{self._serial}.txt"

    def step(self) -> dict[str, tuple[str, bool] | None]:
        """Advance one version; return what changed (None: the path is removed)."""
        self.version += 1
        changes: dict[str, tuple[str, bool] | None] = {}
        if self.version == 0:
            for _ in range(self.n_files):
                path = self._new_path()
                changes[path] = (self._text(path), self.rng.random() < 0.1)
        else:
            paths = sorted(self.files)
            for path in self.rng.sample(paths, k=max(1, len(paths) // 10)):
                changes[path] = (self._text(path), self.files[path][1])
            if self.rng.random() < 0.35:
                for path in self.rng.sample(paths, k=self.rng.randint(1, 6)):
                    changes[path] = None
                for _ in range(self.rng.randint(1, 6)):
                    path = self._new_path()
                    changes[path] = (self._text(path), False)
            if self.rng.random() < 0.3:   # a mode-only change: same content, exec bit flipped
                for path in self.rng.sample(paths, k=self.rng.randint(1, 3)):
                    if path not in changes:
                        content, executable = self.files[path]
                        changes[path] = (content, not executable)
        return self.record(changes)

    def record(self, changes: dict[str, tuple[str, bool] | None]) -> dict[str, tuple[str, bool] | None]:
        """Apply `changes` at the current version; add VERSION and the manifest to them."""
        changes = {**changes, "VERSION": (f"{self.version}\n", False)}
        for path, value in changes.items():
            if value is None:
                self.files.pop(path, None)
            else:
                self.files[path] = value
        manifest = [f"version={self.version}"] + [
            f"{path}\t{_sha256(content.encode())}\t{'x' if executable else '-'}"
            for path, (content, executable) in sorted(self.files.items())]
        changes[MANIFEST] = ("\n".join(manifest) + "\n", False)   # not listed in itself
        return changes


def write_changes(work: Path, changes: dict[str, tuple[str, bool] | None]) -> None:
    for path, value in changes.items():
        target = work / path
        if value is None:
            target.unlink()
            continue
        content, executable = value
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(0o755 if executable else 0o644)


@dataclass
class History:
    """What the committer pushed: sha -> version (recorded before the push)."""

    versions: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    newest: str | None = None

    def version_of(self, sha: str) -> int | None:
        with self.lock:
            return self.versions.get(sha)


def commit_version(remote: Remote, model: Model, history: History) -> str:
    write_changes(remote.work, model.step())
    sha = remote.commit({}, f"version {model.version}")
    with history.lock:
        history.versions[sha] = model.version
        history.newest = sha
    remote.push()
    return sha


# -- checking a tree -----------------------------------------------------------------------

def check_tree(tree: Path, expected_version: int | None) -> list[str]:
    """Problems with `tree` as a reader sees it; [] for a complete tree of one version."""
    try:
        lines = (tree / MANIFEST).read_text().splitlines()
    except OSError as err:
        return [f"manifest unreadable: {err.__class__.__name__}: {err}"]
    if not lines or not lines[0].startswith("version="):
        return [f"manifest malformed: {lines[:1]!r}"]
    version = int(lines[0].split("=", 1)[1])
    problems = []
    if expected_version is None:
        problems.append(f"tree of a commit the test never pushed (manifest says v{version})")
    elif version != expected_version:
        problems.append(f"manifest says v{version}, the tree's commit is v{expected_version}")
    listed = set()
    for line in lines[1:]:
        path, digest, mode = line.split("\t")
        listed.add(path)
        try:
            data = (tree / path).read_bytes()
            executable = bool(os.stat(tree / path).st_mode & stat.S_IXUSR)
        except OSError as err:
            problems.append(f"{path}: {err.__class__.__name__}")
            continue
        if _sha256(data) != digest:
            head = data[:60].decode(errors="replace").replace("\n", " | ")
            problems.append(f"{path}: content of another version ({head!r})")
        elif executable != (mode == "x"):
            problems.append(f"{path}: exec bit {executable}, manifest says {mode!r}")
    present = set()
    for dirpath, dirnames, filenames in os.walk(tree):
        rel = os.path.relpath(dirpath, tree)
        for name in filenames:
            path = name if rel == "." else f"{rel}/{name}"
            if path not in (".git", MANIFEST):
                present.add(path)
    for path in sorted(present - listed)[:5]:
        problems.append(f"{path}: present but not in v{version}")
    if not (tree / MANIFEST).is_file():
        problems.append("tree vanished during the read")
    return problems


class Reader(threading.Thread):
    """Follows the link again and again; every read must be complete, one version, lasting."""

    def __init__(self, link: Path, history: History):
        super().__init__(name="link-reader", daemon=True)
        self.link = link
        self.history = history
        self.stop_event = threading.Event()
        self.reads = 0
        self.bad: list[str] = []
        self.versions_seen: list[int] = []
        self.went_back: list[str] = []
        self.longest = 0.0

    def run(self) -> None:
        seen_link = False
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                target = os.readlink(self.link)
            except FileNotFoundError:
                if seen_link:
                    self._bad("the link vanished")
                time.sleep(0.005)
                continue
            seen_link = True
            sha = Path(target).name
            if os.path.isabs(target) or not SHA_DIR.match(sha):
                self._bad(f"link target {target!r} is not a relative .worktrees/<sha>")
                continue
            expected = self.history.version_of(sha)
            problems = check_tree(self.link.parent / target, expected)
            took = time.monotonic() - started
            self.longest = max(self.longest, took)
            self.reads += 1
            if problems:
                self._bad(f"read of {sha[:10]} (v{expected}, {took * 1000:.0f} ms): "
                          + "; ".join(problems[:4]))
            else:
                if self.versions_seen and expected < self.versions_seen[-1]:
                    self.went_back.append(f"v{self.versions_seen[-1]} -> v{expected}")
                if not self.versions_seen or self.versions_seen[-1] != expected:
                    self.versions_seen.append(expected)
            time.sleep(0.002)   # leave the GIL to the committer now and then

    def _bad(self, what: str) -> None:
        self.bad.append(what)
        time.sleep(0.002)   # one persistent fault should not fill memory

    def wait_until_read(self, version: int, at_least: int = 0) -> None:
        """Wait until the newest read was of `version`, after `at_least` reads in all."""
        wait_for(lambda: self.versions_seen[-1:] == [version] and self.reads >= at_least,
                 message=f"the reader to read v{version} after {at_least} reads")

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)
        assert not self.is_alive(), "the reader thread did not stop"


class Committer(threading.Thread):
    """Pushes a new version every 100-200 ms until stopped."""

    def __init__(self, remote: Remote, model: Model, history: History, seed: int):
        super().__init__(name="committer", daemon=True)
        self.remote, self.model, self.history = remote, model, history
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.pushed = 0

    def run(self) -> None:
        due = time.monotonic()
        try:
            while True:
                due += self.rng.uniform(0.1, 0.2)   # on a busy machine, push as fast as git allows
                if self.stop_event.wait(max(0.0, due - time.monotonic())):
                    break
                commit_version(self.remote, self.model, self.history)
                self.pushed += 1
        except BaseException as err:   # surfaced by the test, not lost in the thread
            self.error = err

    def stop(self) -> None:
        self.stop_event.set()
        self.join(15)
        assert not self.is_alive(), "the committer thread did not stop"
        if self.error is not None:
            raise AssertionError(f"the committer failed: {self.error!r}")


# -- processes -----------------------------------------------------------------------------------

def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children[int(fields[1])].append(int(entry))
    return children


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and all its descendants at one moment, as a container kill does.

    Everything is stopped first (a stopped process neither forks nor exits), found
    again until nothing new appears, then killed together.
    """
    stopped: set[int] = set()
    while True:
        tree, todo, children = set(), [pid], _children()
        while todo:
            current = todo.pop()
            if current not in tree:
                tree.add(current)
                todo.extend(children.get(current, ()))
        new = tree - stopped
        if not new:
            break
        for each in new:
            try:
                os.kill(each, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        stopped |= new
    for each in stopped:
        try:
            os.kill(each, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill(process) -> None:
    if process.proc.poll() is None:
        kill_tree(process.proc.pid)
    process.proc.wait(10)


def gitsync_args(remote: Remote, root: Path, *extra: str) -> list[str]:
    return ["--repo", remote.url, "--root", str(root), "--link", LINK, "--period", "50ms",
            "--http-bind", "", *extra]


def run_once(remote: Remote, root: Path, *extra: str) -> subprocess.CompletedProcess:
    from conftest import BIN
    return subprocess.run([str(BIN / "gitsync"), *gitsync_args(remote, root, "--one-time", *extra)],
                          capture_output=True, text=True, timeout=60)


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])


# -- the layout ----------------------------------------------------------------------------

def leftovers(root: Path) -> list[str]:
    """Everything on the volume a finished publish does not keep (.spare is kept on purpose)."""
    found = [p.name for p in (root / ".worktrees").iterdir()
             if not SHA_DIR.match(p.name) and p.name != ".spare"]
    found += [p.name for p in root.iterdir() if p.name.startswith(f".{LINK}.tmp-")]
    return sorted(found)


def registered_worktrees(root: Path) -> list[tuple[str, str | None]]:
    """(path, lock reason or None) of every worktree git knows, the bare repo aside."""
    out = git("--git-dir", str(root / ".git"), "worktree", "list", "--porcelain")
    entries: list[tuple[str, str | None]] = []
    for block in out.split("\n\n"):
        lines = block.splitlines()
        if not lines or "bare" in lines:
            continue
        path = lines[0].removeprefix("worktree ")
        lock = next((line.removeprefix("locked").strip() or "locked" for line in lines
                     if line.startswith("locked")), None)
        entries.append((path, lock))
    return entries


def snapshot(tree: Path) -> dict[str, tuple]:
    """inode, mtime, size, mode and content hash of everything in `tree`."""
    shot = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            digest = _sha256(path.read_bytes()) if stat.S_ISREG(info.st_mode) else None
            shot[str(path.relative_to(tree))] = (info.st_ino, info.st_mtime_ns, info.st_size,
                                                 info.st_mode, digest)
    return shot


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def sidecar(gitsync):
    """conftest's `gitsync`, but every process is ended with all its git children at teardown."""
    started = []

    def start(*args: str):
        process = gitsync(*args)
        started.append(process)
        return process

    yield start
    for process in started:
        kill(process)


@pytest.fixture
def versioned(remote):
    """The remote with version 0 of the model pushed; returns (remote, model, history)."""
    model, history = Model(seed=20240611), History()
    remote.commit({"README.md": None, "app/main.py": None}, "clear the fixture's files")
    commit_version(remote, model, history)
    return remote, model, history


# -- the crash test ----------------------------------------------------------------------------

KILLS = 15            # at least this many lives, each ended by SIGKILL
MIN_PUBLISHES = 8     # ...and more lives (up to MAX_LIVES) until this many publishes were killed around
MAX_LIVES = 40
SEED = 1515


def test_sigkill_at_random_moments_while_commits_arrive(versioned, tmp_path, sidecar):
    """15+ SIGKILLs (git-sync's count in FINDINGS.md), a push every 100-200 ms, a reader throughout.

    Each life ends 50-1000 ms (seeded) after gitsync's first git command: timing from
    the first command rather than from exec keeps the kills out of the interpreter's
    start-up (0.3 s idle, over a second on a busy machine, and nothing touches the disk
    in it), so they land in recovery, fetches, checkouts, worktree moves, link swaps and
    clean-up. On a slow machine, where lives end before they publish, more lives run.
    """
    remote, model, history = versioned
    root = tmp_path / "root"
    link = root / LINK
    rng = random.Random(SEED)
    args = gitsync_args(remote, root, "--stale-worktree-timeout", "3s", "--max-failures", "-1",
                        "--verbose", "1")   # a line per git command: the first one starts the clock
    reader = Reader(link, history)
    committer = Committer(remote, model, history, seed=SEED + 1)
    processes: list = []
    exited_alone = []

    def publishes() -> int:
        return sum(p.output.count("sync published") for p in processes)

    try:
        reader.start()
        committer.start()
        began, startup = time.monotonic(), 0.0
        while len(processes) < KILLS or (publishes() < MIN_PUBLISHES and len(processes) < MAX_LIVES):
            process = sidecar(*args)
            processes.append(process)
            started = time.monotonic()
            wait_for(lambda: " git " in process.output or process.proc.poll() is not None,
                     timeout=30, interval=0.005, message="gitsync's first git command")
            startup += time.monotonic() - started
            time.sleep(rng.uniform(0.05, 1.0))
            if process.proc.poll() is not None:
                exited_alone.append(f"exit {process.proc.returncode}:\n{tail(process.output)}")
            kill(process)
        committer.stop()
        newest = history.newest
        chaos = time.monotonic() - began

        final = sidecar(*args)
        processes.append(final)
        try:
            wait_for(lambda: published_sha(link) == newest, timeout=30,
                     message=f"the newest commit {newest[:10]} published after the last kill")
        except AssertionError as err:
            raise AssertionError(f"{err}\nfinal gitsync output:\n{tail(final.output)}\n"
                                 f"(reader meanwhile: {reader.reads} reads, {len(reader.bad)} bad: "
                                 f"{reader.bad[:3]})") from None
        reader.wait_until_read(history.version_of(newest), at_least=100)   # the newest tree too
        reader.stop()

        killed = processes[:-1]
        published = sum(p.output.count("sync published") for p in killed)
        print(f"\ncrash test: {committer.pushed} commits pushed, {published} published across "
              f"{len(killed)} killed lives in {chaos:.1f} s (start-up to the first git command: "
              f"{startup / len(killed) * 1000:.0f} ms on average); reader: {reader.reads} reads, "
              f"{len(reader.bad)} bad, {len(reader.versions_seen)} versions seen, longest read "
              f"{reader.longest * 1000:.0f} ms; last step before each kill: "
              f"{[_last_step(p.output) for p in killed]}")
        assert exited_alone == [], "gitsync exited by itself between kills:\n" + "\n".join(exited_alone)
        assert reader.bad == [], (f"{len(reader.bad)} bad reads out of {reader.reads}; first ones:\n"
                                  + "\n".join(reader.bad[:10]))
        assert reader.reads >= 100, f"the reader managed only {reader.reads} reads"
        assert published >= MIN_PUBLISHES, f"only {published} publishes in {len(killed)} lives"
        assert len(reader.versions_seen) >= 4, f"the reader saw only versions {reader.versions_seen}"
        assert reader.went_back == [], f"the link went back to older commits: {reader.went_back}"

        assert os.readlink(link) == f".worktrees/{newest}"
        assert check_tree(link, history.version_of(newest)) == []
        assert git("rev-parse", "HEAD", cwd=link) == newest
        assert git("status", "--porcelain", "--untracked-files=no", cwd=link) == ""
        wait_for(lambda: leftovers(root) == [], timeout=30,
                 message=f"leftovers of the killed runs cleaned up (still: {leftovers(root)})")
        # Trees the kills left behind go once the stale timeout passes: published + previous stay.
        wait_for(lambda: len([p for p in (root / ".worktrees").iterdir()
                              if SHA_DIR.match(p.name)]) <= 2,
                 timeout=30, message="old trees removed after --stale-worktree-timeout")
        assert final.proc.poll() is None, f"gitsync exited:\n{tail(final.output)}"
        kill(final)

        # What git itself records: no worktree it still believes is being created, none missing.
        registered = registered_worktrees(root)
        assert [entry for entry in registered if entry[1]] == [], f"locked worktrees: {registered}"
        git("--git-dir", str(root / ".git"), "worktree", "prune")
        missing = [path for path, _ in registered_worktrees(root) if not Path(path).is_dir()]
        assert missing == [], f"git still lists worktrees that are gone: {missing}"
        git("--git-dir", str(root / ".git"), "fsck", "--connectivity-only", "--no-dangling")
    finally:
        committer.stop_event.set()
        reader.stop_event.set()
        for process in processes:
            kill(process)
        committer.join(15)
        reader.join(10)


def _last_step(output: str) -> str:
    """What a killed life last logged: roughly where the kill landed."""
    for line in reversed(output.splitlines()):
        match = re.search(r"(git [\w-]+): exit|(published) [0-9a-f]{40} at|(sync unchanged)|(removed)",
                          line)
        if match:
            return next(g for g in match.groups() if g)
    return "-"


# -- what a kill leaves behind, made by hand ------------------------------------------------------

def test_leftover_temp_link_and_half_built_trees_are_cleaned_up_on_start(versioned, tmp_path):
    remote, model, history = versioned
    root = tmp_path / "root"
    first = run_once(remote, root)
    assert first.returncode == 0, first.stderr
    old = history.newest
    old_tree = root / ".worktrees" / old
    before = snapshot(old_tree)
    newest = commit_version(remote, model, history)

    worktrees = root / ".worktrees"
    # A kill between creating the temporary link and renaming it over the real one.
    temp_link = root / f".{LINK}.tmp-deadbeef"
    temp_link.symlink_to(f".worktrees/{newest}")
    # A kill in the middle of a fresh checkout: registered with git, only some files written.
    git("--git-dir", str(root / ".git"), "fetch", "--quiet", "--depth=1", remote.url,
        f"+refs/heads/{remote.branch}:refs/gitsync/target")
    build = worktrees / f".build-{newest}"
    git("--git-dir", str(root / ".git"), "worktree", "add", "--quiet", "--detach", "--no-checkout",
        str(build), newest)
    (build / "src").mkdir()
    (build / "src" / "half-written.txt").write_text("path=src/half")
    # A kill while the spare was being updated, and one in the middle of removing a tree.
    spare = worktrees / ".spare"
    if not spare.exists():
        spare.mkdir()
    (spare / "stray.txt").write_text("half an update")
    trash = worktrees / ".trash-0123456789abcdef0123456789abcdef01234567-cafe0123"
    (trash / "docs").mkdir(parents=True)
    (trash / "docs" / "left.txt").write_text("x")

    second = run_once(remote, root)
    assert second.returncode == 0, second.stderr
    assert os.readlink(root / LINK) == f".worktrees/{newest}"
    assert check_tree(root / LINK, history.version_of(newest)) == []
    assert leftovers(root) == []
    assert not (worktrees / ".spare" / "stray.txt").exists()
    assert snapshot(old_tree) == before, "the previous tree changed"
    missing = [path for path, _ in registered_worktrees(root) if not Path(path).is_dir()]
    assert missing == [], f"git still lists worktrees that are gone: {missing}"


LOCK_LEFTOVERS = {
    # git takes these with O_EXCL and removes them on exit; SIGKILL skips the removal.
    "shallow.lock (kill inside a --depth fetch)": "shallow.lock",
    "ref lock (kill while the fetch updates refs/gitsync/target)": "refs/gitsync/target.lock",
    "config.lock (kill inside git config at start-up)": "config.lock",
}


@pytest.mark.parametrize("lock", LOCK_LEFTOVERS.values(), ids=list(LOCK_LEFTOVERS))
def test_a_lock_file_left_by_a_killed_git_does_not_stop_the_next_run(versioned, tmp_path, lock):
    remote, model, history = versioned
    root = tmp_path / "root"
    assert run_once(remote, root).returncode == 0
    newest = commit_version(remote, model, history)
    (root / ".git" / lock).parent.mkdir(parents=True, exist_ok=True)
    (root / ".git" / lock).write_text("")

    result = run_once(remote, root)
    assert result.returncode == 0, f"a stale {lock} blocks every sync:\n{tail(result.stderr)}"
    assert published_sha(root / LINK) == newest
    assert check_tree(root / LINK, history.version_of(newest)) == []


def test_a_worktree_add_killed_on_the_first_start_does_not_block_the_next(versioned, tmp_path):
    """`git worktree add` marks the new worktree locked ("initializing") until it ends.

    Killed inside it, the admin entry stays locked, and `git worktree add --force` of the
    same path then refuses ("is a missing but locked worktree"), so the commit can never
    be built while it stays the newest.
    """
    remote, model, history = versioned
    root = tmp_path / "root"
    newest = history.newest
    gitdir = root / ".git"
    git("init", "--quiet", "--bare", str(gitdir))
    git("--git-dir", str(gitdir), "fetch", "--quiet", "--depth=1", remote.url,
        f"+refs/heads/{remote.branch}:refs/gitsync/target")
    build = root / ".worktrees" / f".build-{newest}"
    git("--git-dir", str(gitdir), "worktree", "add", "--quiet", "--detach", "--no-checkout",
        str(build), newest)
    admin = Path((build / ".git").read_text().split(":", 1)[1].strip())
    (admin / "locked").write_text("initializing")   # exactly what git leaves when killed here

    result = run_once(remote, root)
    assert result.returncode == 0, f"the next start cannot build {newest[:10]}:\n{tail(result.stderr)}"
    assert published_sha(root / LINK) == newest
    assert check_tree(root / LINK, history.version_of(newest)) == []
    assert [entry for entry in registered_worktrees(root) if entry[1]] == []


# -- a damaged repository, a rewritten or deleted branch --------------------------------------------

def _publish_then_corrupt(remote: Remote, history: History, root: Path, sidecar) -> list[str]:
    """Publish once, kill gitsync, delete every other object file; return gitsync's args."""
    args = gitsync_args(remote, root, "--stale-worktree-timeout", "30s", "--max-failures", "-1")
    first = sidecar(*args)
    wait_for(lambda: published_sha(root / LINK) == history.newest, message="the first publish")
    kill(first)
    objects = sorted(p for p in (root / ".git" / "objects").rglob("*")
                     if p.is_file() and p.parent.name != "info")
    for obj in objects[::2]:
        obj.unlink()
    broken = subprocess.run(["git", "--git-dir", str(root / ".git"), "fsck", "--connectivity-only"],
                            capture_output=True)
    assert broken.returncode != 0, "deleting objects did not break the repository"
    return args


def _synced_after_repair(process) -> bool:
    return bool(re.search(r"damaged.*\n(.*\n)*.*sync (published|unchanged)", process.output))


def test_corrupt_repository_is_cloned_again_while_the_link_stays_readable(versioned, tmp_path, sidecar):
    remote, model, history = versioned
    root = tmp_path / "root"
    link = root / LINK
    published = history.newest
    args = _publish_then_corrupt(remote, history, root, sidecar)
    reader = Reader(link, history)
    reader.start()
    try:
        second = sidecar(*args)
        wait_for(lambda: _synced_after_repair(second), timeout=30,
                 message="the damage noticed and a sync after the repair")
        assert stays(lambda: published_sha(link) == published, 0.3)
        newest = commit_version(remote, model, history)
        wait_for(lambda: published_sha(link) == newest, timeout=30,
                 message="the next commit published after the repair")
        reader.wait_until_read(history.version_of(newest), at_least=20)
        reader.stop()
        assert reader.bad == [], "\n".join(reader.bad[:10])
        assert reader.reads >= 20, f"the reader managed only {reader.reads} reads"
        assert reader.versions_seen[-2:] == [history.version_of(published), history.version_of(newest)]
        git("--git-dir", str(root / ".git"), "fsck", "--connectivity-only")
        assert git("status", "--porcelain", "--untracked-files=no", cwd=link) == ""
        assert second.proc.poll() is None, tail(second.output)
    finally:
        reader.stop_event.set()
        reader.join(10)


def test_corrupt_repository_recovery_keeps_the_tree_a_reader_sits_in(versioned, tmp_path, sidecar):
    """An app started in the published tree (gitsync-reload's child) keeps its working
    directory there; the link does not move, so nothing restarts it. The tree's content
    is intact, only git's record of it went with the repository."""
    remote, model, history = versioned
    root = tmp_path / "root"
    published = history.newest
    args = _publish_then_corrupt(remote, history, root, sidecar)
    tree_fd = os.open(root / LINK, os.O_RDONLY | os.O_DIRECTORY)   # what a process's cwd holds
    try:
        second = sidecar(*args)
        wait_for(lambda: _synced_after_repair(second), timeout=30,
                 message="the damage noticed and a sync after the repair")
        assert published_sha(root / LINK) == published
        inside = check_tree(Path(f"/proc/self/fd/{tree_fd}"), history.version_of(published))
        assert inside == [], f"the tree a reader sat in was removed or changed: {inside[:3]}"
        assert git("status", "--porcelain", "--untracked-files=no", cwd=root / LINK) == ""
    finally:
        os.close(tree_fd)


def test_force_pushed_branch_is_followed(versioned, tmp_path, sidecar):
    remote, model, history = versioned
    root = tmp_path / "root"
    link = root / LINK
    base = history.newest
    ahead = commit_version(remote, model, history)
    process = sidecar(*gitsync_args(remote, root, "--max-failures", "-1"))
    wait_for(lambda: published_sha(link) == ahead, message="the first publish")

    remote.reset_hard(base)
    write_changes(remote.work, {"VERSION": ("rewritten\n", False), "extra.txt": ("x\n", False)})
    rewritten = remote.commit({}, "rewritten history")
    remote.push(force=True)
    assert remote.remote_head(f"refs/heads/{remote.branch}") == rewritten

    wait_for(lambda: published_sha(link) == rewritten, timeout=30, message="the force-push followed")
    assert (link / "VERSION").read_text() == "rewritten\n"
    assert (link / "extra.txt").read_text() == "x\n"
    assert git("rev-parse", "HEAD", cwd=link) == rewritten
    assert process.proc.poll() is None
    assert "sync failed" not in process.output


def test_deleted_branch_is_an_error_that_keeps_the_published_tree(versioned, tmp_path, sidecar):
    remote, model, history = versioned
    root = tmp_path / "root"
    link = root / LINK
    published = history.newest
    process = sidecar(*gitsync_args(remote, root, "--ref", remote.branch, "--max-failures", "-1"))
    wait_for(lambda: published_sha(link) == published, message="the first publish")
    time.sleep(0.2)
    before = snapshot(link.resolve())
    target = os.readlink(link)

    remote.switch("keep", create=True)
    remote.push("keep")            # the default branch must live on somewhere
    remote.set_default_branch("keep")
    remote.delete_branch(remote.branch)
    wait_for(lambda: process.output.count("sync failed") >= 3, timeout=30,
             message="repeated sync failures after the branch was deleted")
    assert f"ref '{remote.branch}' not found" in process.output
    assert process.proc.poll() is None, "with --max-failures -1 gitsync keeps going"
    assert os.readlink(link) == target
    assert snapshot(link.resolve()) == before
    assert check_tree(link, history.version_of(published)) == []

    # The branch comes back with a new commit: gitsync carries on from there.
    remote.switch(remote.branch)
    newest = commit_version(remote, model, history)
    wait_for(lambda: published_sha(link) == newest, timeout=30, message="the recreated branch")
    assert check_tree(link, history.version_of(newest)) == []


def test_deleted_branch_exits_once_max_failures_is_spent(versioned, tmp_path, sidecar):
    remote, model, history = versioned
    root = tmp_path / "root"
    link = root / LINK
    published = history.newest
    process = sidecar(*gitsync_args(remote, root, "--ref", remote.branch, "--max-failures", "2"))
    wait_for(lambda: published_sha(link) == published, message="the first publish")
    before = snapshot(link.resolve())

    remote.switch("keep", create=True)
    remote.push("keep")
    remote.set_default_branch("keep")
    remote.delete_branch(remote.branch)
    assert process.wait(10) == 1
    assert process.output.count("sync failed") == 3, tail(process.output)
    assert f"ref '{remote.branch}' not found" in process.output
    assert published_sha(link) == published
    assert snapshot(link.resolve()) == before


# -- a published tree is never written again --------------------------------------------------------

def test_a_published_tree_is_never_modified_by_later_publishes(versioned, tmp_path, sidecar):
    """Later trees are built from hard links of the published one: git must replace, never edit.

    Each later commit changes, deletes and chmods files of the first tree; the first
    tree's inode, mtime, size, mode and content stay as they were.
    """
    remote, model, history = versioned
    root = tmp_path / "root"
    link = root / LINK
    process = sidecar(*gitsync_args(remote, root, "--stale-worktree-timeout", "60s"))
    first = history.newest
    wait_for(lambda: published_sha(link) == first, message="the first publish")
    spare = root / ".worktrees" / ".spare"
    snapshots = {first: snapshot(root / ".worktrees" / first)}

    shared_inodes = 0
    for step in range(3):
        wait_for(spare.is_dir, message="the spare tree prepared")
        time.sleep(0.1)
        current = history.newest
        paths = sorted(model.files)
        rng = random.Random(step)
        changes: dict[str, tuple[str, bool] | None] = {}
        for path in rng.sample(paths, 5):
            changes[path] = (f"path={path}\nrewritten in step {step}\n", model.files[path][1])
        for path in rng.sample([p for p in paths if p not in changes], 3):
            changes[path] = None
        for path in rng.sample([p for p in paths if p not in changes], 3):
            content, executable = model.files[path]
            changes[path] = (content, not executable)   # a mode-only change
        newest = _commit_custom(remote, model, history, changes)
        wait_for(lambda: published_sha(link) == newest, message=f"publish of step {step}")
        new_tree = root / ".worktrees" / newest
        assert check_tree(new_tree, history.version_of(newest)) == []
        old_inodes = {v[0] for v in snapshots[current].values()}
        shared_inodes += sum(1 for v in snapshot(new_tree).values() if v[0] in old_inodes)
        snapshots[newest] = snapshot(new_tree)
        for sha, shot in snapshots.items():
            if sha == newest:
                continue
            assert (root / ".worktrees" / sha).is_dir(), f"tree {sha[:10]} removed too early"
            now = snapshot(root / ".worktrees" / sha)
            changed = sorted(k for k in set(shot) | set(now) if shot.get(k) != now.get(k))
            assert changed == [], f"published tree {sha[:10]} was modified: {changed[:10]}"
    assert shared_inodes > 0, "no tree was built from hard links; the test proved nothing"
    assert process.proc.poll() is None


def _commit_custom(remote: Remote, model: Model, history: History,
                   changes: dict[str, tuple[str, bool] | None]) -> str:
    """A commit of hand-picked changes, kept consistent with the model's manifest."""
    model.version += 1
    changes = model.record(changes)
    write_changes(remote.work, changes)
    sha = remote.commit({}, f"version {model.version}")
    with history.lock:
        history.versions[sha] = model.version
        history.newest = sha
    remote.push()
    return sha
