"""gitsync's options and the one frozen Config built from them at start.

Every option is declared once in OPTIONS (gitsync.options reads the table for argparse,
the environment, --help and the configuration reference); every rule that ties options
together is checked here, once. A bad value exits 2 with one line naming the flag.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

from . import __version__
from .durations import parse_duration
from .options import (ConfigError, Option, Table, parse_bool, parse_bytes, parse_host_port, parse_int,
                      parse_list, parse_signal)

__all__ = ["OPTIONS", "TABLE", "Config", "ConfigError", "parse_args", "load"]

ENV_PREFIX = "GITSYNC_"
DEFAULT_MAX_BODY = 5 * 1024 * 1024


def _group(name: str, *options: Option) -> tuple[Option, ...]:
    return tuple(replace(option, group=name) for option in options)


OPTIONS: tuple[Option, ...] = (
    *_group("repository",
        Option("--repo", str, None, "the git repository to sync (URL or path); required", required=True,
               metavar="URL"),
        Option("--ref", str, "HEAD", "the branch, tag or full commit SHA to sync; HEAD is the "
               "remote's default branch", metavar="REF"),
        Option("--root", str, None, "the directory for the repository, worktrees and link; required",
               required=True, metavar="DIR"),
        Option("--link", str, "", "the symlink to the published tree, relative to --root unless "
               "absolute (default: the last path part of --repo)", metavar="PATH"),
        Option("--depth", parse_int, 1, "fetch this many commits of history; 0 fetches all"),
        Option("--submodules", str, "recursive", "how to check out submodules",
               choices=("recursive", "shallow", "off")),
        Option("--sparse-checkout-file", str, "", "a file of sparse-checkout patterns; only matching "
               "paths are checked out", metavar="FILE"),
        Option("--git-config", str, "", "extra git config for every git call, as key:value pairs "
               "separated by commas", metavar="LIST"),
    ),
    *_group("timing",
        Option("--period", parse_duration, 10.0, "how long to wait between polls of the remote"),
        Option("--sync-timeout", parse_duration, 120.0, "the longest one sync may take; git is killed after it"),
        Option("--max-failures", parse_int, 0, "consecutive failed syncs allowed before exiting "
               "(0: exit on the first failure, -1: never exit)"),
        Option("--one-time", parse_bool, False, "sync once, then exit (0 on success)"),
        Option("--stale-worktree-timeout", parse_duration, 0.0, "keep a tree the link left at least this "
               "long (it is always kept until the next publish)"),
    ),
    *_group("credentials",
        Option("--username", str, "", "the username for HTTPS remotes"),
        Option("--password-file", str, "", "a file holding the HTTPS password or token, read again "
               "before every sync (or set GITSYNC_PASSWORD)", metavar="FILE"),
        Option("--ssh-key-file", parse_list, ("/etc/git-secret/ssh",), "an SSH private key for SSH "
               "remotes; repeat the flag (or comma-separate the variable) for several", metavar="FILE",
               repeatable=True),
        Option("--ssh-known-hosts", parse_bool, True, "check the SSH host key against --ssh-known-hosts-file"),
        Option("--ssh-known-hosts-file", str, "/etc/git-secret/known_hosts", "the known_hosts file "
               "for SSH remotes", metavar="FILE"),
    ),
    *_group("after a publish",
        Option("--exechook-command", str, "", "a command run in the new tree after each publish, "
               "with GITSYNC_HASH set", metavar="CMD"),
        Option("--exechook-timeout", parse_duration, 30.0, "the longest the exechook may run"),
        Option("--exechook-backoff", parse_duration, 3.0, "the wait before retrying a failed exechook"),
        Option("--webhook-url", str, "", "a URL called after each publish (outbound; header "
               "Gitsync-Hash)", metavar="URL"),
        Option("--webhook-method", str, "POST", "the HTTP method of the outbound webhook"),
        Option("--webhook-success-status", parse_int, 200, "the status that means the outbound webhook "
               "succeeded; 0 sends without waiting for an answer"),
        Option("--webhook-timeout", parse_duration, 1.0, "the longest the outbound webhook may take"),
        Option("--webhook-backoff", parse_duration, 3.0, "the wait before retrying a failed outbound webhook"),
        Option("--touch-file", str, "", "a file touched after each publish, relative to --root "
               "unless absolute", metavar="FILE"),
        Option("--error-file", str, "", "a file holding the last sync error, removed after a "
               "successful sync; relative to --root unless absolute", metavar="FILE"),
    ),
    *_group("triggers and the HTTP API",
        Option("--sync-on-signal", parse_signal, None, "sync at once when this signal arrives (e.g. HUP)",
               metavar="SIGNAL"),
        Option("--http-bind", str, "0.0.0.0:8080", "the address of the HTTP API; port 0 picks a "
               "free port; empty turns the API off", metavar="HOST:PORT"),
        Option("--http-metrics", parse_bool, True, "serve Prometheus metrics at /metrics"),
        Option("--receiver-secret-file", str, "", "a file holding the shared secret for inbound push "
               "webhooks (or set GITSYNC_RECEIVER_SECRET); without it /api/v1/webhook answers 404",
               metavar="FILE"),
        Option("--receiver-max-body", parse_bytes, DEFAULT_MAX_BODY, "the largest inbound webhook body "
               "accepted, in bytes (suffixes KiB, MiB allowed)"),
        Option("--api-token-file", str, "", "a file holding the bearer token for POST /api/v1/sync "
               "(or set GITSYNC_API_TOKEN); without it that endpoint answers 404", metavar="FILE"),
    ),
    *_group("logging",
        Option("--log-format", str, "text", "the log line format", choices=("text", "json")),
        Option("--verbose", parse_int, 0, "log verbosity: 0 normal, 1 and up adds debug lines; -v alone is 1, as are -v=1 and -v 1",
               metavar="N", aliases=("-v",), bare_value="1"),
    ),
)

EXAMPLES = """\
examples:
  gitsync --repo https://github.com/org/app --root /git --period 30s
  GITSYNC_REPO=git@github.com:org/app.git GITSYNC_ROOT=/git gitsync --ref v1.2.0
  gitsync --repo file:///srv/app.git --root /tmp/sync --one-time

