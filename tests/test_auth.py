"""Private repositories: HTTPS behind basic auth and SSH with a real sshd, secrets never shown.

Every test keeps what gitsync showed (log lines, errors, status JSON, the status
page, metrics, git's argv); the last test of the module scans all of it for the
test secrets.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from support.repos import Remote, argv_recorder, git, published_sha
from support.servers import SmartHttpServer, SshServer
from support.waiting import wait_for
from gitsync.cli import build_engine
from gitsync.config import parse_args

pytestmark = pytest.mark.timeout(60)

USER = "sync-bot"
PASSWORD = "pw-Zq8v3Lr1-first"
ROTATED = "pw-Rot4ted-9xK2-second"
URL_PASSWORD = "url:Pw7m/2Qe@third"          # needs %-encoding inside a URL
SECRETS = (PASSWORD, ROTATED, URL_PASSWORD, quote(URL_PASSWORD, safe=""),
           *(base64.b64encode(f"{USER}:{p}".encode()).decode() for p in (PASSWORD, ROTATED,
                                                                        URL_PASSWORD)))

# (test name, what gitsync showed): filled by the `shown` fixture, scanned at the end.
SHOWN: list[tuple[str, str]] = []


@pytest.fixture
def shown(request, caplog):
    """Keep everything a test lets gitsync show; the module's last test scans it."""
    caplog.set_level(logging.DEBUG)
    kept: list[str] = []
    yield kept.append
    SHOWN.append((request.node.name, "\n".join([caplog.text, *kept])))


def start(root: Path, url: str, *flags: str, env: dict[str, str] | None = None):
    """An engine as a started sidecar has it: prepared, not yet synced."""
    args = ["--repo", url, "--root", str(root), "--http-bind", "", *flags]
    engine = build_engine(parse_args(args, env or {}))
    engine.prepare()
    return engine


def show_status(engine, keep) -> dict:
    status = engine.status().to_dict()
    keep(json.dumps(status))
    return status


def git_config_text(root: Path) -> str:
    """Every git config file gitsync's repository has (the shared one and per-worktree ones)."""
    files = [path for path in (root / ".git").rglob("config*") if path.is_file()]
    return "\n".join(path.read_text() for path in files)


@pytest.fixture
def http_repo(tmp_path):
    """A remote served by git http-backend behind basic auth (USER / PASSWORD)."""
    remote = Remote(tmp_path / "remotes")
    remote.commit_and_push({"README.md": "private\n"}, "first")
    with SmartHttpServer(tmp_path / "remotes", username=USER, password=PASSWORD) as server:
        yield server, remote


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"{USER}:{password}".encode()).decode()


# -- HTTPS --------------------------------------------------------------------------------

def test_password_file_is_read_again_before_every_sync(http_repo, tmp_path, shown):
    server, remote = http_repo
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    root = tmp_path / "root"
    engine = start(root, server.url_for("repo.git"), "--username", USER,
                   "--password-file", str(password_file))
    first = engine.sync_once("start")
    assert first.result == "published", first.error
    assert basic(PASSWORD) in server.received_authorization()

    # The token is rotated on the server: the sync fails, the tree stays.
    server.password = ROTATED
    remote.commit_and_push({"README.md": "private v2\n"}, "second")
    failed = engine.sync_once("poll")
    assert failed.result == "error"
    assert failed.error.startswith("ls-remote: fatal: Authentication failed for ")
    assert "\n" not in failed.error
    assert published_sha(root / "repo.git") == first.commit
    status = show_status(engine, shown)
    assert status["last_error"] == failed.error and status["consecutive_failures"] == 1

    # ... and the new token in the file works without a restart.
    password_file.write_text(ROTATED + "\n")
    second = engine.sync_once("poll")
    assert second.result == "published", second.error
    assert published_sha(root / "repo.git") == remote.head()
    assert basic(ROTATED) in server.received_authorization()
    show_status(engine, shown)
    config = git_config_text(root)
    assert PASSWORD not in config and ROTATED not in config and USER not in config


def test_gitsync_password_variable(http_repo, tmp_path, shown):
    server, remote = http_repo
    engine = start(tmp_path / "root", server.url_for("repo.git"), "--username", USER,
                   env={"GITSYNC_PASSWORD": PASSWORD})
    result = engine.sync_once("start")
    assert result.result == "published", result.error
    assert result.commit == remote.head()
    assert server.received_authorization()[-1] == basic(PASSWORD)
    show_status(engine, shown)


