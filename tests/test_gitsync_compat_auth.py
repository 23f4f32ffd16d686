"""git-sync v4's e2e scenarios for logging in: passwords, SSH keys, --askpass-url, a GitHub
App (against a local stand-in for GitHub's API), --credential for submodules on other
servers; and the process-level flags (--add-user, --group-write, --cookie-file). Each
test names its e2e case (`e2e: name`) where there is one."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
from support.ports import free_port
from compat_support import WAIT, GitHubStandIn, ScriptedServer, add_submodule, make_github_app, start_sidecar
from support.servers import SmartHttpServer, SshServer
from support.repos import Remote
from support.waiting import wait_for
from test_gitsync_compat import file_at, one_time

from gitsync import compat

pytestmark = pytest.mark.timeout(120)

USER, PASSWORD = "test-user", "pw-8Kq2-compat"


@pytest.fixture
def http_repo(tmp_path):
    remote = Remote(tmp_path / "remotes")
    remote.commit_and_push({"file": "one\n"}, "one")
    with SmartHttpServer(tmp_path / "remotes", username=USER, password=PASSWORD) as server:
        yield server, remote


@pytest.fixture
def askpass():
    made: list[ScriptedServer] = []

    def make(answer) -> ScriptedServer:
        made.append(ScriptedServer(answer))
        return made[-1]

    yield make
    for each in made:
        each.stop()


def login(password: str) -> tuple[int, bytes]:
    return 200, f"username={USER}\npassword={password}\n".encode()


# -- passwords ------------------------------------------------------------------------------

def test_password_from_the_environment(http_repo, tmp_path, gitsync):
    """e2e: auth_http_password."""
    server, remote = http_repo
    root = tmp_path / "root"
    url = server.url_for("repo.git")
    assert gitsync("--repo", url, "--root", str(root), "--link", "link", "--one-time",
                   "--http-bind", "", "--username", USER,
                   env={"GITSYNC_PASSWORD": "wrong"}).wait(WAIT) != 0
    assert gitsync("--repo", url, "--root", str(root), "--link", "link", "--one-time",
                   "--http-bind", "", "--username", USER,
                   env={"GITSYNC_PASSWORD": PASSWORD}).wait(WAIT) == 0
    assert file_at(root) == "one\n"


def test_password_in_the_url(http_repo, tmp_path, gitsync):
    """e2e: auth_http_password_in_url."""
    server, remote = http_repo
    root = tmp_path / "root"
    host = server.url.removeprefix("http://")
    assert one_time(gitsync, f"http://{USER}:wrong@{host}/repo.git", root) != 0
    assert one_time(gitsync, f"http://{USER}:{PASSWORD}@{host}/repo.git", root) == 0
    assert file_at(root) == "one\n"


def test_password_file_read_again_before_each_sync(http_repo, tmp_path, gitsync):
    """e2e: auth_http_password_file, auth_password_file_reload."""
    server, remote = http_repo
    root, secret = tmp_path / "root", tmp_path / "password"
    secret.write_text(PASSWORD)
    sidecar = start_sidecar(gitsync, "--repo", server.url_for("repo.git"), "--root", str(root),
                            "--link", "link", "--period", "100ms", "--username", USER,
                            "--password-file", str(secret), "--max-failures", "100")
    sidecar.wait_for_syncs(1)
    secret.write_text("wrong")
    remote.commit_and_push({"file": "two\n"}, "two")
    wait_for(lambda: sidecar.metric("git_sync_count_total", status="error") >= 2, WAIT,
             message="syncs failing with the wrong password")
    assert file_at(root) == "one\n"
    secret.write_text(PASSWORD)
    sidecar.wait_for_syncs(2)
    assert file_at(root) == "two\n"


# -- SSH -------------------------------------------------------------------------------------

@pytest.fixture
def ssh_repo(tmp_path):
    remote = Remote(tmp_path / "remotes")
    remote.commit_and_push({"file": "one\n"}, "one")
    wrong = tmp_path / "wrong_key"
    git_keygen(wrong)
    with SshServer(tmp_path / "sshd") as server:
        yield server, remote, wrong


def git_keygen(path: Path) -> None:
    import subprocess
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def test_ssh_keys(ssh_repo, tmp_path, gitsync):
    """e2e: auth_ssh_url (and auth_ssh, whose scp-like URL has no place for the test sshd's
    port; test_auth.py covers that form's parsing): a wrong key fails; several keys, one of
    them right, work."""
    server, remote, wrong = ssh_repo
    url = server.url_for(remote.path)
    root = tmp_path / "root"
    assert one_time(gitsync, url, root, "--ssh-known-hosts=false",
                    "--ssh-key-file", str(wrong)) != 0
    assert one_time(gitsync, url, root, "--ssh-known-hosts=false", "--ssh-key-file", str(wrong),
                    "--ssh-key-file", str(server.client_key)) == 0
    assert file_at(root) == "one\n"


# -- --askpass-url ---------------------------------------------------------------------------

def test_askpass_url_wrong_password(http_repo, tmp_path, gitsync, askpass):
    """e2e: auth_askpass_url_wrong_password."""
    server, _ = http_repo
    service = askpass(lambda n: login("wrong"))
    root = tmp_path / "root"
    assert one_time(gitsync, server.url_for("repo.git"), root, "--askpass-url", service.url) != 0
    assert not (root / "link").exists()


def test_askpass_url_correct_password(http_repo, tmp_path, gitsync, askpass):
    """e2e: auth_askpass_url_correct_password; asked once per sync, counted as git-sync does."""
    server, remote = http_repo
    service = askpass(lambda n: login(PASSWORD))
    root = tmp_path / "root"
    sidecar = start_sidecar(gitsync, "--repo", server.url_for("repo.git"), "--root", str(root),
                            "--link", "link", "--period", "100ms", "--askpass-url", service.url)
    sidecar.wait_for_syncs(1)
    assert file_at(root) == "one\n"
    assert sidecar.exact_sample("git_sync_askpass_calls", "success") >= 1
    assert sidecar.exact_sample("git_sync_askpass_calls", "error") == 0
    assert PASSWORD not in sidecar.process.output


@pytest.mark.parametrize("flaw", ["sometimes_wrong", "flaky"])
def test_askpass_url_that_fails_every_other_time(flaw, http_repo, tmp_path, gitsync, askpass):
    """e2e: auth_askpass_url_sometimes_wrong, auth_askpass_url_flaky: with --max-failures=2
    gitsync rides over the bad answers and keeps following the branch."""
    server, remote = http_repo
    bad = login("wrong") if flaw == "sometimes_wrong" else (503, b"")
    service = askpass(lambda n: login(PASSWORD) if n % 2 == 0 else bad)
    root = tmp_path / "root"
    sidecar = start_sidecar(gitsync, "--repo", server.url_for("repo.git"), "--root", str(root),
                            "--link", "link", "--period", "100ms", "--askpass-url", service.url,
                            "--max-failures", "2")
    sidecar.wait_for_syncs(1)
    remote.commit_and_push({"file": "two\n"}, "two")
    wait_for(lambda: file_at(root) == "two\n", WAIT, message="the second commit")
    remote.reset_hard("HEAD^")
    remote.push(force=True)
    wait_for(lambda: file_at(root) == "one\n", WAIT, message="the commit taken back")
    if flaw == "flaky":
        assert sidecar.exact_sample("git_sync_askpass_calls", "error") >= 1
    assert sidecar.process.proc.poll() is None


def test_askpass_url_that_starts_late(http_repo, tmp_path, gitsync):
    """e2e: auth_askpass_url_slow_start: nothing is published until the service answers."""
    server, _ = http_repo
    port = free_port()
    root = tmp_path / "root"
    sidecar = start_sidecar(gitsync, "--repo", server.url_for("repo.git"), "--root", str(root),
                            "--link", "link", "--period", "200ms",
                            "--askpass-url", f"http://127.0.0.1:{port}/git_askpass",
                            "--max-failures", "-1")
    wait_for(lambda: sidecar.exact_sample("git_sync_askpass_calls", "error") >= 2, WAIT,
             message="failed askpass calls")
    assert not (root / "link").exists()
    service = ScriptedServer(lambda n: login(PASSWORD), port=port)
    try:
        sidecar.wait_for_syncs(1)
        assert file_at(root) == "one\n"
    finally:
        service.stop()


# -- a GitHub App -----------------------------------------------------------------------------

@pytest.mark.parametrize("identity", ["application_id", "client_id"])
def test_github_app_token_against_a_stand_in(identity, tmp_path, gitsync):
    """e2e: auth_github_app_application_id, auth_github_app_client_id, with a local stand-in
    for GitHub: the JWT is signed with the app's key, the installation token is the password.
    A token near its expiry is minted again before the sync."""
    app = make_github_app(tmp_path / "app")
    remote = Remote(tmp_path / "remotes")
    remote.commit_and_push({"LICENSE": "MIT\n"}, "one")
    tokens = {"now": "ghs_first"}
    github = GitHubStandIn(app, token=lambda n: tokens["now"], lifetime=20)
    with SmartHttpServer(tmp_path / "remotes", username="-", password="ghs_first") as server:
        try:
            ident = (["--github-app-application-id", str(app.application_id)]
                     if identity == "application_id" else ["--github-app-client-id", app.client_id])
            root = tmp_path / "root"
            sidecar = start_sidecar(
                gitsync, "--repo", server.url_for("repo.git"), "--root", str(root), "--link", "link",
                "--period", "100ms", *ident,
                "--github-app-installation-id", str(app.installation_id),
                "--github-app-private-key-file", str(app.key_file),
                "--github-base-url", github.base_url)
            sidecar.wait_for_syncs(1)
            assert file_at(root, "LICENSE") == "MIT\n"
            # The token lives 20s, under the 30s margin: each sync mints a fresh one.
            tokens["now"] = server.password = "ghs_second"
            remote.commit_and_push({"LICENSE": "MIT-0\n"}, "two")
            wait_for(lambda: file_at(root, "LICENSE") == "MIT-0\n", WAIT,
                     message="a sync with a newer token")
            assert sidecar.exact_sample("git_sync_refresh_github_app_token_count", "success") >= 2
            assert "ghs_" not in sidecar.process.output
        finally:
            github.stop()


def test_a_github_app_key_github_does_not_accept_fails_the_sync(tmp_path, gitsync):
    app = make_github_app(tmp_path / "app")
    other = make_github_app(tmp_path / "other")
    github = GitHubStandIn(app, token=lambda n: "never")
    try:
        assert one_time(gitsync, "http://127.0.0.1:9/repo.git", tmp_path / "root",
                        "--github-app-application-id", str(app.application_id),
                        "--github-app-installation-id", str(app.installation_id),
                        "--github-app-private-key-file", str(other.key_file),
                        "--github-base-url", github.base_url) == 1
        assert github.minted == 0 and github.hits == 1
    finally:
        github.stop()


# -- --credential: submodules on servers with other passwords ----------------------------------

def test_submodules_over_http_with_different_passwords(tmp_path, gitsync):
    """e2e: submodule_sync_over_http_different_passwords: one --credential per server."""
    servers, passwords = [], ["test1", "test2", "test3"]
    remotes = [Remote(tmp_path / f"site{n}") for n in range(3)]
    try:
        for remote, password in zip(remotes, passwords, strict=True):
            servers.append(SmartHttpServer(remote.path.parent, username="test",
                                           password=password).__enter__())
        nested, sub, main = remotes
        nested_sha = nested.commit_and_push({"nested-submodule.file": "nested\n"}, "nested")
        sub.commit({"submodule.file": "sub\n"}, "sub")
        sub_sha = add_submodule(sub, "nested-sub", servers[0].url_for("repo.git"), nested_sha)
        main.commit({"file": "main\n"}, "main")
        add_submodule(main, "sub", servers[1].url_for("repo.git"), sub_sha)
        credentials = [json.dumps({"url": server.url_for("repo.git"), "username": "test",
                                   "password": password})
                       for server, password in zip(servers, passwords, strict=True)]
        root = tmp_path / "root"
        args = [arg for c in credentials for arg in ("--credential", c)]
        sidecar = start_sidecar(gitsync, "--repo", servers[2].url_for("repo.git"), "--root", str(root),
                                "--link", "link", "--period", "100ms", *args)
        sidecar.wait_for_syncs(1)
        assert file_at(root) == "main\n"
        assert file_at(root, "sub/submodule.file") == "sub\n"
        assert file_at(root, "sub/nested-sub/nested-submodule.file") == "nested\n"
        assert sidecar.metric("git_sync_count_total", status="success") == 1
        for password in passwords:
            assert password not in sidecar.process.output
    finally:
        for server in servers:
            server.stop()


def test_credential_with_a_password_file(http_repo, tmp_path, gitsync):
    server, _ = http_repo
    secret = tmp_path / "secret"
    secret.write_text(PASSWORD + "\n")
    credential = json.dumps({"url": server.url, "username": USER, "password-file": str(secret)})
    root = tmp_path / "root"
    assert one_time(gitsync, server.url_for("repo.git"), root, "--credential", credential) == 0
    assert file_at(root) == "one\n"


# -- process-level flags -----------------------------------------------------------------------

def test_group_write_makes_the_trees_group_writable(tmp_path, gitsync):
    remote = Remote(tmp_path / "remotes")
    remote.commit_and_push({"file": "one\n"}, "one")
    root = tmp_path / "root"
    assert one_time(gitsync, remote.url, root, "--group-write") == 0
    assert (root / "link" / "file").stat().st_mode & stat.S_IWGRP
    assert (root / "link").resolve().stat().st_mode & stat.S_IWGRP


def test_add_user_adds_one_passwd_line_for_an_unknown_uid(tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/sh\n")
    assert compat.add_user(passwd, uid=54321, gid=54321, home="/tmp/home") is True
    assert compat.add_user(passwd, uid=54321, gid=54321, home="/tmp/home") is False
    assert passwd.read_text().splitlines()[-1] == "gitsync:x:54321:54321::/tmp/home:/sbin/nologin"
    assert compat.add_user(passwd, uid=0, gid=0) is False


def test_cookie_file_is_given_to_git(tmp_path, monkeypatch, engine_factory):
    """--cookie-file names git-sync's fixed path; a missing file fails the sync in one line."""
    from gitsync import auth
    remote = Remote(tmp_path / "remotes")
    remote.commit_and_push({"file": "one\n"}, "one")
    seen = tmp_path / "seen"
    wrapper = tmp_path / "git-wrapper"
    wrapper.write_text(f"#!/bin/sh\n{shutil.which('git')} config --get http.cookiefile >> {seen}\n"
                       f"exec {shutil.which('git')} \"$@\"\n")
    wrapper.chmod(0o755)
    cookies = tmp_path / "cookie_file"
    monkeypatch.setattr(auth, "COOKIE_FILE", str(cookies))
    engine = engine_factory("--repo", remote.url, "--root", str(tmp_path / "root"), "--git",
                            str(wrapper), "--cookie-file", "--http-bind", "", run=False)
    failed = engine.sync_once("start")
    assert failed.result == "error" and failed.error.startswith("auth: --cookie-file: cannot read")
    cookies.write_text("# Netscape HTTP Cookie File\n")
    assert engine.sync_once("poll").result == "published"
    assert str(cookies) in seen.read_text().splitlines()
