"""Rollouts in the real engine: a real remote under tmp_path, the engine's own loop in a
thread, and tests/appserver.py answering as gitsync-reload's status API (or as an app's
health URL). Each test pushes real commits and watches what a user would: the link,
/api/v1/status's fields, the history, the trees on the volume.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import pytest
from appserver import reload_status
from support.repos import git, published_sha
from support.waiting import wait_for

TIMEOUT = "5s"
SYNTAX_ERROR = "exited 1: SyntaxError: '(' was never closed"


@pytest.fixture
def app(app_server):
    return app_server


@pytest.fixture
def start(engine_factory, remote, tmp_path, app):
    """start(*flags, health=False): a running engine that follows its publishes through `app`."""
    def make(*flags: str, health: bool = False, root: Path | None = None):
        probe = "--app-health-url" if health else "--app-status-url"
        return engine_factory("--repo", remote.url, "--root", str(root or tmp_path / "root"),
                              "--period", "60s", "--http-bind", "", "--rollout-timeout", TIMEOUT,
                              probe, app.url, *flags)
    return make


def status(engine) -> dict:
    return engine.status().to_dict()


def rollout(engine) -> dict:
    return status(engine)["rollout"] or {}


def link_of(engine) -> str | None:
    return published_sha(Path(engine.status().link))


def wait_rollout(engine, commit: str, state: str, timeout: float = 20) -> dict:
    """The rollout of `commit` is in `state`; a pending one's history row is made too (it
    comes a moment after the rollout begins, once the cycle ends)."""
    def reached():
        data = status(engine)
        now = data["rollout"] or {}
        made = state != "pending" or any(row["commit"] == commit for row in data["history"])
        return now.get("commit") == commit and now["state"] == state and made
    wait_for(reached, timeout=timeout,
             message=f"rollout of {commit[:7]} to be {state} (is {rollout(engine)})")
    return status(engine)


def sync_and_wait(engine) -> None:
    """Return once a whole cycle (sync, its poll of the app, housekeeping) ran after this
    call: the loop starts the second sync only after the first one's housekeeping."""
    for _ in range(2):
        count = engine.status().sync_count
        engine.trigger("manual")
        wait_for(lambda before=count: engine.status().sync_count > before, message="a sync to end")


def starting(running: str, new: str) -> dict:
    return reload_status(running, target=new, attempt={"commit": new, "state": "starting"})


def failing(running: str, bad: str, reason: str = SYNTAX_ERROR) -> dict:
    return reload_status(running, target=bad, attempt={"commit": bad, "state": "failed", "reason": reason})


def live_engine(start, remote, app, *flags: str, health: bool = False):
    """An engine whose first publish is live."""
    first = remote.head()
    app.answer({"status": "ok"} if health else reload_status(first))
    engine = start(*flags, health=health)
    wait_rollout(engine, first, "live")
    return engine, first


def push(engine, remote, files: dict, message: str, answer=None, app=None) -> str:
    """Commit, set what the app will answer about it, push, and tell the engine."""
    sha = remote.commit(files, message)
    if answer is not None:
        app.answer(answer(sha))
    remote.push()
    engine.trigger("webhook")
    return sha


def rows(data: dict, count: int) -> list[tuple]:
    return [(row["trigger"], row["commit"], (row.get("rollout") or {}).get("result"))
            for row in data["history"][:count]]


def seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- pending -> live ---------------------------------------------------------------------

def test_a_good_publish_is_pending_until_the_app_runs_it_then_live(start, remote, app):
    first = remote.head()
    app.answer(reload_status(None, "starting"))
    engine = start()
    assert wait_rollout(engine, first, "pending")["live_commit"] is None
    app.answer(reload_status(first))
    wait_rollout(engine, first, "live")

    second = push(engine, remote, {"app/main.py": "print('v2')\n"}, "v2",
                  lambda sha: starting(first, sha), app)
    data = wait_rollout(engine, second, "pending")
    assert data["commit"] == second and data["live_commit"] == first   # published, not live yet
    assert rows(data, 2) == [("webhook", second, "pending"), ("start", first, "live")]
    app.answer(reload_status(second))
    data = wait_rollout(engine, second, "live")
    assert data["live_commit"] == second and data["bad_commits"] == [] and data["paused"] is False
    assert data["history"][0]["rollout"] == {"result": "live", "reason": None}
    assert data["rollout"]["finished_at"] >= data["rollout"]["started_at"]
    assert data["held"] is None and data["state"] == "idle"


# -- failed -> rolled back ----------------------------------------------------------------

