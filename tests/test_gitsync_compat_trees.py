"""git-sync v4's e2e scenarios for the trees on the volume: damage repaired at the next
sync, stale trees, depth, sparse and partial checkouts, git config, gc, the files other
containers watch. Each test names its e2e case (`e2e: name`)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from compat_support import WAIT, settle, start_sidecar
from support.repos import Remote, git, published_sha
from support.waiting import wait_for
from test_gitsync_compat import file_at, one_time

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def repo(tmp_path) -> Remote:
    remote = Remote(tmp_path / "remotes")
    git("config", "uploadpack.allowFilter", "true", cwd=remote.path)
    remote.commit_and_push({"file": "one\n"}, "one")
    return remote


def watch(gitsync, repo: Remote, root: Path, *flags: str):
    return start_sidecar(gitsync, "--repo", repo.url, "--root", str(root), "--link", "link",
                         "--period", "100ms", *flags)


def trees(root: Path) -> set[str]:
    return {entry.name for entry in (root / ".worktrees").iterdir() if not entry.name.startswith(".")}


# -- damage done between two syncs --------------------------------------------------------

def test_strays_under_worktrees_go_at_the_next_sync(repo, tmp_path, gitsync):
    """e2e: worktree_cleanup: a file, a directory not named for a commit, and a foreign
    worktree sitting where the next commit's tree goes are all dealt with while running."""
    root = tmp_path / "root"
    sidecar = watch(gitsync, repo, root)
    sidecar.wait_for_syncs(1)
    assert sidecar.metric("git_fetch_count_total") == 1
    second = repo.commit({"file2": "two\n"}, "two")
    git("worktree", "add", "--quiet", "--no-checkout", "-b", "e2e",
        str(root / ".worktrees" / second), second, cwd=repo.work)
    (root / ".worktrees" / "not_a_hash" / "subdir").mkdir(parents=True)
    (root / ".worktrees" / "not_a_directory").touch()
    repo.push()
    sidecar.wait_for_syncs(2)
    assert file_at(root, "file2") == "two\n"
    assert sidecar.metric("git_fetch_count_total") == 2
    wait_for(lambda: not (root / ".worktrees" / "not_a_hash").exists()
             and not (root / ".worktrees" / "not_a_directory").exists(), WAIT,
             message="the strays to go")
    tree = root / ".worktrees" / second
    assert git("rev-parse", "HEAD", cwd=tree) == second   # ours now, not the foreign one
    assert git("status", "--porcelain", cwd=tree) == ""


def test_a_tree_removed_by_hand_is_rebuilt(repo, tmp_path, gitsync):
    """e2e: worktree_unexpected_removal."""
    root = tmp_path / "root"
    sidecar = watch(gitsync, repo, root)
    sidecar.wait_for_syncs(1)
    shutil.rmtree(root / ".worktrees" / repo.remote_head())
    sidecar.wait_for_syncs(2)
    assert file_at(root) == "one\n"
    assert sidecar.metric("git_fetch_count_total") == 2


def test_a_tree_whose_head_was_moved_is_rebuilt_while_running(repo, tmp_path, gitsync):
    """e2e: sync_recover_wrong_worktree_hash: a commit made inside the published tree is
    undone at the next sync, not only after a restart."""
    root = tmp_path / "root"
    sidecar = watch(gitsync, repo, root)
    sidecar.wait_for_syncs(1)
    (root / "link" / "file").write_text("unexpected\n")
    git("commit", "--quiet", "-am", "corrupt it", cwd=root / "link")
    sidecar.wait_for_syncs(2)
    assert file_at(root) == "one\n"
    assert git("rev-parse", "HEAD", cwd=root / "link") == repo.remote_head()
    assert sidecar.metric("git_fetch_count_total") == 2


# -- stale trees ---------------------------------------------------------------------------

def test_stale_worktree_timeout_while_running(repo, tmp_path, gitsync):
    """e2e: stale_worktree_timeout. Difference on purpose: the tree the link left last stays
    until the next publish (git-sync removes it once its timeout passes)."""
    root = tmp_path / "root"
    sidecar = watch(gitsync, repo, root, "--stale-worktree-timeout", "4s")
    sidecar.wait_for_syncs(1)
    first = repo.remote_head()
    second = repo.commit_and_push({"file2": "two\n"}, "two")
    sidecar.wait_for_syncs(2)
    third = repo.commit_and_push({"file3": "three\n"}, "three")
    sidecar.wait_for_syncs(3)
    assert {first, second, third} <= trees(root)     # first was left moments ago
    assert not (root / ".worktrees" / first / "file2").exists()
    wait_for(lambda: first not in trees(root), WAIT, message="the first tree to go stale")
    assert settle(lambda: second in trees(root), 5)  # left last: kept until the next publish
    assert published_sha(root / "link") == third