Every flag can also be set as GITSYNC_<FLAG_NAME> (e.g. GITSYNC_SYNC_TIMEOUT=2m);
a flag on the command line wins. Durations take Go's form: 500ms, 10s, 2m.
"""


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
    log_format: str
    verbose: int
    version: str = __version__


TABLE = Table(
    prog="gitsync", env_prefix=ENV_PREFIX, options=OPTIONS, epilog=EXAMPLES, version=__version__,
    description="Keep <root>/<link> pointing at the newest commit of a git ref, "
                "published atomically, and serve a status, health and webhook API.",
    extra_env=("GITSYNC_PASSWORD", "GITSYNC_RECEIVER_SECRET", "GITSYNC_API_TOKEN", "GITSYNC_HASH"),
)


def build_parser():
    return TABLE.parser()


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """Build the Config; raise ConfigError with a one-line message on any bad input."""
    return _make_config(TABLE.parse(argv, environ), environ)


def _make_config(v: dict[str, Any], environ: Mapping[str, str]) -> Config:
    _check_ranges(v)
    _check_repo_url(v["repo"])
    _check_credentials(v, environ)
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
        git_config=_parse_git_config(v["git_config"]),
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
        log_format=v["log_format"], verbose=v["verbose"],
    )


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
        ("--sync-timeout", v["sync_timeout"] > 0, "must be more than 0s"),
        ("--max-failures", v["max_failures"] >= -1, "must be -1 or more"),
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
    for own in (root / ".git", root / ".worktrees"):
        if resolved == own or own in resolved.parents:
            raise ConfigError(f"--link: {link!r} would be inside {own.name}, which gitsync keeps for "
                              "itself; choose another name")
    return resolved


def _optional_path(text: str, base: Path | None) -> Path | None:
    if not text:
        return None
    path = Path(text).expanduser()
    return path if path.is_absolute() or base is None else base / path


def _parse_git_config(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in _split_unquoted_commas(text):
        key, sep, value = item.partition(":")
        if not sep or not key.strip():
            raise ConfigError(f"--git-config: expected key:value, got {item!r}")
        pairs.append((key.strip(), value.strip().strip('"')))
    return tuple(pairs)


def _split_unquoted_commas(text: str) -> list[str]:
    """Split on commas outside double quotes, as git-sync does for values holding commas."""
    items, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


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
