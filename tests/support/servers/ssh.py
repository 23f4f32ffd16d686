"""``SshServer``: a real OpenSSH ``sshd`` on 127.0.0.1 that accepts one generated
client key, and ``git_ssh_command``, the ``GIT_SSH_COMMAND`` that reaches it.

A context manager: ``__enter__`` starts it and returns once it accepts connections
(without sshd the test skips, or fails in CI); ``__exit__`` always stops it and
every per-connection process.
"""

from __future__ import annotations

import os
import pwd
import shlex
import socket
import subprocess
import time
from pathlib import Path

from support.ports import LOCALHOST as _LOCALHOST
from support.ports import free_port
from support.processes import kill_tree
from support.tools import require_tool


def git_ssh_command(key_path: Path, known_hosts_path: Path) -> str:
    """GIT_SSH_COMMAND that uses only ``key_path`` and trusts only ``known_hosts_path``.

    ``-F /dev/null`` keeps the machine's ssh_config out of the tests;
    BatchMode makes ssh fail instead of prompting.
    """
    return shlex.join(
        [
            "ssh",
            "-F", os.devnull,
            "-i", str(key_path),
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known_hosts_path}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
        ]
    )  # fmt: skip


def _keygen(path: Path, comment: str) -> str:
    """Generate a fresh ed25519 key pair at ``path``; return the public key line."""
    for stale in (path, Path(f"{path}.pub")):  # a reused directory: start over
        stale.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return Path(f"{path}.pub").read_text().strip()


def _find_sshd() -> str:
    # sshd re-executes itself for every connection, so it needs an absolute path.
    return require_tool("sshd", "the SSH tests run a real sshd")


class SshServer:
    """A real OpenSSH sshd on 127.0.0.1 that lets the current user in by key only.

    Everything (host key, client key pair, authorized_keys, config, log) lives
    in ``tmp_dir``. Clients use ``client_key`` and a known_hosts file holding
    ``known_hosts_line()``; ``wrong_known_hosts_line()`` names the same host
    with another key, to prove that a changed host key is refused.

    After a stop it can be entered again with the same keys and port, so URLs
    and known_hosts files stay valid while the remote is down and back.
    """

    _START_ATTEMPTS = 3  # the port is picked before sshd binds it: may race
    _START_TIMEOUT = 10.0

    def __init__(self, tmp_dir: Path):
        self.dir = Path(tmp_dir)
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.client_key = self.dir / "client_ed25519"
        self.client_pub = self.dir / "client_ed25519.pub"
        self.authorized_keys = self.dir / "authorized_keys"
        self.config_path = self.dir / "sshd_config"
        self.log_path = self.dir / "sshd.log"
        self._proc: subprocess.Popen | None = None
        self._port: int | None = None
        self._host_pub = ""
        self._wrong_host_pub = ""

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> SshServer:
        if self._proc is not None:
            raise RuntimeError("server already started")
        _find_sshd()   # skips (or fails in CI) before any key is made
        require_tool("ssh-keygen", "the SSH tests make their keys")
        if not self._host_pub:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._host_pub = _keygen(self.host_key, "gitsync-test-host")
            self._wrong_host_pub = _keygen(self.dir / "wrong_host_ed25519_key", "wrong-host")
            client_pub = _keygen(self.client_key, "gitsync-test-client")
            self.authorized_keys.write_text(client_pub + "\n")
        if os.geteuid() == 0:
            # Privilege separation chroots into this directory; the package
            # creates it at boot only, so it is missing in containers.
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        if self._port is not None:  # a restart keeps its port
            ports = iter([self._port])
        else:
            ports = (free_port() for _ in range(self._START_ATTEMPTS))
        try:
            if not any(self._try_start(port) for port in ports):
                raise RuntimeError(f"sshd could not bind a port:\n{self.log_text()}")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        """Kill sshd and every per-connection child. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            kill_tree(proc)

    def _try_start(self, port: int) -> bool:
        """Start sshd on ``port``; False if that port was taken meanwhile."""
        self._write_config(port)
        with open(self.log_path, "ab") as log:
            log_start = log.tell()  # this attempt's messages start here
            proc = subprocess.Popen(
                [_find_sshd(), "-D", "-e", "-f", str(self.config_path), "-E", str(self.log_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + self._START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                if b"Address already in use" in self.log_path.read_bytes()[log_start:]:
                    return False
                raise RuntimeError(f"sshd exited with {proc.returncode}:\n{self.log_text()}")
            if self._banner_ok(port):
                self._proc, self._port = proc, port
                return True
            time.sleep(0.02)
        kill_tree(proc)
        raise RuntimeError(f"sshd did not accept connections:\n{self.log_text()}")

    @staticmethod
    def _banner_ok(port: int) -> bool:
        """True once sshd answers with an SSH banner (so it really is sshd)."""
        try:
            with socket.create_connection((_LOCALHOST, port), timeout=1) as sock:
                return sock.recv(64).startswith(b"SSH-2.0-")
        except OSError:
            return False

    def _write_config(self, port: int) -> None:
        self.config_path.write_text(
            "\n".join(
                [
                    f"ListenAddress {_LOCALHOST}:{port}",
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    f"AllowUsers {self.user}",
                    "AuthenticationMethods publickey",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "HostbasedAuthentication no",
                    "PermitRootLogin prohibit-password",
                    # Test files live in world-readable temp dirs.
                    "StrictModes no",
                    "UsePAM no",
                    "PidFile none",
                    # git sends GIT_PROTOCOL to ask for protocol v2 over ssh.
                    "AcceptEnv GIT_PROTOCOL",
                    # bash sources ~/.bashrc for commands run by sshd, but only
                    # in a top-level shell (SHLVL < 2). The user's rc files are
                    # slow, machine-specific, and killing a session inside one
                    # can leave stale lock files behind (pyenv's rehash does).
                    "SetEnv SHLVL=1",
                    "PermitUserRC no",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )

    # -- addresses and keys ------------------------------------------------

    @property
    def port(self) -> int:
        """The port sshd listens on (still readable after stop, for checks)."""
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def pid(self) -> int:
        """The listening sshd's pid; per-connection processes are below it."""
        if self._proc is None:
            raise RuntimeError("server not started")
        return self._proc.pid

    def url_for(self, path_to_bare_repo: Path) -> str:
        """ssh:// URL of a repository given by its local path."""
        path = Path(path_to_bare_repo).resolve()
        return f"ssh://{self.user}@{_LOCALHOST}:{self.port}{path}"

    def known_hosts_line(self) -> str:
        return self._known_hosts(self._host_pub)

    def wrong_known_hosts_line(self) -> str:
        """This server's address with a key it does not have."""
        return self._known_hosts(self._wrong_host_pub)

    def _known_hosts(self, public_key_line: str) -> str:
        key_type, key = public_key_line.split()[:2]
        return f"[{_LOCALHOST}]:{self.port} {key_type} {key}"

    def log_text(self) -> str:
        """sshd's log (all starts): who connected, which key was accepted."""
        try:
            return self.log_path.read_bytes().decode(errors="replace")
        except OSError:
            return ""
