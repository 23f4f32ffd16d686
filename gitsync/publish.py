"""The layout on the shared volume: one worktree per commit, one symlink to the newest.

    <root>/.git                    the bare repository
    <root>/.worktrees/<sha>/       a complete checkout per published commit
    <root>/.worktrees/.build-<sha> a tree being built (never linked to)
    <root>/.worktrees/.spare       a hard-linked copy of the published tree, made
                                   ahead of time so the next publish writes only
                                   the files that changed
    <root>/<link> -> .worktrees/<sha>   relative, swapped by rename

A published tree is never written again: git replaces a file by unlinking it and
creating a new one, so a spare that shares inodes with the published tree leaves
that tree's content untouched while git updates the spare.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from .git import Deadline, GitError, Repository, is_full_sha

log = logging.getLogger(__name__)

SPARE = ".spare"
BUILD_PREFIX = ".build-"
TRASH_PREFIX = ".trash-"
PREVIOUS_FILE = "gitsync-previous"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_WORKTREE_SETTING = re.compile(r"^\s*worktree\s*=", re.MULTILINE)


class _SubmoduleMoved(Exception):
    """A reused submodule repository had another URL than the new commit gives it."""


class Layout:
    """Paths on the volume and the link that readers follow."""

    def __init__(self, root: Path, link: Path):
        self.root = root
        self.worktrees = root / ".worktrees"
        self.link = link

    def tree(self, sha: str) -> Path:
        return self.worktrees / sha

    def published_sha(self) -> str | None:
        try:
            target = os.readlink(self.link)
        except (FileNotFoundError, OSError):
            return None
        name = Path(target).name
        return name if is_full_sha(name) else None

    def point_link_at(self, sha: str) -> None:
        """Swap the link to `sha` atomically: a new temporary link renamed over the old."""
        if self.link.exists() and not self.link.is_symlink():
            raise GitError("publish", f"{self.link} exists and is not a symlink; not replacing it")
        target = os.path.relpath(self.tree(sha), self.link.parent)
        temp = self.link.parent / f".{self.link.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            os.symlink(target, temp)
            os.replace(temp, self.link)
        except OSError as err:
            temp.unlink(missing_ok=True)
            raise GitError("publish", f"cannot swap {self.link}: {err.strerror}") from err

    def remove_temporary_links(self) -> None:
        if not self.link.parent.is_dir():
            return
        for entry in self.link.parent.glob(f".{self.link.name}.tmp-*"):
            if entry.is_symlink():
                entry.unlink(missing_ok=True)


class Publisher:
    """Builds trees, publishes them, and removes the ones nobody may read any more."""

    def __init__(self, repo: Repository, layout: Layout, *, stale_timeout: float,
                 sparse_patterns: str | None = None, submodules: str = "off", depth: int = 1):
        self.repo = repo
        self.layout = layout
        self.stale_timeout = stale_timeout
        self.sparse_patterns = sparse_patterns
        self.submodules = submodules
        self.depth = depth
        self._left_at: dict[str, float] = {}
        self._spare_of: str | None = None

    # -- start-up ---------------------------------------------------------------

    def recover(self) -> None:
        """Undo what a killed run left half-done; keep every complete tree."""
        self.layout.worktrees.mkdir(parents=True, exist_ok=True)
        self.layout.link.parent.mkdir(parents=True, exist_ok=True)
        self.layout.remove_temporary_links()
        trees = []
        for entry in sorted(self.layout.worktrees.iterdir()):
            if is_full_sha(entry.name):
                trees.append(entry)
            else:
                self._discard(entry)
        # Repair before prune: prune would drop the admin dir of a tree moved just before a kill.
        self.repo.repair_worktrees([t for t in trees if self._admin_dir_exists(t)])
        self._unlock_missing_worktrees()
        self.repo.prune_worktrees()

    def _unlock_missing_worktrees(self) -> None:
        """Let prune take entries a killed `git worktree add` left locked ("initializing").

        git refuses to add a path again while such an entry stands ("a missing but locked
        worktree"); a worktree whose directory is gone is in no one's use.
        """
        admin_root = self.repo.git_dir / "worktrees"
        if not admin_root.is_dir():
            return
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

    def _admin_dir_exists(self, tree: Path) -> bool:
        try:
            return self.repo.worktree_admin_dir(tree).is_dir()
        except (GitError, OSError):
            return False

    def published_tree_is_sound(self, sha: str) -> bool:
        """A full check, for start-up: the tree is a checkout of `sha` with no local change."""
        tree = self.layout.tree(sha)
        return (tree.is_dir() and self.repo.worktree_head(tree) == sha
                and self.repo.worktree_is_clean(tree))

    def tree_exists(self, sha: str) -> bool:
        """The cheap check each poll makes: someone may have removed the tree by hand."""
        return (self.layout.tree(sha) / ".git").is_file()

    # -- publishing -------------------------------------------------------------

    def publish(self, sha: str, deadline: Deadline) -> None:
        """Make `sha` the published tree: build it if needed, then swap the link."""
        previous = self.layout.published_sha()
        tree = self.layout.tree(sha)
        if sha == previous:
            self._rebuild_in_place(sha, deadline)
        elif not (tree.is_dir() and self.published_tree_is_sound(sha)):
            if tree.exists():
                self._discard(tree)
            self._build(sha, deadline)
        self.layout.point_link_at(sha)
        if previous and previous != sha:
            self._remember_left(previous)
        log.info("published %s at %s", sha, self.layout.link)

    def _build(self, sha: str, deadline: Deadline) -> None:
        if self._spare_of is not None and self._spare_of == self.layout.published_sha():
            try:
                self._build_from_spare(sha, deadline)
                return
            except GitError as err:
                log.warning("fast build from the previous tree failed, checking out in full: %s", err)
                self._discard(self.layout.worktrees / SPARE)
        self._build_fresh(sha, self.layout.tree(sha), deadline)

    def _build_fresh(self, sha: str, dest: Path, deadline: Deadline, reuse: bool = True) -> None:
        """A full checkout into a private name, moved into place once complete."""
        build = self.layout.worktrees / f"{BUILD_PREFIX}{sha}"
        if build.exists():
            self._discard(build)
        # A tree removed by hand is still registered; git refuses its name until pruned.
        self.repo.prune_worktrees()
        self.repo.add_worktree(build, sha, checkout=False, deadline=deadline)
        self._write_sparse_patterns(build)
        self.repo.in_worktree("checkout", build, "reset", "--hard", "--quiet", "HEAD",
                              deadline=deadline)
        reused = self._reuse_submodule_repositories(build) if reuse else {}
        try:
            self._update_submodules(build, deadline, reused)
        except _SubmoduleMoved as moved:
            log.info("%s; cloning the submodules afresh", moved)
            self._discard(build)
            self._build_fresh(sha, dest, deadline, reuse=False)
            return
        if dest.exists():
            self._swap_into_place(build, dest)
        else:
            self._move_tree(build, dest, deadline)

    def _build_from_spare(self, sha: str, deadline: Deadline) -> None:
        """Let git rewrite only what changed in a hard-linked copy of the published tree."""
        spare = self.layout.worktrees / SPARE
        self._spare_of = None
        self.repo.in_worktree("checkout", spare, "checkout", "--quiet", "--detach", sha, "--",
                              deadline=deadline)
        self._update_submodules(spare, deadline)
        self._move_tree(spare, self.layout.tree(sha), deadline)

    def _rebuild_in_place(self, sha: str, deadline: Deadline) -> None:
        """The link already names `sha` but its tree is gone or damaged: build it again."""
        tree = self.layout.tree(sha)
        if tree.is_dir() and (self.published_tree_is_sound(sha) or self._register_again(sha, deadline)):
            return
        log.warning("published tree %s is missing or damaged; rebuilding it", sha)
        self._build_fresh(sha, tree, deadline)

    def _register_again(self, sha: str, deadline: Deadline) -> bool:
        """Give back git's record of a tree that lost it with a re-cloned repository.

        The files stay as they are (a reader may sit in them); only the admin directory
        the tree's .git file names is written again, with an index read from the commit.
        False, with nothing left behind, unless the tree then checks out clean.
        """
        tree = self.layout.tree(sha)
        try:
            admin = self.repo.worktree_admin_dir(tree)
        except (GitError, OSError):
            return False
        if (admin.exists() or admin.parent.resolve() != (self.repo.git_dir / "worktrees").resolve()
                or not self.repo.has_commit(sha)):
            return False
        admin.mkdir(parents=True)
        (admin / "gitdir").write_text(f"{tree / '.git'}\n")
        (admin / "commondir").write_text("../..\n")
        (admin / "HEAD").write_text(f"{sha}\n")
        try:
            self.repo.in_worktree("recover", tree, "read-tree", sha, deadline=deadline)
            self.repo.in_worktree("recover", tree, "update-index", "-q", "--refresh", deadline=deadline)
        except GitError:
            pass
        if self.published_tree_is_sound(sha):
            log.info("published tree %s registered again, its files untouched", sha)
            return True
        shutil.rmtree(admin, ignore_errors=True)
        return False

    def _swap_into_place(self, build: Path, dest: Path) -> None:
        """Exchange a fresh build with a damaged tree of the same name, with no gap for readers."""
        try:
            old_admin = self.repo.worktree_admin_dir(dest)
        except (GitError, OSError):
            old_admin = None
        if _exchange(build, dest):
            self._discard(build)
        else:
            self._discard(dest)
            os.rename(build, dest)
        if old_admin is not None and old_admin != self.repo.worktree_admin_dir(dest):
            shutil.rmtree(old_admin, ignore_errors=True)
        self.repo.repair_worktrees([dest])
        self.repo.prune_worktrees()

    def _write_sparse_patterns(self, tree: Path) -> None:
        if self.sparse_patterns is None:
            return
        info = self.repo.worktree_admin_dir(tree) / "info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "sparse-checkout").write_text(self.sparse_patterns)

    def _sparse_set_matches(self, tree: Path) -> bool:
        """Whether `tree` was checked out with today's patterns (or, like today, without any)."""
        try:
            patterns = (self.repo.worktree_admin_dir(tree) / "info" / "sparse-checkout").read_text()
        except FileNotFoundError:
            patterns = None
        except (GitError, OSError):
            return False
        return patterns == self.sparse_patterns

    def _update_submodules(self, tree: Path, deadline: Deadline,
                           reused: dict[Path, str | None] | None = None) -> None:
        """Check the submodules out. `reused`: the repositories copied from the published
        tree, with their URLs; if the commit moved one elsewhere, raise _SubmoduleMoved,
        since git may have fetched from the old place."""
        if self.submodules == "off" or not (tree / ".gitmodules").exists():
            return
        recursive = ["--recursive"] if self.submodules == "recursive" else []
        # .git/config keeps the URL each submodule had when first seen: align it with
        # this commit's .gitmodules before cloning.
        self.repo.in_worktree("submodules", tree, "submodule", "--quiet", "sync", *recursive,
                              deadline=deadline)
        args = ["submodule", "--quiet", "update", "--init", "--checkout", "--force", *recursive]
        if self.depth > 0:
            args.append(f"--depth={self.depth}")
        self.repo.in_worktree("submodules", tree, *args, deadline=deadline)
        if reused:
            # Only now, with every level checked out, does sync reach the nested ones.
            self.repo.in_worktree("submodules", tree, "submodule", "--quiet", "sync", *recursive,
                                  deadline=deadline)
            now = self._submodule_urls(tree)
            moved = [path for path, url in reused.items() if path in now and now[path] != url]
            if moved:
                raise _SubmoduleMoved(f"submodule {moved[0].name} has a new URL")
        self._unpin_submodules(tree)

    def _reuse_submodule_repositories(self, tree: Path) -> dict[Path, str | None]:
        """Start the new tree's submodule repositories as hard-linked copies of the published
        tree's, so `submodule update` fetches only commits it lacks instead of cloning each
        submodule again (git keeps them per worktree). git replaces files rather than writing
        into them, so the published tree's repositories are never changed through a link.
        Returns each copied repository's URL (see _update_submodules); {} when none."""
        sha = self.layout.published_sha()
        if self.submodules == "off" or sha is None or not self.tree_exists(sha):
            return {}
        source = self.repo.worktree_admin_dir(self.layout.tree(sha)) / "modules"
        dest = self.repo.worktree_admin_dir(tree) / "modules"
        if not source.is_dir() or dest.exists():
            return {}
        try:
            dest.mkdir()
            _hardlink_tree(source, dest)
            return self._submodule_urls(tree)
        except (OSError, subprocess.CalledProcessError) as err:
            log.warning("could not reuse the submodules of %s, cloning them again: %s", sha, err)
            shutil.rmtree(dest, ignore_errors=True)
            return {}

    def _submodule_urls(self, tree: Path) -> dict[Path, str | None]:
        """remote.origin.url of each submodule repository of the tree, at every depth."""
        modules = self.repo.worktree_admin_dir(tree) / "modules"
        return {config.parent.relative_to(modules): self.repo.get_config("remote.origin.url", file=config)
                for config in self._submodule_configs(tree)}

    def _submodule_configs(self, tree: Path) -> list[Path]:
        """The config file of each submodule repository git keeps for the tree, at every depth."""
        modules = self.repo.worktree_admin_dir(tree) / "modules"
        return [config for config in sorted(modules.rglob("config")) if (config.parent / "HEAD").is_file()]

    def _unpin_submodules(self, tree: Path) -> None:
        """Drop core.worktree from the submodules' git dirs before the tree is renamed.

        It names the tree's current path; without it git finds each submodule's
        tree from the .git file inside it, which stays right wherever the tree goes.
        """
        for config in self._submodule_configs(tree):
            if _WORKTREE_SETTING.search(config.read_text()):
                self.repo.runner.run("submodules", ["config", "--file", str(config),
                                                    "--unset-all", "core.worktree"])

    def _move_tree(self, source: Path, dest: Path, deadline: Deadline) -> None:
        """git refuses to move a worktree holding submodules; such a tree is renamed by hand."""
        if not (self.repo.worktree_admin_dir(source) / "modules").is_dir():
            self.repo.move_worktree(source, dest, deadline)
            return
        os.rename(source, dest)
        self.repo.repair_worktrees([dest])

    # -- the spare ---------------------------------------------------------------

    def prepare_spare(self) -> None:
        """Hard-link the published tree into .spare, with its index, ahead of the next commit."""
        sha = self.layout.published_sha()
        spare = self.layout.worktrees / SPARE
        self._spare_of = None
        if spare.exists():
            self._discard(spare)
        if sha is None or not self.tree_exists(sha) or self._has_submodules(sha):
            return
        if not self._sparse_set_matches(self.layout.tree(sha)):
            return   # a copy would keep the old sparse set; the next tree is checked out in full
        source = self.layout.tree(sha)
        try:
            self.repo.add_worktree(spare, sha, checkout=False, deadline=None)
            _hardlink_tree(source, spare)
            self._copy_admin_files(source, spare)
            # Record fresh stat data now, off the publish path, so the next checkout trusts it.
            self.repo.in_worktree("spare", spare, "update-index", "-q", "--refresh")
        except (GitError, OSError, subprocess.CalledProcessError) as err:
            log.warning("could not prepare the next tree ahead of time: %s", err)
            self._discard(spare)
            return
        self._spare_of = sha

    def spare_is_ready(self) -> bool:
        sha = self.layout.published_sha()
        return sha is None or self._spare_of == sha or self._has_submodules(sha)

    def _has_submodules(self, sha: str) -> bool:
        return self.submodules != "off" and (self.layout.tree(sha) / ".gitmodules").exists()

    def _copy_admin_files(self, source: Path, spare: Path) -> None:
        source_admin = self.repo.worktree_admin_dir(source)
        spare_admin = self.repo.worktree_admin_dir(spare)
        shutil.copy2(source_admin / "index", spare_admin / "index")
        sparse = source_admin / "info" / "sparse-checkout"
        if sparse.exists():
            (spare_admin / "info").mkdir(exist_ok=True)
            shutil.copy2(sparse, spare_admin / "info" / "sparse-checkout")

    # -- clean-up ----------------------------------------------------------------

    def _remember_left(self, sha: str) -> None:
        self._left_at[sha] = time.monotonic()
        write_atomically(self.repo.git_dir / PREVIOUS_FILE, sha)

    def _previous_sha(self) -> str | None:
        try:
            return (self.repo.git_dir / PREVIOUS_FILE).read_text().strip() or None
        except FileNotFoundError:
            return None

    def remove_stale_trees(self) -> list[str]:
        """Remove trees left longer ago than the stale timeout, keeping current and previous."""
        keep = {self.layout.published_sha(), self._previous_sha()}
        now = time.monotonic()
        removed = []
        for entry in sorted(self.layout.worktrees.iterdir()):
            sha = entry.name
            if not is_full_sha(sha) or sha in keep:
                continue
            left = self._left_at.setdefault(sha, now)
            if now - left >= self.stale_timeout:
                self._discard(entry)
                self._left_at.pop(sha, None)
                removed.append(sha)
        if removed:
            self.repo.prune_worktrees()
            log.info("removed %d old worktree(s): %s", len(removed), ", ".join(s[:12] for s in removed))
        return removed

    def _discard(self, path: Path) -> None:
        """Rename away first, so a half-deleted tree never sits under a real name."""
        if not path.exists() and not path.is_symlink():
            return
        if path.name.startswith(TRASH_PREFIX):
            trash = path
        else:
            trash = path.with_name(f"{TRASH_PREFIX}{path.name.lstrip('.')}-{uuid.uuid4().hex[:8]}")
            os.rename(path, trash)
        if trash.is_dir() and not trash.is_symlink():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink(missing_ok=True)


def _hardlink_tree(source: Path, dest: Path) -> None:
    """Hard-link every file of `source` (but its .git link) into `dest`, in C speed via cp."""
    entries = [str(p) for p in source.iterdir() if p.name != ".git"]
    for start in range(0, len(entries), 1000):
        subprocess.run(["cp", "-al", "--no-dereference", "-t", str(dest), "--",
                        *entries[start:start + 1000]],
                       check=True, capture_output=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def write_atomically(path: Path, text: str) -> None:
    """Readers of `path` see the old text or the new, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    temp.write_text(text)
    os.replace(temp, path)
