"""The API over real sockets: waitress in a thread, and the real `gitsync` process.

Covers what the test client cannot: binding port 0, stopping promptly, bodies
refused before they are read, answers that do not wait for a slow git remote,
and the log lines of the real process in both formats.
"""

from __future__ import annotations

import json
import signal
import socket
import threading

import pytest
import requests

from support.api import API_TOKEN, FORGE_BY_NAME, SECRET, served_port
from support.fake_engine import FakeEngine
from support.repos import published_sha
from support.servers import SmartHttpServer
from support.waiting import wait_for
from webhook.server import ApiServer

GITHUB = FORGE_BY_NAME["github"]


STOP_DEADLINE = 10.0   # far below waitress's own wait for idle connections (minutes)


# -- ApiServer ----------------------------------------------------------------------------------

def test_port_zero_binds_a_free_port_and_serves(fake_api):
    api = fake_api()
    server = ApiServer(api.app, "127.0.0.1", 0)
    server.start()
    try:
        assert server.host == "127.0.0.1" and server.port > 0
        answer = requests.get(f"http://127.0.0.1:{server.port}/api/v1/status", timeout=30)
        assert answer.status_code == 200 and answer.json()["ref"] == "HEAD"
        assert answer.headers["Server"] == "gitsync"
    finally:
        server.stop()


def test_stop_is_prompt_and_closes_open_connections(fake_api):
    api = fake_api(engine=FakeEngine(commit=None))
    server = ApiServer(api.app, "127.0.0.1", 0)
    server.start()
    session = requests.Session()   # keeps its connection open
    assert session.get(f"http://127.0.0.1:{server.port}/readyz", timeout=30).status_code == 503

    stopper = threading.Thread(target=server.stop)
    stopper.start()

    # Prompt: not held up by the open keep-alive connection (waitress would wait minutes).
    stopper.join(STOP_DEADLINE)
    assert not stopper.is_alive(), f"stop() still waiting after {STOP_DEADLINE} s"
    with pytest.raises(requests.ConnectionError):
        session.get(f"http://127.0.0.1:{server.port}/readyz", timeout=2)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    server.stop()   # twice is harmless


# -- bodies over the cap, through waitress -------------------------------------------------------

def raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 30.0) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return int(data.split(b" ", 2)[1]), data


def test_a_huge_content_length_is_refused_without_reading_the_body(fake_api, serve):
    api = fake_api()
    port = int(serve(api.app).rsplit(":", 1)[1])
    head = (b"POST /api/v1/webhook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n")
    # 1 GiB announced, one byte sent: an answer at all (before raw_request's deadline)
    # shows the body was not waited for.
    status, _ = raw_request(port, head, b"{")
    assert status == 413


def test_a_body_just_over_the_cap_gets_the_receivers_json_413(fake_api, serve):
    api = fake_api("--receiver-max-body", "4KiB")
    base = serve(api.app)
    body = b"x" * 5000
    answer = requests.post(f"{base}/api/v1/webhook", data=body, timeout=30,
                           headers=GITHUB.signed(body, "push"))
    assert answer.status_code == 413
    assert answer.json() == {"error": "the body is larger than the receiver accepts"}


def test_a_chunked_body_over_the_cap_answers_413(fake_api, serve):
    api = fake_api("--receiver-max-body", "4KiB")
    base = serve(api.app)

    def chunks():
        for _ in range(5):
            yield b"x" * 1000

    answer = requests.post(f"{base}/api/v1/webhook", data=chunks(), timeout=30,
                           headers={"X-GitHub-Event": "push"})
    assert answer.status_code == 413