def test_stale_worktree_timeout_counts_from_a_stamp_on_disk(repo, tmp_path, gitsync):
    """e2e: stale_worktree_timeout_restart: --one-time runs, each a new process. The time a
    tree was left is its directory's mtime, set when the link leaves it."""
    root = tmp_path / "root"
    keep = ("--stale-worktree-timeout", "10s")
    assert one_time(gitsync, repo.url, root) == 0
    first = repo.remote_head()
    second = repo.commit_and_push({"file2": "two\n"}, "two")
    assert one_time(gitsync, repo.url, root, *keep) == 0
    left = (root / ".worktrees" / first).stat().st_mtime
    assert abs(time.time() - left) < 30
    third = repo.commit_and_push({"file3": "three\n"}, "three")
    assert one_time(gitsync, repo.url, root, *keep) == 0
    assert {first, second, third} <= trees(root)
    # Twelve seconds pass (on the stamps): the next run, with nothing new, removes `first`.
    past = time.time() - 12
    os.utime(root / ".worktrees" / first, (past, past))
    assert one_time(gitsync, repo.url, root, *keep) == 0
    assert trees(root) >= {second, third} and first not in trees(root)
    # `second` is the tree the link left last: kept until the next publish (on purpose).
    os.utime(root / ".worktrees" / second, (past, past))
    assert one_time(gitsync, repo.url, root, *keep) == 0
    assert second in trees(root)
    repo.commit_and_push({"file4": "four\n"}, "four")
    assert one_time(gitsync, repo.url, root, *keep) == 0
    assert second not in trees(root) and third in trees(root)


# -- depth -----------------------------------------------------------------------------

def history(root: Path) -> int:
    return len(git("rev-list", "HEAD", cwd=root / "link").splitlines())


def test_depth_default_is_shallow(repo, tmp_path, gitsync):
    """e2e: sync_depth_default_shallow."""
    repo.commit_and_push({"file": "two\n"}, "two")
    repo.commit_and_push({"file": "three\n"}, "three")
    root = tmp_path / "root"
    assert one_time(gitsync, repo.url, root) == 0
    assert history(root) == 1


def test_depth_holds_across_updates(repo, tmp_path, gitsync):
    """e2e: sync_depth_across_updates."""
    root = tmp_path / "root"
    sidecar = watch(gitsync, repo, root, "--depth", "1")
    sidecar.wait_for_syncs(1)
    repo.commit_and_push({"file": "two\n"}, "two")
    sidecar.wait_for_syncs(2)
    assert history(root) == 1
    repo.reset_hard("HEAD^")
    repo.push(force=True)
    sidecar.wait_for_syncs(3)
    assert file_at(root) == "one\n" and history(root) == 1
    assert sidecar.metric("git_fetch_count_total") == 3


def test_depth_changed_on_restart(repo, tmp_path, gitsync):
    """e2e: sync_depth_change_on_restart."""
    for n in ("two", "three"):
        repo.commit_and_push({"file": f"{n}\n"}, n)
    root = tmp_path / "root"
    assert one_time(gitsync, repo.url, root, "--depth", "1") == 0
    assert history(root) == 1
    assert one_time(gitsync, repo.url, root, "--depth", "0") == 0
    assert history(root) == 3
    assert one_time(gitsync, repo.url, root, "--depth", "2") == 0
    assert git("rev-list", "--count", "HEAD", cwd=root / "link") in ("2", "3")


# -- what is checked out -------------------------------------------------------------------

def sparse_repo(repo: Remote, tmp_path: Path) -> Path:
    repo.commit_and_push({"file2": "two\n", "dir/file3": "three\n"}, "more")
    patterns = tmp_path / "sparse"
    patterns.write_text("!/*\n!/*/\nfile2\n")
    return patterns


def test_sparse_checkout(repo, tmp_path, gitsync):
    """e2e: sparse_checkout."""
    patterns = sparse_repo(repo, tmp_path)
    root = tmp_path / "root"
    assert one_time(gitsync, repo.url, root, "--sparse-checkout-file", str(patterns)) == 0
    assert file_at(root, "file2") == "two\n"
    assert not (root / "link" / "dir").exists()


def promisor_packs(root: Path) -> list[Path]:
    return list((root / ".git" / "objects" / "pack").glob("*.promisor"))


def test_filter_makes_a_partial_clone(repo, tmp_path, gitsync):
    """e2e: filter_partial_clone_blob_none."""
    root = tmp_path / "root"
    assert one_time(gitsync, repo.url, root, "--filter", "blob:none", "--depth", "0") == 0
    assert file_at(root) == "one\n"
    assert promisor_packs(root), "a partial clone leaves .promisor packs"


def test_filter_with_sparse_checkout(repo, tmp_path, gitsync):
    """e2e: filter_with_sparse_checkout."""
    patterns = sparse_repo(repo, tmp_path)
    root = tmp_path / "root"
    assert one_time(gitsync, repo.url, root, "--filter", "blob:none",
                    "--sparse-checkout-file", str(patterns)) == 0
    assert file_at(root, "file2") == "two\n"
    assert not (root / "link" / "dir").exists()
    assert promisor_packs(root)


