"""git-sync v4's e2e scenarios for submodules: followed, nested, shallow, off, relative,
and on SSH servers that each want their own key. Each test names its e2e case."""

from __future__ import annotations

from pathlib import Path

import pytest
from compat_support import add_submodule, bump_submodule, drop_submodule, start_sidecar
from support.servers import SshServer
from support.repos import Remote, git
from test_gitsync_compat import file_at, one_time

pytestmark = pytest.mark.timeout(180)
# git refuses file:// submodules unless told (CVE-2022-39253); git-sync's suite says so too.
ALLOW_FILE = ("--git-config", "protocol.file.allow:always")


@pytest.fixture
def repos(tmp_path):
    """main, sub and nested remotes, each with a first commit."""
    base = tmp_path / "remotes"
    main, sub, nested = (Remote(base, name=f"{n}.git") for n in ("main", "sub", "nested"))
    main.commit_and_push({"file": "main\n"}, "main")
    sub.commit_and_push({"submodule.file": "submodule\n"}, "sub")
    nested.commit_and_push({"nested-submodule.file": "nested\n"}, "nested")
    return main, sub, nested


def watch(gitsync, main: Remote, root: Path, *flags: str):
    return start_sidecar(gitsync, "--repo", main.url, "--root", str(root), "--link", "link",
                         "--period", "100ms", *ALLOW_FILE, *flags)


def test_submodules_followed_through_changes(repos, tmp_path, gitsync):
    """e2e: submodule_sync_default: bumped, taken back, a nested one added and removed,
    the submodule removed."""
    main, sub, nested = repos
    root = tmp_path / "root"
    add_submodule(main, "sub", sub.url, sub.head())
    sidecar = watch(gitsync, main, root)
    sidecar.wait_for_syncs(1)
    assert file_at(root, "sub/submodule.file") == "submodule\n"
    first = sub.head()
    bump_submodule(main, "sub", sub.commit_and_push({"submodule.file": "two\n"}, "two"))
    sidecar.wait_for_syncs(2)
    assert file_at(root, "sub/submodule.file") == "two\n"
    bump_submodule(main, "sub", first)
    sidecar.wait_for_syncs(3)
    assert file_at(root, "sub/submodule.file") == "submodule\n"
    sub.reset_hard(first)
    sub.push(force=True)
    bump_submodule(main, "sub", add_submodule(sub, "nested-sub", nested.url, nested.head()))
    sidecar.wait_for_syncs(4)
    assert file_at(root, "sub/nested-sub/nested-submodule.file") == "nested\n"
    bump_submodule(main, "sub", drop_submodule(sub, "nested-sub"))
    sidecar.wait_for_syncs(5)
    assert file_at(root, "sub/submodule.file") == "submodule\n"
    assert not (root / "link" / "sub" / "nested-sub" / "nested-submodule.file").exists()
    drop_submodule(main, "sub")
    sidecar.wait_for_syncs(6)
    assert file_at(root) == "main\n"
    assert not (root / "link" / "sub" / "submodule.file").exists()
    assert sidecar.metric("git_sync_count_total", status="success") == 6


def test_submodule_depth(repos, tmp_path, gitsync):
    """e2e: submodule_sync_depth: --depth 1 holds for the repository and the submodule."""
    main, sub, _ = repos
    sub.commit_and_push({"submodule.file": "two\n"}, "two")
    main.commit_and_push({"file": "main 2\n"}, "main 2")
    add_submodule(main, "sub", sub.url, sub.head())   # after: `add --all` would drop the gitlink
    root = tmp_path / "root"
    assert one_time(gitsync, main.url, root, "--depth", "1", *ALLOW_FILE) == 0
    assert file_at(root, "sub/submodule.file") == "two\n"
    assert git("rev-list", "--count", "HEAD", cwd=root / "link") == "1"
    assert git("rev-list", "--count", "HEAD", cwd=root / "link" / "sub") == "1"


def test_submodules_off(repos, tmp_path, gitsync):
    """e2e: submodule_sync_off."""
    main, sub, _ = repos
    add_submodule(main, "sub", sub.url, sub.head())
    root = tmp_path / "root"
    assert one_time(gitsync, main.url, root, "--submodules", "off", *ALLOW_FILE) == 0
    assert file_at(root) == "main\n"
    assert not (root / "link" / "sub" / "submodule.file").exists()


def test_submodules_shallow(repos, tmp_path, gitsync):
    """e2e: submodule_sync_shallow: the first level only."""
    main, sub, nested = repos
    add_submodule(sub, "nested-sub", nested.url, nested.head())
    add_submodule(main, "sub", sub.url, sub.head())
    root = tmp_path / "root"
    assert one_time(gitsync, main.url, root, "--submodules", "shallow", *ALLOW_FILE) == 0
    assert file_at(root, "sub/submodule.file") == "submodule\n"
    assert not (root / "link" / "sub" / "nested-sub" / "nested-submodule.file").exists()


def test_submodule_with_a_relative_url(repos, tmp_path, gitsync):
    """e2e: submodule_sync_relative."""
    main, sub, _ = repos
    add_submodule(main, "sub", "../sub.git", sub.head())
    root = tmp_path / "root"
    sidecar = watch(gitsync, main, root)
    sidecar.wait_for_syncs(1)
    assert file_at(root, "sub/submodule.file") == "submodule\n"
    assert sidecar.metric("git_sync_count_total", status="success") == 1


def test_submodules_over_ssh_with_different_keys(repos, tmp_path, gitsync):
    """e2e: submodule_sync_over_ssh_different_keys: each server knows one key; both keys
    are given with --ssh-key-file."""
    main, sub, nested = repos
    with SshServer(tmp_path / "sshd-1") as first, SshServer(tmp_path / "sshd-2") as second, \
            SshServer(tmp_path / "sshd-3") as third:
        add_submodule(sub, "nested-sub", first.url_for(nested.path), nested.head())
        add_submodule(main, "sub", second.url_for(sub.path), sub.head())
        root = tmp_path / "root"
        keys = [arg for server in (first, second, third)
                for arg in ("--ssh-key-file", str(server.client_key))]
        assert one_time(gitsync, third.url_for(main.path), root, "--ssh-known-hosts=false", *keys) == 0
        assert file_at(root, "sub/nested-sub/nested-submodule.file") == "nested\n"
