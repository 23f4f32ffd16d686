"""The API's limits over real sockets: the body cap, and many idle or slow connections.

A body of exactly the cap is accepted; a larger one gets a 413 that a client
which sends its whole body before reading (as `requests` does) can read. Hundreds
of idle or byte-dribbling connections from one client do not lock /healthz and
the receiver out. Only that they answer is asserted here; how fast is measured
by bench/harden.py.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading

import pytest
import requests

from support.api import FORGE_BY_NAME
from support.waiting import wait_for

GITHUB = FORGE_BY_NAME["github"]
MiB = 1024 * 1024
CAP = 5 * MiB                  # the default --receiver-max-body
ANSWER_WITHIN = 15.0           # generous: the machine may be busy; speed is measured in bench/


def signed_push_of_size(size: int, sha: str) -> tuple[dict[str, str], bytes]:
    """A signed GitHub push of `sha` to main whose JSON body is exactly `size` bytes."""
    document = {"ref": "refs/heads/main", "before": "1" * 40, "after": sha,
                "repository": {"full_name": "org/app"}, "commits": [], "padding": ""}
    document["padding"] = "x" * (size - len(json.dumps(document).encode()))
    body = json.dumps(document).encode()
    assert len(body) == size
    return GITHUB.signed(body, "push"), body


def post_with_requests(base: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
    answer = requests.post(f"{base}/api/v1/webhook", data=body, headers=headers, timeout=30)
    return answer.status_code, answer.text


def post_with_http_client(base: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
    """The standard library's client sends the whole body, then reads; a reset is an error."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/api/v1/webhook", body=body, headers=headers)
        answer = conn.getresponse()
        return answer.status, answer.read().decode()
    finally:
        conn.close()


CLIENTS = pytest.mark.parametrize("post", [post_with_requests, post_with_http_client],
                                  ids=["requests", "http.client"])


@pytest.fixture
def served(api_factory, remote, serve):
    api = api_factory(remote.url)
    wait_for(api.engine.is_ready, message="the first publish")
    return api, serve(api.app)


# -- the body cap ------------------------------------------------------------------------------

@CLIENTS
def test_a_body_of_exactly_the_cap_is_accepted(served, remote, post):
    api, base = served
    sha = remote.commit_and_push({"f": "cap"}, "at the cap")
    status, text = post(base, *signed_push_of_size(CAP, sha))
    assert status == 202, text
    wait_for(lambda: api.engine.status().commit == sha, timeout=30, message="the publish")


def test_a_body_one_byte_under_the_cap_is_accepted(served, remote):
    _, base = served
    status, text = post_with_requests(base, *signed_push_of_size(CAP - 1, remote.head()))
    assert status == 202, text


@CLIENTS
@pytest.mark.parametrize("over", [1, MiB, MiB + 1, 8 * MiB, 40 * MiB],
                         ids=["cap+1", "cap+1MiB", "cap+1MiB+1", "cap+8MiB", "cap+40MiB"])
def test_a_body_over_the_cap_gets_a_413_the_client_reads(served, remote, post, over):
    _, base = served
    headers, body = signed_push_of_size(CAP + over, remote.head())
    status, text = post(base, headers, body)
    assert status == 413
    assert json.loads(text) == {"error": "the body is larger than the receiver accepts"}
    # The server is still fine afterwards.
    assert requests.get(f"{base}/api/v1/status", timeout=10).status_code == 200


# -- many idle and dribbling connections from one client ----------------------------------------

IDLE = 300
DRIBBLING = 300            # more than the server keeps: it must close some


class Dribbler:
    """Sockets that send a request head one byte at a time and never finish it."""

    HEAD = b"POST /api/v1/webhook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-Padding: "

    def __init__(self, port: int, count: int):
        self.socks = [open_socket(port) for _ in range(count)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dribbler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        position = 0
        while not self._stop.wait(0.2):
            byte = self.HEAD[position:position + 1] or b"a"
            position += 1
            for sock in self.socks:
                try:
                    sock.send(byte)
                except OSError:
                    pass   # closed by the server: that is its right

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.socks:
            sock.close()


def open_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    sock.connect_ex(("127.0.0.1", port))   # completes in the kernel, accepted or not
    return sock


def test_idle_and_dribbling_connections_do_not_lock_out_probes_and_webhooks(served, remote):
    api, base = served
    port = int(base.rsplit(":", 1)[1])
    idle = [open_socket(port) for _ in range(IDLE)]
    dribbler = Dribbler(port, DRIBBLING)
    try:
        health = requests.get(f"{base}/healthz", timeout=ANSWER_WITHIN)
        assert health.status_code == 200
        sha = remote.commit_and_push({"f": "under attack"}, "under attack")
        answer = requests.post(f"{base}/api/v1/webhook", timeout=ANSWER_WITHIN,
                               **dict(zip(("headers", "data"), GITHUB.delivery("refs/heads/main", sha))))
        assert answer.status_code == 202, answer.text
        wait_for(lambda: api.engine.status().commit == sha, timeout=30, message="the publish")
        assert requests.get(f"{base}/healthz", timeout=ANSWER_WITHIN).status_code == 200
    finally:
        dribbler.close()
        for sock in idle:
            sock.close()
