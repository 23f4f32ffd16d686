"""The rollout tracker: real HTTP servers for the app, a real directory for what is kept,
and a clock the test moves, so a 60 s deadline passes without waiting for it."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from support.ports import free_port
from appserver import FakeApp, reload_status

from gitsync.rollout import (
    Degraded,
    Failed,
    HealthProbe,
    Live,
    Rollback,
    Rollouts,
    StatusProbe,
)

T0 = 1_800_000_000.0


def sha(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


OLD, NEW, NEWER = sha("old"), sha("new"), sha("newer")


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def app(app_server):
    return app_server


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def tracker_for(tmp_path, clock):
    """tracker_for(probe): a resumed Rollouts keeping its state in tmp_path/state."""
    def make(probe, **settings):
        tracker = Rollouts(tmp_path / "state", probe, clock=clock, **settings)
        tracker.resume()
        return tracker
    return make


def failed_attempt(running: str | None, bad: str, reason: str = "exited 1") -> dict:
    return reload_status(running, "ready" if running else "failed", target=bad,
                         attempt={"commit": bad, "state": "failed", "reason": reason})


def live_on(tracker: Rollouts, app: FakeApp, commit: str) -> None:
    """Bring `commit` to live the way a publish does, so it becomes the rollback target."""
    app.answer(reload_status(commit))
    tracker.begin(commit)
    assert tracker.poll() == Live(commit)


def test_without_a_probe_a_publish_is_live_at_once(tracker_for):
    tracker = tracker_for(None)
    assert tracker.begin(NEW) == Live(NEW)
    assert tracker.ledger.snapshot()["live_commit"] == NEW
    assert tracker.ledger.snapshot()["rollout"]["state"] == "live"
    assert not tracker.active() and tracker.poll() is None


def test_pending_until_the_app_runs_the_commit_then_live(tracker_for, app, clock):
    tracker = tracker_for(StatusProbe(app.url))
    results = []
    tracker.ledger.add_listener(results.append)
    live_on(tracker, app, OLD)
    tracker.begin(NEW)
    app.answer(reload_status(OLD, target=NEW, attempt={"commit": NEW, "state": "starting"}))
    clock.advance(2)
    assert tracker.poll() is None and tracker.active()
    shown = tracker.ledger.snapshot()
    assert shown["live_commit"] == OLD
    assert shown["rollout"] == {"commit": NEW, "state": "pending", "reason": None,
                                "started_at": "2027-01-15T08:00:00.000Z", "finished_at": None}
    app.answer(reload_status(NEW))
    clock.advance(1.5)
    assert tracker.poll() == Live(NEW)
    shown = tracker.ledger.snapshot()
    assert shown["live_commit"] == NEW and shown["rollout"]["state"] == "live"
    assert shown["rollout"]["finished_at"] == "2027-01-15T08:00:03.500Z"
    assert not tracker.active()
    assert [(r.commit, r.result, r.duration_seconds) for r in results] == [(OLD, "live", 0.0),
                                                                           (NEW, "live", 3.5)]
    assert tracker.ledger.totals()["live"] == 2


def test_a_failed_attempt_rolls_back_with_the_apps_reason(tracker_for, app, clock):
    tracker = tracker_for(StatusProbe(app.url))
    live_on(tracker, app, OLD)
    tracker.begin(NEW)
    app.answer(failed_attempt(OLD, NEW, "exited 1"))
    clock.advance(1)
    assert tracker.poll() == Rollback(to=OLD, bad=NEW, reason="exited 1")
    assert tracker.ledger.is_bad(NEW) and tracker.ledger.snapshot()["rollout"]["state"] == "failed"
    assert tracker.ledger.snapshot()["bad_commits"] == [
        {"commit": NEW, "reason": "exited 1", "at": "2027-01-15T08:00:01.000Z"}]
    assert tracker.poll() is None, "the decision is handed out once"
    tracker.rolled_back(NEW)
    shown = tracker.ledger.snapshot()
    assert shown["rollout"]["state"] == "rolled_back" and shown["rollout"]["reason"] == "exited 1"
    assert shown["live_commit"] == OLD
    # the app is still serving OLD (a flip back to the running commit restarts nothing)
    app.answer(reload_status(OLD))
    assert tracker.poll() == Live(OLD)
    assert tracker.ledger.snapshot()["rollout"]["state"] == "rolled_back" and not tracker.active()
    assert tracker.ledger.totals()["rolled_back"] == 1


def test_status_url_down_fails_at_the_timeout_as_unreachable(tracker_for, app, clock):
    tracker = tracker_for(StatusProbe(f"http://127.0.0.1:{free_port()}/api/v1/status"))
    tracker.ledger.mark_bad(sha("unrelated"), "x")
    tracker.begin(NEW, previous_live=OLD)
    clock.advance(59)
    assert tracker.poll() is None
    assert tracker.ledger.snapshot()["rollout"]["state"] == "pending"
    clock.advance(2)
    decision = tracker.poll()
    assert decision == Rollback(to=OLD, bad=NEW,
                                reason="not live after 60s: app status unreachable: connection refused")
    assert not tracker.app_reports() and tracker.running_commits() == frozenset()


def test_garbage_from_the_app_is_pending_until_the_timeout(tracker_for, app, clock):
    tracker = tracker_for(StatusProbe(app.url), timeout=10)
    live_on(tracker, app, OLD)
    tracker.begin(NEW)
    app.answer(body=b"<html>502 Bad Gateway</html>")
    for _ in range(5):
        clock.advance(1.9)
        assert tracker.poll() is None
    clock.advance(1)
    decision = tracker.poll()
    assert isinstance(decision, Rollback)
    assert decision.reason == "not live after 10s: app status unreachable: the answer is not JSON"


def test_a_rollback_target_that_fails_too_is_degraded_without_a_second_rollback(tracker_for, app, clock):
    tracker = tracker_for(StatusProbe(app.url))
    live_on(tracker, app, OLD)
    tracker.begin(NEW)
    app.answer(failed_attempt(None, NEW, "exited 1"))
    assert isinstance(tracker.poll(), Rollback)
    tracker.rolled_back(NEW)
    app.answer(failed_attempt(None, OLD, "killed by SIGSEGV"))
    clock.advance(1)
    decision = tracker.poll()
    assert isinstance(decision, Degraded) and decision.commit == OLD
    shown = tracker.ledger.snapshot()
    assert shown["rollout"]["state"] == "degraded" and shown["live_commit"] is None
    assert "killed by SIGSEGV" in shown["rollout"]["reason"]
    assert shown["rollout"]["reason"].endswith("not rolling back again")
    assert tracker.poll() is None and not tracker.active()
    assert tracker.ledger.totals()["degraded"] == 1
    # the next publish has nothing live to go back to: it fails, it does not flap
    tracker.begin(NEWER)
    app.answer(failed_attempt(None, NEWER, "exited 3"))
    assert tracker.poll() == Failed(NEWER, "exited 3; nothing live to roll back to")


def test_a_rollback_target_not_live_by_the_timeout_is_degraded(tracker_for, app, clock):
    tracker = tracker_for(StatusProbe(app.url))
    live_on(tracker, app, OLD)
    tracker.begin(NEW)
    app.answer(failed_attempt(None, NEW))
    assert isinstance(tracker.poll(), Rollback)
    tracker.rolled_back(NEW)
    app.answer(reload_status(None, "starting", target=OLD, attempt={"commit": OLD, "state": "starting"}))
    clock.advance(30)
    assert tracker.poll() is None and tracker.active()
    clock.advance(31)
    decision = tracker.poll()
    assert isinstance(decision, Degraded)
    assert "not live 60s after the rollback: not ready" in decision.reason


def test_a_newer_publish_supersedes_and_the_older_is_never_rolled_back_onto(tracker_for, app, clock):
    tracker = tracker_for(StatusProbe(app.url))
    results = []
    tracker.ledger.add_listener(results.append)
    live_on(tracker, app, OLD)
    tracker.begin(NEW)
    app.answer(reload_status(OLD, target=NEW, attempt={"commit": NEW, "state": "starting"}))
    assert tracker.poll() is None
    clock.advance(3)
    tracker.begin(NEWER, previous_live=NEW)
    app.answer(failed_attempt(OLD, NEWER))
    assert tracker.poll() == Rollback(to=OLD, bad=NEWER, reason="exited 1")
    assert [(r.commit, r.result) for r in results][1:] == [(NEW, "superseded")]
    assert results[1].duration_seconds == 3 and results[1].reason == f"superseded by {NEWER[:7]}"
    assert not tracker.ledger.is_bad(NEW)


def test_the_same_publish_told_twice_keeps_its_deadline(tracker_for, app, clock):
    tracker = tracker_for(StatusProbe(app.url))
    live_on(tracker, app, OLD)
    tracker.begin(NEW)
    app.answer(reload_status(OLD, target=NEW, attempt={"commit": NEW, "state": "starting"}))
    clock.advance(40)
    assert tracker.begin(NEW) is None and tracker.poll() is None
    clock.advance(21)
    assert isinstance(tracker.poll(), Rollback)
    assert tracker.ledger.totals()["superseded"] == 0


def test_a_restarted_sidecar_resumes_by_the_original_deadline(tmp_path, app, clock):
    first = Rollouts(tmp_path / "state", StatusProbe(app.url), clock=clock)
    first.resume()
    live_on(first, app, OLD)
    first.begin(NEW)
    app.answer(reload_status(OLD, target=NEW, attempt={"commit": NEW, "state": "starting"}))
    clock.advance(50)
    second = Rollouts(tmp_path / "state", StatusProbe(app.url), clock=clock, timeout=600)
    second.resume()
    assert second.active() and second.ledger.snapshot()["rollout"]["state"] == "pending"
    assert second.ledger.snapshot()["live_commit"] == OLD
    clock.advance(5)
    assert second.poll() is None
    clock.advance(6)
    assert second.poll() == Rollback(to=OLD, bad=NEW, reason=f"not live after 60s: the app runs "
                                                            f"{OLD[:7]}; {NEW[:7]} is starting")


def test_a_restart_without_the_probe_makes_the_pending_publish_live(tmp_path, app, clock):
    first = Rollouts(tmp_path / "state", StatusProbe(app.url), clock=clock)
    first.resume()
    first.begin(NEW)
    second = Rollouts(tmp_path / "state", None, clock=clock)
    second.resume()
    assert not second.active()
    assert second.ledger.snapshot()["live_commit"] == NEW
    assert second.ledger.snapshot()["rollout"]["state"] == "live"


def test_a_restart_before_the_flip_back_asks_for_the_rollback_again(tmp_path, app, clock):
    first = Rollouts(tmp_path / "state", StatusProbe(app.url), clock=clock)
    first.resume()
    live_on(first, app, OLD)
    first.begin(NEW)
    app.answer(failed_attempt(OLD, NEW))
    assert isinstance(first.poll(), Rollback)
    second = Rollouts(tmp_path / "state", StatusProbe(app.url), clock=clock)
    second.resume()
    assert second.poll() == Rollback(to=OLD, bad=NEW, reason="exited 1")
    assert second.poll() is None, "once per start"
    second.rolled_back(NEW)
    assert second.ledger.snapshot()["rollout"]["state"] == "rolled_back"


def test_a_flip_back_that_fails_is_a_failed_rollout(tracker_for, app, clock):
    tracker = tracker_for(StatusProbe(app.url))
    live_on(tracker, app, OLD)
    tracker.begin(NEW)
    app.answer(failed_attempt(OLD, NEW))
    assert isinstance(tracker.poll(), Rollback)
    tracker.rollback_failed(NEW, "publish: the tree of OLD is damaged\nand could not be rebuilt")
    rollout = tracker.ledger.snapshot()["rollout"]
    assert rollout["state"] == "failed" and not tracker.active()
    assert rollout["reason"] == (f"exited 1; rollback to {OLD[:7]} failed: publish: the tree of OLD is "
                                 "damaged and could not be rebuilt")
    assert tracker.ledger.totals()["failed"] == 1


def test_a_publish_before_the_flip_back_supersedes_the_failed_one(tracker_for, app, clock):
    tracker = tracker_for(StatusProbe(app.url))
    live_on(tracker, app, OLD)
    tracker.begin(NEW)
    app.answer(failed_attempt(OLD, NEW))
    assert isinstance(tracker.poll(), Rollback)
    tracker.begin(NEWER)
    assert tracker.ledger.totals()["superseded"] == 1 and tracker.ledger.is_bad(NEW)
    tracker.rolled_back(NEW)   # too late: ignored
    assert tracker.ledger.snapshot()["rollout"]["commit"] == NEWER
    app.answer(reload_status(NEWER))
    assert tracker.poll() == Live(NEWER)


def test_bad_marks_survive_a_new_tracker_until_cleared_or_the_ref_moves(tmp_path, clock):
    first = Rollouts(tmp_path / "state", None, clock=clock)
    first.resume()
    first.ledger.mark_bad(NEW, "exited 1")
    first.ledger.mark_bad(NEWER, "not live after 60s: not ready")
    kept = json.loads((tmp_path / "state" / "rollout.json").read_text())
    assert kept["bad_commits"][0] == {"commit": NEW, "reason": "exited 1", "at": "2027-01-15T08:00:00.000Z"}
    second = Rollouts(tmp_path / "state", None, clock=clock)
    second.resume()
    assert second.ledger.is_bad(NEW) and second.ledger.is_bad(NEWER) and not second.ledger.is_bad(OLD)
    assert second.ledger.clear(NEW) and not second.ledger.clear(NEW)
    assert second.ledger.forget_others(OLD) == [NEWER]
    third = Rollouts(tmp_path / "state", None, clock=clock)
    third.resume()
    assert third.ledger.snapshot()["bad_commits"] == []


def test_the_pause_persists(tmp_path, clock):
    first = Rollouts(tmp_path / "state", None, clock=clock)
    first.resume()
    assert first.ledger.paused is False
    first.ledger.set_paused(True)
    second = Rollouts(tmp_path / "state", None, clock=clock)
    second.resume()
    assert second.ledger.paused and second.ledger.snapshot()["paused"] is True
    second.ledger.set_paused(False)
    third = Rollouts(tmp_path / "state", None, clock=clock)
    third.resume()
    assert not third.ledger.paused


def test_a_damaged_file_is_set_aside_and_the_tracker_starts_afresh(tmp_path, clock):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "rollout.json").write_text('{"live_commit": "abc", "rollout": {"com')
    tracker = Rollouts(tmp_path / "state", None, clock=clock)
    tracker.resume()
    assert tracker.ledger.snapshot() == {"live_commit": None, "rollout": None, "paused": False,
                                         "bad_commits": []}
    assert (tmp_path / "state" / "rollout.json.damaged").exists()


def test_polls_that_change_nothing_write_nothing(tracker_for, app, tmp_path, clock):
    tracker = tracker_for(StatusProbe(app.url))
    live_on(tracker, app, OLD)
    tracker.begin(NEW)
    app.answer(reload_status(OLD, target=NEW, attempt={"commit": NEW, "state": "starting"}))
    kept = tmp_path / "state" / "rollout.json"
    before = os.stat(kept).st_ino
    for _ in range(3):
        clock.advance(1)
        assert tracker.poll() is None
    Rollouts(tmp_path / "state", StatusProbe(app.url), clock=clock).resume()
    assert os.stat(kept).st_ino == before, "a poll or a start that changes nothing writes nothing"
    assert sorted(p.name for p in kept.parent.iterdir()) == ["rollout.json"], "no temp files left"


def test_trees_the_app_runs_and_the_live_and_target_commits_are_protected(tracker_for, app):
    tracker = tracker_for(StatusProbe(app.url))
    live_on(tracker, app, OLD)
    tracker.begin(NEW)
    app.answer(reload_status(OLD, target=NEW, attempt={"commit": NEW, "state": "starting"},
                             trees=[f"/repo/.worktrees/{OLD}", f"/repo/.worktrees/{NEWER}"]))
    assert tracker.poll() is None
    assert tracker.app_reports()
    assert tracker.running_commits() == {OLD, NEW, NEWER}
    assert tracker.protected_commits() == {OLD, NEW, NEWER}


def test_rollback_off_reports_failed_and_keeps_the_commit_published(tracker_for, app, clock):
    tracker = tracker_for(StatusProbe(app.url), rollback=False)
    live_on(tracker, app, OLD)
    tracker.begin(NEW)
    app.answer(failed_attempt(OLD, NEW, "exited 2"))
    assert tracker.poll() == Failed(NEW, "exited 2")
    assert not tracker.ledger.is_bad(NEW)
    assert tracker.ledger.snapshot()["rollout"]["state"] == "failed"


def test_a_health_url_is_live_once_it_answers_2xx(tracker_for, app, clock):
    tracker = tracker_for(HealthProbe(app.url))
    tracker.begin(OLD)
    app.answer(status=503, body=b"starting")
    assert tracker.poll() is None
    app.answer(body=b"ok")
    assert tracker.poll() == Live(OLD)
    assert not tracker.app_reports(), "a health URL says nothing about trees"


def test_a_health_url_failing_with_5xx_fails_at_the_timeout(tracker_for, app, clock):
    tracker = tracker_for(HealthProbe(app.url))
    app.answer(body=b"ok")
    tracker.begin(OLD)
    assert tracker.poll() == Live(OLD)
    tracker.begin(NEW)
    app.answer(status=500, body=b"boom")
    clock.advance(30)
    assert tracker.poll() is None
    clock.advance(31)
    assert tracker.poll() == Rollback(to=OLD, bad=NEW, reason="not live after 60s: health URL answered 500")


def test_a_health_url_refusing_fails_at_the_timeout(tracker_for, clock):
    tracker = tracker_for(HealthProbe(f"http://127.0.0.1:{free_port()}/healthz"))
    tracker.begin(NEW)
    clock.advance(59.5)
    assert tracker.poll() is None
    clock.advance(1)
    assert tracker.poll() == Failed(NEW, "not live after 60s: health URL unreachable: connection refused; "
                                         "nothing live to roll back to")


def test_a_health_url_naming_another_commit_is_not_live(tracker_for, app, clock):
    tracker = tracker_for(HealthProbe(app.url))
    tracker.begin(NEW)
    app.answer({"status": "ok", "commit": OLD})
    assert tracker.poll() is None
    app.answer({"status": "ok", "commit": NEW})
    assert tracker.poll() == Live(NEW)
