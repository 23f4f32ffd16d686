"""Proves the test git servers in support/servers work, using real git clients.

Every assertion here is about what a real ``git`` or ``ssh`` subprocess could
or could not do, or about processes and ports seen through /proc and sockets,
so a server that only looks right cannot pass.
"""

from __future__ import annotations

import base64
import os
import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from support.processes import alive, cmdlines, descendant_pids, pids_mentioning
from support.servers import SmartHttpServer, SshServer, git_ssh_command
from support.waiting import stays, wait_for

pytestmark = pytest.mark.timeout(60)

IDENTITY = ["-c", "user.name=t", "-c", "user.email=t@e"]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def make_env(home: Path) -> dict[str, str]:
    """An environment where only what the test sets affects git and ssh.

    Inherited GIT_* and askpass variables are dropped, the system and user
    git config are ignored, and git may never prompt (it would hang).
    """
    home.mkdir(parents=True, exist_ok=True)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("GIT_") and key not in ("SSH_ASKPASS", "SSH_AUTH_SOCK")
    }
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    return env


def git(*args: str, env: dict[str, str], check: bool = True, cwd: Path | None = None):
    result = subprocess.run(
        ["git", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=30
    )
    if check and result.returncode != 0:
        raise AssertionError(f"git {shlex.join(args)} failed:\n{result.stderr}")
    return result


def fast_import(bare: Path, env: dict[str, str], commits: list[tuple[str, bytes]]) -> None:
    """Create a bare repo holding one commit per (branch, file content).

    The commits are chained and each branch points at its own commit, so a
    clone wants as many distinct objects as there are branches. fast-import
    builds thousands of commits in one process, fast.
    """
    git("init", "-q", "--bare", "-b", "main", str(bare), env=env)
    stream = bytearray()
    for mark, (branch, content) in enumerate(commits, start=1):
        stream += b"commit refs/heads/%s\nmark :%d\n" % (branch.encode(), mark)
        stream += b"committer t <t@e> %d +0000\ndata 2\nc\n" % mark
        if mark > 1:
            stream += b"from :%d\n" % (mark - 1)
        stream += b"M 644 inline f\ndata %d\n%s\n" % (len(content), content)
    stream += b"reset refs/heads/main\nfrom :%d\n\n" % len(commits)
    # Keep everything in one uncompressed pack: upload-pack then streams it
    # as is, and an 8 MiB blob costs no zlib time on either side.
    subprocess.run(
        ["git", "-c", "core.compression=0", "-c", "fastimport.unpackLimit=0",
         "fast-import", "--quiet"],
        input=bytes(stream), cwd=bare, env=env, check=True,
    )  # fmt: skip


def rev(repo: Path, name: str, env: dict[str, str]) -> str:
    return git("-C", str(repo), "rev-parse", name, env=env).stdout.strip()


def port_refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def pids_with_env(name: str, value: str) -> set[int]:
    """Running processes whose environment has ``name=value``."""
    needle = f"{name}={value}".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if needle in environ and alive(int(entry)):
                found.add(int(entry))
    return found


def pids_running(argv: list[str]) -> set[int]:
    return {pid for pid, args in cmdlines().items() if args == argv}


def pkt(line: str) -> bytes:
    return b"%04x%s" % (len(line) + 4, line.encode())


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return make_env(tmp_path / "home")


@pytest.fixture(scope="module")
def project_root(tmp_path_factory) -> Path:
    """Bare repos shared by the module's tests, which only read them.

    repo.git: 3 commits on main. many.git: 60 branches. huge-request.git:
    1500 branches. big.git: one 8 MiB incompressible file.
    """
    root = tmp_path_factory.mktemp("repos")
    env = make_env(root / "home")
    work = root / "work"
    git("init", "-q", "-b", "main", str(work), env=env)
    for n in range(3):
        (work / "f").write_text(f"{n}\n")
        git("-C", str(work), "add", "f", env=env)
        git("-C", str(work), *IDENTITY, "commit", "-q", "-m", f"c{n}", env=env)
    git("clone", "-q", "--bare", str(work), str(root / "repo.git"), env=env)
    fast_import(root / "many.git", env, [(f"b{i}", b"%d" % i) for i in range(60)])
    fast_import(root / "huge-request.git", env, [(f"b{i}", b"%d" % i) for i in range(1500)])
    fast_import(root / "big.git", env, [("main", os.urandom(8 << 20))])
    return root


@pytest.fixture
def http(project_root: Path):
    with SmartHttpServer(project_root) as server:
        yield server


@pytest.fixture
def own_repo(tmp_path: Path, env) -> tuple[Path, Path]:
    """A bare repo a test may change, and a work tree that pushes to it."""
    root = tmp_path / "own"
    work = tmp_path / "own-work"
    git("init", "-q", "-b", "main", str(work), env=env)
    git("-C", str(work), *IDENTITY, "commit", "-q", "--allow-empty", "-m", "1", env=env)
    git("clone", "-q", "--bare", str(work), str(root / "repo.git"), env=env)
    git("-C", str(work), "remote", "add", "origin", str(root / "repo.git"), env=env)
    return root, work


@pytest.fixture
def ssh_server(tmp_path: Path):
    with SshServer(tmp_path / "sshd") as server:
        yield server


def known_hosts(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(line + "\n")
    return path


# --------------------------------------------------------------------------
# smart HTTP
# --------------------------------------------------------------------------


def test_http_clone_protocol_v2(http, project_root, tmp_path, env):
    git("clone", "-q", http.url_for("repo.git"), str(tmp_path / "c"), env=env)

    assert rev(tmp_path / "c", "HEAD", env) == rev(project_root / "repo.git", "main", env)
    assert http.url == f"http://127.0.0.1:{http.port}"
    assert {r.git_protocol for r in http.requests} == {"version=2"}
    assert [r.command for r in http.requests if r.is_upload_pack_post] == ["ls-refs", "fetch"]
    assert {r.status for r in http.requests} == {200}


def test_http_clone_protocol_v0(http, project_root, tmp_path, env):
    git("-c", "protocol.version=0", "clone", "-q", http.url_for("repo.git"), str(tmp_path / "c"),
        env=env)  # fmt: skip

    assert rev(tmp_path / "c", "HEAD", env) == rev(project_root / "repo.git", "main", env)
    assert {r.git_protocol for r in http.requests} == {None}
    assert [(r.method, r.command) for r in http.requests] == [("GET", None), ("POST", "want")]


@pytest.mark.parametrize("version", ["0", "2"])
def test_http_shallow_fetch(http, tmp_path, env, version):
    clone = tmp_path / "c"
    git("init", "-q", str(clone), env=env)
    git("-C", str(clone), "-c", f"protocol.version={version}", "fetch", "-q", "--depth", "1",
        http.url_for("repo.git"), "main", env=env)  # fmt: skip

    assert git("-C", str(clone), "rev-list", "--count", "FETCH_HEAD", env=env).stdout.strip() == "1"
    assert (clone / ".git" / "shallow").read_text().strip() == rev(clone, "FETCH_HEAD", env)


def test_http_unknown_repo_is_404(http, tmp_path, env):
    result = git("clone", http.url_for("nope.git"), str(tmp_path / "c"), env=env, check=False)

    assert result.returncode != 0
    assert [r.status for r in http.requests] == [404]


@pytest.mark.parametrize("version", ["0", "2"])
def test_request_log_tells_ref_listing_from_fetch(own_repo, tmp_path, env, version):
    """ls-remote and an unchanged fetch list refs only; a changed fetch fetches."""
    root, work = own_repo
    v = ["-c", f"protocol.version={version}"]
    with SmartHttpServer(root) as server:
        clone = tmp_path / "c"
        git(*v, "clone", "-q", server.url_for("repo.git"), str(clone), env=env)
        assert len(server.fetch_requests()) == 1

        server.clear_requests()
        git(*v, "ls-remote", server.url_for("repo.git"), env=env)
        listing = [(r.method, r.command) for r in server.requests]
        if version == "0":
            assert listing == [("GET", None)]
            assert server.upload_pack_posts() == 0
        else:
            assert listing == [("GET", None), ("POST", "ls-refs")]
            assert server.upload_pack_posts() == 1
        assert server.requests[0].path == "/repo.git/info/refs"
        assert server.requests[0].query == "service=git-upload-pack"
        assert server.fetch_requests() == []

        server.clear_requests()
        git(*v, "-C", str(clone), "fetch", "-q", env=env)  # nothing new
        assert server.requests and server.fetch_requests() == []

        git("-C", str(work), *IDENTITY, "commit", "-q", "--allow-empty", "-m", "2", env=env)
        git("-C", str(work), "push", "-q", "origin", "main", env=env)
        server.clear_requests()
        git(*v, "-C", str(clone), "fetch", "-q", env=env)
        assert len(server.fetch_requests()) == 1
        assert rev(clone, "origin/main", env) == rev(work, "HEAD", env)


def test_gzip_request_body(http, tmp_path, env):
    """git gzips request bodies over 1 KiB: 60 wants must reach upload-pack intact."""
    git("clone", "-q", http.url_for("many.git"), str(tmp_path / "c"), env=env)

    assert [r.content_encoding for r in http.fetch_requests()] == ["gzip"]
    branches = git("-C", str(tmp_path / "c"), "branch", "-r", env=env).stdout.split()
    assert len([b for b in branches if b.startswith("origin/b")]) == 60


def test_chunked_request_body(http, tmp_path, env):
    """Bodies over http.postBuffer (>= 64 KiB) are sent chunked, without Content-Length."""
    git("-c", "http.postBuffer=65536", "clone", "-q", http.url_for("huge-request.git"),
        str(tmp_path / "c"), env=env)  # fmt: skip

    assert "chunked" in [r.transfer_encoding for r in http.fetch_requests()]
    branches = git("-C", str(tmp_path / "c"), "branch", "-r", env=env).stdout.split()
    assert len([b for b in branches if b.startswith("origin/b")]) == 1500


def test_basic_auth_right_credentials(project_root, tmp_path, env):
    with SmartHttpServer(project_root, username="alice", password="s3cret") as server:
        url = server.url_for("repo.git").replace("http://", "http://alice:s3cret@")
        git("clone", "-q", url, str(tmp_path / "c"), env=env)

        expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()
        assert expected in server.received_authorization()
        assert server.fetch_requests()[0].status == 200


@pytest.mark.parametrize("userinfo", ["", "alice:wrong@", "bob:s3cret@"])
def test_basic_auth_wrong_or_missing_credentials(project_root, tmp_path, env, userinfo):
    with SmartHttpServer(project_root, username="alice", password="s3cret") as server:
        url = server.url_for("repo.git").replace("http://", f"http://{userinfo}")
        result = git("clone", url, str(tmp_path / "c"), env=env, check=False)

        assert result.returncode != 0
        assert server.requests and {r.status for r in server.requests} == {401}
        assert not (tmp_path / "c").exists()

        info_refs = server.url_for("repo.git/info/refs?service=git-upload-pack")
        response = requests.get(info_refs, timeout=10)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Basic realm="git"'


def test_delay_slows_every_request(project_root, env):
    with SmartHttpServer(project_root, delay=0.5) as server:
        start = time.monotonic()
        git("-c", "protocol.version=2", "ls-remote", server.url_for("repo.git"), env=env)
        elapsed = time.monotonic() - start

    assert len(server.requests) == 2  # capabilities GET + ls-refs POST
    assert elapsed >= 2 * 0.5


def test_http_exit_releases_port(project_root, env):
    with SmartHttpServer(project_root) as server:
        git("ls-remote", server.url_for("repo.git"), env=env)
        # A keep-alive connection is still open while the server stops.
        session = requests.Session()
        assert session.get(server.url_for("repo.git/HEAD"), timeout=10).status_code == 200
    assert port_refuses(server.port)
    session.close()


def _start_big_fetch(server: SmartHttpServer, project_root: Path) -> socket.socket:
    """Ask for big.git's 8 MiB pack, read only the response headers, and return.

    The client's small receive buffer fills at once, so http-backend stays
    blocked writing the pack until someone kills it.
    """
    oid = rev(project_root / "big.git", "main", make_env(project_root / "home"))
    body = pkt("command=fetch\n") + b"0001" + pkt(f"want {oid}\n") + pkt("done\n") + b"0000"
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(
        b"POST /big.git/git-upload-pack HTTP/1.1\r\nHost: x\r\nGit-Protocol: version=2\r\n"
        b"Content-Type: application/x-git-upload-pack-request\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert sock.recv(12) == b"HTTP/1.1 200"
    return sock


def test_client_disconnect_kills_backend(http, project_root):
    root = str(project_root)
    sock = _start_big_fetch(http, project_root)
    wait_for(lambda: pids_with_env("GIT_PROJECT_ROOT", root), message="http-backend to run")
    assert stays(lambda: pids_with_env("GIT_PROJECT_ROOT", root), 0.3), "http-backend should be blocked, not done"

    sock.close()

    wait_for(lambda: not pids_with_env("GIT_PROJECT_ROOT", root), message="http-backend to die")
    assert http.fetch_requests()[0].status == 200


def test_http_exit_kills_running_backend(project_root):
    root = str(project_root)
    with SmartHttpServer(project_root) as server:
        sock = _start_big_fetch(server, project_root)

        def whole_backend():
            """http-backend, the git upload-pack it runs, and its pack-objects."""
            found = pids_with_env("GIT_PROJECT_ROOT", root)
            return found if len(found) >= 3 else None

        backend = wait_for(whole_backend, message="http-backend and its children")
        commands = " ".join(" ".join(cmdlines().get(pid, [])) for pid in backend)
        assert "upload-pack" in commands and "pack-objects" in commands

    assert not any(alive(pid) for pid in backend)
    assert port_refuses(server.port)
    sock.close()


# --------------------------------------------------------------------------
# SSH
# --------------------------------------------------------------------------


def test_ssh_clone(ssh_server, project_root, tmp_path, env):
    env["GIT_SSH_COMMAND"] = git_ssh_command(
        ssh_server.client_key, known_hosts(tmp_path, ssh_server.known_hosts_line())
    )
    env["GIT_TRACE_PACKET"] = "1"
    url = ssh_server.url_for(project_root / "repo.git")
    result = git("clone", url, str(tmp_path / "c"), env=env)

    assert url == f"ssh://{ssh_server.user}@127.0.0.1:{ssh_server.port}{project_root}/repo.git"
    assert rev(tmp_path / "c", "HEAD", env) == rev(project_root / "repo.git", "main", env)
    assert "clone< version 2" in result.stderr  # GIT_PROTOCOL reached the server
    assert "Accepted publickey" in ssh_server.log_text()


def test_ssh_changed_host_key_is_refused(ssh_server, project_root, tmp_path, env):
    assert ssh_server.wrong_known_hosts_line() != ssh_server.known_hosts_line()
    env["GIT_SSH_COMMAND"] = git_ssh_command(
        ssh_server.client_key, known_hosts(tmp_path, ssh_server.wrong_known_hosts_line())
    )
    result = git("clone", ssh_server.url_for(project_root / "repo.git"), str(tmp_path / "c"),
                 env=env, check=False)  # fmt: skip

    assert result.returncode != 0
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr
    assert "Host key verification failed" in result.stderr


def test_ssh_unknown_client_key_is_refused(ssh_server, project_root, tmp_path, env):
    other_key = tmp_path / "other_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True
    )
    env["GIT_SSH_COMMAND"] = git_ssh_command(
        other_key, known_hosts(tmp_path, ssh_server.known_hosts_line())
    )
    result = git("clone", ssh_server.url_for(project_root / "repo.git"), str(tmp_path / "c"),
                 env=env, check=False)  # fmt: skip

    assert result.returncode != 0
    assert "Permission denied (publickey)" in result.stderr


def test_ssh_session_skips_user_rc_files(ssh_server, tmp_path, env):
    """Commands run by sshd must not source the user's ~/.bashrc (see SshServer)."""
    ssh = shlex.split(
        git_ssh_command(ssh_server.client_key, known_hosts(tmp_path, ssh_server.known_hosts_line()))
    )
    result = subprocess.run(
        [*ssh, "-p", str(ssh_server.port), f"{ssh_server.user}@127.0.0.1", "echo $SHLVL"],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"  # bash only reads ~/.bashrc at level 1


def test_ssh_exit_kills_sshd_and_open_sessions(tmp_path, env):
    client = None
    try:
        with SshServer(tmp_path / "sshd") as server:
            ssh = shlex.split(
                git_ssh_command(server.client_key, known_hosts(tmp_path, server.known_hosts_line()))
            )
            client = subprocess.Popen(
                [*ssh, "-p", str(server.port), f"{server.user}@127.0.0.1", "sleep 60"],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            session = wait_for(
                lambda: descendant_pids(server.pid) & pids_running(["sleep", "60"]),
                message="the remote 'sleep 60'",
            )
            tree = descendant_pids(server.pid) | {server.pid}
            assert server.pid in pids_mentioning(str(server.config_path))

        assert session <= tree
        assert not any(alive(pid) for pid in tree)
        assert not pids_mentioning(str(server.config_path))
        assert port_refuses(server.port)
        assert client.wait(timeout=10) != 0  # its connection was cut
    finally:
        if client is not None:
            client.kill()
            client.wait()


def test_http_restart_comes_back_on_the_same_port(project_root, env):
    server = SmartHttpServer(project_root)
    with server:
        url = server.url_for("repo.git")
        git("ls-remote", url, env=env)
    assert git("ls-remote", url, env=env, check=False).returncode != 0

    with server:
        assert server.url_for("repo.git") == url
        assert "refs/heads/main" in git("ls-remote", url, env=env).stdout
    assert port_refuses(server.port)


def test_ssh_restart_keeps_port_and_keys(project_root, tmp_path, env):
    server = SshServer(tmp_path / "sshd")
    with server:
        url = server.url_for(project_root / "repo.git")
        env["GIT_SSH_COMMAND"] = git_ssh_command(
            server.client_key, known_hosts(tmp_path, server.known_hosts_line())
        )
        git("ls-remote", url, env=env)
    assert git("ls-remote", url, env=env, check=False).returncode != 0

    with server:
        assert server.url_for(project_root / "repo.git") == url
        assert "refs/heads/main" in git("ls-remote", url, env=env).stdout
    assert port_refuses(server.port)
