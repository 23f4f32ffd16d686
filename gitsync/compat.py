"""What a git-sync v4 user's flags mean here, where the two differ in form, not in purpose.

Value parsers for the forms git-sync takes (--credential's JSON, --git-config's quoted
list), the /etc/passwd entry of --add-user, and the one warning each for flags that are
accepted only so that a git-sync manifest starts unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .options import ConfigError

PASSWD = Path("/etc/passwd")
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', ",": ",", "\\": "\\"}
_CREDENTIAL_KEYS = frozenset({"url", "username", "password", "password-file"})


@dataclass(frozen=True)
class Credential:
    """One --credential: a login for every URL under `url`."""

    url: str
    username: str
    password: str | None = None
    password_file: str | None = None

    def __repr__(self) -> str:   # never the password
        return f"Credential(url={self.url!r}, username={self.username!r})"


@dataclass(frozen=True)
class GitHubApp:
    """--github-app-*: who signs the JWT, and which installation's token syncs."""

    base_url: str
    issuer: str                     # the client ID, or the application ID as text
    installation_id: int
    private_key: bytes = field(repr=False)


def github_app(v: dict[str, Any], key_text: str,
               read_secret: Callable[[str, str, None], bytes | None]) -> GitHubApp | None:
    """The GitHub App settings, by git-sync's rules: one of the two IDs, an installation,
    one private key (file or GITSYNC_GITHUB_APP_PRIVATE_KEY), no password."""
    key_text, key_file = key_text.strip(), v["github_app_private_key_file"]
    app_id, client_id = v["github_app_application_id"], v["github_app_client_id"]
    if not (app_id or client_id):
        if v["github_app_installation_id"] or key_file or key_text:
            raise ConfigError("--github-app-installation-id and the private key need "
                              "--github-app-application-id or --github-app-client-id")
        return None
    if app_id and client_id:
        raise ConfigError("give one of --github-app-application-id and --github-app-client-id")
    if not v["github_app_installation_id"]:
        raise ConfigError("a GitHub App needs --github-app-installation-id")
    if bool(key_file) == bool(key_text):
        raise ConfigError("a GitHub App needs one of --github-app-private-key-file and "
                          "GITSYNC_GITHUB_APP_PRIVATE_KEY")
    if v["username"] or v["password_file"]:
        raise ConfigError("a GitHub App logs in with its own token: drop --username and the password")
    if urlsplit(v["github_base_url"]).scheme not in ("http", "https"):
        raise ConfigError(f"--github-base-url: expected an http:// or https:// URL, "
                          f"got {v['github_base_url']!r}")
    key = read_secret("--github-app-private-key-file", key_file, None) if key_file else key_text.encode()
    return GitHubApp(base_url=v["github_base_url"], issuer=client_id or str(app_id),
                     installation_id=v["github_app_installation_id"], private_key=key or b"")


def parse_entry(text: str) -> tuple[str]:
    """A repeatable flag whose every occurrence is one value (--git-config-add)."""
    return (text,)


def parse_credentials(text: str) -> tuple[Credential, ...]:
    """'{"url": ..., "username": ..., "password-file": ...}', or a JSON list of such."""
    text = text.strip()
    if not text:
        return ()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON: {err.msg} at character {err.pos}") from None
    items = data if isinstance(data, list) else [data]
    return tuple(_credential(item) for item in items)


def _credential(item: object) -> Credential:
    if not isinstance(item, dict):
        raise ValueError("expected a JSON object with url, username and password or password-file")
    unknown = sorted(set(item) - _CREDENTIAL_KEYS)
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (known: url, username, password, password-file)")
    if not all(isinstance(value, str) for value in item.values()):
        raise ValueError("every field is a string")
    for needed in ("url", "username"):
        if not item.get(needed):
            raise ValueError(f"{needed} must be given")
    password, password_file = item.get("password") or None, item.get("password-file") or None
    if (password is None) == (password_file is None):
        raise ValueError("give one of password and password-file")
    return Credential(item["url"], item["username"], password, password_file)


def parse_git_config(text: str) -> list[tuple[str, str]]:
    """git-sync's --git-config grammar: key:value pairs split by commas; a key or a value
    may be double-quoted; an unquoted value and a quoted string take backslash escapes."""
    pairs: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        key, pos = _key(text, pos)
        if pos >= len(text):
            raise ValueError(f"key {key!r}: no value")
        value, pos = _value(text, pos, key)
        pairs.append((key, value))
    return pairs


def _key(text: str, pos: int) -> tuple[str, int]:
    if text[pos] == '"':
        key, pos = _quoted(text, pos + 1)
        if pos >= len(text):
            raise ValueError(f"key {key!r}: nothing after it")
        if text[pos] != ":":
            raise ValueError(f"key {key!r}: expected ':' after the quoted key, got {text[pos]!r}")
        return key, pos + 1
    end = text.find(":", pos)
    if end < 0:
        raise ValueError(f"expected key:value, got {text[pos:].split(',')[0]!r}")
    return text[pos:end], end + 1


def _value(text: str, pos: int, key: str) -> tuple[str, int]:
    if text[pos] == '"':
        try:
            value, pos = _quoted(text, pos + 1)
        except ValueError as err:
            raise ValueError(f"key {key!r}: {err}") from None
        if pos < len(text) and text[pos] != ",":
            raise ValueError(f"key {key!r}: expected ',' after the quoted value, got {text[pos]!r}")
        return value, pos + 1
    out: list[str] = []
    while pos < len(text) and text[pos] != ",":
        if text[pos] == "\\":
            char, pos = _escape(text, pos + 1, key)
            out.append(char)
        else:
            out.append(text[pos])
            pos += 1
    return "".join(out), pos + 1


def _quoted(text: str, pos: int) -> tuple[str, int]:
    """The rest of a double-quoted string starting at `pos`; the position after its end quote."""
    out: list[str] = []
    while pos < len(text):
        char = text[pos]
        if char == '"':
            return "".join(out), pos + 1
        if char == "\\":
            char, pos = _escape(text, pos + 1, "".join(out))
            out.append(char)
        else:
            out.append(char)
            pos += 1
    raise ValueError(f"unterminated quoted string {''.join(out)!r}")


def _escape(text: str, pos: int, where: str) -> tuple[str, int]:
    if pos >= len(text):
        raise ValueError(f"{where!r}: a backslash at the end")
    char = text[pos]
    if char not in _ESCAPES:
        raise ValueError(f"{where!r}: unsupported escape \\{char}")
    return _ESCAPES[char], pos + 1


def add_user(passwd: Path = PASSWD, uid: int | None = None, gid: int | None = None,
             home: str | None = None) -> bool:
    """--add-user: an /etc/passwd line for a UID the image does not know (ssh refuses to run
    as a nameless user). False when the UID already has one; OSError when the file is not
    writable (the image must make it so, as git-sync's does)."""
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    lines = passwd.read_text().splitlines() if passwd.exists() else []
    if any(line.split(":")[2:3] == [str(uid)] for line in lines):
        return False
    home = home or os.environ.get("HOME") or "/tmp"
    with passwd.open("a") as handle:
        handle.write(f"gitsync:x:{uid}:{gid}::{home}:/sbin/nologin\n")
    return True


def ignored_flag_warnings(http_pprof: bool) -> list[str]:
    """One line per git-sync flag that is accepted but can mean nothing here."""
    warnings = []
    if http_pprof:
        warnings.append("--http-pprof is accepted for git-sync compatibility and does nothing: "
                        "gitsync has no Go runtime to profile")
    return warnings
