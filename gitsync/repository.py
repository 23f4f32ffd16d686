"""The bare repository at <root>/.git, its worktrees, and every file under .git.

Each method is a short, named git step built on `GitRunner`, or one of the few
things git has no command for: sweeping the locks a killed git left, giving a
tree back its admin directory, copying an index. Nothing outside this module
reads or writes a path under .git; the publisher speaks of trees only.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .files import hardlink_tree, write_atomically
from .git import (  # ls-remote's answer, read where the runner lives
    TARGET_REF,
    CommitInfo,
    Deadline,
    GitError,
    GitRunner,
    RemoteHead,
    _parse_head,
    _pick_ref,
    is_full_sha,
)
from .model import SyncError

log = logging.getLogger(__name__)

STATE_PREFIX = "gitsync-"   # .git/gitsync-<key>: gitsync's own state, e.g. the previous commit
_WORKTREE_SETTING = re.compile(r"^\s*worktree\s*=", re.MULTILINE)


# What git writes under objects/ before it renames a finished object or pack into place.
TEMPORARY_OBJECTS = ("tmp_obj_*", "tmp_pack_*", "tmp_idx_*", "tmp_rev_*", "tmp_mtimes_*", "tmp_bitmap_*")


class Repository:
    """The bare repository at <root>/.git and the worktrees made from it."""

    def __init__(self, root: Path, runner: GitRunner, *, gc: str = "auto", filter: str = ""):
        self.root = root
        self.git_dir = root / ".git"
        self.runner = runner
        self.gc = gc            # --git-gc: auto, always, aggressive or off
        self.filter = filter    # --filter: fetch as a partial clone

    # -- the repository itself ------------------------------------------------

    def _git(self, step: str, *args: str, deadline: Deadline | None = None) -> str:
        return self.runner.run(step, ["--git-dir", str(self.git_dir), *args], deadline=deadline)

    def exists(self) -> bool:
        return (self.git_dir / "HEAD").is_file()

    def init(self) -> None:
        """Create the bare repository with the settings spare trees rely on."""
        self.runner.run("init", ["init", "--quiet", "--bare", str(self.git_dir)])
        # Hard-linked spare trees change ctime, never content: ignore ctime so the
        # index stays valid and git rewrites only the files a commit changes.
        self.set_config("core.trustctime", "false")
        self.set_config("gc.auto", "0")
        self.set_config("maintenance.auto", "false")
        self.set_config("advice.detachedHead", "false")

    def reinit(self) -> None:
        """Start the repository again, empty; the trees' files stay where they are."""
        shutil.rmtree(self.git_dir, ignore_errors=True)
        self.init()

    def clear_stale_locks(self) -> list[Path]:
        """Delete the lock files a killed git left behind (git removes them on exit, not on
        SIGKILL). Call it only while no git of ours runs: then every lock is stale, and
        one left in place blocks each later fetch (shallow.lock, a ref's .lock) or the
        start-up itself (config.lock)."""
        if not self.git_dir.is_dir():
            return []
        removed = []
        for lock in self.git_dir.rglob("*.lock"):
            if lock.is_file() and not lock.is_symlink():
                log.warning("removing %s, left by a git that was killed", lock)
                lock.unlink(missing_ok=True)
                removed.append(lock)
        return removed

    def remove_temporary_objects(self) -> int:
        """Delete the objects and packs a failed or killed git was still writing (no git of
        ours may be running); return how many were removed."""
        objects = self.git_dir / "objects"
        if not objects.is_dir():
            return 0
        removed = 0
        for pattern in TEMPORARY_OBJECTS:
            for path in objects.rglob(pattern):
                if path.is_file() and not path.is_symlink():
                    path.unlink(missing_ok=True)
                    removed += 1
        for quarantine in objects.glob("incoming-*"):  # receive/fetch quarantine directories
            shutil.rmtree(quarantine, ignore_errors=True)
            removed += 1
        if removed:
            log.warning("removed %d temporary object file(s) a failed git left in %s", removed, objects)
        return removed

    def set_config(self, key: str, value: str) -> None:
        self._git("init", "config", key, value)

    def get_config(self, key: str, file: Path | None = None) -> str | None:
        """The value of `key` in the repository's config (or in `file`), None when unset."""
        where = ["--file", str(file)] if file is not None else []
        try:
            return self._git("config", "config", *where, "--get", key).strip()
        except GitError:  # exit 1: not set
            return None

    def is_healthy(self, deadline: Deadline | None = None) -> bool:
        """True when git can read the repository and every object is reachable."""
        try:
            self._git("fsck", "fsck", "--connectivity-only", "--no-dangling", "--no-progress",
                      deadline=deadline)
        except GitError as err:
            log.warning("repository check failed: %s", err)
            return False
        return True

    def is_shallow(self) -> bool:
        return (self.git_dir / "shallow").exists()

    # -- gitsync's own state, kept with the repository ----------------------------

    def read_state(self, key: str) -> str | None:
        """A value gitsync stored (e.g. "previous": the commit published before this one)."""
        try:
            return (self.git_dir / f"{STATE_PREFIX}{key}").read_text().strip() or None
        except FileNotFoundError:
            return None

    def write_state(self, key: str, value: str) -> None:
        write_atomically(self.git_dir / f"{STATE_PREFIX}{key}", value)

    # -- talking to the remote --------------------------------------------------

    def ls_remote(self, url: str, ref: str, deadline: Deadline) -> RemoteHead:
        """Ask the remote where `ref` points; one cheap round trip, no objects."""
        if ref == "HEAD":
            out = self._git("ls-remote", "ls-remote", "--symref", "--", url, "HEAD",
                            deadline=deadline)
            return _parse_head(out, url)
        names = [ref, f"{ref}^{{}}"] if ref.startswith("refs/") else [
            f"refs/heads/{ref}", f"refs/tags/{ref}", f"refs/tags/{ref}^{{}}"]
        out = self._git("ls-remote", "ls-remote", "--", url, *names, deadline=deadline)
        return _pick_ref(out, names, ref)

    def fetch(self, url: str, source: str, depth: int, deadline: Deadline) -> str:
        """Fetch `source` (a ref or SHA) into our own ref; return the commit it names.
        Fetching into a ref we keep lets git offer what we have, so an update downloads
        only the change (a bare SHA with no local ref re-downloads all)."""
        args = ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-auto-gc",
                "--no-recurse-submodules"]
        if depth > 0:
            args.append(f"--depth={depth}")
        elif self.is_shallow():
            args.append("--unshallow")
        if self.filter:
            # git records the URL as the promisor remote: a checkout fetches missing blobs.
            args.append(f"--filter={self.filter}")
        try:
            self._git("fetch", *args, "--", url, f"+{source}:{TARGET_REF}", deadline=deadline)
        except GitError:
            # A fetch that failed half-way (a full disk, a timeout) leaves its temporary
            # objects behind; on a full volume they are what keeps the next fetch from fitting.
            self.remove_temporary_objects()
            raise
        return self.resolve_commit(TARGET_REF)

    def has_commit(self, sha: str) -> bool:
        try:
            self._git("resolve", "cat-file", "-e", f"{sha}^{{commit}}")
        except GitError:
            return False
        return True

    def resolve_commit(self, rev: str) -> str:
        return self._git("resolve", "rev-parse", "--verify", "--quiet",
                         f"{rev}^{{commit}}").strip()

    def commit_info(self, sha: str) -> CommitInfo:
        out = self._git("log", "log", "-1", "--format=%s%x00%an%x00%aI", sha, "--")
        subject, author, when = (out.split("\0") + ["", "", ""])[:3]
        return CommitInfo(sha=sha, subject=subject, author=author, time=when)

    def collect_garbage(self) -> None:
        """Drop objects no worktree or ref reaches any more, as --git-gc says: auto (only
        when git counts enough loose objects), always, aggressive, or off."""
        if self.gc == "off":
            return
        # Records of removed trees and their reflogs keep objects alive: drop them first.
        self._git("gc", "worktree", "prune")
        self._git("gc", "reflog", "expire", "--expire-unreachable=all", "--all")
        mode = {"auto": ["-c", "gc.auto=6700", "gc", "--auto"], "always": ["gc"],
                "aggressive": ["gc", "--aggressive"]}[self.gc]
        self._git("gc", *mode, "--quiet", "--prune=now")

    # -- worktrees --------------------------------------------------------------

    def add_worktree(self, path: Path, sha: str, *, checkout: bool, deadline: Deadline | None) -> None:
        args = ["worktree", "add", "--quiet", "--detach", "--force"]
        if not checkout:
            args.append("--no-checkout")
        self._git("checkout", *args, "--", str(path), sha, deadline=deadline)

    def move_worktree(self, source: Path, dest: Path, deadline: Deadline | None = None) -> None:
        """Move a tree and its record; git refuses for a tree with submodules, so such a
        tree is renamed and its record repaired."""
        if not self.has_submodule_repositories(source):
            self._git("publish", "worktree", "move", "--", str(source), str(dest), deadline=deadline)
            return
        source.rename(dest)
        self.repair_worktrees([dest])

    def prune_worktrees(self) -> None:
        self._git("cleanup", "worktree", "prune")

    def repair_worktrees(self, paths: Sequence[Path]) -> None:
        """Re-link moved worktrees whose admin files a crash left pointing at the old path."""
        if paths:
            self._git("recover", "worktree", "repair", "--", *(str(p) for p in paths))

    def worktree_admin_dir(self, path: Path) -> Path:
        """The .git/worktrees/<name> directory of the worktree at `path`."""
        text = (path / ".git").read_text().strip()
        if not text.startswith("gitdir:"):
            raise GitError("worktree", f"{path}/.git is not a worktree link")
        admin = Path(text.split(":", 1)[1].strip())
        return admin if admin.is_absolute() else (path / admin).resolve()

    def has_admin_dir(self, tree: Path) -> bool:
        """Whether the admin directory the tree's .git link names is there."""
        try:
            return self.worktree_admin_dir(tree).is_dir()
        except (GitError, OSError):
            return False

    def forget_admin_dir(self, admin: Path) -> None:
        """Drop one worktree record (a tree replaced under its name left it behind)."""
        if admin.parent.resolve() == (self.git_dir / "worktrees").resolve():
            shutil.rmtree(admin, ignore_errors=True)

    def register_worktree(self, tree: Path, sha: str, deadline: Deadline | None = None) -> Path:
        """Give back git's record of a tree that lost it with a re-cloned repository: the
        admin dir its .git link names, written again with an index read from `sha`; the
        files stay as they are (a reader may sit in them). Returns that directory;
        GitError when the link names another place, the record is there, or `sha` is not."""
        try:
            admin = self.worktree_admin_dir(tree)
        except OSError as err:
            raise GitError("recover", f"{tree}/.git: {err.strerror}") from None
        if admin.exists() or admin.parent.resolve() != (self.git_dir / "worktrees").resolve():
            raise GitError("recover", f"{tree} names {admin}, not a record git lacks")
        if not self.has_commit(sha):
            raise GitError("recover", f"commit {sha} is not in the repository")
        admin.mkdir(parents=True)
        (admin / "gitdir").write_text(f"{tree / '.git'}\n")
        (admin / "commondir").write_text("../..\n")
        (admin / "HEAD").write_text(f"{sha}\n")
        try:
            self.in_worktree("recover", tree, "read-tree", sha, deadline=deadline)
            self.refresh_index(tree, deadline=deadline)
        except GitError as err:
            log.debug("registering %s again: %s", tree, err)
        return admin

    def unlock_missing_worktrees(self) -> int:
        """Let prune take records a killed `git worktree add` left locked ("initializing"):
        git refuses to add a path again while one stands ("a missing but locked worktree"),
        and a worktree whose directory is gone is in no one's use. Returns how many."""
        admin_root = self.git_dir / "worktrees"
        if not admin_root.is_dir():
            return 0
        unlocked = 0
        for admin in admin_root.iterdir():
            lock = admin / "locked"
            if not lock.is_file():
                continue
            try:
                checkout = Path((admin / "gitdir").read_text().strip()).parent
            except OSError:
                checkout = None
            if checkout is None or not checkout.is_dir():
                lock.unlink(missing_ok=True)
                unlocked += 1
        return unlocked

    def in_worktree(self, step: str, path: Path, *args: str, deadline: Deadline | None = None) -> str:
        """Run git inside a worktree, never letting it wander up to another repository."""
        if not (path / ".git").is_file():
            raise GitError(step, f"{path} has no .git link; not a worktree")
        return self.runner.run(step, ["-C", str(path), *args], deadline=deadline)

    def checkout(self, tree: Path, sha: str, deadline: Deadline | None = None) -> None:
        """Switch a tree to `sha`, rewriting only the files that differ."""
        self.in_worktree("checkout", tree, "checkout", "--quiet", "--detach", sha, "--",
                         deadline=deadline)

    def switch(self, tree: Path, old: str, new: str, deadline: Deadline | None = None) -> list[str]:
        """Move a clean tree checked out at `old` to `new`, rewriting only the files that
        differ; return the paths `new` has that `old` lacks or has otherwise.

        `git checkout` first lstat()s every file of the tree (its index refresh: ~21 ms of
        its ~35 at 20,000 files); `reset --keep` checks only the entries it changes, which
        the fresh index prepare_spare leaves lets it trust (~23 ms). It refuses, never
        overwrites, when a file it would change was modified ("not uptodate")."""
        changed = self.in_worktree("checkout", tree, "diff-tree", "-r", "-z", "--no-renames",
                                   "--name-only", "--diff-filter=d", old, new, deadline=deadline)
        self.in_worktree("checkout", tree, "reset", "--quiet", "--keep", new, deadline=deadline)
        return [name for name in changed.split("\0") if name]

    def reset_hard(self, tree: Path, deadline: Deadline | None = None) -> None:
        """Write every file of a tree added with checkout=False (after its sparse patterns)."""
        self.in_worktree("checkout", tree, "reset", "--hard", "--quiet", "HEAD", deadline=deadline)

    def refresh_index(self, tree: Path, step: str = "recover", deadline: Deadline | None = None) -> None:
        """Record fresh stat data, so the next checkout trusts the files as they are."""
        self.in_worktree(step, tree, "update-index", "-q", "--refresh", deadline=deadline)

    def worktree_head(self, path: Path) -> str | None:
        try:
            return self.in_worktree("verify", path, "rev-parse", "--verify", "--quiet", "HEAD").strip()
        except GitError:
            return None

    def verify_checkout(self, path: Path, deadline: Deadline | None = None,
                        paths: Sequence[str] | None = None) -> None:
        """Raise SyncError('checkout') naming a file git recorded but did not write.

        git 2.39 can exit 0 from a checkout that could not create a file (a name longer
        than the filesystem allows, inside a new directory): the index has the entry, the
        tree has no file. ls-files --deleted finds exactly those (it skips sparse entries)
        but lstat()s every entry (~25 ms at 20,000 files); given `paths`, the only ones
        the checkout wrote (no sparse patterns), just those are looked at.
        """
        if paths is not None:
            missing = [name for name in paths if not os.path.lexists(path / name)]
        else:
            out = self.in_worktree("checkout", path, "ls-files", "-z", "--deleted", deadline=deadline)
            missing = [name for name in out.split("\0") if name]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise SyncError("checkout", f"git did not write {missing[0]!r}{more} (a name too long for "
                                        "the filesystem?); the tree is not published")

    def recorded_head(self, path: Path) -> str | None:
        """The commit a tree's HEAD names, read from its admin directory: no git process,
        cheap enough for every poll. None for a branch (someone committed in the tree) or
        a tree with no record."""
        try:
            text = (self.worktree_admin_dir(path) / "HEAD").read_text().strip()
        except (GitError, OSError):
            return None
        return text if is_full_sha(text) else None

    def worktree_is_clean(self, path: Path) -> bool:
        try:
            out = self.in_worktree("verify", path, "status", "--porcelain",
                                   "--untracked-files=no", "--ignore-submodules")
        except GitError:
            return False
        return out.strip() == ""

    # -- a tree's own files under .git/worktrees/<name> ------------------------------

    def set_sparse_patterns(self, tree: Path, text: str) -> None:
        info = self.worktree_admin_dir(tree) / "info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "sparse-checkout").write_text(text)

    def sparse_patterns(self, tree: Path) -> str | None:
        """The patterns the tree was checked out with, None for none (OSError: no record)."""
        try:
            return (self.worktree_admin_dir(tree) / "info" / "sparse-checkout").read_text()
        except FileNotFoundError:
            return None

    def copy_index(self, source: Path, dest: Path) -> None:
        """Give `dest` the index (and sparse patterns) of `source`, whose files it shares."""
        source_admin, dest_admin = self.worktree_admin_dir(source), self.worktree_admin_dir(dest)
        shutil.copy2(source_admin / "index", dest_admin / "index")
        sparse = source_admin / "info" / "sparse-checkout"
        if sparse.exists():
            (dest_admin / "info").mkdir(exist_ok=True)
            shutil.copy2(sparse, dest_admin / "info" / "sparse-checkout")

    # -- submodules: git keeps their repositories per worktree ------------------------

    def has_submodule_repositories(self, tree: Path) -> bool:
        return (self.worktree_admin_dir(tree) / "modules").is_dir()

    def update_submodules(self, tree: Path, *, recursive: bool, depth: int,
                          deadline: Deadline | None) -> None:
        """Check out the commit's submodules; .git/config keeps the URL each had when first
        seen, so align it with this commit's .gitmodules first."""
        nested = ["--recursive"] if recursive else []
        self.sync_submodule_urls(tree, recursive=recursive, deadline=deadline)
        args = ["submodule", "--quiet", "update", "--init", "--checkout", "--force", *nested]
        if depth > 0:
            args.append(f"--depth={depth}")
        self.in_worktree("submodules", tree, *args, deadline=deadline)

    def sync_submodule_urls(self, tree: Path, *, recursive: bool, deadline: Deadline | None) -> None:
        nested = ["--recursive"] if recursive else []
        self.in_worktree("submodules", tree, "submodule", "--quiet", "sync", *nested,
                         deadline=deadline)

    def copy_submodule_repositories(self, source: Path, dest: Path) -> bool:
        """Start `dest`'s submodule repositories as hard-linked copies of `source`'s. git
        replaces files rather than writing into them, so `source`'s are never changed
        through a link. False, with nothing left behind, when there are none to copy."""
        from_dir = self.worktree_admin_dir(source) / "modules"
        to_dir = self.worktree_admin_dir(dest) / "modules"
        if not from_dir.is_dir() or to_dir.exists():
            return False
        try:
            to_dir.mkdir()
            hardlink_tree(from_dir, to_dir)
        except (OSError, subprocess.CalledProcessError):
            shutil.rmtree(to_dir, ignore_errors=True)
            raise
        return True

    def submodule_configs(self, tree: Path) -> list[Path]:
        """The config file of each submodule repository git keeps for the tree, at every depth."""
        modules = self.worktree_admin_dir(tree) / "modules"
        return [config for config in sorted(modules.rglob("config")) if (config.parent / "HEAD").is_file()]

    def submodule_urls(self, tree: Path) -> dict[Path, str | None]:
        """remote.origin.url of each submodule repository of the tree, at every depth."""
        modules = self.worktree_admin_dir(tree) / "modules"
        return {config.parent.relative_to(modules): self.get_config("remote.origin.url", file=config)
                for config in self.submodule_configs(tree)}

    def unpin_submodules(self, tree: Path) -> None:
        """Drop core.worktree, which names the tree's current path, from the submodules'
        git dirs before the tree is renamed: git then finds each submodule's tree from
        the .git file inside it, which stays right wherever the tree goes."""
        for config in self.submodule_configs(tree):
            if _WORKTREE_SETTING.search(config.read_text()):
                self.runner.run("submodules", ["config", "--file", str(config),
                                               "--unset-all", "core.worktree"])
