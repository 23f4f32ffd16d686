"""gitsync.git and gitsync.repository on their own, against a real bare remote under tmp_path."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from gitsync.git import TARGET_REF, Deadline, GitError, GitRunner, git_environment
from gitsync.model import SyncError
from gitsync.repository import Repository
from support.repos import git


@pytest.fixture
def repo(tmp_path) -> Repository:
    root = tmp_path / "root"
    root.mkdir()
    repository = Repository(root, GitRunner(env=git_environment(root)))
    repository.init()
    return repository


def deadline() -> Deadline:
    return Deadline(60)


def fetched(repo: Repository, remote) -> str:
    return repo.fetch(remote.url, "refs/heads/main", 0, deadline())


def worktree_paths(repo: Repository) -> list[str]:
    out = git("--git-dir", str(repo.git_dir), "worktree", "list", "--porcelain")
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")]


# -- the runner -------------------------------------------------------------------------

def test_a_failed_step_names_itself_and_hides_the_password(repo, tmp_path):
    runner = repo.runner.with_env({}, secrets=["s3cret-pass"])
    repo.runner = runner
    url = f"file://user:s3cret-pass@localhost{tmp_path}/missing.git"
    with pytest.raises(GitError) as caught:
        repo.fetch(url, "refs/heads/main", 1, deadline())
    assert isinstance(caught.value, SyncError) and caught.value.step == "fetch"
    assert str(caught.value).startswith("fetch: ") and "\n" not in str(caught.value)
    assert "s3cret-pass" not in str(caught.value)


def test_a_spent_deadline_stops_before_running_git(repo, remote):
    with pytest.raises(GitError) as caught:
        repo.fetch(remote.url, "refs/heads/main", 1, Deadline(0))
    assert caught.value.timed_out and caught.value.step == "fetch"
    assert not repo.has_commit(remote.remote_head())


# -- the repository -----------------------------------------------------------------------

def test_fetch_lands_in_the_target_ref(repo, remote):
    second = remote.commit_and_push({"b.txt": "b\n"}, "second")
    assert fetched(repo, remote) == second
    assert repo.resolve_commit(TARGET_REF) == second and repo.has_commit(second)
    assert repo.commit_info(second).subject == "second"


def test_a_depth_fetch_is_shallow_and_zero_unshallows_it(repo, remote):
    remote.commit_and_push({"b.txt": "b\n"}, "second")
    repo.fetch(remote.url, "refs/heads/main", 1, deadline())
    assert repo.is_shallow()
    fetched(repo, remote)
    assert not repo.is_shallow()


def test_ls_remote_follows_head_to_the_default_branch(repo, remote):
    head = repo.ls_remote(remote.url, "HEAD", deadline())
    assert (head.sha, head.ref) == (remote.remote_head(), "refs/heads/main")
    with pytest.raises(GitError, match="ls-remote: ref 'nope' not found"):
        repo.ls_remote(remote.url, "nope", deadline())


def test_reinit_makes_a_damaged_repository_healthy_and_empty(repo, remote):
    sha = fetched(repo, remote)
    for obj in (repo.git_dir / "objects").rglob("*"):
        if obj.is_file() and obj.parent.name != "info":
            obj.unlink()
    assert not repo.is_healthy()
    repo.reinit()
    assert repo.exists() and repo.is_healthy() and not repo.has_commit(sha)
    assert repo.get_config("core.trustctime") == "false"


def test_stale_locks_are_cleared_and_git_works_again(repo, remote):
    locks = [repo.git_dir / "config.lock", repo.git_dir / "shallow.lock",
             repo.git_dir / "refs" / "gitsync" / "target.lock"]
    for lock in locks:
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text("")
    with pytest.raises(GitError):
        repo.set_config("gitsync.test", "1")   # what a stale config.lock does
    assert sorted(repo.clear_stale_locks()) == sorted(locks)
    assert not any(lock.exists() for lock in locks)
    repo.set_config("gitsync.test", "1")
    assert fetched(repo, remote) == remote.remote_head()


def test_state_is_kept_with_the_repository(repo):
    assert repo.read_state("previous") is None
    repo.write_state("previous", "a" * 40)
    assert repo.read_state("previous") == "a" * 40
    assert [p.name for p in repo.git_dir.glob("*gitsync-*")] == ["gitsync-previous"]


# -- worktrees ----------------------------------------------------------------------------

def test_add_move_repair_and_prune_worktrees(repo, remote, tmp_path):
    sha = fetched(repo, remote)
    trees = repo.root / ".worktrees"
    first, moved, renamed = trees / "a", trees / "b", trees / "c"
    repo.add_worktree(first, sha, checkout=True, deadline=deadline())
    assert repo.worktree_head(first) == sha and repo.worktree_is_clean(first)
    repo.move_worktree(first, moved)
    assert repo.worktree_head(moved) == sha and str(moved) in worktree_paths(repo)
    os.rename(moved, renamed)              # as a kill inside a move leaves it
    repo.repair_worktrees([renamed])
    repo.prune_worktrees()
    assert worktree_paths(repo)[1:] == [str(renamed)] and repo.worktree_is_clean(renamed)
    admin = repo.worktree_admin_dir(renamed)
    (renamed / "README.md").unlink()
    assert not repo.worktree_is_clean(renamed)
    shutil.rmtree(renamed)
    repo.prune_worktrees()
    assert worktree_paths(repo)[1:] == [] and not admin.exists()


def test_in_worktree_refuses_a_directory_that_is_no_worktree(repo, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(GitError, match="verify: .* not a worktree"):
        repo.in_worktree("verify", plain, "status")


def test_register_worktree_gives_back_a_trees_admin_dir(repo, remote):
    sha = fetched(repo, remote)
    tree = repo.root / ".worktrees" / sha
    repo.add_worktree(tree, sha, checkout=True, deadline=deadline())
    admin = repo.worktree_admin_dir(tree)
    inode = (tree / "README.md").stat().st_ino
    repo.reinit()                          # the record goes with the old repository
    fetched(repo, remote)
    assert not admin.exists() and repo.worktree_head(tree) is None
    assert repo.register_worktree(tree, sha) == admin and admin.is_dir()
    assert repo.worktree_head(tree) == sha and repo.worktree_is_clean(tree)
    assert (tree / "README.md").stat().st_ino == inode
    with pytest.raises(GitError, match="recover:"):
        repo.register_worktree(tree, sha)  # the record is there now


def test_unlock_missing_worktrees_lets_prune_take_them(repo, remote):
    sha = fetched(repo, remote)
    gone, kept = repo.root / ".worktrees" / "gone", repo.root / ".worktrees" / "kept"
    for tree in (gone, kept):
        repo.add_worktree(tree, sha, checkout=False, deadline=deadline())
        git("--git-dir", str(repo.git_dir), "worktree", "lock", str(tree))
    shutil.rmtree(gone)
    repo.prune_worktrees()
    assert str(gone) in worktree_paths(repo)   # locked: prune keeps it, and git refuses the name
    assert repo.unlock_missing_worktrees() == 1
    repo.prune_worktrees()
    assert worktree_paths(repo)[1:] == [str(kept)]
    repo.add_worktree(gone, sha, checkout=True, deadline=deadline())
    assert repo.worktree_head(gone) == sha


def test_sparse_patterns_and_index_copy(repo, remote):
    sha = fetched(repo, remote)
    source, copy = repo.root / ".worktrees" / "src", repo.root / ".worktrees" / "copy"
    repo.add_worktree(source, sha, checkout=False, deadline=deadline())
    assert repo.sparse_patterns(source) is None
    repo.set_config("core.sparseCheckout", "true")
    repo.set_sparse_patterns(source, "/app/\n")
    repo.reset_hard(source)
    assert sorted(p.name for p in source.iterdir()) == [".git", "app"]
    repo.add_worktree(copy, sha, checkout=False, deadline=deadline())
    (copy / "app").mkdir()
    os.link(source / "app" / "main.py", copy / "app" / "main.py")
    repo.copy_index(source, copy)
    assert repo.sparse_patterns(copy) == "/app/\n"
    assert repo.worktree_is_clean(copy)        # the copied index describes the shared files


def test_submodule_configs_are_found_at_every_depth(repo, remote):
    sha = fetched(repo, remote)
    tree = repo.root / ".worktrees" / sha
    repo.add_worktree(tree, sha, checkout=True, deadline=deadline())
    assert not repo.has_submodule_repositories(tree) and repo.submodule_configs(tree) == []
    nested = repo.worktree_admin_dir(tree) / "modules" / "lib" / "modules" / "inner"
    for module, url in ((nested.parent.parent, "https://example.com/lib"), (nested, "https://example.com/inner")):
        git("init", "--quiet", "--bare", str(module))
        git("config", "--file", str(module / "config"), "remote.origin.url", url)
        git("config", "--file", str(module / "config"), "core.worktree", "/old/place")
    assert repo.submodule_urls(tree) == {Path("lib"): "https://example.com/lib",
                                         Path("lib/modules/inner"): "https://example.com/inner"}
    repo.unpin_submodules(tree)
    assert all(repo.get_config("core.worktree", file=config) is None
               for config in repo.submodule_configs(tree))
