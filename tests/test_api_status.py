"""Status, health, readiness, metrics, manual sync and the page.

What the engine reports (its status after real syncs, stuck loops, failure budgets)
is checked on real engines. What the app makes of a given state (tokens, metrics,
the page, the factory, the access log) is checked on a FakeEngine whose state the
test sets, with no git and no waiting. Also the factory itself (flaskr style): its
layering of config, and several apps side by side in one process.
"""

from __future__ import annotations

import json
import logging
import re

import pytest

from gitsync.cli import JsonFormatter
from support.api import API_TOKEN, FORGE_BY_NAME, Api
from support.fake_engine import FakeEngine, fake_config
from support.waiting import wait_for
from webhook import create_app

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
STATUS_FIELDS = {"repo", "ref", "commit", "link", "state", "last_sync_at", "last_success_at",
                 "last_error", "consecutive_failures", "sync_count", "history", "version"}
HISTORY_FIELDS = {"commit", "at", "trigger", "duration_ms", "result"}


def publish_by_webhook(api: Api, remote, message: str) -> str:
    sha = remote.commit_and_push({"f": message}, message)
    headers, body = FORGE_BY_NAME["github"].delivery("refs/heads/main", sha)
    assert api.post_webhook(headers, body).status_code == 202
    wait_for(lambda: api.engine.status().commit == sha and api.engine.status().state == "idle",
             message=f"{message} to publish")
    return sha


# -- GET /api/v1/status ------------------------------------------------------------------

def test_status_has_every_contract_field(api, remote):
    first = remote.remote_head("main")
    second = publish_by_webhook(api, remote, "second")

    answer = api.client.get("/api/v1/status")

    assert answer.status_code == 200 and answer.is_json
    data = answer.get_json()
    assert STATUS_FIELDS <= set(data)
    assert data["repo"] == remote.url and data["ref"] == "HEAD"
    assert data["commit"] == second
    assert data["link"] == str(api.link)
    assert data["state"] == "idle"
    assert data["last_error"] is None and data["consecutive_failures"] == 0
    assert data["sync_count"] >= 2
    assert data["version"]
    for key in ("last_sync_at", "last_success_at"):
        assert RFC3339_UTC.match(data[key]), data[key]
    history = data["history"]
    assert [entry["commit"] for entry in history[:2]] == [second, first]   # newest first
    assert [entry["trigger"] for entry in history[:2]] == ["webhook", "start"]
    for entry in history:
        assert HISTORY_FIELDS <= set(entry)
        assert RFC3339_UTC.match(entry["at"])
        assert entry["result"] == "published" and entry["duration_ms"] >= 0


def test_status_before_the_first_sync(api_factory, remote):
    api = api_factory(remote.url, run=False)
    data = api.client.get("/api/v1/status").get_json()
    assert data["commit"] is None and data["history"] == [] and data["last_sync_at"] is None


def test_status_reports_a_failing_sync(api_factory, tmp_path):
    api = api_factory(f"file://{tmp_path}/no-such-repo.git", "--max-failures", "-1")
    wait_for(lambda: api.engine.status().consecutive_failures >= 1)
    data = api.client.get("/api/v1/status").get_json()
    assert data["state"] == "failing" and data["commit"] is None
    assert data["last_error"]
    assert data["history"][0]["result"] == "error"


# -- /healthz and /readyz ---------------------------------------------------------------------

def test_healthz_is_200_while_syncs_make_progress(api):
    answer = api.client.get("/healthz")
    assert answer.status_code == 200
    assert answer.get_json()["status"] == "ok"


def test_healthz_answers_503_with_the_failures_when_the_engine_is_unhealthy(fake):
    fake.engine.finish("error", error="fetch: no such remote")
    fake.engine.healthy = False
    answer = fake.client.get("/healthz")
    assert answer.status_code == 503
    assert answer.get_json()["status"] == "unhealthy"
    assert answer.get_json()["consecutive_failures"] == 1


