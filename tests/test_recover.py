"""gitsync.recover: each kind of leftover a killed run can leave, and the order of the steps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gitsync import recover
from gitsync.cli import build_engine
from gitsync.config import parse_args
from gitsync.git import Deadline
from gitsync.model import SyncError
from support.repos import git


def engine_over(root: Path, url: str, *flags: str):
    return build_engine(parse_args(["--repo", url, "--root", str(root), "--http-bind", "", *flags], {}))


def restart(root: Path, url: str, *flags: str):
    """A new engine over `root`, prepared as a restarted sidecar has it, and what recovery found."""
    engine = engine_over(root, url, *flags)
    return engine, engine.prepare()


@pytest.fixture
def synced(tmp_path, remote):
    """<root> after one run that published the remote's commit."""
    root = tmp_path / "root"
    engine = engine_over(root, remote.url)
    engine.prepare()
    assert engine.sync_once("start").result == "published"
    return root


def worktree_records(root: Path) -> list[str]:
    out = git("--git-dir", str(root / ".git"), "worktree", "list", "--porcelain")
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")][1:]


def test_stale_git_locks_are_cleared(synced, remote):
    for name in ("config.lock", "shallow.lock", "refs/gitsync/target.lock", "index.lock"):
        (synced / ".git" / name).parent.mkdir(parents=True, exist_ok=True)
        (synced / ".git" / name).write_text("")
    second = remote.commit_and_push({"x": "after the kill"})
    engine, found = restart(synced, remote.url)
    assert list((synced / ".git").rglob("*.lock")) == []
    assert found.published == remote.remote_head("HEAD~1")
    assert engine.sync_once("start").commit == second


def test_half_built_trees_trash_and_the_spare_are_removed(synced, remote):
    worktrees = synced / ".worktrees"
    published = Path(os.readlink(synced / "repo.git")).name
    leftovers = [worktrees / f".build-{'a' * 40}", worktrees / ".trash-abc-12345678", worktrees / ".spare"]
    for path in leftovers:
        path.mkdir(exist_ok=True)
        (path / "partial").write_text("x")
    restart(synced, remote.url)
    assert sorted(p.name for p in worktrees.iterdir()) == sorted([published, ".spare"])
    assert not (worktrees / ".spare" / "partial").exists()   # the spare is made afresh


def test_temporary_links_are_removed_and_the_link_kept(synced, remote):
    temp = synced / ".repo.git.tmp-deadbeef"
    temp.symlink_to(".worktrees/nowhere")
    target = os.readlink(synced / "repo.git")
    restart(synced, remote.url)
    assert not temp.is_symlink() and os.readlink(synced / "repo.git") == target


def test_a_tree_moved_but_not_recorded_is_repaired_not_pruned(synced, remote):
    second = remote.commit_and_push({"x": "second"})
    engine, _ = restart(synced, remote.url)
    repo = engine.repo
    repo.fetch(remote.url, "refs/heads/main", 1, Deadline(60))
    build, dest = synced / ".worktrees" / f".build-{second}", synced / ".worktrees" / second
    repo.add_worktree(build, second, checkout=True, deadline=None)
    os.rename(build, dest)                 # killed inside `git worktree move`
    assert str(build) in worktree_records(synced) and str(dest) not in worktree_records(synced)
    restart(synced, remote.url)
    assert str(dest) in worktree_records(synced) and str(build) not in worktree_records(synced)
    assert git("rev-parse", "HEAD", cwd=dest) == second
    assert git("status", "--porcelain", cwd=dest) == ""


def test_a_locked_record_of_a_missing_tree_is_dropped(synced, remote):
    engine, _ = restart(synced, remote.url)
    sha = remote.remote_head()
    build = synced / ".worktrees" / f".build-{'b' * 40}"
    engine.repo.add_worktree(build, sha, checkout=False, deadline=None)
    git("--git-dir", str(synced / ".git"), "worktree", "lock", "--reason", "initializing", str(build))
    restart(synced, remote.url)
    assert str(build) not in worktree_records(synced)
    engine.repo.add_worktree(build, sha, checkout=False, deadline=None)  # git takes the name again


def test_a_damaged_repository_is_started_again_and_the_tree_kept(synced, remote):
    tree = (synced / "repo.git").resolve()
    inode = (tree / "README.md").stat().st_ino
    for obj in (synced / ".git" / "objects").rglob("*"):
        if obj.is_file() and obj.parent.name != "info":
            obj.unlink()
    engine, found = restart(synced, remote.url)
    assert engine.repo.is_healthy() and found.published_damaged and found.published is None
    assert (tree / "README.md").stat().st_ino == inode
    result = engine.sync_once("start")
    assert result.result == "published" and (tree / "README.md").stat().st_ino == inode


def test_a_damaged_published_tree_is_marked_for_rebuild(synced, remote):
    tree = (synced / "repo.git").resolve()
    (tree / "README.md").write_text("edited\n")
    engine, found = restart(synced, remote.url)
    assert found.published_damaged and not (synced / ".worktrees" / ".spare").exists()
    engine.sync_once("start")
    assert (tree / "README.md").read_text() == "hello\n"


def test_a_root_that_is_a_file_stops_at_the_first_step(tmp_path, remote):
    root = tmp_path / "root"
    engine = engine_over(root, remote.url)  # start-up refuses a file (test_config); it may become one later
    root.write_text("not a dir")
    with pytest.raises(SyncError) as caught:
        engine.prepare()
    assert caught.value.step == "init" and "is not a directory" in caught.value.message
    assert root.read_text() == "not a dir"


def test_a_changed_depth_is_noticed(synced, remote):
    assert not restart(synced, remote.url)[1].depth_changed
    assert restart(synced, remote.url, "--depth", "0")[1].depth_changed


def test_steps_run_in_order_and_a_step_is_added_by_listing_it(synced, remote):
    names = [step.__name__ for step in recover.STEPS]
    assert names.index("clear_stale_git_locks") < names.index("reinit_damaged_repository")
    assert (names.index("repair_moved_worktrees") < names.index("unlock_missing_worktrees")
            < names.index("prune_worktrees") < names.index("check_published_tree"))
    seen = []
    engine = engine_over(synced, remote.url)
    found = recover.recover(engine.config, engine.repo, engine.publisher,
                            steps=(*recover.STEPS, lambda r: seen.append(r.published)))
    assert seen == [found.published] and found.published is not None


def test_temporary_objects_a_killed_fetch_left_are_removed(synced, remote):
    objects = synced / ".git" / "objects"
    leftovers = [objects / "ab" / "tmp_obj_X1", objects / "pack" / "tmp_pack_X2", objects / "incoming-X3" / "f"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half an object")
    restart(synced, remote.url)
    assert [p for p in leftovers if p.exists()] == []
    assert not (objects / "incoming-X3").exists()
