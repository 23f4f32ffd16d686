"""Deploy control and what the API says about rollouts, on a real engine and remote, with
tests/appserver.py answering as gitsync-reload's status API: POST /api/v1/retry, /pause,
/resume (token rules as POST /api/v1/sync), the status JSON's rollout fields, /healthz,
the metrics and the page's banner.
"""

from __future__ import annotations

import re

import pytest
from support.api import API_TOKEN, FORGE_BY_NAME, Api
from appserver import reload_status
from support.waiting import wait_for

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
REASON = "exited 1: SyntaxError: invalid syntax"
CONTROL_PATHS = ("/api/v1/retry", "/api/v1/pause", "/api/v1/resume")


@pytest.fixture
def api(api_factory, remote, app_server) -> Api:
    """An engine following its publishes through the app; its first publish live."""
    app_server.answer(reload_status(remote.head()))
    api = api_factory(remote.url, "--app-status-url", app_server.url, "--rollout-timeout", "10s")
    wait_state(api, remote.head(), "live")
    return api


def status(api: Api) -> dict:
    return api.client.get("/api/v1/status").get_json()


def wait_state(api: Api, commit: str, state: str) -> dict:
    def reached():
        rollout = status(api)["rollout"] or {}
        return rollout.get("commit") == commit and rollout.get("state") == state
    wait_for(reached, timeout=20, message=f"{commit[:7]} to be {state} (is {status(api)['rollout']})")
    return status(api)


def push(api: Api, remote, message: str) -> str:
    sha = remote.commit_and_push({"f": message}, message)
    headers, body = FORGE_BY_NAME["github"].delivery("refs/heads/main", sha)
    assert api.post_webhook(headers, body).status_code == 202
    return sha


def push_a_bug(api: Api, remote, app_server) -> tuple[str, str]:
    """(the live commit, a pushed commit the app fails to start), rolled back."""
    live = remote.head()
    bad = remote.commit({"f": "bug"}, "a bug")
    app_server.answer(reload_status(live, target=bad,
                                    attempt={"commit": bad, "state": "failed", "reason": REASON}))
    remote.push()
    api.engine.trigger("webhook")
    wait_state(api, bad, "rolled_back")
    return live, bad


# -- the token rules, as POST /api/v1/sync's --------------------------------------------

@pytest.mark.parametrize("path", CONTROL_PATHS)
def test_control_is_off_without_an_api_token(api_factory, remote, path):
    api = api_factory(remote.url, env={"GITSYNC_API_TOKEN": None})
    answer = api.client.post(path, headers=AUTH)
    assert answer.status_code == 404
    assert answer.get_json() == {"error": "the control API is off: no API token is configured"}


@pytest.mark.parametrize("path", CONTROL_PATHS)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_TOKEN}],
                         ids=["missing", "wrong", "not-bearer"])
def test_control_needs_the_right_bearer_token(api_factory, remote, path, headers):
    api = api_factory(remote.url)
    answer = api.client.post(path, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="gitsync"'
    assert status(api)["paused"] is False


def test_pause_and_resume_answer_200_and_hold_publishing(api, remote):
    first = remote.head()
    answer = api.client.post("/api/v1/pause", headers=AUTH)
    assert answer.status_code == 200 and answer.get_json() == {"result": "paused", "paused": True}
    second = push(api, remote, "while paused")
    wait_for(lambda: status(api)["held"], message="the paused sync")
    data = status(api)
    assert data["paused"] is True and data["commit"] == first and api.published() == first
    assert data["held"].startswith(f"deploys are paused: {second[:7]} waits")

    answer = api.client.post("/api/v1/resume", headers=AUTH)
    assert answer.status_code == 200 and answer.get_json() == {"result": "resumed", "paused": False}
    wait_for(lambda: api.published() == second, message="the resumed publish")
    assert status(api)["paused"] is False


def test_retry_clears_the_bad_mark_and_publishes_the_commit_again(api, remote, app_server):
    live, bad = push_a_bug(api, remote, app_server)
    assert api.published() == live and [m["commit"] for m in status(api)["bad_commits"]] == [bad]
    app_server.answer(reload_status(bad))   # say the cause was elsewhere, and it is mended now

    answer = api.client.post("/api/v1/retry", headers=AUTH)
    assert answer.status_code == 202
    assert answer.get_json() == {"result": "sync started", "cleared": [bad]}
    data = wait_state(api, bad, "live")
    assert api.published() == bad and data["bad_commits"] == [] and data["live_commit"] == bad
    assert [row["trigger"] for row in data["history"][:3]] == ["manual", "rollback", "webhook"]


# -- what the API says -------------------------------------------------------------------

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_status_json_carries_the_rollout_and_healthz_stays_about_the_sync_loop(api, remote, app_server):
    live, bad = push_a_bug(api, remote, app_server)
    app_server.answer(reload_status(live))
    data = status(api)

    assert data["live_commit"] == live and data["commit"] == live and data["paused"] is False
    rollout = data["rollout"]
    assert set(rollout) == {"commit", "state", "reason", "started_at", "finished_at"}
    assert (rollout["commit"], rollout["state"], rollout["reason"]) == (bad, "rolled_back", REASON)
    assert RFC3339.match(rollout["started_at"]) and RFC3339.match(rollout["finished_at"])
    [mark] = data["bad_commits"]
    assert (mark["commit"], mark["reason"]) == (bad, REASON) and RFC3339.match(mark["at"])
    assert data["held"] is None or bad[:7] in data["held"]
    rollback, publish = data["history"][:2]
    assert (rollback["trigger"], rollback["commit"], rollback["result"]) == ("rollback", live, "published")
    assert rollback["rollout"] == {"result": "rolled_back", "reason": f"{bad[:7]} failed: {REASON}"}
    assert publish["rollout"] == {"result": "rolled_back", "reason": REASON}

    health = api.client.get("/healthz")
    assert health.status_code == 200 and health.get_json()["status"] == "ok"
    assert api.client.get("/readyz").status_code == 200


def test_metrics_count_rollouts_by_result_and_time_them(api, remote, app_server):
    push_a_bug(api, remote, app_server)
    text = api.client.get("/metrics").get_data(as_text=True)
    assert 'gitsync_rollouts_total{result="live"} 1.0' in text
    assert 'gitsync_rollouts_total{result="rolled_back"} 1.0' in text
    assert 'gitsync_rollouts_total{result="degraded"} 0.0' in text
    assert "gitsync_rollout_duration_seconds_count 2.0" in text
    assert 'gitsync_rollout_duration_seconds_bucket{le="+Inf"} 2.0' in text


def test_the_page_shows_a_rolled_back_push_in_red(api, remote, app_server):
    live, bad = push_a_bug(api, remote, app_server)
    page = api.client.get("/").get_data(as_text=True)
    banner = re.search(r'<p id="rollout-banner" class="banner bad">([^<]*)</p>', page)
    assert banner, page
    assert banner.group(1) == (f"{bad[:7]} failed to start: {REASON}; rolled back, serving {live[:7]}")
    assert 'class="badge rollout-rolled_back"' in page


def test_the_page_says_when_deploys_are_paused(api):
    api.client.post("/api/v1/pause", headers=AUTH)
    page = api.client.get("/").get_data(as_text=True)
    assert re.search(r'<p id="deploy-note" class="banner note">\s*deploys are paused', page)
    assert re.search(r'<p id="rollout-banner" class="banner "\s+hidden>', page), "the live rollout: no banner"
