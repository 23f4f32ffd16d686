"""Credentials for git, handed over through its environment, never argv or .git/config.

HTTPS: git asks a credential helper for the username and password. Ours is a
shell function set through GIT_CONFIG_PARAMETERS (no file, nothing in argv) that
answers from two variables only git and its children see, and it replaces every
other helper, so no `store` helper ever writes the password to disk. The password
file is read again before every sync, so a rotated token works without a restart.
Credentials written inside --repo take the same road: git is given the URL without them,
and so do the login --askpass-url answers and a GitHub App's installation token
(gitsync.tokens fetches both). Each --credential gets a helper of its own, scoped to
its URL prefix with credential.<url>.helper, so a submodule on another server gets
its own password. SSH: GIT_SSH_COMMAND names the keys and a strict known_hosts file.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from .compat import Credential
from .config import Config
from .git import config_parameters
from .model import SyncError
from .tokens import GitHubAppToken, ask_askpass_url

DEFAULT_SSH_KEY = "/etc/git-secret/ssh"
COOKIE_FILE = "/etc/git-secret/cookie_file"   # git-sync's fixed path for --cookie-file
USERNAME_VARIABLE = "GITSYNC_CREDENTIAL_USERNAME"
PASSWORD_VARIABLE = "GITSYNC_CREDENTIAL_PASSWORD"
# git runs a helper starting with "!" through the shell, with "get", "store" or "erase".
def _helper(user_variable: str, password_variable: str) -> str:
    return ('!f() { if [ "$1" = get ]; then printf \'username=%s\\npassword=%s\\n\' '
            f'"${user_variable}" "${password_variable}"; fi; }}; f')


_HELPER = _helper(USERNAME_VARIABLE, PASSWORD_VARIABLE)
# git's rule: no "://", and a colon before the first slash ([user@]host:path).
_SCP_LIKE = re.compile(r"^(?:[^/@:]+@)?[^/:]+:")
_HTTP_SCHEMES = ("http", "https")


def is_ssh_url(url: str) -> bool:
    if "://" in url:
        return url.startswith(("ssh://", "git+ssh://", "ssh+git://"))
    return bool(_SCP_LIKE.match(url))


def _split(url: str) -> SplitResult | None:
    try:
        parts = urlsplit(url)
        _ = parts.port   # raises ValueError on a malformed port
    except ValueError:
        return None
    return parts if parts.scheme in _HTTP_SCHEMES else None


def strip_credentials(url: str) -> str:
    """The HTTP(S) URL without its user:password@ part; other URLs as they are."""
    parts = _split(url)
    if parts is None or "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=host).geturl()


def url_credentials(url: str) -> tuple[str, str] | None:
    """(username, password) written inside an HTTP(S) URL, decoded; None when there are none."""
    parts = _split(url)
    if parts is None or "@" not in parts.netloc:
        return None
    return unquote(parts.username or ""), unquote(parts.password or "")


class Credentials:
    """The engine's CredentialSource: --username and a password, URL credentials, SSH."""

    def __init__(self, config: Config):
        self.config = config
        self._url = strip_credentials(config.repo)
        self._url_credentials = url_credentials(config.repo)
        self._app_token = GitHubAppToken(config.github_app) if config.github_app else None
        self._calls: list[tuple[str, str]] = []

    def drain_calls(self) -> tuple[tuple[str, str], ...]:
        calls, self._calls = tuple(self._calls), []
        return calls

    def remote_url(self) -> str:
        """The URL git is given on its command line: never with credentials in it."""
        return self._url

    def git_environment(self) -> tuple[dict[str, str], list[str]]:
        # Relative submodule URLs (../lib.git) resolve against remote.origin.url; the
        # bare repository has no remote, so name it here, outside .git/config.
        config = [("remote.origin.url", self._url)]
        env: dict[str, str] = {}
        secrets: list[str] = []
        login = self._http_login()
        if login is not None:
            username, password = login
            # The empty value first empties the helper list: ours is the only one asked.
            config += [("credential.helper", ""), ("credential.helper", _HELPER)]
            env.update({USERNAME_VARIABLE: username, PASSWORD_VARIABLE: password})
            secrets += [password, *self._url_secrets()]
        for index, credential in enumerate(self.config.credentials):
            config += self._scoped_login(index, credential, env, secrets)
        if self.config.cookie_file:
            config.append(("http.cookiefile", self._cookie_file()))
        env["GIT_CONFIG_PARAMETERS"] = config_parameters(config)
        if is_ssh_url(self.config.repo) or self.config.submodules != "off":
            # Submodules may live on SSH remotes even when the repository does not.
            env["GIT_SSH_COMMAND"] = self._ssh_command(strict=is_ssh_url(self.config.repo))
        return env, [s for s in secrets if s]

    # -- HTTPS -------------------------------------------------------------------

    def _http_login(self) -> tuple[str, str] | None:
        """The username and password git should answer with, or None for no login."""
        if self.config.askpass_url:
            return self._counted("askpass", lambda: ask_askpass_url(self.config.askpass_url))
        if self._app_token is not None:
            if not self._app_token.needs_refresh():
                return "-", self._app_token.token()
            # git-sync's user name for the token; GitHub reads only the password.
            return self._counted("github_app", lambda: ("-", self._app_token.token()))
        has_password = self.config.password_file is not None or self.config.password is not None
        if self._url_credentials is not None:
            if self.config.username or has_password:
                raise SyncError("auth", "--repo holds credentials and --username or a password is "
                                       "set too; give them in one place only")
            return self._url_credentials
        if self.config.username:
            return self.config.username, self._read_password()
        if has_password:
            raise SyncError("auth", "a password is set (--password-file or GITSYNC_PASSWORD) "
                                   "but --username is not")
        return None

    def _counted(self, kind: str, fetch):
        """Run a credential fetch, recording its outcome for git-sync's counters."""
        try:
            login = fetch()
        except SyncError:
            self._calls.append((kind, "error"))
            raise
        self._calls.append((kind, "success"))
        return login

    def _scoped_login(self, index: int, credential: Credential, env: dict[str, str],
                      secrets: list[str]) -> list[tuple[str, str]]:
        """--credential: a helper that answers only for URLs under the credential's URL
        (git matches credential.<url>.* by prefix, path included)."""
        password = credential.password
        if credential.password_file is not None:
            password = _read_file_password("--credential", Path(credential.password_file))
        user_variable, password_variable = f"{USERNAME_VARIABLE}_{index}", f"{PASSWORD_VARIABLE}_{index}"
        env.update({user_variable: credential.username, password_variable: password or ""})
        secrets.append(password or "")
        section = f"credential.{credential.url}"
        return [(f"{section}.helper", ""), (f"{section}.helper", _helper(user_variable, password_variable)),
                ("credential.useHttpPath", "true")]

    def _cookie_file(self) -> str:
        problem = _unreadable(COOKIE_FILE)
        if problem:
            raise SyncError("auth", f"--cookie-file: cannot read {COOKIE_FILE}: {problem}")
        return COOKIE_FILE

    def _url_secrets(self) -> list[str]:
        """The URL's credentials as written (maybe %-encoded); a lone user is likely a token."""
        if self._url_credentials is None:
            return []
        parts = urlsplit(self.config.repo)
        secrets = [parts.password or ""]
        if not parts.password and len(self._url_credentials[0]) >= 8:
            secrets += [parts.username or "", self._url_credentials[0]]
        return secrets

    def _read_password(self) -> str:
        path = self.config.password_file
        if path is None:
            if self.config.password is None:
                raise SyncError("auth", "--username is set but neither --password-file nor "
                                       "GITSYNC_PASSWORD is")
            return self.config.password
        return _read_file_password("--password-file", path)

    # -- SSH -----------------------------------------------------------------------

    def _ssh_command(self, *, strict: bool) -> str:
        """ssh with our keys and known_hosts; `strict` turns unreadable files into errors."""
        args = ["ssh", "-o", "BatchMode=yes"]
        keys = []
        for key in self.config.ssh_key_files:
            problem = _unreadable(key)
            if problem and key == DEFAULT_SSH_KEY and not os.path.lexists(key):
                continue   # git-sync's default key is optional
            if problem and strict:
                raise SyncError("auth", f"--ssh-key-file: cannot read {key}: {problem}")
            if not problem:
                keys.append(key)
        for key in keys:
            args += ["-i", key]
        if keys:
            args += ["-o", "IdentitiesOnly=yes"]
        if self.config.ssh_known_hosts:
            known = self.config.ssh_known_hosts_file
            problem = _unreadable(known)
            if problem and strict:
                raise SyncError("auth", f"--ssh-known-hosts-file: cannot read {known}: {problem}")
            args += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}"]
        else:
            args += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        return shlex.join(args)


def _read_file_password(flag: str, path: Path) -> str:
    """A password file, read afresh (a rotated token works without a restart)."""
    try:
        password = path.read_text().rstrip("\r\n")
    except OSError as err:
        raise SyncError("auth", f"{flag}: cannot read {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise SyncError("auth", f"{flag}: {path} is not UTF-8 text") from None
    if not password:
        raise SyncError("auth", f"{flag}: {path} is empty")
    return password


def _unreadable(path: str) -> str | None:
    """Why `path` cannot be read as a file, or None when it can (as this user, for real)."""
    try:
        with open(path, "rb"):
            return None
    except OSError as err:
        return err.strerror or str(err)
