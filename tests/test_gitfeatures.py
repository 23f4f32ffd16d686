"""Git features against real repositories: submodules, sparse checkout, --git-config, --depth.

Submodules live in bare remotes next to their superproject and are named by
relative URLs (../lib.git), as private repositories usually do. git 2.39 refuses
file:// submodules unless told otherwise, so these tests pass
`--git-config protocol.file.allow:always`; one test checks that gitsync does not
allow it by itself.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from support.repos import Remote, argv_recorder, git
from support.servers import SmartHttpServer
from gitsync.cli import build_engine
from gitsync.config import parse_args

pytestmark = pytest.mark.timeout(60)

ALLOW_FILE = ("--git-config", "protocol.file.allow:always")


def start(root: Path, url: str, *flags: str):
    """An engine over `root` as a (re)started sidecar has it: prepared, not yet synced."""
    engine = build_engine(parse_args(["--repo", url, "--root", str(root), "--http-bind", "",
                                      *flags], {}))
    engine.prepare()
    return engine


def sync(root: Path, url: str, *flags: str):
    engine = start(root, url, *flags)
    return engine, engine.sync_once("start")


def published(root: Path, name: str = "top.git") -> Path:
    return (root / name).resolve()


def top_level(tree: Path) -> list[str]:
    return sorted(p.name for p in tree.iterdir() if p.name != ".git")


def add_submodule(remote: Remote, url: str, path: str) -> None:
    git("-c", "protocol.file.allow=always", "submodule", "--quiet", "add", url, path,
        cwd=remote.work)


def bump_submodule(remote: Remote, path: str, message: str = "bump") -> str:
    """Move the submodule at `path` to its remote's newest commit and push the superproject."""
    git("-c", "protocol.file.allow=always", "submodule", "--quiet", "update", "--remote", path,
        cwd=remote.work)
    return remote.commit_and_push({}, message)


@pytest.fixture
def nested(tmp_path):
    """top.git -> mid (../mid.git) -> leaf (../leaf.git), each with one file of its own."""
    base = tmp_path / "remotes"
    leaf = Remote(base, "leaf.git")
    leaf.commit_and_push({"leaf.txt": "leaf v1\n"}, "leaf v1")
    mid = Remote(base, "mid.git")
    mid.commit({"mid.txt": "mid v1\n"})
    add_submodule(mid, "../leaf.git", "leaf")
    mid.commit_and_push({}, "mid v1")
    top = Remote(base, "top.git")
    top.commit({"top.txt": "top v1\n"})
    add_submodule(top, "../mid.git", "mid")
    top.commit_and_push({}, "top v1")
    return top, mid, leaf


# -- submodules ------------------------------------------------------------------------

def test_recursive_submodules_are_published_and_updated(nested, tmp_path):
    top, mid, leaf = nested
    root = tmp_path / "root"
    engine, result = sync(root, top.url, "--submodules", "recursive", *ALLOW_FILE)
    assert result.result == "published", result.error
    first = published(root)
    assert (first / "mid" / "mid.txt").read_text() == "mid v1\n"
    assert (first / "mid" / "leaf" / "leaf.txt").read_text() == "leaf v1\n"

    # A new leaf commit reaches the published tree only through both bumps.
    leaf.commit_and_push({"leaf.txt": "leaf v2\n"}, "leaf v2")
    bump_submodule(mid, "leaf")
    new_top = bump_submodule(top, "mid")
    result = engine.sync_once("poll")
    assert result.result == "published", result.error
    second = published(root)
    assert second.name == new_top != first.name
    assert (second / "mid" / "leaf" / "leaf.txt").read_text() == "leaf v2\n"
    # The tree the link left is untouched, for readers still inside it.
    assert (first / "mid" / "leaf" / "leaf.txt").read_text() == "leaf v1\n"
    # git still knows both trees and each nested submodule, after renames and all.
    assert git("rev-parse", "HEAD", cwd=second) == new_top
    assert git("rev-parse", "HEAD", cwd=second / "mid" / "leaf") == leaf.head()
    assert git("status", "--porcelain", cwd=second / "mid") == ""