def test_healthz_is_503_when_the_loop_is_stuck(api_factory, remote):
    api = api_factory(remote.url, "--period", "200ms", "--sync-timeout", "200ms", run=False)
    wait_for(lambda: api.client.get("/healthz").status_code == 503, timeout=30,
             message="a loop that never ran to count as stuck")
    assert api.client.get("/healthz").get_json()["status"] == "unhealthy"


def test_healthz_stays_200_on_failures_within_the_budget(api_factory, tmp_path):
    api = api_factory(f"file://{tmp_path}/missing.git", "--max-failures", "-1", "--period", "100ms")
    wait_for(lambda: api.engine.status().consecutive_failures >= 3)
    assert api.client.get("/healthz").status_code == 200


def test_healthz_is_503_once_the_failure_budget_is_spent(api_factory, tmp_path):
    api = api_factory(f"file://{tmp_path}/missing.git", "--max-failures", "1", "--period", "100ms")
    wait_for(lambda: api.engine.status().consecutive_failures >= 1)
    if api.engine.status().consecutive_failures == 1:
        assert api.client.get("/healthz").status_code == 200
    wait_for(lambda: api.engine.status().consecutive_failures >= 2)
    answer = api.client.get("/healthz")
    assert answer.status_code == 503
    assert answer.get_json()["consecutive_failures"] == 2


def test_readyz_is_503_until_the_first_publish_then_200(api_factory, remote):
    api = api_factory(remote.url, run=False)
    answer = api.client.get("/readyz")
    assert answer.status_code == 503 and answer.get_json()["commit"] is None
    api.engine.sync_once("start")
    answer = api.client.get("/readyz")
    assert answer.status_code == 200
    assert answer.get_json()["commit"] == remote.remote_head("main")


def test_readyz_stays_503_while_every_sync_fails(api_factory, tmp_path):
    api = api_factory(f"file://{tmp_path}/missing.git", "--max-failures", "-1", "--period", "100ms")
    wait_for(lambda: api.engine.status().consecutive_failures >= 2)
    assert api.client.get("/readyz").status_code == 503


# -- POST /api/v1/sync ------------------------------------------------------------------------------