def test_a_chunked_body_far_over_the_cap_is_cut_off(fake_api, serve):
    api = fake_api("--receiver-max-body", "4KiB")
    port = int(serve(api.app).rsplit(":", 1)[1])
    head = (b"POST /api/v1/webhook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (256 * 1024, b"x" * 256 * 1024)
    status, _ = raw_request(port, head, chunk * 8)   # 2 MiB, no end chunk
    assert status == 413


# -- the answer never waits for git ----------------------------------------------------------------

@pytest.fixture
def slow_remote(remote):
    """The test remote served over smart HTTP; `hold()` keeps it from answering."""
    with SmartHttpServer(remote.path.parent) as server:
        yield server


def test_answers_do_not_wait_for_a_slow_git_remote(api_factory, remote, serve, slow_remote):
    api = api_factory(slow_remote.url_for("repo.git"))
    wait_for(api.engine.is_ready, message="the first publish")
    base = serve(api.app)
    session = requests.Session()
    # The remote answers no git request until released: an answer that waited for git
    # would run into its 30 s timeout instead of arriving.
    slow_remote.hold()
    sha = remote.commit_and_push({"f": "slow"}, "slow")
    assert session.post(f"{base}/api/v1/webhook", timeout=30,
                        **as_request(GITHUB.delivery("refs/heads/main", sha))).status_code == 202
    wait_for(lambda: api.engine.status().state == "syncing", message="the held sync to start")

    for _ in range(5):
        for method, path, kwargs in (
                ("POST", "/api/v1/webhook", as_request(GITHUB.delivery("refs/heads/main", sha))),
                ("GET", "/api/v1/status", {}), ("GET", "/healthz", {}), ("GET", "/", {}),
                ("POST", "/api/v1/sync", {"headers": {"Authorization": f"Bearer {API_TOKEN}"}})):
            answer = session.request(method, base + path, timeout=30, **kwargs)
            assert answer.status_code in (200, 202), (path, answer.status_code)

    assert api.engine.status().state == "syncing", "the sync should still be held at the remote"
    slow_remote.release()
    wait_for(lambda: api.engine.status().commit == sha)


def as_request(delivery: tuple[dict[str, str], bytes]) -> dict:
    headers, body = delivery
    return {"headers": headers, "data": body}


# -- the real gitsync process ----------------------------------------------------------------------

@pytest.fixture
def secret_files(tmp_path):
    secret, token = tmp_path / "receiver-secret", tmp_path / "api-token"
    secret.write_bytes(SECRET + b"\n")
    token.write_text(API_TOKEN + "\n")
    return ["--receiver-secret-file", str(secret), "--api-token-file", str(token)]


def start_gitsync(gitsync, remote, root, *flags):
    proc = gitsync("--repo", remote.url, "--root", str(root), "--period", "60s",
                   "--http-bind", "127.0.0.1:0", *flags)
    port = wait_for(lambda: served_port(lambda: proc.output) or proc.proc.poll() is not None,
                    timeout=30, message="gitsync to log its address")
    assert proc.proc.poll() is None, proc.output
    return proc, f"http://127.0.0.1:{port}"


def test_gitsync_serves_the_api_and_logs_json_lines(gitsync, remote, tmp_path, secret_files):
    proc, base = start_gitsync(gitsync, remote, tmp_path / "root", "--log-format", "json",
                               *secret_files)
    link = tmp_path / "root" / "repo.git"
    wait_for(lambda: requests.get(f"{base}/readyz", timeout=30).status_code == 200)
    sha = remote.commit_and_push({"f": "json"}, "json logs")
    answer = requests.post(f"{base}/api/v1/webhook", timeout=30,
                           **as_request(GITHUB.delivery("refs/heads/main", sha)))
    assert answer.status_code == 202
    wait_for(lambda: published_sha(link) == sha, message="the webhook's publish")
    assert requests.post(f"{base}/api/v1/sync", timeout=30,
                         headers={"Authorization": f"Bearer {API_TOKEN}"}).status_code == 202
    wait_for(lambda: '"trigger=manual' in proc.output or "trigger=manual" in proc.output)
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0

    lines = [json.loads(line) for line in proc.output.splitlines() if line.startswith("{")]
    assert len(lines) == len(proc.output.splitlines()), "every line is JSON"
    access = [line for line in lines if line["logger"] == "webhook.access"]
    webhook_lines = [line for line in access if line["path"] == "/api/v1/webhook"]
    assert len(webhook_lines) == 1
    assert webhook_lines[0]["status"] == 202 and webhook_lines[0]["forge"] == "github"
    assert webhook_lines[0]["result"] == "sync" and webhook_lines[0]["method"] == "POST"
    assert webhook_lines[0]["remote_addr"] == "127.0.0.1"
    syncs = [line for line in lines if line["msg"].startswith("sync published")]
    assert any("trigger=webhook" in line["msg"] and sha in line["msg"] for line in syncs)
    assert not any(line["logger"].startswith("waitress") for line in lines)


def test_gitsync_logs_one_text_line_per_request(gitsync, remote, tmp_path, secret_files):
    proc, base = start_gitsync(gitsync, remote, tmp_path / "root", *secret_files)
    requests.get(f"{base}/api/v1/status", timeout=30)
    requests.post(f"{base}/api/v1/webhook", data=b"{}", timeout=30,
                  headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=00"})
    requests.post(f"{base}/api/v1/sync", timeout=30)
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0

    access = [line for line in proc.output.splitlines() if " webhook.access: " in line]
    assert len(access) == 3, proc.output
    assert access[0].endswith(("ms",)) and "GET /api/v1/status 200" in access[0]
    assert "POST /api/v1/webhook 401" in access[1] and "result=unauthorized" in access[1]
    assert "POST /api/v1/sync 401" in access[2]
