"""git-sync v4's end-to-end scenarios, run against gitsync: the root, refs, the layout.

Each test names the e2e case of kubernetes/git-sync's test_e2e.sh it stands for
(`e2e: name`), rewritten here with real repositories and real gitsync processes. The
hooks, HTTP, auth and git-feature cases are in test_gitsync_compat_*.py. Two differences
are on purpose and asserted as such: the tree the link left stays until the next
publish (git-sync removes it at once), and the HTTP API is on by default.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from compat_support import WAIT, slow_git, start_sidecar
from support.repos import Remote, git, published_sha
from support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


def one_time(gitsync, url: str, root: Path, *flags: str) -> int:
    """A --one-time run; its exit status."""
    return gitsync("--repo", url, "--root", str(root), "--link", "link", "--one-time",
                   "--http-bind", "", *flags).wait(60)


def file_at(root: Path, name: str = "file") -> str:
    return (root / "link" / name).read_text()


@pytest.fixture
def repo(tmp_path) -> Remote:
    """A remote whose `file` says what commit it is."""
    remote = Remote(tmp_path / "remotes")
    remote.commit_and_push({"file": "one\n"}, "one")
    return remote


# -- the root -----------------------------------------------------------------------

@pytest.mark.parametrize("case", ["doesnt_exist", "exists_empty", "flag_is_weird", "flag_has_symlink"])
def test_root_forms(case, repo, tmp_path, gitsync):
    """e2e: init_root_doesnt_exist, init_root_exists_empty, init_root_flag_is_weird,
    init_root_flag_has_symlink."""
    base = tmp_path / "base"
    base.mkdir()
    real = base / "subdir"
    root_flag = str(real)
    if case == "exists_empty":
        real.mkdir()
    elif case == "flag_is_weird":
        real.mkdir()
        root_flag = f"{base}/../{base.name}/./subdir/"
    elif case == "flag_has_symlink":
        real.mkdir()
        (base / "rootlink").symlink_to(real)
        root_flag = str(base / "rootlink")
    assert one_time(gitsync, repo.url, Path(root_flag)) == 0
    assert (real / "link").is_symlink()
    assert file_at(real) == "one\n"


def test_root_under_another_repository(repo, tmp_path, gitsync):
    """e2e: init_root_is_under_another_repo."""
    outer = tmp_path / "outer"
    root = outer / "root"
    root.mkdir(parents=True)
    (root / "file").write_text("not empty\n")
    git("init", "--quiet", str(outer))
    assert one_time(gitsync, repo.url, root) == 0
    assert file_at(root) == "one\n"


def test_root_with_a_broken_repository(repo, tmp_path, gitsync):
    """e2e: init_root_fails_sanity."""
    root = tmp_path / "root"
    git("init", "--quiet", str(root))
    (root / ".git" / "HEAD").write_text("ref: refs/heads/nonexist\n")
    assert one_time(gitsync, repo.url, root) == 0
    assert file_at(root) == "one\n"


def test_a_ref_that_does_not_exist_exits_non_zero(repo, tmp_path, gitsync):
    """e2e: bad_ref_non_zero_exit."""
    root = tmp_path / "root"
    assert one_time(gitsync, repo.url, root, "--ref", "does-not-exist") != 0
    assert not (root / "link").exists()


# -- following a ref -------------------------------------------------------------------

@pytest.mark.parametrize("ref", [None, "HEAD", "main"])
def test_following_the_default_ref_head_or_a_branch(ref, repo, tmp_path, gitsync):
    """e2e: sync_default_ref, sync_head, sync_branch: each new commit is published, counted
    as a success and a fetch; a commit taken back is published too."""
    root = tmp_path / "root"
    flags = ["--ref", ref] if ref else []
    sidecar = start_sidecar(gitsync, "--repo", repo.url, "--root", str(root), "--link", "link",
                            "--period", "100ms", *flags)
    sidecar.wait_for_syncs(1)
    assert file_at(root) == "one\n"
    assert sidecar.metric("git_fetch_count_total") == 1
    repo.commit_and_push({"file": "two\n"}, "two")
    sidecar.wait_for_syncs(2)
    assert file_at(root) == "two\n"
    assert sidecar.metric("git_fetch_count_total") == 2
    repo.reset_hard("HEAD^")
    repo.push(force=True)
    sidecar.wait_for_syncs(3)
    assert file_at(root) == "one\n"


@pytest.mark.parametrize("link", ["absolute", "sub/dir/link"])
def test_absolute_and_nested_links(link, repo, tmp_path, gitsync):
    """e2e: sync_head_absolute_link, sync_head_subdir_link."""
    root = tmp_path / "root"
    where = tmp_path / "elsewhere" / "link" if link == "absolute" else root / link
    sidecar = start_sidecar(gitsync, "--repo", repo.url, "--root", str(root), "--link", str(where),
                            "--period", "100ms")
    sidecar.wait_for_syncs(1)
    assert (where / "file").read_text() == "one\n"
    repo.commit_and_push({"file": "two\n"}, "two")
    sidecar.wait_for_syncs(2)
    assert (where / "file").read_text() == "two\n"
    assert not os.path.isabs(os.readlink(where))


def test_the_link_names_the_commit(repo, tmp_path, gitsync):
    """e2e: readlink: the link's last part is the published commit."""
    root = tmp_path / "root"
    assert one_time(gitsync, repo.url, root) == 0
    assert Path(os.readlink(root / "link")).name == repo.remote_head()