def test_credentials_inside_the_url_are_used_and_never_shown(http_repo, tmp_path, shown):
    server, remote = http_repo
    server.password = URL_PASSWORD
    url = server.url_for("repo.git").replace("://", f"://{USER}:{quote(URL_PASSWORD, safe='')}@")
    root = tmp_path / "root"
    engine = start(root, url)
    result = engine.sync_once("start")
    assert result.result == "published", result.error
    assert server.received_authorization()[-1] == basic(URL_PASSWORD)
    status = show_status(engine, shown)
    assert status["repo"] == server.url_for("repo.git").replace("://", "://REDACTED@")
    assert URL_PASSWORD not in git_config_text(root)

    server.password = "changed"
    remote.commit_and_push({"README.md": "v2\n"}, "second")
    failed = engine.sync_once("poll")
    assert failed.result == "error" and "Authentication failed" in failed.error
    show_status(engine, shown)


def test_a_private_submodule_on_the_same_server_gets_the_same_credentials(tmp_path, shown):
    base = tmp_path / "remotes"
    lib = Remote(base, "lib.git")
    lib.commit_and_push({"lib.txt": "lib\n"}, "lib")
    app = Remote(base, "app.git")
    git("-c", "protocol.file.allow=always", "submodule", "--quiet", "add", "../lib.git", "lib",
        cwd=app.work)
    app.commit_and_push({"app.txt": "app\n"}, "app with a relative submodule")
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    root = tmp_path / "root"
    with SmartHttpServer(base, username=USER, password=PASSWORD) as server:
        engine = start(root, server.url_for("app.git"), "--username", USER,
                       "--password-file", str(password_file), "--submodules", "recursive")
        result = engine.sync_once("start")
        assert result.result == "published", result.error
        assert any(r.path.startswith("/lib.git/") and r.status == 200 for r in server.requests)
    assert (root / "app.git" / "lib" / "lib.txt").read_text() == "lib\n"
    config = git_config_text(root)
    assert f"url = {server.url_for('lib.git')}" in config   # resolved against the bare URL
    assert PASSWORD not in config
    show_status(engine, shown)


@pytest.mark.parametrize("flags, env, message", [
    (("--username", USER, "--password-file", "{tmp}/missing"), {},
     "auth: --password-file: cannot read {tmp}/missing: No such file or directory"),
    (("--username", USER, "--password-file", "{tmp}"), {},
     "auth: --password-file: cannot read {tmp}: Is a directory"),
], ids=["missing-file", "directory"])
def test_bad_password_settings_fail_the_sync_with_one_line(http_repo, tmp_path, shown, flags, env,
                                                           message):
    server, _ = http_repo
    flags = tuple(flag.replace("{tmp}", str(tmp_path)) for flag in flags)
    engine = start(tmp_path / "root", server.url_for("repo.git"), *flags, env=env)
    result = engine.sync_once("start")
    assert result.result == "error"
    assert result.error == message.replace("{tmp}", str(tmp_path))
    assert show_status(engine, shown)["last_error"] == result.error
    assert server.requests == []   # git was never started


def test_the_running_sidecar_shows_no_secret_anywhere(http_repo, tmp_path, gitsync, shown):
    server, remote = http_repo
    server.password = URL_PASSWORD
    url = server.url_for("repo.git").replace("://", f"://{USER}:{quote(URL_PASSWORD, safe='')}@")
    shim, argv_log = argv_recorder(tmp_path)
    root = tmp_path / "root"
    proc = gitsync("--repo", url, "--root", str(root), "--period", "100ms", "--max-failures", "-1",
                   "--http-bind",
                   "127.0.0.1:0", "-v", "1",
                   env={"PATH": f"{shim}:{os.environ['PATH']}", "GITSYNC_API_TOKEN": "t"})
    try:
        wait_for(lambda: published_sha(root / "repo.git") == remote.head(), 20, message="publish")
        port = wait_for(lambda: re.search(r"http://127\.0\.0\.1:(\d+)", proc.output), 10,
                        message="the API address").group(1)
        api = f"http://127.0.0.1:{port}"
        pages = {path: requests.get(api + path, timeout=30) for path in
                 ("/api/v1/status", "/", "/metrics")}
        assert all(page.status_code == 200 for page in pages.values())
        assert pages["/api/v1/status"].json()["repo"].startswith("http://REDACTED@127.0.0.1:")
        server.password = "rotated-away"   # make it fail too, to show an error everywhere
        remote.commit_and_push({"README.md": "v2\n"}, "second")
        wait_for(lambda: "Authentication failed" in proc.output, 20, message="a failed sync")
        status = requests.get(api + "/api/v1/status", timeout=30)
        assert "Authentication failed" in status.json()["last_error"]
        for text in (status.text, *(page.text for page in pages.values())):
            shown(text)
    finally:
        proc.stop()
    shown(proc.output)
    argv = argv_log.read_text()
    shown(argv)
    assert "ls-remote" in argv and "fetch" in argv   # the recorder saw git's calls
    assert server.url_for("repo.git") in argv           # ... with the URL, bare
    assert "sync published" in proc.output
    assert URL_PASSWORD not in git_config_text(root)


