"""Bring <root> back after any earlier run, however it ended: one ordered list of steps.

A killed run can leave lock files, a damaged repository, half-built trees, trash,
temporary links, a tree moved but not yet recorded, records of trees that are gone.
`recover()` runs the steps of `STEPS` in order, each a short function taking the
`Recovery` it fills in. Adding a step is adding one function and one line to STEPS;
a step that fails raises SyncError naming its step and stops the start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from .config import Config
from .model import SyncError
from .publish import Publisher
from .repository import Repository

log = logging.getLogger(__name__)

DEPTH_KEY = "gitsync.depth"  # in the repository's config: the --depth of the last fetch


@dataclass
class Recovery:
    """What the steps work on, and what they found out for the engine."""

    config: Config
    repo: Repository
    publisher: Publisher
    depth_changed: bool = False        # the history was fetched with another --depth
    published: str | None = None       # the published commit, its tree sound
    published_damaged: bool = False    # the link names a tree that is missing or damaged


def root_is_a_directory(r: Recovery) -> None:
    """Everything lives under --root; a file there is a setting to fix, not to remove."""
    root = r.config.root
    if root.exists() and not root.is_dir():
        raise SyncError("init", f"--root {root} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)


def clear_stale_git_locks(r: Recovery) -> None:
    """A lock a killed git left blocks every later fetch (no git of ours runs yet)."""
    r.repo.clear_stale_locks()


def remove_temporary_objects(r: Recovery) -> None:
    """Objects and packs a killed or failed fetch was writing; on a full volume they hold
    the space the next fetch needs."""
    r.repo.remove_temporary_objects()


def reinit_damaged_repository(r: Recovery) -> None:
    """A repository git cannot read is fetched again; the trees' files stay as they are."""
    if not r.repo.exists():
        r.repo.reinit()
    elif not r.repo.is_healthy():
        log.warning("the repository in %s is damaged; starting it again", r.config.root)
        r.repo.reinit()


def apply_sparse_setting(r: Recovery) -> None:
    """--sparse-checkout-file may have been added or dropped since the last run."""
    apply_sparse(r.config, r.repo)


def check_depth(r: Recovery) -> None:
    """A --depth changed across a restart reshapes the history at the first sync."""
    if r.config.depth == 0:
        r.depth_changed = r.repo.is_shallow()
    else:
        r.depth_changed = r.repo.get_config(DEPTH_KEY) != str(r.config.depth)


def make_room_for_trees(r: Recovery) -> None:
    """The trees' folder and the link's folder exist before anything goes there."""
    r.publisher.make_room()


def remove_temporary_links(r: Recovery) -> None:
    """A kill between symlink() and rename() leaves a temporary link beside the link."""
    r.publisher.remove_temporary_links()


def discard_unfinished_trees(r: Recovery) -> None:
    """.build-*, .trash-* and .spare are never linked to; only complete trees stay."""
    r.publisher.discard_unfinished()


def repair_moved_worktrees(r: Recovery) -> None:
    """A kill inside a move leaves a tree whose record names its old path (before prune)."""
    r.publisher.repair_trees()


def unlock_missing_worktrees(r: Recovery) -> None:
    """A killed `worktree add` leaves a locked record prune would keep, blocking its name."""
    r.repo.unlock_missing_worktrees()


def prune_worktrees(r: Recovery) -> None:
    """Records of trees that are gone would make git refuse their names."""
    r.repo.prune_worktrees()


def check_published_tree(r: Recovery) -> None:
    """Serve on from a sound published tree; a damaged one is rebuilt at the first sync."""
    sha = r.publisher.published_sha()
    if sha is None:
        return
    if r.publisher.tree_is_sound(sha):
        r.published = sha
    else:
        log.warning("the published tree %s is missing or damaged; the first sync rebuilds it", sha)
        r.published_damaged = True


def prepare_spare(r: Recovery) -> None:
    """The first new commit then writes only the files it changes."""
    if r.published is not None:
        r.publisher.prepare_spare()


Step = Callable[[Recovery], None]

# Whatever frees space comes before anything writes (a full volume must not stop the
# start-up that would clean it): locks, temporary objects, temporary links, unfinished trees.
STEPS: tuple[Step, ...] = (
    root_is_a_directory,
    clear_stale_git_locks,
    remove_temporary_objects,
    make_room_for_trees,
    remove_temporary_links,
    discard_unfinished_trees,
    reinit_damaged_repository,
    apply_sparse_setting,
    check_depth,
    repair_moved_worktrees,
    unlock_missing_worktrees,
    prune_worktrees,
    check_published_tree,
    prepare_spare,
)


def recover(config: Config, repo: Repository, publisher: Publisher,
            steps: tuple[Step, ...] = STEPS) -> Recovery:
    """Run every step in order; what they found is in the Recovery returned."""
    state = Recovery(config=config, repo=repo, publisher=publisher)
    for step in steps:
        log.debug("recovery step: %s", step.__name__)
        step(state)
    return state


def apply_sparse(config: Config, repo: Repository) -> None:
    """core.sparseCheckout as --sparse-checkout-file says (also after a re-init mid-run)."""
    repo.set_config("core.sparseCheckout", "true" if config.sparse_checkout_file else "false")
