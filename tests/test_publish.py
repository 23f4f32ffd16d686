"""gitsync.publish on its own: trees and the link, over a real repository under tmp_path."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gitsync.git import Deadline, GitRunner, git_environment
from gitsync.model import SyncError
from gitsync.publish import Layout, Publisher
from gitsync.repository import Repository


class Volume:
    """A repository, a publisher over <root>/repo.git, and the remote it fetches from."""

    def __init__(self, root: Path, remote, stale_timeout: float = 0):
        root.mkdir()
        self.remote = remote
        self.repo = Repository(root, GitRunner(env=git_environment(root)))
        self.repo.init()
        self.link = root / "repo.git"
        self.publisher = Publisher(self.repo, Layout(root, self.link), stale_timeout=stale_timeout)
        self.publisher.make_room()

    def push_and_publish(self, files: dict[str, str | None]) -> str:
        sha = self.remote.commit_and_push(files)
        return self.publish(sha)

    def publish(self, sha: str) -> str:
        self.repo.fetch(self.remote.url, "refs/heads/main", 0, Deadline(60))
        self.publisher.publish(sha, Deadline(60))
        return sha

    def tree(self, sha: str) -> Path:
        return self.publisher.tree(sha)


@pytest.fixture
def volume(tmp_path, remote) -> Volume:
    return Volume(tmp_path / "root", remote)


def test_publish_swaps_the_link_and_keeps_the_old_tree(volume, remote):
    first = volume.publish(remote.remote_head())
    second = volume.push_and_publish({"README.md": "v2\n"})
    assert os.readlink(volume.link) == f".worktrees/{second}"
    assert (volume.link / "README.md").read_text() == "v2\n"
    assert (volume.tree(first) / "README.md").read_text() == "hello\n"
    assert volume.publisher.previous_sha() == first
    assert [p.name for p in volume.link.parent.iterdir() if ".tmp-" in p.name] == []


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_something_where_the_link_should_be_is_moved_aside_and_kept(volume, remote, kind):
    if kind == "directory":
        volume.link.mkdir()
        (volume.link / "mine.txt").write_text("keep me")
    else:
        volume.link.write_text("keep me")
    sha = volume.publish(remote.remote_head())
    assert os.readlink(volume.link) == f".worktrees/{sha}"
    kept = [p for p in volume.link.parent.iterdir() if p.name.startswith(f".{volume.link.name}.kept-")]
    assert len(kept) == 1
    assert (kept[0] / "mine.txt" if kind == "directory" else kept[0]).read_text() == "keep me"
    # Later publishes and housekeeping leave it alone.
    volume.push_and_publish({"README.md": "v2\n"})
    volume.publisher.remove_stale_trees()
    assert kept[0].exists()


def test_build_from_the_spare_writes_only_changed_files(volume, remote):
    first = volume.push_and_publish({"same.txt": "unchanged\n", "changed.txt": "old\n"})
    volume.publisher.prepare_spare()
    assert volume.publisher.spare_is_ready()
    second = volume.push_and_publish({"changed.txt": "new\n"})
    old, new = volume.tree(first), volume.tree(second)
    assert (new / "same.txt").stat().st_ino == (old / "same.txt").stat().st_ino
    assert (new / "changed.txt").stat().st_ino != (old / "changed.txt").stat().st_ino
    assert (old / "changed.txt").read_text() == "old\n" and (new / "changed.txt").read_text() == "new\n"
    assert volume.publisher.tree_is_sound(first) and volume.publisher.tree_is_sound(second)
    assert not (old.parent / ".spare").exists()


def test_the_spare_build_adds_removes_and_refuses_a_file_changed_behind_its_back(volume, remote):
    first = volume.push_and_publish({"changed.txt": "old\n", "gone.txt": "bye\n"})
    volume.publisher.prepare_spare()
    spare = volume.tree(first).parent / ".spare"
    edited = spare / "changed.txt.new"
    edited.write_text("edited in the spare\n")
    edited.replace(spare / "changed.txt")        # a new inode: the published tree keeps its file
    second = volume.push_and_publish({"changed.txt": "new\n", "deep/new/dir/added.txt": "added\n",
                                      "gone.txt": None})
    new = volume.tree(second)
    assert (new / "changed.txt").read_text() == "new\n"
    assert (new / "deep/new/dir/added.txt").read_text() == "added\n"
    assert not (new / "gone.txt").exists()
    assert (volume.tree(first) / "changed.txt").read_text() == "old\n"
    assert volume.publisher.tree_is_sound(second)


def test_publishing_a_sound_earlier_tree_only_flips_the_link(volume, remote):
    first = volume.publish(remote.remote_head())
    inode = (volume.tree(first) / "README.md").stat().st_ino
    second = volume.push_and_publish({"README.md": "v2\n"})
    volume.publish(first)                          # a rollback
    assert os.readlink(volume.link) == f".worktrees/{first}"
    assert (volume.tree(first) / "README.md").stat().st_ino == inode
    assert volume.publisher.previous_sha() == second


def test_a_damaged_published_tree_is_rebuilt_under_its_name(volume, remote):
    sha = volume.publish(remote.remote_head())
    (volume.tree(sha) / "README.md").write_text("edited by hand\n")
    assert not volume.publisher.tree_is_sound(sha)
    volume.publish(sha)
    assert (volume.link / "README.md").read_text() == "hello\n"
    assert volume.publisher.tree_is_sound(sha)


def test_remove_stale_trees_keeps_current_previous_and_the_given_ones(volume, remote):
    first = volume.publish(remote.remote_head())
    second = volume.push_and_publish({"n": "2"})
    third = volume.push_and_publish({"n": "3"})
    fourth = volume.push_and_publish({"n": "4"})
    assert volume.publisher.remove_stale_trees(keep={first}) == [second]
    assert volume.publisher.remove_stale_trees() == [first]
    on_disk = {p.name for p in volume.tree(first).parent.iterdir()}
    assert on_disk == {third, fourth}
    assert volume.publisher.published_sha() == fourth and volume.publisher.previous_sha() == third


def test_a_tree_left_recently_stays_until_the_stale_timeout(tmp_path, remote):
    volume = Volume(tmp_path / "root", remote, stale_timeout=3600)
    first = volume.publish(remote.remote_head())
    volume.push_and_publish({"n": "2"})
    volume.push_and_publish({"n": "3"})
    assert volume.publisher.remove_stale_trees() == []
    assert volume.tree(first).is_dir()


def test_discard_unfinished_keeps_only_complete_trees(volume, remote):
    sha = volume.publish(remote.remote_head())
    worktrees = volume.tree(sha).parent
    for name in (f".build-{'a' * 40}", ".trash-x-1234", ".spare"):
        (worktrees / name).mkdir()
        (worktrees / name / "f").write_text("x")
    assert volume.publisher.discard_unfinished() == [volume.tree(sha)]
    assert [p.name for p in worktrees.iterdir()] == [sha]


def push_a_file_no_filesystem_can_hold(remote) -> str:
    """A commit adding sub/<256 bytes>: plumbing in the bare remote, since no checkout can make it."""
    def run(*args: str, stdin: str = "") -> str:
        return subprocess.run(["git", "--git-dir", str(remote.path), *args], input=stdin, text=True,
                              capture_output=True, check=True).stdout.strip()
    blob = run("hash-object", "-w", "--stdin", stdin="too long\n")
    sub = run("mktree", stdin=f"100644 blob {blob}\t{'b' * 256}\n")
    parent = run("rev-parse", "refs/heads/main")
    entries = run("ls-tree", parent)
    tree = run("mktree", stdin=f"{entries}\n040000 tree {sub}\tsub\n")
    commit = run("commit-tree", tree, "-p", parent, "-m", "a name too long")
    run("update-ref", "refs/heads/main", commit)
    return commit


@pytest.mark.parametrize("from_spare", [True, False], ids=["from-spare", "fresh"])
def test_a_file_git_could_not_write_fails_the_publish_naming_it(volume, remote, from_spare):
    first = volume.publish(remote.remote_head())
    if from_spare:
        volume.publisher.prepare_spare()
        assert volume.publisher.spare_is_ready()
    bad = push_a_file_no_filesystem_can_hold(remote)
    with pytest.raises(SyncError) as caught:
        volume.publish(bad)
    assert caught.value.step == "checkout"
    assert f"sub/{'b' * 256}" in str(caught.value)  # git says so itself in a full checkout
    assert os.readlink(volume.link) == f".worktrees/{first}"
    assert (volume.link / "README.md").read_text() == "hello\n"