def test_a_failing_push_is_rolled_back_marked_bad_and_not_published_again(start, remote, app, caplog):
    caplog.set_level(logging.INFO)
    engine, first = live_engine(start, remote, app)
    bad = push(engine, remote, {"app/main.py": "print(\n"}, "a syntax error",
               lambda sha: failing(first, sha), app)

    data = wait_rollout(engine, bad, "rolled_back")
    assert link_of(engine) == first and data["commit"] == first and data["live_commit"] == first
    assert data["rollout"]["reason"] == SYNTAX_ERROR
    assert seconds(data["rollout"]["finished_at"]) - seconds(data["rollout"]["started_at"]) < 5
    assert [(mark["commit"], mark["reason"]) for mark in data["bad_commits"]] == [(bad, SYNTAX_ERROR)]
    assert rows(data, 3) == [("rollback", first, "rolled_back"), ("webhook", bad, "rolled_back"),
                             ("start", first, "live")]
    assert data["history"][0]["result"] == "published"
    assert data["history"][0]["rollout"]["reason"] == f"{bad[:7]} failed: {SYNTAX_ERROR}"

    app.answer(reload_status(first))   # the old app serves on
    wait_for(lambda: not engine.deploys.active(), message="the rollback to be followed to the end")
    for _ in range(2):
        sync_and_wait(engine)
        assert link_of(engine) == first
    data = status(engine)
    assert data["held"] == (f"ref at {bad[:7]} is marked bad: {SYNTAX_ERROR}; "
                            "POST /api/v1/retry to try it again")
    assert len(data["history"]) == 3, "the held syncs publish nothing"
    assert data["state"] == "idle" and data["consecutive_failures"] == 0 and engine.is_healthy()
    log = caplog.text
    assert f"rollout: following {bad[:7]}" in log
    assert f"rollout: {bad[:7]} failed: {SYNTAX_ERROR}; rolling back to {first[:7]}" in log
    assert f"rollout: {bad[:7]} rolled back to {first[:7]}" in log

    fix = push(engine, remote, {"app/main.py": "print('fixed')\n"}, "the fix", reload_status, app)
    data = wait_rollout(engine, fix, "live")
    assert link_of(engine) == fix and data["live_commit"] == fix
    assert data["bad_commits"] == [] and data["held"] is None   # the ref moved on


def test_a_newer_push_during_a_rollout_supersedes_it(start, remote, app):
    engine, first = live_engine(start, remote, app)
    second = push(engine, remote, {"f": "2"}, "two", lambda sha: starting(first, sha), app)
    wait_rollout(engine, second, "pending")
    third = push(engine, remote, {"f": "3"}, "three", lambda sha: starting(first, sha), app)
    data = wait_rollout(engine, third, "pending")
    assert data["history"][1]["commit"] == second
    assert data["history"][1]["rollout"] == {"result": "superseded", "reason": f"superseded by {third[:7]}"}
    app.answer(reload_status(third))
    data = wait_rollout(engine, third, "live")
    assert link_of(engine) == third and data["bad_commits"] == []
    assert [row["trigger"] for row in data["history"]] == ["webhook", "webhook", "start"], "no rollback"


def test_a_restarted_sidecar_resumes_the_rollout_by_its_own_deadline(start, remote, app):
    engine, first = live_engine(start, remote, app)
    second = push(engine, remote, {"f": "2"}, "two", lambda sha: starting(first, sha), app)
    started_at = wait_rollout(engine, second, "pending")["rollout"]["started_at"]
    engine.stop()
    wait_for(lambda: engine.status().state == "stopped", message="the first engine to stop")

    app.answer(status=503, body=b"<html>busy</html>")   # the app's status API is down meanwhile
    again = start()
    wait_for(again.is_ready, message="the restarted engine")
    assert rollout(again)["state"] == "pending" and rollout(again)["started_at"] == started_at
    data = wait_rollout(again, second, "rolled_back")
    assert data["rollout"]["reason"] == "not live after 5s: app status unreachable: answered 503"
    assert link_of(again) == first and again.deploys.ledger.is_bad(second)
    assert seconds(data["rollout"]["finished_at"]) - seconds(started_at) >= 5


def test_a_damaged_last_live_tree_is_rebuilt_before_the_flip_back(start, remote, app, tmp_path):
    engine, first = live_engine(start, remote, app)
    tree = tmp_path / "root" / ".worktrees" / first
    (tree / "README.md").unlink()
    (tree / "app" / "main.py").unlink()   # a new file, not a write into the shared inode
    (tree / "app" / "main.py").write_text("tampered\n")

    bad = push(engine, remote, {"app/main.py": "print(\n"}, "broken", lambda sha: failing(first, sha), app)
    wait_rollout(engine, bad, "rolled_back")
    link = Path(engine.status().link)
    assert published_sha(link) == first
    assert (link / "README.md").read_text() == "hello\n"
    assert (link / "app" / "main.py").read_text() == "print('v1')\n"
    assert git("status", "--porcelain", cwd=link) == ""


