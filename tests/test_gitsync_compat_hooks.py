"""git-sync v4's e2e scenarios for what happens after a sync: the exechook, the outbound
webhook, and the HTTP endpoint. Each test names its e2e case (`e2e: name`)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from compat_support import WAIT, ScriptedServer, hook_script, lines, slow_git, start_sidecar
from support.repos import Remote
from support.waiting import wait_for
from test_gitsync_compat import file_at, one_time

pytestmark = pytest.mark.timeout(120)

ENV_KEY, ENV_VALUE = "E2E_HOOK_VALUE", "from the sidecar's environment"


@pytest.fixture
def repo(tmp_path) -> Remote:
    remote = Remote(tmp_path / "remotes")
    remote.commit_and_push({"file": "one\n"}, "one")
    return remote


@pytest.fixture
def server():
    made: list[ScriptedServer] = []

    def make(answer=lambda n: (200, b"")) -> ScriptedServer:
        made.append(ScriptedServer(answer))
        return made[-1]

    yield make
    for each in made:
        each.stop()


def exechook(tmp_path: Path, *, fail: bool = False, sleep: float = 0) -> tuple[Path, Path]:
    """A hook that copies `file` to `exechook`, writes its env var, and logs each run."""
    runlog = tmp_path / "runlog"
    body = (f"sleep {sleep}\ncp file exechook\n"
            f'echo "{ENV_KEY}=${ENV_KEY}" > exechook-env\necho run >> {runlog}\n'
            + ("exit 1\n" if fail else ""))
    return hook_script(tmp_path / "hook.sh", body), runlog


def assert_hook_ran_in_tree(root: Path, content: str) -> None:
    assert file_at(root, "exechook") == content
    assert file_at(root, "exechook-env") == f"{ENV_KEY}={ENV_VALUE}\n"


# -- the exechook ------------------------------------------------------------------------

def test_exechook_runs_once_per_commit(repo, tmp_path, gitsync):
    """e2e: exechook_success."""
    hook, runlog = exechook(tmp_path)
    root = tmp_path / "root"
    sidecar = start_sidecar(gitsync, "--repo", repo.url, "--root", str(root), "--link", "link",
                            "--period", "100ms", "--exechook-command", str(hook),
                            env={ENV_KEY: ENV_VALUE})
    sidecar.wait_for_syncs(1)
    wait_for(lambda: lines(runlog) == 1, WAIT, message="the first hook run")
    assert_hook_ran_in_tree(root, "one\n")
    repo.commit_and_push({"file": "two\n"}, "two")
    sidecar.wait_for_syncs(2)
    wait_for(lambda: lines(runlog) == 2, WAIT, message="the second hook run")
    assert_hook_ran_in_tree(root, "two\n")


def test_a_failing_exechook_is_retried(repo, tmp_path, gitsync):
    """e2e: exechook_fail_retry."""
    hook, runlog = exechook(tmp_path, fail=True)
    sidecar = start_sidecar(gitsync, "--repo", repo.url, "--root", str(tmp_path / "root"),
                            "--link", "link", "--period", "100ms", "--exechook-command", str(hook),
                            "--exechook-backoff", "1s")
    sidecar.wait_for_syncs(1)
    wait_for(lambda: lines(runlog) >= 2, WAIT, message="a retried hook")


def test_one_time_waits_for_a_slow_exechook(repo, tmp_path, gitsync):
    """e2e: exechook_success_once."""
    hook, runlog = exechook(tmp_path, sleep=1)
    root = tmp_path / "root"
    assert gitsync("--repo", repo.url, "--root", str(root), "--link", "link", "--one-time",
                   "--http-bind", "", "--exechook-command", str(hook),
                   env={ENV_KEY: ENV_VALUE}).wait(WAIT) == 0
    assert_hook_ran_in_tree(root, "one\n")
    assert lines(runlog) == 1


def test_one_time_fails_with_a_failing_exechook_run_once(repo, tmp_path, gitsync):
    """e2e: exechook_fail_once."""
    hook, runlog = exechook(tmp_path, fail=True, sleep=1)
    root = tmp_path / "root"
    assert one_time(gitsync, repo.url, root, "--exechook-command", str(hook),
                    "--exechook-backoff", "1s") != 0
    assert file_at(root) == "one\n"
    assert lines(runlog) == 1


def test_exechook_runs_on_the_first_sync_of_a_restart(repo, tmp_path, gitsync):
    """e2e: exechook_startup_after_crash: nothing changed, the hook still runs (one lost in
    a crash is not lost)."""
    root = tmp_path / "root"
    assert one_time(gitsync, repo.url, root, "--ref", "main") == 0
    hook, runlog = exechook(tmp_path)
    assert gitsync("--repo", repo.url, "--root", str(root), "--link", "link", "--one-time",
                   "--ref", "main", "--http-bind", "", "--exechook-command", str(hook),
                   env={ENV_KEY: ENV_VALUE}).wait(WAIT) == 0
    assert_hook_ran_in_tree(root, "one\n")
    assert lines(runlog) == 1


def test_exechook_can_run_git_in_the_tree(repo, tmp_path, gitsync):
    """e2e: exechook_git_archive."""
    hook = hook_script(tmp_path / "archive.sh",
                       "git archive --format=tar.gz --output=archive.tgz HEAD\n")
    root = tmp_path / "root"
    assert one_time(gitsync, repo.url, root, "--exechook-command", str(hook)) == 0
    with tarfile.open(root / "link" / "archive.tgz") as archive:
        assert "file" in archive.getnames()


# -- the outbound webhook -------------------------------------------------------------------

def test_webhook_is_called_once_per_commit(repo, tmp_path, gitsync, server):
    """e2e: webhook_success."""
    hits = server()
    sidecar = start_sidecar(gitsync, "--repo", repo.url, "--root", str(tmp_path / "root"),
                            "--link", "link", "--period", "100ms", "--webhook-url", hits.url,
                            "--webhook-success-status", "200")
    sidecar.wait_for_syncs(1)
    wait_for(lambda: hits.hits == 1, WAIT, message="the first webhook call")
    repo.commit_and_push({"file": "two\n"}, "two")
    sidecar.wait_for_syncs(2)
    wait_for(lambda: hits.hits == 2, WAIT, message="the second webhook call")
    assert [h["Gitsync-Hash"] for _, _, h, _ in hits.requests][-1] == repo.remote_head()


def test_a_failing_webhook_is_retried_until_it_succeeds(repo, tmp_path, gitsync, server):
    """e2e: webhook_fail_retry."""
    answers = {"status": 500}
    hits = server(lambda n: (answers["status"], b""))
    sidecar = start_sidecar(gitsync, "--repo", repo.url, "--root", str(tmp_path / "root"),
                            "--link", "link", "--period", "100ms", "--webhook-url", hits.url,
                            "--webhook-backoff", "1s")
    sidecar.wait_for_syncs(1)
    wait_for(lambda: hits.hits >= 1, WAIT, message="a failed webhook call")
    answers["status"] = 200
    wait_for(lambda: hits.hits >= 2, WAIT, message="the retried webhook call")
    settled = hits.hits
    repo_unchanged_polls = sidecar.metric("git_sync_count_total", status="noop")
    wait_for(lambda: sidecar.metric("git_sync_count_total", status="noop") >= repo_unchanged_polls + 5,
             WAIT, message="polls after the success")
    assert hits.hits == settled   # no more calls once one succeeded


def test_one_time_webhook(repo, tmp_path, gitsync, server):
    """e2e: webhook_success_once."""
    hits = server()
    assert one_time(gitsync, repo.url, tmp_path / "root", "--webhook-url", hits.url) == 0
    assert hits.hits == 1


def test_one_time_fails_with_a_failing_webhook(repo, tmp_path, gitsync, server):
    """e2e: webhook_fail_retry_once."""
    hits = server(lambda n: (500, b""))
    root = tmp_path / "root"
    assert one_time(gitsync, repo.url, root, "--webhook-url", hits.url) != 0
    assert file_at(root) == "one\n"
    assert hits.hits == 1


def test_webhook_fire_and_forget(repo, tmp_path, gitsync, server):
    """e2e: webhook_fire_and_forget: --webhook-success-status=0 takes any answer."""
    hits = server(lambda n: (404, b""))
    sidecar = start_sidecar(gitsync, "--repo", repo.url, "--root", str(tmp_path / "root"),
                            "--link", "link", "--period", "100ms", "--webhook-url", hits.url,
                            "--webhook-success-status", "0", "--webhook-backoff", "1s")
    sidecar.wait_for_syncs(1)
    wait_for(lambda: hits.hits == 1, WAIT, message="the webhook call")
    polls = sidecar.metric("git_sync_count_total", status="noop")
    wait_for(lambda: sidecar.metric("git_sync_count_total", status="noop") >= polls + 5, WAIT,
             message="polls after the call")
    assert hits.hits == 1


# -- the HTTP endpoint ----------------------------------------------------------------------

def test_root_path_answers_503_until_the_first_publish(repo, tmp_path, gitsync):
    """e2e: expose_http: `/` is 503 before the first sync, 200 after (the page stays);
    /metrics answers. Difference on purpose: --http-pprof serves nothing (no Go runtime)."""
    slow = slow_git(tmp_path / "bin", 3)
    sidecar = start_sidecar(gitsync, "--repo", repo.url, "--root", str(tmp_path / "root"),
                            "--link", "link", "--period", "100ms", "--git", str(slow),
                            "--http-pprof")
    before = sidecar.get("/")
    assert before.status_code == 503 and "<html" in before.text.lower()
    sidecar.wait_for_syncs(1)
    after = sidecar.get("/")
    assert after.status_code == 200 and "<html" in after.text.lower()
    assert sidecar.get("/metrics").status_code == 200
    assert sidecar.process.output.count("--http-pprof") == 1   # the one warning
    assert sidecar.get("/debug/pprof/").status_code == 404


def test_root_path_is_200_soon_after_a_restart(repo, tmp_path, gitsync):
    """e2e: expose_http_after_restart."""
    root = tmp_path / "root"
    assert one_time(gitsync, repo.url, root) == 0
    sidecar = start_sidecar(gitsync, "--repo", repo.url, "--root", str(root), "--link", "link")
    wait_for(lambda: sidecar.get("/").status_code == 200, WAIT, message="/ to answer 200")
    assert file_at(root) == "one\n"


def test_the_api_is_on_by_default(repo, tmp_path):
    """Difference on purpose: git-sync serves nothing without --http-bind; gitsync's API is
    its face, on 0.0.0.0:8080 by default."""
    from gitsync.config import parse_args
    config = parse_args(["--repo", repo.url, "--root", str(tmp_path / "root")], {})
    assert config.http_bind == ("0.0.0.0", 8080)
