"""The sync engine against real repositories: refs, layout, updates, failures, recovery."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from support.processes import pids_mentioning
from support.repos import Remote, git, published_sha
from support.waiting import wait_for
from gitsync.cli import build_engine
from gitsync.config import parse_args


def make_engine(remote_url: str, root: Path, *extra: str):
    return build_engine(parse_args(["--repo", remote_url, "--root", str(root), "--http-bind", "",
                                    *extra], {}))


def sync(remote_url: str, root: Path, *extra: str):
    """One sync cycle of a fresh engine over `root`, as a restarted sidecar would do."""
    engine = make_engine(remote_url, root, *extra)
    engine.prepare()
    return engine, engine.sync_once("start")


def link_of(root: Path, name: str = "repo.git") -> Path:
    return root / name


def tree_of(root: Path, name: str = "repo.git") -> Path:
    return (root / name).resolve()


# -- refs ----------------------------------------------------------------------------

def test_head_publishes_the_default_branch_through_a_relative_link(remote, tmp_path):
    root = tmp_path / "root"
    _, result = sync(remote.url, root)
    assert result.result == "published"
    link = link_of(root)
    target = os.readlink(link)
    assert not os.path.isabs(target)
    assert target == f".worktrees/{remote.head()}"
    assert (link / "README.md").read_text() == "hello\n"
    assert git("rev-parse", "HEAD", cwd=link) == remote.head()


def test_head_follows_a_changed_default_branch(remote, tmp_path):
    remote.switch("develop", create=True)
    develop = remote.commit_and_push({"branch.txt": "develop\n"}, branch="develop")
    remote.set_default_branch("develop")
    _, result = sync(remote.url, tmp_path / "root")
    assert result.commit == develop


def test_branch_ref(remote, tmp_path):
    main_sha = remote.head()
    remote.switch("feature", create=True)
    feature = remote.commit_and_push({"f.txt": "feature\n"}, branch="feature")
    _, result = sync(remote.url, tmp_path / "root", "--ref", "feature")
    assert result.commit == feature != main_sha


def test_lightweight_and_annotated_tags_publish_the_commit(remote, tmp_path):
    light = remote.tag("v1")
    remote.commit_and_push({"x": "2"})
    annotated = remote.tag("v2", annotated=True)
    _, first = sync(remote.url, tmp_path / "a", "--ref", "v1")
    _, second = sync(remote.url, tmp_path / "b", "--ref", "v2")
    assert first.commit == light
    assert second.commit == annotated
    assert published_sha(link_of(tmp_path / "b")) == annotated   # the commit, not the tag object


def test_full_sha_ref_publishes_that_commit_and_never_moves(remote, tmp_path):
    pinned = remote.head()
    remote.commit_and_push({"later.txt": "later\n"})
    engine, result = sync(remote.url, tmp_path / "root", "--ref", pinned)
    assert result.commit == pinned
    remote.commit_and_push({"later.txt": "even later\n"})
    assert engine.sync_once("poll").result == "unchanged"
    assert published_sha(link_of(tmp_path / "root")) == pinned


def test_a_ref_the_remote_lacks_is_an_error_naming_it(remote, tmp_path):
    _, result = sync(remote.url, tmp_path / "root", "--ref", "no-such-branch")
    assert result.result == "error"
    assert result.error == "ls-remote: ref 'no-such-branch' not found on the remote"


# -- updates -------------------------------------------------------------------------

def test_update_publishes_new_commit_and_keeps_the_old_tree_intact(remote, tmp_path):
    root = tmp_path / "root"
    engine, _ = sync(remote.url, root)
    old_tree = tree_of(root)
    old_files = {p: p.read_bytes() for p in old_tree.rglob("*") if p.is_file() and ".git" != p.name}
    new = remote.commit_and_push({"app/main.py": "print('v2')\n", "new.txt": "n\n",
                                  "README.md": None})
    result = engine.sync_once("manual")
    assert result.result == "published" and result.commit == new
    assert (link_of(root) / "app/main.py").read_text() == "print('v2')\n"
    assert not (link_of(root) / "README.md").exists()
    assert {p: p.read_bytes() for p in old_files} == old_files


def test_the_next_tree_is_built_from_hard_links_of_the_previous_one(remote, tmp_path):
    root = tmp_path / "root"
    engine, _ = sync(remote.url, root)
    old = tree_of(root)
    remote.commit_and_push({"app/main.py": "print('v2')\n"})
    engine.sync_once("manual")
    new = tree_of(root)
    # Unchanged files share their inode (git wrote nothing for them); the changed one is new.
    assert (old / "README.md").stat().st_ino == (new / "README.md").stat().st_ino
    assert (old / "app/main.py").stat().st_ino != (new / "app/main.py").stat().st_ino
    assert (old / "app/main.py").read_text() == "print('v1')\n"
    assert git("status", "--porcelain", cwd=new) == ""


def test_unchanged_poll_reports_unchanged_and_touches_nothing(remote, tmp_path):
    root = tmp_path / "root"
    engine, _ = sync(remote.url, root)
    before = os.readlink(link_of(root))
    result = engine.sync_once("poll")
    assert result.result == "unchanged"
    assert os.readlink(link_of(root)) == before


def test_force_push_is_followed(remote, tmp_path):
    root = tmp_path / "root"
    base = remote.head()
    engine, _ = sync(remote.url, root)
    remote.commit_and_push({"bad.txt": "oops\n"})
    engine.sync_once("poll")
    remote.reset_hard(base)
    rewritten = remote.commit({"good.txt": "fixed\n"}, "rewrite")
    remote.push(force=True)
    result = engine.sync_once("poll")
    assert result.commit == rewritten
    assert not (link_of(root) / "bad.txt").exists()


def test_deleted_branch_is_an_error_that_keeps_the_published_tree(remote, tmp_path):
    root = tmp_path / "root"
    remote.switch("feature", create=True)
    remote.commit_and_push({"f.txt": "f\n"}, branch="feature")
    engine, first = sync(remote.url, root, "--ref", "feature")
    remote.delete_branch("feature")
    result = engine.sync_once("poll")
    assert result.result == "error" and "not found on the remote" in result.error
    assert published_sha(link_of(root)) == first.commit
    assert (link_of(root) / "f.txt").read_text() == "f\n"
    status = engine.status()
    assert status.commit == first.commit and status.consecutive_failures == 1


def test_going_back_to_a_commit_still_on_disk_reuses_its_tree(remote, tmp_path):
    root = tmp_path / "root"
    first = remote.head()
    engine, _ = sync(remote.url, root, "--stale-worktree-timeout", "1h")
    remote.commit_and_push({"x": "1"})
    engine.sync_once("poll")
    remote.reset_hard(first)
    remote.push(force=True)
    assert engine.sync_once("poll").commit == first
    assert published_sha(link_of(root)) == first


# -- depth ---------------------------------------------------------------------------

def history_depth(root: Path) -> int:
    return int(git("rev-list", "--count", "HEAD", cwd=link_of(root)))


def test_depth_one_across_updates_and_changed_on_restart(remote, tmp_path):
    root = tmp_path / "root"
    for n in range(3):
        remote.commit_and_push({"n.txt": str(n)})
    engine, _ = sync(remote.url, root)
    assert history_depth(root) == 1
    remote.commit_and_push({"n.txt": "next"})
    engine.sync_once("poll")
    assert history_depth(root) == 1
    remote.commit_and_push({"n.txt": "full"})
    sync(remote.url, root, "--depth", "0")
    assert history_depth(root) == 6
    remote.commit_and_push({"n.txt": "two"})
    sync(remote.url, root, "--depth", "2")
    assert published_sha(link_of(root)) == remote.head()


# -- clean-up ------------------------------------------------------------------------

def sha_trees(root: Path) -> set[str]:
    return {p.name for p in (root / ".worktrees").iterdir() if not p.name.startswith(".")}


def test_old_trees_are_removed_but_the_previous_one_stays_until_the_next_publish(remote, tmp_path):
    root = tmp_path / "root"
    first = remote.head()
    engine, _ = sync(remote.url, root)
    second = remote.commit_and_push({"x": "2"})
    engine.sync_once("poll")
    assert sha_trees(root) == {first, second}
    third = remote.commit_and_push({"x": "3"})
    engine.sync_once("poll")
    assert sha_trees(root) == {second, third}
    worktrees = git("--git-dir", str(root / ".git"), "worktree", "list", "--porcelain")
    assert first not in worktrees


def test_stale_worktree_timeout_keeps_left_trees_until_it_passes(remote, tmp_path):
    root = tmp_path / "root"
    first = remote.head()
    engine, _ = sync(remote.url, root, "--stale-worktree-timeout", "1s")
    remote.commit_and_push({"x": "2"})
    engine.sync_once("poll")
    third = remote.commit_and_push({"x": "3"})
    engine.sync_once("poll")
    assert first in sha_trees(root)          # left under a second ago
    wait_for(lambda: engine.sync_once("poll") and first not in sha_trees(root), timeout=30,
             message="the stale tree to be removed")
    assert third in sha_trees(root)


def test_a_published_tree_removed_by_hand_is_rebuilt(remote, tmp_path):
    root = tmp_path / "root"
    engine, first = sync(remote.url, root)
    shutil.rmtree(tree_of(root))
    result = engine.sync_once("poll")
    assert result.result == "published" and result.commit == first.commit
    assert (link_of(root) / "README.md").read_text() == "hello\n"


def test_a_damaged_published_tree_is_rebuilt_on_restart(remote, tmp_path):
    root = tmp_path / "root"
    sync(remote.url, root)
    (tree_of(root) / "README.md").write_text("tampered\n")
    _, result = sync(remote.url, root)
    assert result.result == "published"
    assert (link_of(root) / "README.md").read_text() == "hello\n"


# -- the root ------------------------------------------------------------------------

def test_root_missing_is_created(remote, tmp_path):
    root = tmp_path / "a" / "b" / "root"
    _, result = sync(remote.url, root)
    assert result.result == "published" and root.is_dir()


def test_root_that_exists_empty(remote, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    _, result = sync(remote.url, root)
    assert result.result == "published"
    # .gitsync: what rollouts keep (the live commit, bad marks, the pause), outside .git
    assert sorted(p.name for p in root.iterdir()) == [".git", ".gitsync", ".worktrees", "repo.git"]


def test_branch_switch_on_restart(remote, tmp_path):
    root = tmp_path / "root"
    main_sha = remote.head()
    sync(remote.url, root, "--ref", "main")
    remote.switch("other", create=True)
    other = remote.commit_and_push({"other.txt": "o\n"}, branch="other")
    _, result = sync(remote.url, root, "--ref", "other")
    assert result.result == "published" and result.commit == other != main_sha
    assert (link_of(root) / "other.txt").read_text() == "o\n"
    assert main_sha in sha_trees(root)          # the tree it left stays until the next publish


def test_root_with_unrelated_files_keeps_them(remote, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "notes.txt").write_text("mine\n")
    _, result = sync(remote.url, root)
    assert result.result == "published"
    assert (root / "notes.txt").read_text() == "mine\n"


def test_root_with_a_broken_git_dir_starts_again(remote, tmp_path):
    root = tmp_path / "root"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("garbage\n")
    _, result = sync(remote.url, root)
    assert result.result == "published"


def test_root_inside_another_repository_uses_its_own(remote, tmp_path):
    outer = tmp_path / "outer"
    git("init", "--quiet", str(outer))
    root = outer / "sub" / "root"
    _, result = sync(remote.url, root)
    assert result.result == "published"
    assert git("rev-parse", "HEAD", cwd=link_of(root)) == remote.head()
    assert git("status", "--porcelain", cwd=outer) == "?? sub/"


def test_root_that_is_a_file_is_a_clear_failure(remote, tmp_path):
    root = tmp_path / "root"
    engine = make_engine(remote.url, root)   # start-up refuses a file (test_config); it may become one later
    root.write_text("not a dir")
    assert engine.run() == 1
    assert "is not a directory" in engine.status().last_error


def test_corrupt_repository_is_fetched_again(remote, tmp_path):
    root = tmp_path / "root"
    engine, first = sync(remote.url, root)
    for obj in (root / ".git" / "objects").rglob("*"):
        if obj.is_file() and obj.parent.name != "info":
            obj.unlink()
    second = remote.commit_and_push({"x": "after corruption"})
    _, result = sync(remote.url, root)
    assert result.result == "published" and result.commit == second
    assert git("--git-dir", str(root / ".git"), "fsck", "--connectivity-only") is not None


def test_leftovers_of_a_killed_run_are_cleaned_on_start(remote, tmp_path):
    root = tmp_path / "root"
    sync(remote.url, root)
    half = root / ".worktrees" / f".build-{'a' * 40}"
    half.mkdir()
    (half / "partial").write_text("x")
    temp_link = root / ".repo.git.tmp-deadbeef"
    temp_link.symlink_to(".worktrees/nowhere")
    _, result = sync(remote.url, root)
    assert not half.exists() and not temp_link.is_symlink()
    assert result.result == "unchanged"


# -- link ----------------------------------------------------------------------------

def test_link_name_and_absolute_link(remote, tmp_path):
    root = tmp_path / "root"
    elsewhere = tmp_path / "serve" / "current"
    _, result = sync(remote.url, root, "--link", str(elsewhere))
    target = os.readlink(elsewhere)
    assert not os.path.isabs(target)
    assert Path(target).name == result.commit
    assert (elsewhere / "README.md").read_text() == "hello\n"


def test_link_that_is_a_real_directory_is_moved_aside_and_kept(remote, tmp_path):
    root = tmp_path / "root"
    (root / "repo.git").mkdir(parents=True)
    (root / "repo.git" / "keep.txt").write_text("mine")
    _, result = sync(remote.url, root)
    assert result.result == "published"
    assert os.readlink(root / "repo.git") == f".worktrees/{result.commit}"
    kept = list(root.glob(".repo.git.kept-*"))
    assert len(kept) == 1 and (kept[0] / "keep.txt").read_text() == "mine"


# -- the loop ------------------------------------------------------------------------

def test_triggers_during_a_sync_coalesce_into_one_more(remote, tmp_path, engine_factory):
    engine = engine_factory("--repo", remote.url, "--root", str(tmp_path / "root"),
                            "--period", "1h", "--http-bind", "")
    wait_for(engine.is_ready, message="first publish")
    last = None
    for n in range(5):
        last = remote.commit_and_push({"n.txt": str(n)})
        for _ in range(3):
            engine.trigger("webhook")
    wait_for(lambda: engine.status().commit == last, message="the newest commit")
    syncs = engine.status().sync_count
    assert syncs <= 1 + 5 * 2, f"{syncs} syncs for 5 pushes x 3 triggers"


def test_status_records_history_and_failures(remote, tmp_path):
    root = tmp_path / "root"
    engine, first = sync(remote.url, root)
    second = remote.commit_and_push({"x": "2"})
    engine.sync_once("webhook")
    status = engine.status()
    assert status.commit == second
    assert status.commit_info.subject == "change"
    assert [(h.commit, h.trigger, h.result) for h in status.history] == [
        (second, "webhook", "published"), (first.commit, "start", "published")]
    data = status.to_dict()
    assert data["history"][0]["at"].endswith("Z")
    assert set(data) >= {"repo", "ref", "commit", "link", "state", "last_sync_at",
                         "last_success_at", "last_error", "consecutive_failures", "sync_count",
                         "history", "version"}


def test_health_goes_bad_when_failures_exceed_the_budget(remote, tmp_path):
    root = tmp_path / "root"
    remote.switch("feature", create=True)
    remote.commit_and_push({"f.txt": "f\n"}, branch="feature")
    engine, _ = sync(remote.url, root, "--max-failures", "1", "--ref", "feature")
    assert engine.is_healthy()
    remote.delete_branch("feature")
    engine.sync_once("poll")
    assert engine.is_healthy()          # one failure is within a budget of one
    engine.sync_once("poll")
    assert not engine.is_healthy()
    assert engine.is_ready()            # the published tree is still served


def test_max_failures_zero_ends_the_loop_on_the_first_failure(tmp_path):
    engine = make_engine(f"file://{tmp_path}/missing.git", tmp_path / "root")
    assert engine.run() == 1
    assert engine.status().consecutive_failures == 1


def test_max_failures_minus_one_keeps_going(tmp_path, engine_factory):
    engine = engine_factory("--repo", f"file://{tmp_path}/missing.git", "--root",
                            str(tmp_path / "root"), "--period", "20ms", "--max-failures", "-1",
                            "--http-bind", "")
    wait_for(lambda: engine.status().consecutive_failures >= 3, message="three failures")
    assert "does not appear to be a git repository" in engine.status().last_error


def test_sync_timeout_kills_a_hung_git(remote, tmp_path, isolated_git):
    # upload-pack runs this instead of pack-objects: ls-remote answers, the fetch hangs.
    # (git honours the hook only from global config, and the test HOME is private.)
    slow = tmp_path / "slow-pack-objects"
    slow.write_text('#!/bin/sh\nsleep 30\nexec "$@"\n')
    slow.chmod(0o755)
    git("config", "--global", "uploadpack.packObjectsHook", str(slow))
    engine, result = sync(remote.url, tmp_path / "root", "--sync-timeout", "1s")
    assert result.result == "error"
    assert result.error == "fetch: git fetch killed after the sync timeout (1s)"
    assert result.duration_ms < 5000
    assert not pids_mentioning(str(slow))


def test_an_error_row_names_the_commit_it_tried_and_the_next_success_ends_the_streak(remote, tmp_path):
    engine, first = sync(remote.url, tmp_path / "root")
    assert (first.attempted, first.subject, first.author) == (first.commit, "first", "Test Author")
    broken = remote.commit_and_push({"x": "2"}, "Break the remote")
    loose = remote.path / "objects" / broken[:2] / broken[2:]
    loose.rename(tmp_path / "the-commit-object")   # the ref names a commit the remote cannot send

    failed = engine.sync_once("webhook")

    assert failed.result == "error" and failed.commit == first.commit
    assert failed.attempted == broken and failed.subject is None   # never fetched: no subject
    row = engine.status().to_dict()["history"][0]
    assert row["attempted"] == broken and row["commit"] == first.commit
    git("update-ref", "refs/heads/main", first.commit, cwd=remote.path)

    engine.sync_once("poll")   # unchanged, yet it ends the error streak: it gets a row

    status = engine.status().to_dict()
    newest = status["history"][0]
    assert status["state"] == "idle"
    assert newest["result"] == "unchanged" and newest["recovered"] is True
    assert (newest["attempted"], newest["subject"]) == (first.commit, "first")
    assert (status["publish_count"], status["sync_count"]) == (1, 3)
    engine.sync_once("poll")
    assert len(engine.status().history) == 3, "a quiet poll after the recovery adds no row"


def test_the_status_says_when_the_next_poll_is(remote, tmp_path, engine_factory):
    from datetime import timedelta
    engine = engine_factory("--repo", remote.url, "--root", str(tmp_path / "root"),
                            "--period", "1h", "--http-bind", "")
    wait_for(lambda: engine.status().next_poll_at is not None, message="the loop to wait")
    status = engine.status()
    assert timedelta(minutes=59) < status.next_poll_at - status.last_sync_at < timedelta(minutes=61)
    assert status.to_dict()["next_poll_at"].endswith("Z")