def test_bad_marks_live_outside_git_and_survive_a_re_initialised_repository(start, remote, app, tmp_path):
    engine, first = live_engine(start, remote, app)
    bad = push(engine, remote, {"app/main.py": "print(\n"}, "broken", lambda sha: failing(first, sha), app)
    wait_rollout(engine, bad, "rolled_back")
    app.answer(reload_status(first))
    engine.stop()
    wait_for(lambda: engine.status().state == "stopped", message="the engine to stop")
    root = tmp_path / "root"
    assert (root / ".gitsync" / "rollout.json").is_file()
    for obj in (root / ".git" / "objects").rglob("*"):   # a damaged repository: fetched afresh
        if obj.is_file() and obj.parent.name != "info":
            obj.unlink()

    again = start()
    wait_for(lambda: status(again)["held"] and status(again)["sync_count"] >= 1,
             message="the restarted engine's first sync to hold the bad head")
    assert link_of(again) == first and again.deploys.ledger.is_bad(bad)
    assert git("status", "--porcelain", cwd=Path(again.status().link)) == ""


# -- pause, resume -----------------------------------------------------------------------

def test_paused_syncs_fetch_but_publish_nothing_until_resumed(start, remote, app, tmp_path):
    engine, first = live_engine(start, remote, app)
    engine.deploys.set_paused(True)
    second = push(engine, remote, {"f": "2"}, "two", reload_status, app)
    wait_for(lambda: status(engine)["held"], message="the sync to hold the new head")
    data = status(engine)
    assert link_of(engine) == first and data["paused"] is True
    assert data["held"] == f"deploys are paused: {second[:7]} waits; POST /api/v1/resume to publish it"
    git("--git-dir", str(tmp_path / "root" / ".git"), "cat-file", "-e", f"{second}^{{commit}}")  # fetched

    engine.deploys.set_paused(False)
    data = wait_rollout(engine, second, "live")
    assert link_of(engine) == second and data["paused"] is False and data["held"] is None


# -- an app without gitsync-reload ---------------------------------------------------------

def test_an_app_with_only_a_health_url_is_followed_and_rolled_back(start, remote, app):
    engine, first = live_engine(start, remote, app, "--rollout-timeout", "2s", health=True)
    app.answer(status=503, body=b"down")
    second = push(engine, remote, {"f": "2"}, "two")
    wait_rollout(engine, second, "pending")
    data = wait_rollout(engine, second, "rolled_back")
    assert data["rollout"]["reason"] == "not live after 2s: health URL answered 503"
    assert link_of(engine) == first
    app.answer({"status": "ok"})
    wait_for(lambda: not engine.deploys.active(), message="the commit rolled back to to be live")
    assert status(engine)["rollout"]["state"] == "rolled_back"

    third = push(engine, remote, {"f": "3"}, "three")
    wait_rollout(engine, third, "live")
    assert link_of(engine) == third


# -- trees ---------------------------------------------------------------------------------

def trees(tmp_path) -> set[str]:
    return {entry.name for entry in (tmp_path / "root" / ".worktrees").iterdir()
            if not entry.name.startswith(".")}


def test_the_live_commits_tree_stays_while_newer_publishes_are_pending(start, remote, app, tmp_path):
    engine, first = live_engine(start, remote, app, "--rollout-timeout", "60s", health=True)
    app.answer(status=503, body=b"starting")
    second = push(engine, remote, {"f": "2"}, "two")
    wait_rollout(engine, second, "pending")
    third = push(engine, remote, {"f": "3"}, "three")
    wait_rollout(engine, third, "pending")
    sync_and_wait(engine)
    # the link is at third, second is the previous tree, first is only the live one
    assert trees(tmp_path) == {first, second, third}
    app.answer({"status": "ok"})
    wait_rollout(engine, third, "live")
    sync_and_wait(engine)
    assert trees(tmp_path) == {second, third}, "today's rule again: the previous tree stays"


def test_with_a_reporting_app_a_tree_goes_once_nothing_runs_in_it(start, remote, app, tmp_path):
    engine, first = live_engine(start, remote, app)
    old_worker = f"/srv/{tmp_path.name}/.worktrees/{first}"   # an old command drains in it
    second = push(engine, remote, {"f": "2"}, "two",
                  lambda sha: reload_status(sha, trees=[old_worker, f"/srv/.worktrees/{sha}"]), app)
    wait_rollout(engine, second, "live")
    sync_and_wait(engine)
    assert trees(tmp_path) == {first, second}, "the app reports a command still running in it"
    app.answer(reload_status(second))
    sync_and_wait(engine)
    assert trees(tmp_path) == {second}, "no longer run in, it goes without waiting for the next publish"