def test_filter_across_updates(repo, tmp_path, gitsync):
    """e2e: filter_across_updates."""
    root = tmp_path / "root"
    sidecar = watch(gitsync, repo, root, "--filter", "blob:none", "--depth", "0")
    sidecar.wait_for_syncs(1)
    repo.commit_and_push({"file": "two\n"}, "two")
    sidecar.wait_for_syncs(2)
    assert file_at(root) == "two\n"
    assert sidecar.metric("git_fetch_count_total") == 2


def test_git_config_in_git_syncs_grammar_reaches_git(repo, tmp_path, gitsync):
    """e2e: additional_git_configs: quoted keys and values, escapes, --git-config-add."""
    seen = tmp_path / "seen-config"
    wrapper = tmp_path / "bin" / "git"
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/sh\n{shutil.which('git')} config --get-regexp '^sect[.]' >> {seen}\n"
                       f"exec {shutil.which('git')} \"$@\"\n")
    wrapper.chmod(0o755)
    root = tmp_path / "root"
    assert one_time(gitsync, repo.url, root, "--git", str(wrapper),
                    "--git-config", r'http.postBuffer:10485760,sect.k1:"a val",sect.k2:another val,'
                                    r'sect.k6:comma\, and tab\tend',
                    "--git-config-add", "sect.k3:a val",
                    "--git-config-add", 'sect.k4:"a val with quotes"',
                    "--git-config-add", '"sect.k5":"quoted_all"') == 0
    assert file_at(root) == "one\n"
    values = dict(line.split(" ", 1) for line in seen.read_text().splitlines())
    assert values == {"sect.k1": "a val", "sect.k2": "another val", "sect.k3": "a val",
                      "sect.k4": "a val with quotes", "sect.k5": "quoted_all",
                      "sect.k6": "comma, and tab\tend"}


# -- garbage collection -----------------------------------------------------------------

def objects_size(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / ".git" / "objects").rglob("*") if p.is_file())


@pytest.mark.parametrize("mode, collected", [("always", True), ("aggressive", True),
                                             ("auto", False), ("off", False)])
def test_git_gc_modes(mode, collected, repo, tmp_path, gitsync):
    """e2e: gc_default, gc_auto, gc_always, gc_aggressive, gc_off: once a tree with a big
    file is removed, always and aggressive drop its objects; auto waits for git's own
    threshold of loose objects; off never collects."""
    root = tmp_path / "root"
    big = repo.commit_and_push({"big": os.urandom(2 * 1024 * 1024).hex()}, "big")
    flags = ("--git-gc", mode)
    assert one_time(gitsync, repo.url, root, *flags) == 0
    repo.commit_and_push({"big": None}, "no big")
    assert one_time(gitsync, repo.url, root, *flags) == 0
    repo.commit_and_push({"file": "three\n"}, "three")
    assert one_time(gitsync, repo.url, root, *flags) == 0   # the big tree is removed now
    assert big not in trees(root)
    assert (objects_size(root) < 1024 * 1024) == collected, objects_size(root)


def test_git_gc_default_is_auto():
    from gitsync.config import parse_args
    assert parse_args(["--repo", "r", "--root", "/tmp/x"], {}).git_gc == "auto"


# -- files other containers watch -------------------------------------------------------

@pytest.mark.parametrize("where", ["error.json", "absolute/dir/error.json"])
def test_error_file_holds_git_syncs_json(where, repo, tmp_path, gitsync):
    """e2e: export_error, export_error_abs_path."""
    root = tmp_path / "root"
    path = Path(where) if not where.startswith("absolute") else tmp_path / where
    assert one_time(gitsync, repo.url, root, "--ref", "does-not-exist",
                    "--error-file", str(path)) != 0
    written = path if path.is_absolute() else root / path
    error = json.loads(written.read_text())
    assert set(error) == {"Msg", "Err", "Args"}
    assert "does-not-exist" in error["Err"] and error["Args"]["failCount"] == 1
    assert not (root / "link").exists()
    assert one_time(gitsync, repo.url, root, "--error-file", str(path)) == 0
    assert file_at(root) == "one\n"
    assert not written.exists()


@pytest.mark.parametrize("where", ["touch.file", "absolute/dir/touch.file"])
def test_touch_file(where, repo, tmp_path, gitsync):
    """e2e: touch_file, touch_file_abs_path: touched at the first sync, at each new commit,
    and not by a poll that finds nothing new."""
    root = tmp_path / "root"
    path = root / where if not where.startswith("absolute") else tmp_path / where
    sidecar = watch(gitsync, repo, root, "--touch-file", str(path))
    wait_for(path.exists, WAIT, message="the touch file")
    path.unlink()
    polls = sidecar.metric("git_sync_count_total", status="noop")
    wait_for(lambda: sidecar.metric("git_sync_count_total", status="noop") >= polls + 3, WAIT,
             message="a few unchanged polls")
    assert not path.exists()
    repo.commit_and_push({"file": "two\n"}, "two")
    wait_for(path.exists, WAIT, message="the touch file after a commit")
    assert file_at(root) == "two\n"
    path.unlink()
    repo.reset_hard("HEAD^")
    repo.push(force=True)
    wait_for(path.exists, WAIT, message="the touch file after the commit was taken back")
    assert file_at(root) == "one\n"
