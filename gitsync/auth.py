"""Credentials for git, handed over through its environment, never argv or .git/config.

HTTPS: git asks GIT_ASKPASS for the username and password; our askpass answers
from two variables only git and its children see. The password file is read
again before every sync, so a rotated token works without a restart.
SSH: GIT_SSH_COMMAND names the keys and a strict known_hosts file.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from .config import Config
from .git import GitError

DEFAULT_SSH_KEY = "/etc/git-secret/ssh"
_ASKPASS = """#!/bin/sh
case "$1" in
  Username*) printf '%s\\n' "$GITSYNC_ASKPASS_USERNAME" ;;
  *) printf '%s\\n' "$GITSYNC_ASKPASS_PASSWORD" ;;
esac
"""
_SCP_LIKE = re.compile(r"^[^/:@]+@[^/:]+:")


def is_ssh_url(url: str) -> bool:
    return url.startswith(("ssh://", "git+ssh://", "ssh+git://")) or bool(_SCP_LIKE.match(url))


def url_password(url: str) -> str | None:
    """The password inside an https://user:pass@host URL, to scrub from messages."""
    try:
        return urlsplit(url).password
    except ValueError:
        return None


class Credentials:
    """Implements the engine's CredentialSource for --username/--password-file and SSH."""

    def __init__(self, config: Config):
        self.config = config
        self._askpass: Path | None = None

    def git_environment(self) -> tuple[dict[str, str], list[str]]:
        env: dict[str, str] = {}
        secrets = [s for s in (url_password(self.config.repo),) if s]
        if self.config.username:
            password = self._read_password()
            env.update(GIT_ASKPASS=str(self._askpass_script()),
                       GITSYNC_ASKPASS_USERNAME=self.config.username,
                       GITSYNC_ASKPASS_PASSWORD=password)
            secrets.append(password)
        if is_ssh_url(self.config.repo):
            env["GIT_SSH_COMMAND"] = self._ssh_command()
        return env, secrets

    def _read_password(self) -> str:
        path = self.config.password_file
        if path is None:
            if self.config.password is None:
                raise GitError("auth", "--username is set but neither --password-file nor "
                                       "GITSYNC_PASSWORD is")
            return self.config.password
        try:
            password = path.read_text().strip()
        except OSError as err:
            raise GitError("auth", f"--password-file: cannot read {path}: {err.strerror}") from None
        if not password:
            raise GitError("auth", f"--password-file: {path} is empty")
        return password

    def _askpass_script(self) -> Path:
        if self._askpass is None or not self._askpass.exists():
            folder = Path(tempfile.mkdtemp(prefix="gitsync-askpass-"))
            script = folder / "askpass"
            script.write_text(_ASKPASS)
            script.chmod(stat.S_IRWXU)
            self._askpass = script
        return self._askpass

    def _ssh_command(self) -> str:
        args = ["ssh", "-o", "BatchMode=yes"]
        keys = [k for k in self.config.ssh_key_files if k != DEFAULT_SSH_KEY or os.path.exists(k)]
        for key in keys:
            if not os.access(key, os.R_OK):
                raise GitError("auth", f"--ssh-key-file: cannot read {key}")
            args += ["-i", key]
        if keys:
            args += ["-o", "IdentitiesOnly=yes"]
        if self.config.ssh_known_hosts:
            known = self.config.ssh_known_hosts_file
            if not os.access(known, os.R_OK):
                raise GitError("auth", f"--ssh-known-hosts-file: cannot read {known}")
            args += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}"]
        else:
            args += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        return shlex.join(args)
