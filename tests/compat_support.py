"""Helpers for the git-sync compatibility tests: a gitsync process read through its own
metrics, small HTTP servers whose answers a test scripts, a stand-in for GitHub's App API,
and a `git` that is slow to fetch."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import requests
from support.api import served_port
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from support.repos import git
from support.waiting import wait_for
from prometheus_client.parser import text_string_to_metric_families

WAIT = 30.0   # generous: the machine is shared


class Sidecar:
    """A running gitsync with its API on a free loopback port, read as a user would."""

    def __init__(self, process):
        self.process = process
        self.port = wait_for(lambda: served_port(lambda: process.output), WAIT,
                             message="gitsync to serve its API")
        self.base = f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> requests.Response:
        return requests.get(self.base + path, timeout=10)

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """Every sample: (name, sorted labels) -> value."""
        text = self.get("/metrics").text
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples}

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def exact_sample(self, name: str, status: str) -> float | None:
        """A sample as the text has it: Python's parser would rename a counter that lacks
        _total, as git-sync's askpass and GitHub App counters do; Prometheus does not."""
        pattern = re.compile(rf'^{re.escape(name)}{{status="{re.escape(status)}"}} (\S+)$', re.M)
        found = pattern.search(self.get("/metrics").text)
        return float(found.group(1)) if found else None

    def wait_for_syncs(self, count: int, timeout: float = WAIT) -> None:
        """git-sync's e2e wait: until this many successful syncs are counted."""
        wait_for(lambda: self.metric("git_sync_count_total", status="success") >= count, timeout,
                 interval=0.05, message=f"{count} successful sync(s)")


def start_sidecar(gitsync, *args: str, env: dict[str, str] | None = None) -> Sidecar:
    return Sidecar(gitsync(*args, "--http-bind", "127.0.0.1:0", env=env))


class ScriptedServer:
    """An HTTP server on 127.0.0.1 that answers each request with `answer(n)` ->
    (status, body), n counting from 1, and records every request."""

    def __init__(self, answer: Callable[[int], tuple[int, bytes]] = lambda n: (200, b""),
                 port: int = 0):
        self.answer = answer
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with server._lock:
                    server.requests.append((self.command, self.path, dict(self.headers), body))
                    count = len(server.requests)
                status, reply = server.answer(count)
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST = do_PUT = _reply

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def hits(self) -> int:
        with self._lock:
            return len(self.requests)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@dataclass
class GitHubApp:
    """An app's identity: its IDs and an RSA key pair (the private key as PEM on disk)."""

    application_id: int
    client_id: str
    installation_id: int
    key_file: Path
    public_key: object


def make_github_app(folder: Path) -> GitHubApp:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    folder.mkdir(parents=True, exist_ok=True)
    key_file = folder / "app.pem"
    key_file.write_bytes(pem)
    return GitHubApp(4242, "Iv1.stand1n", 77, key_file, key.public_key())


class GitHubStandIn(ScriptedServer):
    """GitHub's `POST /app/installations/<id>/access_tokens`: a JWT the app's key signed,
    with the app's ID or client ID as issuer, gets a token (201); anything else a 401."""

    def __init__(self, app: GitHubApp, token: Callable[[int], str], lifetime: float = 3600):
        self.app, self.minted = app, 0
        self._token, self._lifetime = token, lifetime
        super().__init__(self._mint)

    def _mint(self, count: int) -> tuple[int, bytes]:
        method, path, headers, _ = self.requests[count - 1]
        expected = f"/api/v3/app/installations/{self.app.installation_id}/access_tokens"
        scheme, _, sent = headers.get("Authorization", "").partition(" ")
        if method != "POST" or path != expected or scheme != "Bearer":
            return 404, b'{"message": "Not Found"}'
        try:
            claims = jwt.decode(sent, self.app.public_key, algorithms=["RS256"],
                                options={"require": ["iss", "iat", "exp"]})
        except jwt.PyJWTError as err:
            return 401, json.dumps({"message": str(err)}).encode()
        if claims["iss"] not in (str(self.app.application_id), self.app.client_id):
            return 401, b'{"message": "wrong issuer"}'
        self.minted += 1
        expires = datetime.now(UTC) + timedelta(seconds=self._lifetime)
        body = {"token": self._token(self.minted), "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
        return 201, json.dumps(body).encode()

    @property
    def base_url(self) -> str:
        return self.url + "/api/v3/"


def slow_git(folder: Path, seconds: float) -> Path:
    """A `git` that waits `seconds` before each fetch or ls-remote, then runs the real git."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "slow-git"
    script.write_text("#!/bin/sh\nfor arg in \"$@\"; do case \"$arg\" in fetch|ls-remote) "
                      f"sleep {seconds}; break;; esac; done\nexec {shutil.which('git')} \"$@\"\n")
    script.chmod(0o755)
    return script


def hook_script(path: Path, body: str) -> Path:
    """An executable shell script (an exechook)."""
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def settle(condition: Callable[[], bool], seconds: float) -> bool:
    """True if `condition` held for the whole of `seconds` (a thing that must NOT happen)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not condition():
            return False
        time.sleep(0.05)
    return True


def add_submodule(remote, path: str, url: str, sha: str) -> str:
    """Record a submodule in `remote` (a .gitmodules entry and a gitlink) without cloning it;
    push, and return the new commit."""
    gitmodules = remote.work / ".gitmodules"
    text = gitmodules.read_text() if gitmodules.exists() else ""
    gitmodules.write_text(text + f'[submodule "{path}"]\n\tpath = {path}\n\turl = {url}\n')
    git("add", ".gitmodules", cwd=remote.work)
    return bump_submodule(remote, path, sha)


def bump_submodule(remote, path: str, sha: str) -> str:
    """Point the gitlink at `path` to `sha`, commit and push (not `add --all`: there is no
    checkout of the submodule in the work clone)."""
    git("update-index", "--add", "--cacheinfo", f"160000,{sha},{path}", cwd=remote.work)
    git("commit", "--quiet", "-m", f"{path} at {sha[:8]}", cwd=remote.work)
    remote.push()
    return remote.head()


def drop_submodule(remote, path: str) -> str:
    git("rm", "--quiet", "--cached", path, cwd=remote.work)
    git("config", "--file", ".gitmodules", "--remove-section", f"submodule.{path}", cwd=remote.work)
    git("add", ".gitmodules", cwd=remote.work)
    git("commit", "--quiet", "-m", f"drop {path}", cwd=remote.work)
    remote.push()
    return remote.head()
