"""The one frozen Config, built at start from the values of gitsync's option table (flags.py).

Every option is declared once in OPTIONS (gitsync.options reads the table for argparse,
the environment, --help and the configuration reference); every rule that ties options
together is checked here, once. A bad value exits 2 with one line naming the flag.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import __version__
from .appsignal import matches_own_command_line
from .compat import Credential, GitHubApp, github_app, parse_git_config
from .flags import OPTIONS, TABLE
from .options import ConfigError, parse_host_port, parse_list

__all__ = ["OPTIONS", "TABLE", "STATE_DIR", "Config", "ConfigError", "parse_args", "load"]

# <root>/.gitsync holds what rollouts keep (bad marks, pause); outside .git, which a
# damaged repository loses when it is started again.
STATE_DIR = ".gitsync"


@dataclass(frozen=True)
class Peers:
    """--peers: a DNS name resolved afresh each time (a headless Service), or fixed addresses."""

    dns_name: str | None
    port: int | None
    addresses: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Config:
    repo: str
    ref: str
    root: Path
    link: Path
    depth: int
    period: float
    sync_timeout: float
    max_failures: int
    one_time: bool
    username: str
    password_file: Path | None
    password: str | None = field(repr=False)
    ssh_key_files: tuple[str, ...]
    ssh_known_hosts: bool
    ssh_known_hosts_file: str
    submodules: str
    sparse_checkout_file: Path | None
    sparse_patterns: str | None
    git_config: tuple[tuple[str, str], ...]
    exechook_command: str
    exechook_timeout: float
    exechook_backoff: float
    webhook_url: str
    webhook_method: str
    webhook_success_status: int
    webhook_timeout: float
    webhook_backoff: float
    touch_file: Path | None
    error_file: Path | None
    sync_on_signal: int | None
    stale_worktree_timeout: float
    http_bind: tuple[str, int] | None
    http_metrics: bool
    receiver_secret: bytes | None = field(repr=False)
    receiver_max_body: int
    api_token: str | None = field(repr=False)
    app_status_url: str
    app_health_url: str
    rollout_timeout: float
    rollback: bool
    app_signal: int | None
    app_process: str
    peers: Peers | None
    peer_secret: bytes | None = field(repr=False)
    log_format: str
    verbose: int
    git: str = "git"
    git_gc: str = "auto"
    filter: str = ""
    init_period: float = 0.0
    init_max_failures: int | None = None
    credentials: tuple[Credential, ...] = ()
    askpass_url: str = ""
    cookie_file: bool = False
    github_app: GitHubApp | None = None
    add_user: bool = False
    group_write: bool = False
    http_pprof: bool = False
    version: str = __version__


def build_parser():
    return TABLE.parser()


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """Build the Config; raise ConfigError with a one-line message on any bad input."""
    return _make_config(TABLE.parse(argv, environ), environ)


def _make_config(v: dict[str, Any], environ: Mapping[str, str]) -> Config:
    _check_ranges(v)
    _check_repo_url(v["repo"])
    _check_credentials(v, environ)
    _check_rollouts_and_fleet(v, environ)
    root = Path(v["root"]).expanduser().absolute()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--root: {root} exists and is not a directory")
    sparse_file = _optional_path(v["sparse_checkout_file"], None)
    return Config(
        repo=v["repo"], ref=v["ref"].strip() or "HEAD", root=root,
        link=_resolve_link(v["link"], v["repo"], root),
        depth=v["depth"], period=v["period"], sync_timeout=v["sync_timeout"],
        max_failures=v["max_failures"], one_time=v["one_time"],
        username=v["username"], password_file=_optional_path(v["password_file"], None),
        password=environ.get("GITSYNC_PASSWORD") or None,
        ssh_key_files=tuple(v["ssh_key_file"]),
        ssh_known_hosts=v["ssh_known_hosts"], ssh_known_hosts_file=v["ssh_known_hosts_file"],
        submodules=v["submodules"],
        sparse_checkout_file=sparse_file, sparse_patterns=_read_sparse_patterns(sparse_file),
        git_config=_parse_git_config(v["git_config"], v["git_config_add"]),
        exechook_command=v["exechook_command"], exechook_timeout=v["exechook_timeout"],
        exechook_backoff=v["exechook_backoff"],
        webhook_url=v["webhook_url"], webhook_method=v["webhook_method"].upper(),
        webhook_success_status=v["webhook_success_status"], webhook_timeout=v["webhook_timeout"],
        webhook_backoff=v["webhook_backoff"],
        touch_file=_optional_path(v["touch_file"], root),
        error_file=_optional_path(v["error_file"], root),
        sync_on_signal=v["sync_on_signal"],
        stale_worktree_timeout=v["stale_worktree_timeout"],
        http_bind=_parse_bind(v["http_bind"]), http_metrics=v["http_metrics"],
        receiver_secret=_read_secret("--receiver-secret-file", v["receiver_secret_file"],
                                     environ.get("GITSYNC_RECEIVER_SECRET")),
        receiver_max_body=v["receiver_max_body"],
        api_token=_text_or_none(_read_secret("--api-token-file", v["api_token_file"],
                                             environ.get("GITSYNC_API_TOKEN"))),
        app_status_url=v["app_status_url"], app_health_url=v["app_health_url"],
        rollout_timeout=v["rollout_timeout"], rollback=v["rollback"],
        app_signal=v["app_signal"], app_process=v["app_process"],
        peers=_parse_peers(v["peers"]),
        peer_secret=_read_secret("--peer-secret-file", v["peer_secret_file"],
                                 environ.get("GITSYNC_PEER_SECRET")),
        log_format=v["log_format"], verbose=v["verbose"],
        git=v["git"], git_gc=v["git_gc"], filter=v["filter"].strip(),
        init_period=v["init_period"] or v["period"], init_max_failures=v["init_max_failures"],
        credentials=tuple(v["credential"]), askpass_url=v["askpass_url"],
        cookie_file=v["cookie_file"],
        github_app=github_app(v, environ.get("GITSYNC_GITHUB_APP_PRIVATE_KEY", ""), _read_secret),
        add_user=v["add_user"], group_write=v["group_write"], http_pprof=v["http_pprof"],
    )


def _check_rollouts_and_fleet(v: dict[str, Any], environ: Mapping[str, str]) -> None:
    for flag in ("app_status_url", "app_health_url"):
        if v[flag] and urlsplit(v[flag]).scheme not in ("http", "https"):
            name = "--" + flag.replace("_", "-")
            raise ConfigError(f"{name}: expected an http:// or https:// URL, got {v[flag]!r}")
    if v["app_status_url"] and v["app_health_url"]:
        raise ConfigError("--app-status-url and --app-health-url are two ways to follow a "
                          "rollout: give one")
    if bool(v["app_signal"]) != bool(v["app_process"]):
        raise ConfigError("--app-signal and --app-process go together: the signal, and which "
                          "processes get it")
    if v["app_process"]:
        try:
            re.compile(v["app_process"])
        except re.error as err:
            raise ConfigError(f"--app-process: not a regular expression: {err}") from None
        if matches_own_command_line(v["app_process"]):
            raise ConfigError(f"--app-process: {v['app_process']!r} matches gitsync's own command line, "
                              "and gitsync never signals itself: anchor it (e.g. '^node ') or set it "
                              "in GITSYNC_APP_PROCESS")
    if v["peers"] and not (v["peer_secret_file"] or environ.get("GITSYNC_PEER_SECRET", "").strip()):
        raise ConfigError("--peers needs --peer-secret-file or GITSYNC_PEER_SECRET: peer calls are signed")


def _parse_peers(text: str) -> Peers | None:
    text = text.strip()
    if not text:
        return None
    if text.startswith("dns:"):
        name, sep, port = text[len("dns:"):].rpartition(":")
        if not sep or not name:
            raise ConfigError(f"--peers: expected dns:NAME:PORT, got {text!r}")
        return Peers(dns_name=name, port=_peer_port(port, text))
    addresses = []
    for item in parse_list(text):
        try:
            address = parse_host_port(item)
        except ValueError as err:
            raise ConfigError(f"--peers: {err}") from None
        if address is None or address[0] == "0.0.0.0" or address[1] == 0:
            raise ConfigError(f"--peers: {item!r} is not a peer address (HOST:PORT)")
        addresses.append(address)
    return Peers(dns_name=None, port=None, addresses=tuple(addresses))


def _peer_port(text: str, whole: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(f"--peers: port {text!r} in {whole!r} is not a number") from None
    if not 0 < port <= 65535:
        raise ConfigError(f"--peers: port {port} is out of range")
    return port


def _check_credentials(v: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Combinations that can never work are refused at start, not at every sync."""
    has_password = bool(v["password_file"]) or bool(environ.get("GITSYNC_PASSWORD"))
    try:
        parts = urlsplit(v["repo"])
        url_login = bool(parts.username or parts.password)
    except ValueError:
        url_login = False
    if url_login and (v["username"] or has_password):
        raise ConfigError("--repo holds credentials and --username or a password is set too; "
                          "give them in one place only")
    if v["username"] and not has_password:
        raise ConfigError("--username needs --password-file or GITSYNC_PASSWORD")
    if has_password and not v["username"] and not url_login:
        raise ConfigError("--username is required with --password-file or GITSYNC_PASSWORD")