def test_a_new_commit_fetches_only_the_submodules_that_changed(nested, tmp_path):
    top, mid, leaf = nested
    root = tmp_path / "root"
    with SmartHttpServer(top.path.parent) as server:
        def fetched() -> set[str]:
            """The repositories asked for objects since the last call."""
            names = {request.path.split("/")[1] for request in server.fetch_requests()}
            server.clear_requests()
            return names

        engine, result = sync(root, server.url_for("top.git"), "--submodules", "recursive")
        assert result.result == "published", result.error
        assert fetched() == {"top.git", "mid.git", "leaf.git"}

        # Only the superproject changed: git keeps submodule repositories per tree, yet
        # the new tree's start as links to the published tree's and fetch nothing.
        top.commit_and_push({"top.txt": "top v2\n"}, "top v2")
        assert engine.sync_once("poll").result == "published"
        second = published(root)
        assert fetched() == {"top.git"}
        assert (second / "top.txt").read_text() == "top v2\n"
        assert (second / "mid" / "leaf" / "leaf.txt").read_text() == "leaf v1\n"

        # A new leaf commit, through both bumps: each repository fetches what is new.
        leaf.commit_and_push({"leaf.txt": "leaf v2\n"}, "leaf v2")
        bump_submodule(mid, "leaf")
        bump_submodule(top, "mid")
        assert engine.sync_once("poll").result == "published"
        third = published(root)
        assert fetched() == {"top.git", "mid.git", "leaf.git"}
        assert (third / "mid" / "leaf" / "leaf.txt").read_text() == "leaf v2\n"
        assert git("status", "--porcelain", cwd=third / "mid") == ""
        assert git("rev-parse", "HEAD", cwd=third / "mid" / "leaf") == leaf.head()
        # ...and the tree the link left, readers may still be in, did not change through the links.
        assert (second / "mid" / "leaf" / "leaf.txt").read_text() == "leaf v1\n"
        assert git("rev-parse", "HEAD", cwd=second / "mid" / "leaf") != leaf.head()
        assert git("status", "--porcelain", cwd=second / "mid") == ""


def test_shallow_submodules_stop_at_the_first_level(nested, tmp_path):
    top, _, _ = nested
    root = tmp_path / "root"
    _, result = sync(root, top.url, "--submodules", "shallow", *ALLOW_FILE)
    assert result.result == "published", result.error
    tree = published(root)
    assert (tree / "mid" / "mid.txt").read_text() == "mid v1\n"
    assert (tree / "mid" / "leaf").is_dir()
    assert list((tree / "mid" / "leaf").iterdir()) == []


def test_submodules_off_leaves_them_empty(nested, tmp_path):
    top, _, _ = nested
    root = tmp_path / "root"
    _, result = sync(root, top.url, "--submodules", "off", *ALLOW_FILE)
    assert result.result == "published", result.error
    tree = published(root)
    assert (tree / "top.txt").is_file()
    assert list((tree / "mid").iterdir()) == []


def test_file_submodules_are_not_allowed_behind_the_users_back(nested, tmp_path):
    top, _, _ = nested
    root = tmp_path / "root"
    _, result = sync(root, top.url, "--submodules", "recursive")
    assert result.result == "error"
    assert result.error.startswith("submodules: ")
    assert "transport 'file' not allowed" in result.error
    assert "\n" not in result.error


