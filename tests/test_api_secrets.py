"""No secret leaks: every log line and every answer is searched for the test secrets.

Three real `gitsync` processes against a password-protected smart HTTP remote:
one that syncs with --username/--password-file, one whose URL carries wrong
`user:pass@` credentials, and one with a wrong GITSYNC_PASSWORD; the last two
keep failing. Each gets the receiver secret and API token from files, runs
with -v (debug lines too), and is sent every kind of request, including ones
that carry a secret or something close to it. Then everything is grepped.
"""

from __future__ import annotations

import base64
import json
import signal
from urllib.parse import quote

import pytest
import requests

from support.api import API_TOKEN, FORGE_BY_NAME, SECRET, served_port
from support.repos import ZERO_SHA
from support.servers import SmartHttpServer
from support.waiting import wait_for

USER = "git-user"
PASSWORD = "http-password-f00d"            # the right one, from --password-file
URL_PASSWORD = "url-password-b4d1"         # wrong, inside the repo URL
ENV_PASSWORD = "env-password-b4d2"         # wrong, from GITSYNC_PASSWORD
SECRETS = [SECRET.decode(), API_TOKEN, PASSWORD, URL_PASSWORD, ENV_PASSWORD]


def leaks(text: str) -> list[str]:
    """Each secret in any of the forms it could travel in."""
    found = []
    for secret in SECRETS:
        forms = {secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode(),
                 base64.b64encode(f"{USER}:{secret}".encode()).decode()}
        found += [form for form in forms if form in text]
    return found


@pytest.fixture
def http_remote(remote):
    with SmartHttpServer(remote.path.parent, username=USER, password=PASSWORD) as server:
        yield server


def start(gitsync, tmp_path, name: str, repo: str, *flags: str, env: dict | None = None):
    secret_file, token_file = tmp_path / "receiver-secret", tmp_path / "api-token"
    secret_file.write_bytes(SECRET)
    token_file.write_text(API_TOKEN)
    proc = gitsync("--repo", repo, "--root", str(tmp_path / name), "--link", "app",
                   "--http-bind", "127.0.0.1:0", "--receiver-secret-file", str(secret_file),
                   "--api-token-file", str(token_file), "-v", "1", *flags, env=env)
    port = wait_for(lambda: served_port(lambda: proc.output), timeout=30,
                    message=f"{name} to serve")
    return proc, f"http://127.0.0.1:{port}"


def exercise(base: str, sha: str) -> list[str]:
    """Every kind of request; returns each answer's status line, headers and body."""
    github, gitlab = FORGE_BY_NAME["github"], FORGE_BY_NAME["gitlab"]
    webhooks = [
        github.delivery("refs/heads/main", sha, delivery_id="same-id"),
        github.delivery("refs/heads/main", sha, delivery_id="same-id"),        # duplicate
        github.delivery("refs/heads/other", sha),
        github.delivery("refs/heads/main", ZERO_SHA),
        gitlab.delivery("refs/heads/main", sha),
        gitlab.delivery("refs/heads/main", sha, secret=SECRET + b"-but-longer"),
        gitlab.delivery("refs/heads/main", sha, secret=SECRET[:-1]),
        github.delivery("refs/heads/main", sha, secret=b"wrong"),
        ({"X-GitHub-Event": "push"}, b"{}"),
        (github.signed(b"not json", "push"), b"not json"),
        (github.signed(b"{}", "ping"), b"{}"),
        (github.signed(b"x" * (6 * 1024 * 1024), "push"), b"x" * (6 * 1024 * 1024)),
    ]
    answers = []
    with requests.Session() as session:
        for headers, body in webhooks:
            answers.append(session.post(f"{base}/api/v1/webhook", data=body, headers=headers,
                                        timeout=10))
        for authorization in (f"Bearer {API_TOKEN}", f"Bearer {API_TOKEN}x", f"Basic {API_TOKEN}",
                              f"Bearer {PASSWORD}"):
            answers.append(session.post(f"{base}/api/v1/sync", timeout=10,
                                        headers={"Authorization": authorization}))
        for path in ("/", "/api/v1/status", "/metrics", "/healthz", "/readyz",
                     "/static/status.js", f"/api/v1/status?token={API_TOKEN}",
                     f"/nothing?x={quote(SECRET.decode())}", f"/api/v1/webhook?secret={PASSWORD}"):
            answers.append(session.get(base + path, timeout=10))
    return [f"{a.status_code} {a.reason}\n{json.dumps(dict(a.headers))}\n{a.text}" for a in answers]


def test_no_secret_in_any_log_line_or_answer(gitsync, remote, http_remote, tmp_path):
    good_url = http_remote.url_for("repo.git")
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    bad_url = good_url.replace("http://", f"http://{USER}:{URL_PASSWORD}@")
    good, good_base = start(gitsync, tmp_path, "good", good_url, "--username", USER,
                            "--password-file", str(password_file), "--log-format", "json")
    in_url, in_url_base = start(gitsync, tmp_path, "in-url", bad_url, "--max-failures", "-1",
                                "--period", "200ms")
    in_env, in_env_base = start(gitsync, tmp_path, "in-env", good_url, "--username", USER,
                                "--max-failures", "-1", "--period", "200ms", "--log-format", "json",
                                env={"GITSYNC_PASSWORD": ENV_PASSWORD})
    wait_for(lambda: requests.get(f"{good_base}/readyz", timeout=30).status_code == 200,
             message="the good sidecar to publish")
    for base in (in_url_base, in_env_base):
        wait_for(lambda: requests.get(f"{base}/api/v1/status", timeout=30).json()["consecutive_failures"] >= 2,
                 message="the failing sidecars to fail twice")
    sha = remote.commit_and_push({"f": "secret test"}, "secret test")

    answers = []
    for base in (good_base, in_url_base, in_env_base):
        answers += exercise(base, sha)
    wait_for(lambda: requests.get(f"{good_base}/api/v1/status", timeout=30).json()["commit"] == sha,
             message="the webhook's publish")
    statuses = {base: requests.get(f"{base}/api/v1/status", timeout=30).json()
                for base in (good_base, in_url_base, in_env_base)}
    for proc in (good, in_url, in_env):
        proc.signal(signal.SIGTERM)
        proc.wait(30)

    # The search has something to search: the failures were reported, the URL was shown.
    assert "REDACTED@" in statuses[in_url_base]["repo"]
    for base in (in_url_base, in_env_base):
        assert statuses[base]["last_error"] and statuses[base]["consecutive_failures"] >= 2
    logs = {name: proc.output for name, proc in (("good", good), ("in-url", in_url), ("in-env", in_env))}
    assert all(len(text.splitlines()) > 20 for text in logs.values())
    assert '"status": 202' in logs["good"] and "sync failed" in logs["in-url"]
    assert len(answers) == 3 * 25

    for name, text in logs.items():
        assert leaks(text) == [], f"{name}'s log holds a secret"
    for text in answers:
        assert leaks(text) == [], f"an answer holds a secret:\n{text[:2000]}"
    for status in statuses.values():
        assert leaks(json.dumps(status)) == []