def _read_sparse_patterns(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise ConfigError(f"--sparse-checkout-file: cannot read {path}: {why}") from None


def _check_ranges(v: dict[str, Any]) -> None:
    checks = (
        ("--depth", v["depth"] >= 0, "must be 0 or more"),
        ("--period", v["period"] > 0, "must be more than 0s"),
        ("--init-period", v["init_period"] >= 0, "must not be negative"),
        ("--sync-timeout", v["sync_timeout"] > 0, "must be more than 0s"),
        ("--max-failures", v["max_failures"] >= -1, "must be -1 or more"),
        ("--init-max-failures", v["init_max_failures"] is None or v["init_max_failures"] >= -1,
         "must be -1 or more"),
        ("--askpass-url", not v["askpass_url"] or urlsplit(v["askpass_url"]).scheme
         in ("http", "https"), "expected an http:// or https:// URL"),
        ("--git", bool(v["git"].strip()), "must not be empty"),
        ("--exechook-timeout", v["exechook_timeout"] > 0, "must be more than 0s"),
        ("--exechook-backoff", v["exechook_backoff"] >= 0, "must not be negative"),
        ("--webhook-timeout", v["webhook_timeout"] > 0, "must be more than 0s"),
        ("--webhook-backoff", v["webhook_backoff"] >= 0, "must not be negative"),
        ("--stale-worktree-timeout", v["stale_worktree_timeout"] >= 0, "must not be negative"),
        ("--receiver-max-body", v["receiver_max_body"] > 0, "must be more than 0"),
        ("--webhook-success-status", v["webhook_success_status"] == 0
         or 100 <= v["webhook_success_status"] <= 599, "must be 0 or an HTTP status"),
        ("--repo", bool(v["repo"].strip()), "must not be empty"),
        ("--root", bool(v["root"].strip()), "must not be empty"),
    )
    for flag, ok, why in checks:
        if not ok:
            raise ConfigError(f"{flag}: {why}")


GIT_URL_SCHEMES = ("http", "https", "ssh", "git", "file", "git+ssh", "ssh+git")


def _check_repo_url(repo: str) -> None:
    """A misspelt scheme fails here, at start, not at the first fetch with git's riddle."""
    scheme, sep, _ = repo.partition("://")
    if sep and scheme.lower() not in GIT_URL_SCHEMES:
        raise ConfigError(f"--repo: unknown URL scheme {scheme + '://'!r} "
                          "(use https://, http://, ssh://, git://, file:// or user@host:path)")


def _resolve_link(link: str, repo: str, root: Path) -> Path:
    if not link:
        # git-sync's rule: the last part of the repo URL, as it is (".git" kept).
        link = repo.rstrip("/").replace(":", "/").split("/")[-1]
        if not link:
            raise ConfigError("--link: cannot be derived from --repo; set it")
    path = Path(link)
    resolved = path if path.is_absolute() else root / path
    if resolved == root or resolved.name in ("", ".", ".."):
        raise ConfigError(f"--link: {link!r} is not a usable link name")
    for own in (root / ".git", root / ".worktrees", root / STATE_DIR):
        if resolved == own or own in resolved.parents:
            raise ConfigError(f"--link: {link!r} would be inside {own.name}, which gitsync keeps for "
                              "itself; choose another name")
    return resolved


def _optional_path(text: str, base: Path | None) -> Path | None:
    if not text:
        return None
    path = Path(text).expanduser()
    return path if path.is_absolute() or base is None else base / path


def _parse_git_config(text: str, added: tuple[str, ...] = ()) -> tuple[tuple[str, str], ...]:
    """--git-config in git-sync's grammar (gitsync.compat), then each --git-config-add."""
    pairs = []
    for flag, item in (("--git-config", text), *(("--git-config-add", one) for one in added)):
        try:
            parsed = parse_git_config(item)
        except ValueError as err:
            raise ConfigError(f"{flag}: {err}") from None
        for key, value in parsed:
            if not key.strip():
                raise ConfigError(f"{flag}: an empty key in {item!r}")
            pairs.append((key.strip(), value))
    return tuple(pairs)


def _parse_bind(text: str) -> tuple[str, int] | None:
    try:
        return parse_host_port(text)
    except ValueError as err:
        raise ConfigError(f"--http-bind: {err}") from None


def _read_secret(flag: str, path: str, env_value: str | None) -> bytes | None:
    if path:
        try:
            data = Path(path).read_bytes().strip()
        except OSError as err:
            raise ConfigError(f"{flag}: cannot read {path}: {err.strerror}") from None
        if not data:
            raise ConfigError(f"{flag}: {path} is empty")
        return data
    return env_value.strip().encode() if env_value and env_value.strip() else None


def _text_or_none(data: bytes | None) -> str | None:
    return data.decode("utf-8", "replace") if data is not None else None


def load(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """parse_args, but a bad option ends the process: status 2, one line on stderr."""
    try:
        return parse_args(argv, environ)
    except ConfigError as err:
        print(f"gitsync: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