def test_a_submodule_that_cannot_be_fetched_fails_the_sync_and_keeps_the_tree(nested, tmp_path):
    top, mid, _ = nested
    root = tmp_path / "root"
    engine, first = sync(root, top.url, "--submodules", "recursive", *ALLOW_FILE)
    assert first.result == "published", first.error
    # A submodule commit gitsync does not have yet, at a URL that does not answer.
    mid.commit_and_push({"mid.txt": "mid v2\n"}, "mid v2")
    bump_submodule(top, "mid")
    (top.work / ".gitmodules").write_text(
        (top.work / ".gitmodules").read_text().replace("../mid.git", "../gone.git"))
    top.commit_and_push({"top.txt": "top v2\n"}, "point mid at a missing repository")

    result = engine.sync_once("poll")
    assert result.result == "error"
    assert "\n" not in result.error
    assert result.error.startswith("submodules: ")
    assert "gone.git" in result.error and "not appear to be a git repository" in result.error
    assert published(root).name == first.commit
    assert (published(root) / "top.txt").read_text() == "top v1\n"
    status = engine.status()
    assert status.commit == first.commit
    assert status.last_error == result.error
    assert status.consecutive_failures == 1


# -- sparse checkout ---------------------------------------------------------------------

def test_sparse_checkout_on_first_publish_on_updates_and_after_a_restart(remote, tmp_path):
    remote.commit_and_push({"docs/guide.md": "guide\n", "app/lib/util.py": "u\n"}, "more")
    patterns = tmp_path / "sparse"
    patterns.write_text("/app/\n")
    root = tmp_path / "root"
    engine, result = sync(root, remote.url, "--sparse-checkout-file", str(patterns))
    assert result.result == "published", result.error
    tree = published(root, "repo.git")
    assert top_level(tree) == ["app"]
    assert (tree / "app" / "lib" / "util.py").read_text() == "u\n"

    # The next tree is built from a copy of this one: the sparse set must come along.
    assert engine.publisher.spare_is_ready()
    sha = remote.commit_and_push({"app/new.py": "n\n", "docs/more.md": "m\n", "top.txt": "t\n"})
    result = engine.sync_once("poll")
    assert result.result == "published", result.error
    tree = published(root, "repo.git")
    assert tree.name == sha
    assert top_level(tree) == ["app"]
    assert (tree / "app" / "new.py").read_text() == "n\n"
    assert git("status", "--porcelain", cwd=tree) == ""

    # Patterns changed between restarts apply to the next tree, spare or not.
    patterns.write_text("/docs/\n")
    engine = start(root, remote.url, "--sparse-checkout-file", str(patterns))
    sha = remote.commit_and_push({"docs/third.md": "3\n"})
    assert engine.sync_once("poll").result == "published"
    tree = published(root, "repo.git")
    assert tree.name == sha
    assert top_level(tree) == ["docs"]
    assert (tree / "docs" / "third.md").read_text() == "3\n"
    assert engine.publisher.spare_is_ready()
    sha = remote.commit_and_push({"docs/fourth.md": "4\n", "app/x.py": "x\n"})
    assert engine.sync_once("poll").result == "published"
    assert top_level(published(root, "repo.git")) == ["docs"]

    # And without a sparse file the whole tree comes back.
    engine = start(root, remote.url)
    sha = remote.commit_and_push({"five.txt": "5\n"})
    assert engine.sync_once("poll").result == "published"
    tree = published(root, "repo.git")
    assert tree.name == sha
    assert {"app", "docs", "README.md", "top.txt", "five.txt"} <= {p.name for p in tree.iterdir()}
    assert git("status", "--porcelain", cwd=tree) == ""


# -- --git-config ---------------------------------------------------------------------------