def test_sync_with_the_token_answers_202_and_syncs(api, remote):
    sha = remote.commit_and_push({"f": "manual"}, "manual")
    answer = api.client.post("/api/v1/sync", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert answer.status_code == 202
    assert answer.get_json() == {"result": "sync started"}
    wait_for(lambda: api.engine.status().commit == sha, message="the manual sync")
    wait_for(lambda: api.engine.status().history[0].commit == sha)
    assert api.engine.status().history[0].trigger == "manual"


BAD_AUTH = {
    "no header": None,
    "wrong token": f"Bearer {API_TOKEN}x",
    "a prefix of the token": f"Bearer {API_TOKEN[:-1]}",
    "empty bearer": "Bearer ",
    "basic scheme": f"Basic {API_TOKEN}",
    "bare token": API_TOKEN,
}


@pytest.mark.parametrize("authorization", BAD_AUTH.values(), ids=list(BAD_AUTH))
def test_sync_without_the_right_token_answers_401_and_does_not_sync(fake, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    answer = fake.client.post("/api/v1/sync", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert API_TOKEN.encode() not in answer.data
    assert fake.engine.triggers == []


def test_sync_scheme_is_case_insensitive(fake):
    answer = fake.client.post("/api/v1/sync", headers={"Authorization": f"bearer {API_TOKEN}"})
    assert answer.status_code == 202
    assert fake.engine.triggers == ["manual"]


def test_sync_answers_404_without_an_api_token(fake_api):
    fake = fake_api(env={"GITSYNC_API_TOKEN": None})
    answer = fake.client.post("/api/v1/sync", headers={"Authorization": "Bearer anything"})
    assert answer.status_code == 404
    assert "no API token" in answer.get_json()["error"]
    assert fake.engine.triggers == []


def test_sync_is_post_only(fake):
    assert fake.client.get("/api/v1/sync").status_code == 405
    assert fake.engine.triggers == []


# -- GET /metrics ----------------------------------------------------------------------------------------

def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    assert match, f"{name}{labels} not in metrics"
    return float(match.group(1))


def test_metrics_use_git_syncs_names_and_count_syncs(fake):
    text = fake.client.get("/metrics").get_data(as_text=True)
    before = metric(text, "git_sync_count_total", '{status="success"}')
    fake.engine.finish("published", commit="b2" * 20, trigger="webhook")
    fake.engine.finish("unchanged", trigger="manual")   # nothing new: a noop

    answer = fake.client.get("/metrics")

    assert answer.status_code == 200
    assert answer.content_type.startswith("text/plain")
    text = answer.get_data(as_text=True)
    assert "# TYPE git_sync_count_total counter" in text
    assert "# TYPE git_sync_duration_seconds summary" in text
    assert metric(text, "git_sync_count_total", '{status="success"}') == before + 1
    assert metric(text, "git_sync_count_total", '{status="noop"}') == 1
    assert metric(text, "git_sync_count_total", '{status="error"}') == 0
    assert metric(text, "git_sync_duration_seconds_count", '{status="success"}') == before + 1
    assert metric(text, "gitsync_ready") == 1
    assert metric(text, "gitsync_healthy") == 1
    assert metric(text, "gitsync_consecutive_failures") == 0
    assert metric(text, "gitsync_last_success_timestamp_seconds") > 1.6e9


def test_metrics_count_errors(fake_api):
    fake = fake_api(engine=FakeEngine(commit=None))
    for _ in range(2):
        fake.engine.finish("error", error="fetch: no such remote")
    text = fake.client.get("/metrics").get_data(as_text=True)
    assert metric(text, "git_sync_count_total", '{status="error"}') >= 2
    assert metric(text, "gitsync_consecutive_failures") >= 2
    assert metric(text, "gitsync_ready") == 0


def test_metrics_answer_404_when_turned_off(fake_api):
    fake = fake_api("--http-metrics=false")
    assert fake.client.get("/metrics").status_code == 404


# -- GET / ----------------------------------------------------------------------------------------------------

def test_the_page_shows_the_published_commit_and_history(fake):
    sha = "c3" * 20
    fake.engine.finish("published", commit=sha, subject="Add the <b>shiny</b> feature",
                       trigger="webhook")

    answer = fake.client.get("/")

    assert answer.status_code == 200 and answer.mimetype == "text/html"
    page = answer.get_data(as_text=True)
    assert sha[:7] in page
    assert "Add the &lt;b&gt;shiny&lt;/b&gt; feature" in page   # escaped, never HTML
    assert "<b>shiny</b>" not in page
    assert "Test Author" in page
    assert "refs/heads/main" in page and "HEAD" in page
    assert 'class="badge state-idle"' in page
    assert "webhook" in page and "published" in page and " ms<" in page
    assert answer.headers["Cache-Control"] == "no-store"
    assert "script-src 'self'" in answer.headers["Content-Security-Policy"]


def test_the_page_shows_the_last_error(fake_api):
    fake = fake_api(engine=FakeEngine(repo="file:///srv/missing.git", commit=None))
    fake.engine.finish("error", error="fetch: 'file:///srv/missing.git' does not appear to be a git repository")
    page = fake.client.get("/").get_data(as_text=True)
    assert "Nothing published yet" in page
    assert 'class="badge state-failing"' in page
    assert '<section id="error-box" class="card error">' in page   # shown, not hidden
    assert "missing.git" in page


def test_the_pages_script_and_style_are_served(fake):
    for path in ("/static/status.js", "/static/status.css"):
        assert fake.client.get(path).status_code == 200


# -- errors, the factory and the access log ----------------------------------------------------------------

def test_unknown_paths_answer_json_404(fake):
    answer = fake.client.get("/api/v1/nothing?token=abc")
    assert answer.status_code == 404 and answer.is_json
    assert "abc" not in answer.get_data(as_text=True)


def test_the_factory_layers_a_test_mapping_over_the_config(fake_api):
    fake = fake_api(test_config={"API_TOKEN": "from-the-test"})
    assert fake.app.config["API_TOKEN"] == "from-the-test"
    assert fake.app.config["RECEIVER_MAX_BODY"] == 5 * 1024 * 1024
    assert fake.client.post("/api/v1/sync", headers={"Authorization": "Bearer from-the-test"}).status_code == 202
    assert fake.engine.triggers == ["manual"]


def test_two_apps_on_one_engine_keep_their_own_metrics(fake, tmp_path):
    second = create_app(fake.engine, fake_config(tmp_path / "second"))
    fake.engine.finish("published", commit="d4" * 20, trigger="webhook")   # both hear it
    second.test_client().post("/api/v1/webhook", data=b"{}")   # only the second counts it
    texts = [app.test_client().get("/metrics").get_data(as_text=True) for app in (fake.app, second)]
    for text in texts:
        assert metric(text, "git_sync_count_total", '{status="success"}') == 1
    assert "gitsync_webhook_requests_total{" not in texts[0]
    assert "gitsync_webhook_requests_total{" in texts[1]


def test_every_request_is_logged_once_with_its_fields(fake, caplog):
    caplog.set_level(logging.DEBUG, logger="webhook.access")
    headers, body = FORGE_BY_NAME["gitlab"].delivery("refs/heads/feature", "ab" * 20)
    fake.post_webhook(headers, body)
    fake.client.get("/api/v1/status?secret=do-not-log")
    fake.client.get("/healthz")

    records = [r for r in caplog.records if r.name == "webhook.access"]

    assert len(records) == 3
    webhook, status, health = records
    assert webhook.levelno == logging.INFO
    assert webhook.fields["method"] == "POST" and webhook.fields["path"] == "/api/v1/webhook"
    assert webhook.fields["status"] == 200 and webhook.fields["forge"] == "gitlab"
    assert webhook.fields["result"] == "other_ref" and webhook.fields["duration_ms"] >= 0
    assert "POST /api/v1/webhook 200" in webhook.getMessage()
    assert "do-not-log" not in status.getMessage() and status.fields["path"] == "/api/v1/status"
    assert health.levelno == logging.DEBUG   # probes are quiet unless -v
    line = json.loads(JsonFormatter().format(webhook))
    assert line["logger"] == "webhook.access" and line["status"] == 200
    assert line["forge"] == "gitlab" and line["path"] == "/api/v1/webhook"


def test_the_status_lists_the_last_ten_deliveries_newest_first(fake):
    from support.api import FORGE_BY_NAME
    github = FORGE_BY_NAME["github"]
    for n in range(11):
        fake.post_webhook(*github.delivery("refs/heads/main", f"{n:040x}"))
    fake.post_webhook(*github.delivery("refs/heads/main", "e5" * 20, secret=b"wrong"))

    deliveries = fake.client.get("/api/v1/status").get_json()["deliveries"]

    assert len(deliveries) == 10
    assert deliveries[0] == {"at": deliveries[0]["at"], "forge": "unknown", "event": None,
                             "result": "unauthorized", "status": 401, "ref": None}
    assert deliveries[1]["forge"] == "github" and deliveries[1]["result"] == "sync"
    assert deliveries[1]["status"] == 202 and deliveries[1]["ref"] == "refs/heads/main"
    assert RFC3339_UTC.match(deliveries[0]["at"])
    page = fake.client.get("/").get_data(as_text=True)
    assert "rejected: wrong signature or token (401)" in page and "sync started (202)" in page
