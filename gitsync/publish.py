"""The layout on the shared volume: one worktree per commit, one symlink to the newest.

    <root>/.git                    the bare repository
    <root>/.worktrees/<sha>/       a complete checkout per published commit
    <root>/.worktrees/.build-<sha> a tree being built (never linked to)
    <root>/.worktrees/.spare       a hard-linked copy of the published tree, made
                                   ahead of time so the next publish writes only
                                   the files that changed
    <root>/<link> -> .worktrees/<sha>   relative, swapped by rename
    <root>/.gitsync/               what rollouts keep (gitsync.rollout); never touched here

This module speaks of trees and the link only; every file under .git is
`Repository`'s. A published tree is never written again: git replaces a file by
unlinking it and creating a new one, so a spare that shares inodes with the
published tree leaves that tree's content untouched while git updates the spare.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from .files import (
    exchange,
    hardlink_tree,
    write_atomically,  # noqa: F401  (hooks import it from here)
)
from .git import Deadline, GitError, is_full_sha
from .model import SyncError
from .repository import Repository

log = logging.getLogger(__name__)

SPARE = ".spare"
BUILD_PREFIX = ".build-"
TRASH_PREFIX = ".trash-"
PREVIOUS = "previous"   # the repository's state key for the commit published before this one


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
            self.move_aside()
        target = os.path.relpath(self.tree(sha), self.link.parent)
        temp = self.link.parent / f".{self.link.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            os.symlink(target, temp)
            os.replace(temp, self.link)
        except OSError as err:
            temp.unlink(missing_ok=True)
            raise SyncError("publish", f"cannot swap {self.link}: {err.strerror}") from err

    def move_aside(self) -> Path:
        """Something not ours (a directory or file) stands where the link goes: rename it
        beside the link, never delete it (a user's data), and say where it went."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        kept = self.link.parent / f".{self.link.name}.kept-{stamp}-{uuid.uuid4().hex[:6]}"
        try:
            os.rename(self.link, kept)
        except OSError as err:
            raise SyncError("publish", f"{self.link} exists and is not a symlink, and cannot be moved "
                                       f"aside: {err.strerror}") from err
        log.warning("%s was not a symlink; moved it to %s (nothing in it was removed) and publishing",
                    self.link, kept)
        return kept

    def remove_temporary_links(self) -> None:
        if not self.link.parent.is_dir():
            return
        for entry in self.link.parent.glob(f".{self.link.name}.tmp-*"):
            if entry.is_symlink():
                entry.unlink(missing_ok=True)


class Publisher:
    """Builds trees, publishes them, and removes the ones nobody may read any more.

    `publish(sha)` of a commit whose tree is on disk and sound only swaps the link,
    so a rollback to an earlier tree rebuilds nothing.
    """

    def __init__(self, repo: Repository, layout: Layout, *, stale_timeout: float,
                 sparse_patterns: str | None = None, submodules: str = "off", depth: int = 1):
        self.repo = repo
        self.layout = layout
        self.stale_timeout = stale_timeout
        self.sparse_patterns = sparse_patterns
        self.submodules = submodules
        self.depth = depth
        self._spare_of: str | None = None

    # -- what is on the volume --------------------------------------------------------

    def published_sha(self) -> str | None:
        return self.layout.published_sha()

    def previous_sha(self) -> str | None:
        """The commit published before the current one (kept across restarts)."""
        return self.repo.read_state(PREVIOUS)

    def tree(self, sha: str) -> Path:
        """Where the tree of `sha` is (or would be)."""
        return self.layout.tree(sha)

    def tree_exists(self, sha: str) -> bool:
        """The cheap check each poll makes: someone may have removed the tree by hand."""
        return (self.layout.tree(sha) / ".git").is_file()

    def tree_head_matches(self, sha: str) -> bool:
        """The check each poll makes too: no one moved the tree's HEAD (a commit made in it)."""
        return self.repo.recorded_head(self.layout.tree(sha)) == sha

    def tree_is_sound(self, sha: str) -> bool:
        """A full check: the tree is a checkout of `sha` with no local change."""
        tree = self.layout.tree(sha)
        return (tree.is_dir() and self.repo.worktree_head(tree) == sha
                and self.repo.worktree_is_clean(tree))

    # -- start-up (the steps of gitsync.recover) ---------------------------------------

    def make_room(self) -> None:
        self.layout.worktrees.mkdir(parents=True, exist_ok=True)
        self.layout.link.parent.mkdir(parents=True, exist_ok=True)

    def remove_temporary_links(self) -> None:
        self.layout.remove_temporary_links()

    def discard_unfinished(self) -> list[Path]:
        """Remove every entry that is not a complete tree (.build-*, .trash-*, .spare);
        return the complete ones."""
        trees = []
        for entry in sorted(self.layout.worktrees.iterdir()):
            if is_full_sha(entry.name):
                trees.append(entry)
            else:
                self._discard(entry)
        return trees

    def repair_trees(self) -> None:
        """Re-link trees a kill left moved but unrecorded. Before any prune: prune would
        drop the record of a tree moved just before a kill."""
        trees = [entry for entry in sorted(self.layout.worktrees.iterdir()) if is_full_sha(entry.name)]
        self.repo.repair_worktrees([tree for tree in trees if self.repo.has_admin_dir(tree)])

    # -- publishing -------------------------------------------------------------

    def publish(self, sha: str, deadline: Deadline) -> None:
        """Make `sha` the published tree: build it if needed, then swap the link."""
        previous = self.layout.published_sha()
        tree = self.layout.tree(sha)
        if sha == previous:
            self._rebuild_in_place(sha, deadline)
        elif not (tree.is_dir() and self.tree_is_sound(sha)):
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
        """A full checkout into a private name, moved into place once complete; a build that
        fails is discarded at once (on a full volume, it holds the space the next one needs)."""
        build = self.layout.worktrees / f"{BUILD_PREFIX}{sha}"
        try:
            self._check_out_fresh(sha, build, dest, deadline, reuse)
        except BaseException:
            if build.exists():
                self._discard(build)
                self._prune_quietly()
            raise

    def _prune_quietly(self) -> None:
        try:
            self.repo.prune_worktrees()
        except SyncError as err:
            log.warning("could not prune the record of a failed build: %s", err)

    def _check_out_fresh(self, sha: str, build: Path, dest: Path, deadline: Deadline, reuse: bool) -> None:
        if build.exists():
            self._discard(build)
        # A tree removed by hand is still registered; git refuses its name until pruned.
        self.repo.prune_worktrees()
        self.repo.add_worktree(build, sha, checkout=False, deadline=deadline)
        if self.sparse_patterns is not None:
            self.repo.set_sparse_patterns(build, self.sparse_patterns)
        self.repo.reset_hard(build, deadline)
        self.repo.verify_checkout(build, deadline)
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
            self.repo.move_worktree(build, dest, deadline)

    def _build_from_spare(self, sha: str, deadline: Deadline) -> None:
        """Let git rewrite only what changed in a hard-linked copy of the published tree."""
        spare = self.layout.worktrees / SPARE
        base, self._spare_of = self._spare_of, None
        assert base is not None  # _build uses the spare only when it holds the published commit
        if self.sparse_patterns is None:
            # Touch and check only what changed: cost grows with the change, not the tree.
            written = self.repo.switch(spare, base, sha, deadline)
            self.repo.verify_checkout(spare, deadline, paths=written)
        else:
            # Paths outside the sparse set are rightly absent; ls-files knows which.
            self.repo.checkout(spare, sha, deadline)
            self.repo.verify_checkout(spare, deadline)
        self._update_submodules(spare, deadline)
        self.repo.move_worktree(spare, self.layout.tree(sha), deadline)

    def _rebuild_in_place(self, sha: str, deadline: Deadline) -> None:
        """The link already names `sha` but its tree is gone or damaged: build it again."""
        tree = self.layout.tree(sha)
        if tree.is_dir() and (self.tree_is_sound(sha) or self._register_again(sha, deadline)):
            return
        log.warning("published tree %s is missing or damaged; rebuilding it", sha)
        self._build_fresh(sha, tree, deadline)

    def _register_again(self, sha: str, deadline: Deadline) -> bool:
        """Keep a tree that lost git's record of it with a re-cloned repository, its files
        untouched (a reader may sit in them): True if it then checks out clean."""
        try:
            admin = self.repo.register_worktree(self.layout.tree(sha), sha, deadline)
        except (GitError, OSError):
            return False
        if self.tree_is_sound(sha):
            log.info("published tree %s registered again, its files untouched", sha)
            return True
        self.repo.forget_admin_dir(admin)
        return False

    def _swap_into_place(self, build: Path, dest: Path) -> None:
        """Exchange a fresh build with a damaged tree of the same name, with no gap for readers."""
        try:
            old_admin = self.repo.worktree_admin_dir(dest)
        except (GitError, OSError):
            old_admin = None
        if exchange(build, dest):
            self._discard(build)
        else:
            self._discard(dest)
            os.rename(build, dest)
        if old_admin is not None and old_admin != self.repo.worktree_admin_dir(dest):
            self.repo.forget_admin_dir(old_admin)
        self.repo.repair_worktrees([dest])
        self.repo.prune_worktrees()

    def _sparse_set_matches(self, tree: Path) -> bool:
        """Whether `tree` was checked out with today's patterns (or, like today, without any)."""
        try:
            return self.repo.sparse_patterns(tree) == self.sparse_patterns
        except (GitError, OSError):
            return False

    def _update_submodules(self, tree: Path, deadline: Deadline,
                           reused: dict[Path, str | None] | None = None) -> None:
        """Check the submodules out. `reused`: the repositories copied from the published
        tree, with their URLs; if the commit moved one elsewhere, raise _SubmoduleMoved,
        since git may have fetched from the old place."""
        if self.submodules == "off" or not (tree / ".gitmodules").exists():
            return
        recursive = self.submodules == "recursive"
        self.repo.update_submodules(tree, recursive=recursive, depth=self.depth, deadline=deadline)
        if reused:
            # Only now, with every level checked out, does sync reach the nested ones.
            self.repo.sync_submodule_urls(tree, recursive=recursive, deadline=deadline)
            now = self.repo.submodule_urls(tree)
            moved = [path for path, url in reused.items() if path in now and now[path] != url]
            if moved:
                raise _SubmoduleMoved(f"submodule {moved[0].name} has a new URL")
        self.repo.unpin_submodules(tree)

    def _reuse_submodule_repositories(self, tree: Path) -> dict[Path, str | None]:
        """Start the new tree's submodule repositories as copies of the published tree's, so
        `submodule update` fetches only commits it lacks instead of cloning each submodule
        again. Returns each copied repository's URL (see _update_submodules); {} when none."""
        sha = self.layout.published_sha()
        if self.submodules == "off" or sha is None or not self.tree_exists(sha):
            return {}
        try:
            if not self.repo.copy_submodule_repositories(self.layout.tree(sha), tree):
                return {}
            return self.repo.submodule_urls(tree)
        except (GitError, OSError, subprocess.CalledProcessError) as err:
            log.warning("could not reuse the submodules of %s, cloning them again: %s", sha, err)
            return {}

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
            hardlink_tree(source, spare)
            self.repo.copy_index(source, spare)
            # Record fresh stat data now, off the publish path, so the next checkout trusts it.
            self.repo.refresh_index(spare, step="spare")
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

    # -- clean-up ----------------------------------------------------------------

    def _remember_left(self, sha: str) -> None:
        """Stamp the tree the link left with the time, on disk (its directory's mtime, as
        git-sync does), so --stale-worktree-timeout holds across restarts and --one-time runs."""
        try:
            os.utime(self.layout.tree(sha))
        except OSError as err:
            log.warning("cannot stamp the tree of %s as left: %s", sha, err.strerror)
        self.repo.write_state(PREVIOUS, sha)

    def remove_stale_trees(self, keep: Iterable[str] = (), *, at_once: bool = False) -> list[str]:
        """Remove trees left longer ago than the stale timeout. Never the published one, the
        previous one, or any commit in `keep` (e.g. trees an app still runs in). `at_once`:
        the app says which trees it runs in, and `keep` holds them: the others go now. The
        time a tree was left is its directory's mtime, stamped when the link left it, so
        it holds across restarts."""
        kept = {self.layout.published_sha(), *keep}
        if not at_once:
            kept.add(self.previous_sha())
        now = time.time()
        removed = []
        for entry in sorted(self.layout.worktrees.iterdir()):
            sha = entry.name
            if not is_full_sha(sha) or sha in kept:
                continue
            try:
                left = entry.lstat().st_mtime
            except FileNotFoundError:
                continue
            if at_once or now - left >= self.stale_timeout:
                self._discard(entry)
                removed.append(sha)
        if removed:
            self.repo.prune_worktrees()
            log.info("removed %d old worktree(s): %s", len(removed), ", ".join(s[:12] for s in removed))
        return removed

    def discard_strays(self) -> list[str]:
        """Remove what is no complete tree under .worktrees (a file, a directory not named for
        a commit, a build a failed sync left, trash), at every sync as git-sync does, not
        only at start. The spare stays; nothing is being built while this runs (after the
        cycle)."""
        strays = []
        for entry in sorted(self.layout.worktrees.iterdir()):
            if entry.name == SPARE or (is_full_sha(entry.name) and entry.is_dir()
                                       and not entry.is_symlink()):
                continue
            log.info("removing %s: not a complete tree", entry)
            self._discard(entry)
            strays.append(entry.name)
        return strays

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