def test_max_failures_applies_to_a_wrong_password(http_repo, tmp_path, gitsync, shown):
    server, _ = http_repo
    password_file = tmp_path / "password"
    password_file.write_text("not-" + ROTATED)
    proc = gitsync("--repo", server.url_for("repo.git"), "--root", str(tmp_path / "root"),
                   "--username", USER, "--password-file", str(password_file),
                   "--max-failures", "1", "--period", "50ms", "--http-bind", "")
    try:
        assert proc.wait(20) == 1
    finally:
        proc.stop()
    shown(proc.output)
    assert proc.output.count("Authentication failed") == 2
    assert "2 consecutive sync failures (allowed: 1); exiting" in proc.output
    assert not (tmp_path / "root" / "repo.git").exists()


# -- SSH ----------------------------------------------------------------------------------

@pytest.fixture
def ssh_repo(tmp_path):
    """A remote behind a real sshd; `known_hosts` trusts it."""
    remote = Remote(tmp_path / "remotes")
    remote.commit_and_push({"README.md": "over ssh\n"}, "first")
    with SshServer(tmp_path / "sshd") as server:
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(server.known_hosts_line() + "\n")
        yield server, remote, known_hosts


def test_ssh_with_a_key_and_strict_known_hosts(ssh_repo, tmp_path, shown):
    server, remote, known_hosts = ssh_repo
    root = tmp_path / "root"
    engine = start(root, server.url_for(remote.path), "--ssh-key-file", str(server.client_key),
                   "--ssh-known-hosts-file", str(known_hosts))
    result = engine.sync_once("start")
    assert result.result == "published", result.error
    assert (root / "repo.git" / "README.md").read_text() == "over ssh\n"
    assert "Accepted publickey" in server.log_text()

    # The host key changes (or someone is in the middle): refused, and the tree stays.
    known_hosts.write_text(server.wrong_known_hosts_line() + "\n")
    remote.commit_and_push({"README.md": "v2\n"}, "second")
    failed = engine.sync_once("poll")
    assert failed.result == "error"
    assert "\n" not in failed.error
    assert failed.error.startswith("ls-remote: ")
    assert "Host key verification failed" in failed.error
    assert published_sha(root / "repo.git") == result.commit
    assert show_status(engine, shown)["last_error"] == failed.error


def test_ssh_without_known_hosts_checking(ssh_repo, tmp_path, shown):
    server, remote, _ = ssh_repo
    engine = start(tmp_path / "root", server.url_for(remote.path), "--ssh-key-file",
                   str(server.client_key), "--ssh-known-hosts", "false",
                   "--ssh-known-hosts-file", str(tmp_path / "nowhere"))
    result = engine.sync_once("start")
    assert result.result == "published", result.error


def test_ssh_with_a_key_the_server_does_not_know(ssh_repo, tmp_path, shown):
    server, remote, known_hosts = ssh_repo
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    engine = start(tmp_path / "root", server.url_for(remote.path), "--ssh-key-file", str(other),
                   "--ssh-known-hosts-file", str(known_hosts))
    result = engine.sync_once("start")
    assert result.result == "error"
    assert "\n" not in result.error
    assert "Permission denied (publickey)" in result.error


@pytest.mark.parametrize("flags, message", [
    (("--ssh-key-file", "{tmp}/missing-key"),
     "auth: --ssh-key-file: cannot read {tmp}/missing-key: No such file or directory"),
    (("--ssh-key-file", "{key}", "--ssh-key-file", "{tmp}"),
     "auth: --ssh-key-file: cannot read {tmp}: Is a directory"),
    (("--ssh-key-file", "{key}", "--ssh-known-hosts-file", "{tmp}/missing-hosts"),
     "auth: --ssh-known-hosts-file: cannot read {tmp}/missing-hosts: No such file or directory"),
], ids=["missing-key", "key-is-a-directory", "missing-known-hosts"])
def test_bad_ssh_files_fail_the_sync_with_one_line(tmp_path, shown, flags, message):
    key = tmp_path / "key"
    key.write_text("not really a key\n")
    flags = tuple(f.replace("{tmp}", str(tmp_path)).replace("{key}", str(key)) for f in flags)
    engine = start(tmp_path / "root", "ssh://git@127.0.0.1:1/srv/repo.git", *flags)
    result = engine.sync_once("start")
    assert result.result == "error"
    assert result.error == message.replace("{tmp}", str(tmp_path))


# -- the scan ------------------------------------------------------------------------------

def test_no_secret_in_anything_the_auth_tests_showed():
    """Runs last: everything kept above must be free of the test secrets."""
    if not SHOWN:
        pytest.skip("run with the whole module: this scans what the other tests kept")
    assert len(SHOWN) >= 13
    assert sum(len(text) for _, text in SHOWN) > 10_000
    leaks = [(name, secret) for name, text in SHOWN for secret in SECRETS if secret in text]
    assert leaks == []
