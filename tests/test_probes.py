"""The probes against real HTTP servers on 127.0.0.1: what they see, and never an exception."""

from __future__ import annotations

import hashlib

import pytest
from support.ports import free_port
from appserver import FakeApp, reload_status

from gitsync.rollout import HealthProbe, StatusProbe, probe_for, same_commit


def sha(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


GOOD, BAD = sha("good"), sha("bad")


@pytest.fixture
def app():
    server = FakeApp()
    yield server
    server.stop()


def test_a_ready_app_is_live_on_its_commit_and_reports_its_trees(app):
    app.answer(reload_status(GOOD, trees=[f"/srv/.worktrees/{GOOD}", f"/srv/.worktrees/{BAD}"]))
    seen = StatusProbe(app.url).observe()
    assert seen.reachable and seen.reports
    assert seen.live_on(GOOD) and not seen.live_on(BAD)
    assert seen.running() == {GOOD, BAD}
    assert seen.failure_of(GOOD) is None


def test_a_starting_app_is_not_ready_and_says_what_it_runs(app):
    app.answer(reload_status(GOOD, target=BAD, attempt={"commit": BAD, "state": "starting", "reason": None}))
    seen = StatusProbe(app.url).observe()
    assert not seen.live_on(BAD)
    assert seen.why_not(BAD) == f"the app runs {GOOD[:7]}; {BAD[:7]} is starting"
    assert BAD in seen.running(), "a starting command's tree is in use too"


def test_a_failed_attempt_gives_the_apps_reason_with_the_last_output_line(app):
    output = "Traceback (most recent call last):\n  File \"app.py\", line 3\nSyntaxError: invalid syntax\n"
    app.answer(reload_status(GOOD, target=BAD, attempt={
        "commit": BAD, "state": "failed", "reason": "exited 1", "output": output}))
    seen = StatusProbe(app.url).observe()
    assert seen.failure_of(BAD) == "exited 1: SyntaxError: invalid syntax"
    assert seen.failure_of(GOOD) is None


def test_a_failure_before_the_app_saw_the_publish_is_not_this_publish(app):
    # the link was flipped back to GOOD; the old failed attempt of BAD is still shown
    stale = {"commit": BAD, "state": "failed", "reason": "exited 1"}
    app.answer(reload_status(GOOD, target=GOOD, attempt=stale))
    seen = StatusProbe(app.url).observe()
    assert seen.failure_of(BAD) is None
    assert "has not seen the publish" in seen.why_not(BAD)


def test_an_apps_reason_is_one_line_without_credentials(app):
    app.answer(reload_status(GOOD, target=BAD, attempt={
        "commit": BAD, "state": "failed",
        "reason": "prepare failed: pip could not fetch\nhttps://bob:s3cret@pypi.example/simple"}))
    reason = StatusProbe(app.url).observe().failure_of(BAD)
    assert reason is not None and "\n" not in reason and "s3cret" not in reason
    assert reason.startswith("prepare failed: pip could not fetch")


@pytest.mark.parametrize("answer, problem", [
    ({"status": 503, "body": b"busy"}, "app status unreachable: answered 503"),
    ({"body": b"<html>hello</html>"}, "app status unreachable: the answer is not JSON"),
    ({"json_body": [1, 2]}, "app status unreachable: unexpected answer: not a JSON object"),
    ({"json_body": {"commit": GOOD, "state": "dancing"}}, "app status unreachable: unexpected answer: state"),
    ({"json_body": {"state": "ready"}}, "app status unreachable: unexpected answer: no 'commit'"),
    ({"json_body": {"commit": None, "state": "ready"}},
     "app status unreachable: unexpected answer: ready without a commit"),
    ({"json_body": {"commit": GOOD, "state": "ready", "trees": "x"}},
     "app status unreachable: unexpected answer: 'trees'"),
])
def test_garbage_is_an_unreachable_observation(app, answer, problem):
    app.answer(**answer)
    seen = StatusProbe(app.url).observe()
    assert not seen.reachable and not seen.live_on(GOOD)
    assert seen.problem.startswith(problem)
    assert seen.why_not(GOOD) == seen.problem


def test_a_refused_connection_is_an_observation_not_an_exception():
    url = f"http://alice:hunter2@127.0.0.1:{free_port()}/api/v1/status"
    seen = StatusProbe(url).observe()
    assert not seen.reachable
    assert seen.problem == "app status unreachable: connection refused"


def test_a_slow_app_times_out_quickly(app):
    app.answer(reload_status(GOOD), delay=1.5)
    seen = StatusProbe(app.url, timeout=0.2).observe()
    assert seen.problem == "app status unreachable: no answer within 0.2s"


def test_a_health_url_is_live_on_2xx_and_not_on_5xx(app):
    probe = HealthProbe(app.url)
    app.answer(body=b"ok")
    seen = probe.observe()
    assert seen.live_on(GOOD) and seen.live_on(BAD) and not seen.reports, "2xx without a commit: any"
    app.answer(status=500, body=b"oops")
    seen = probe.observe()
    assert seen.reachable and not seen.live_on(GOOD)
    assert seen.why_not(GOOD) == "health URL answered 500"


@pytest.mark.parametrize("answer", [
    {"json_body": {"status": "ok", "commit": GOOD}},
    {"body": b"ok", "headers": {"Gitsync-Hash": GOOD}},
    {"body": b"ok", "headers": {"X-Gitsync-Hash": GOOD[:12]}},
])
def test_a_health_url_that_names_its_commit_must_name_the_published_one(app, answer):
    app.answer(**answer)
    seen = HealthProbe(app.url).observe()
    assert seen.live_on(GOOD) and not seen.live_on(BAD)
    assert seen.why_not(BAD) == f"the app runs {GOOD[:7]}"


def test_probe_for_prefers_the_status_url():
    assert isinstance(probe_for("http://127.0.0.1:1/s", "http://127.0.0.1:1/h"), StatusProbe)
    assert isinstance(probe_for(None, "http://127.0.0.1:1/h"), HealthProbe)
    assert probe_for(None, None) is None


def test_same_commit_takes_abbreviations_of_seven_digits_or_more():
    assert same_commit(GOOD, GOOD[:7]) and same_commit(GOOD[:10], GOOD)
    assert not same_commit(GOOD, GOOD[:6]) and not same_commit(GOOD, BAD) and not same_commit(None, GOOD)


def test_trees_as_gitsync_reload_lists_them():
    from gitsync.rollout.probes import observation_of_status, status_shape_error as shape_problem
    data = {"commit": "a" * 40, "state": "ready", "pid": 7, "target": "a" * 40, "attempt": None,
            "trees": [{"role": "serving", "commit": "a" * 40, "path": f"/git/.worktrees/{'a' * 40}", "pid": 7}],
            "version": "0.1.0"}
    assert shape_problem(data) is None
    assert observation_of_status(data).trees == (f"/git/.worktrees/{'a' * 40}",)
    assert shape_problem({**data, "trees": [{"role": "serving"}]}) is not None