def test_switching_branch_across_restarts(repo, tmp_path, gitsync):
    """e2e: sync_branch_switch."""
    root = tmp_path / "root"
    repo.switch("other", create=True)
    repo.commit_and_push({"file": "other\n"}, "other", branch="other")
    assert one_time(gitsync, repo.url, root, "--ref", "main") == 0
    assert file_at(root) == "one\n"
    assert one_time(gitsync, repo.url, root, "--ref", "other") == 0
    assert file_at(root) == "other\n"


@pytest.mark.parametrize("annotated", [False, True], ids=["tag", "annotated_tag"])
def test_following_a_tag_as_it_moves(annotated, repo, tmp_path, gitsync):
    """e2e: sync_tag, sync_annotated_tag."""
    root = tmp_path / "root"
    repo.tag("v1", annotated=annotated)
    sidecar = start_sidecar(gitsync, "--repo", repo.url, "--root", str(root), "--link", "link",
                            "--ref", "v1", "--period", "100ms")
    sidecar.wait_for_syncs(1)
    assert file_at(root) == "one\n"
    repo.commit_and_push({"file": "two\n"}, "two")
    git("tag", "--force", *(["-a", "-m", "moved"] if annotated else []), "v1", cwd=repo.work)
    git("push", "--quiet", "--force", "origin", "refs/tags/v1", cwd=repo.work)
    sidecar.wait_for_syncs(2)
    assert file_at(root) == "two\n"
    assert published_sha(root / "link") == repo.head()


def test_a_sha_is_published_once_and_then_left_alone(repo, tmp_path, gitsync):
    """e2e: sync_sha, sync_sha_once: a pinned commit, whatever the branch does later."""
    root = tmp_path / "root"
    first = repo.remote_head()
    repo.commit_and_push({"file": "two\n"}, "two")
    sidecar = start_sidecar(gitsync, "--repo", repo.url, "--root", str(root), "--link", "link",
                            "--ref", first, "--period", "100ms")
    sidecar.wait_for_syncs(1)
    assert file_at(root) == "one\n"
    repo.commit_and_push({"file": "three\n"}, "three")
    wait_for(lambda: sidecar.metric("git_sync_count_total", status="noop") >= 2, WAIT,
             message="polls after the pin")
    assert file_at(root) == "one\n"
    assert one_time(gitsync, repo.url, tmp_path / "once", "--ref", first) == 0
    assert file_at(tmp_path / "once") == "one\n"


@pytest.mark.parametrize("known", [True, False])
def test_one_time_runs_with_another_sha(known, repo, tmp_path, gitsync):
    """e2e: sync_sha_once_sync_different_sha_known, ..._unknown."""
    root = tmp_path / "root"
    first = repo.remote_head()
    second = repo.commit_and_push({"file": "two\n"}, "two") if known else None
    assert one_time(gitsync, repo.url, root, "--ref", first) == 0
    if not known:
        second = repo.commit_and_push({"file": "two\n"}, "two")
        repo.commit_and_push({"file": "three\n"}, "three")
    assert one_time(gitsync, repo.url, root, "--ref", second) == 0
    assert file_at(root) == "two\n"


@pytest.mark.parametrize("removed", ["link", ".worktrees"])
def test_a_run_after_the_link_or_the_trees_were_removed(removed, repo, tmp_path, gitsync):
    """e2e: sync_crash_no_link_cleanup_retry, sync_crash_no_worktree_cleanup_retry."""
    root = tmp_path / "root"
    assert one_time(gitsync, repo.url, root) == 0
    target = root / removed
    if target.is_symlink():
        target.unlink()
    else:
        import shutil
        shutil.rmtree(target)
    assert one_time(gitsync, repo.url, root) == 0
    assert file_at(root) == "one\n"