def test_git_config_reaches_every_git_call(tmp_path, monkeypatch):
    shim, argv_log = argv_recorder(tmp_path)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    base = tmp_path / "remotes"
    remote = Remote(base, "repo.git")
    os.symlink("README.md", remote.work / "link.md")
    remote.commit_and_push({"README.md": "hello\n"}, "with a symlink")
    with SmartHttpServer(base, username="cfg-user", password="cfg-pass") as server:
        header = "Authorization: Basic " + base64.b64encode(b"cfg-user:cfg-pass").decode()
        # Three entries; the quoted one holds a comma, as git-sync allows.
        flags = ("--git-config",
                 f'core.symlinks:false,http.extraHeader:"X-Note: a,b",http.extraHeader:{header}')
        config = parse_args(["--repo", "x", "--root", "y", *flags], {})
        assert config.git_config == (("core.symlinks", "false"),
                                     ("http.extraHeader", "X-Note: a,b"),
                                     ("http.extraHeader", header))
        root = tmp_path / "root"
        _, result = sync(root, server.url_for("repo.git"), *flags)
        assert result.result == "published", result.error
        # The server only lets in requests that carry the header set through --git-config.
        assert server.received_authorization()
        assert set(server.received_authorization()) == {header.split(": ", 1)[1]}
    link = published(root, "repo.git") / "link.md"
    assert not link.is_symlink()
    assert link.read_text() == "README.md"
    # The header (a token, often) reached git through its environment, not its argv (ps).
    argv = argv_log.read_text()
    assert "ls-remote" in argv and "fetch" in argv
    assert "cfg-pass" not in argv and header.split()[-1] not in argv and "X-Note" not in argv


# -- --depth changed between restarts --------------------------------------------------

def test_depth_changed_between_restarts(remote, tmp_path):
    for n in range(2, 6):
        remote.commit_and_push({"count.txt": f"{n}\n"}, f"commit {n}")
    root = tmp_path / "root"

    def history(root: Path) -> int:
        return int(git("rev-list", "--count", "HEAD", cwd=published(root, "repo.git")))

    _, result = sync(root, remote.url, "--depth", "1")
    assert result.result == "published" and history(root) == 1

    sha = remote.commit_and_push({"count.txt": "6\n"}, "commit 6")
    _, result = sync(root, remote.url, "--depth", "0")
    assert result.result == "published" and result.commit == sha
    assert history(root) == 6
    assert not (root / ".git" / "shallow").exists()

    sha = remote.commit_and_push({"count.txt": "7\n"}, "commit 7")
    engine, result = sync(root, remote.url, "--depth", "2")
    assert result.result == "published" and result.commit == sha
    assert history(root) == 2
    assert (published(root, "repo.git") / "count.txt").read_text() == "7\n"

    sha = remote.commit_and_push({"count.txt": "8\n"}, "commit 8")
    assert engine.sync_once("poll").result == "published"
    assert published(root, "repo.git").name == sha
    assert history(root) == 2


@pytest.mark.parametrize("pinned", [False, True], ids=["branch", "pinned-sha"])
def test_depth_change_applies_at_restart_without_a_new_commit(remote, tmp_path, pinned):
    for n in range(2, 6):
        sha = remote.commit_and_push({"count.txt": f"{n}\n"}, f"commit {n}")
    root = tmp_path / "root"
    ref = ("--ref", sha) if pinned else ()

    def history() -> int:
        return int(git("rev-list", "--count", "HEAD", cwd=published(root, "repo.git")))

    _, result = sync(root, remote.url, *ref, "--depth", "1")
    assert result.result == "published" and history() == 1
    tree = published(root, "repo.git")

    # Same commit, deeper history wanted: the restart fetches it, the tree stays as it is.
    engine, result = sync(root, remote.url, *ref, "--depth", "0")
    assert result.result == "unchanged" and result.commit == sha
    assert history() == 5 and not (root / ".git" / "shallow").exists()
    assert published(root, "repo.git") == tree
    assert engine.sync_once("poll").result == "unchanged" and history() == 5

    _, result = sync(root, remote.url, *ref, "--depth", "2")
    assert result.result == "unchanged" and history() == 2

    # The same depth again: nothing to reshape, so an unchanged sync does not fetch.
    with SmartHttpServer(remote.path.parent) as server:
        _, result = sync(root, server.url_for(remote.path.name), *ref, "--depth", "2")
        assert result.result == "unchanged" and history() == 2
        assert server.fetch_requests() == []
        assert server.upload_pack_posts() == (0 if pinned else 1)  # a branch costs one ls-refs