def test_a_file_named_for_the_sha_in_the_root(repo, tmp_path, gitsync):
    """e2e: sync_sha_shafile_exists (git-sync v3 kept trees at the root)."""
    root = tmp_path / "root"
    first = repo.remote_head()
    second = repo.commit_and_push({"file": "two\n"}, "two")
    assert one_time(gitsync, repo.url, root, "--ref", first) == 0
    (root / second).touch()
    assert one_time(gitsync, repo.url, root, "--ref", second) == 0
    assert file_at(root) == "two\n"


def test_switching_repository_across_restarts(repo, tmp_path, gitsync):
    """e2e: sync_repo_switch."""
    root = tmp_path / "root"
    other = Remote(tmp_path / "remotes", name="other.git")
    other.commit_and_push({"file": "other repo\n"}, "other")
    assert one_time(gitsync, repo.url, root) == 0
    assert one_time(gitsync, other.url, root) == 0
    assert file_at(root) == "other repo\n"


# -- timing and signals -------------------------------------------------------------------

def test_a_git_slower_than_the_timeout_fails(repo, tmp_path, gitsync):
    """e2e: error_slow_git_short_timeout (with --git, as git-sync's suite does)."""
    root = tmp_path / "root"
    slow = slow_git(tmp_path / "bin", 5)
    assert one_time(gitsync, repo.url, root, "--git", str(slow), "--sync-timeout", "1s") != 0
    assert not (root / "link" / "file").exists()


def test_a_slow_git_within_the_timeout_syncs(repo, tmp_path, gitsync):
    """e2e: sync_slow_git_long_timeout."""
    root = tmp_path / "root"
    slow = slow_git(tmp_path / "bin", 1)
    sidecar = start_sidecar(gitsync, "--repo", repo.url, "--root", str(root), "--link", "link",
                            "--git", str(slow), "--period", "100ms", "--sync-timeout", "16s")
    sidecar.wait_for_syncs(1, timeout=60)
    repo.commit_and_push({"file": "two\n"}, "two")
    sidecar.wait_for_syncs(2, timeout=60)
    assert file_at(root) == "two\n"
    assert sidecar.metric("git_fetch_count_total") == 2


@pytest.mark.parametrize("name", ["SIGHUP", "HUP", "1"])
def test_sync_on_signal(name, repo, tmp_path, gitsync):
    """e2e: sync_on_signal_sighup, sync_on_signal_hup, sync_on_signal_1."""
    root = tmp_path / "root"
    sidecar = start_sidecar(gitsync, "--repo", repo.url, "--root", str(root), "--link", "link",
                            "--period", "100s", "--sync-on-signal", name)
    sidecar.wait_for_syncs(1)
    repo.commit_and_push({"file": "two\n"}, "two")
    sidecar.process.signal(signal.SIGHUP)
    sidecar.wait_for_syncs(2)
    assert file_at(root) == "two\n"


def test_init_period_is_used_until_the_first_success(repo, tmp_path, gitsync):
    """e2e: init_period_faster_initial_sync: fast attempts at start, --period after."""
    root = tmp_path / "root"
    sidecar = start_sidecar(gitsync, "--repo", repo.url, "--root", str(root), "--link", "link",
                            "--period", "100s", "--init-period", "100ms")
    sidecar.wait_for_syncs(1)
    repo.commit_and_push({"file": "two\n"}, "two")
    time.sleep(1.5)   # ten init periods: nothing may sync now that --period rules
    assert file_at(root) == "one\n"
    assert sidecar.metric("git_sync_count_total", status="success") == 1


def test_init_period_retries_fast_while_failing(tmp_path, gitsync):
    """--init-period applies to failed attempts too: a remote that appears late is picked
    up within the init period, not the long --period."""
    root = tmp_path / "root"
    late = Remote(tmp_path / "late-remote")
    sidecar = start_sidecar(gitsync, "--repo", late.url, "--root", str(root), "--link", "link",
                            "--period", "100s", "--init-period", "100ms", "--max-failures", "-1")
    wait_for(lambda: sidecar.metric("git_sync_count_total", status="error") >= 2, WAIT,
             message="failed attempts at the init period")
    late.commit_and_push({"file": "late\n"}, "late")
    sidecar.wait_for_syncs(1)
    assert file_at(root) == "late\n"


def test_init_max_failures_ends_the_start_phase(tmp_path, gitsync):
    """e2e: init_max_failures_exceeded: --max-failures=-1 for later, 3 before a success."""
    root = tmp_path / "root"
    proc = gitsync("--repo", "file:///does/not/exist", "--root", str(root), "--link", "link",
                   "--period", "100ms", "--init-max-failures", "3", "--max-failures", "-1",
                   "--http-bind", "")
    assert proc.wait(WAIT) == 1
    assert proc.output.count("sync failed") == 4
