"""gitsync's option table: every flag and variable, declared once.

gitsync.options turns the table into argparse, the environment lookup, --help (grouped)
and the configuration reference; gitsync.config turns the values into the frozen Config
and checks the rules that tie options together.
"""

from __future__ import annotations

from dataclasses import replace

from . import __version__
from .compat import parse_credentials, parse_entry
from .durations import parse_duration
from .options import Option, Table, parse_bool, parse_bytes, parse_int, parse_list, parse_signal

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
               "separated by commas; keys and values may be double-quoted, with backslash escapes "
               "(n, t, quote, comma, backslash), as git-sync reads them", metavar="LIST"),
        Option("--git-config-add", parse_entry, (), "one more git config entry, key:value, added after "
               "--git-config; repeat the flag for several", metavar="KEY:VALUE", repeatable=True),
        Option("--filter", str, "", "fetch as a partial clone with this filter (e.g. blob:none, "
               "tree:0); the checkout fetches the blobs it needs", metavar="FILTER"),
        Option("--git-gc", str, "auto", "garbage collection after old trees are removed: auto "
               "(when git finds enough loose objects), always, aggressive, or off",
               choices=("auto", "always", "aggressive", "off")),
        Option("--git", str, "git", "the git program to run (looked up on PATH)", metavar="PATH"),
    ),
    *_group("timing",
        Option("--period", parse_duration, 10.0, "how long to wait between polls of the remote"),
        Option("--init-period", parse_duration, 0.0, "how long to wait between attempts until the "
               "first successful sync (default: --period)"),
        Option("--sync-timeout", parse_duration, 120.0, "the longest one sync may take; git is killed "
               "after it"),
        Option("--max-failures", parse_int, 0, "consecutive failed syncs allowed before exiting "
               "(0: exit on the first failure, -1: never exit)"),
        Option("--init-max-failures", parse_int, None, "consecutive failed syncs allowed before the "
               "first success; -1 never exits (default: --max-failures)"),
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
        Option("--ssh-known-hosts", parse_bool, True, "check the SSH host key against "
               "--ssh-known-hosts-file"),
        Option("--ssh-known-hosts-file", str, "/etc/git-secret/known_hosts", "the known_hosts file "
               "for SSH remotes", metavar="FILE"),
        Option("--credential", parse_credentials, (), "a login for the URLs under one prefix, as JSON: "
               '{"url": ..., "username": ..., "password" or "password-file": ...} (or a list of '
               "them); repeat the flag for several", metavar="JSON", repeatable=True),
        Option("--askpass-url", str, "", "a URL asked for the username and password before each sync "
               "(it answers username=... and password=... lines)", metavar="URL"),
        Option("--cookie-file", parse_bool, False, "give git the cookie file "
               "/etc/git-secret/cookie_file (http.cookiefile)"),
        Option("--github-base-url", str, "https://api.github.com/", "the GitHub API that issues "
               "GitHub App installation tokens", metavar="URL"),
        Option("--github-app-private-key-file", str, "", "the GitHub App's private key (PEM), or set "
               "GITSYNC_GITHUB_APP_PRIVATE_KEY", metavar="FILE"),
        Option("--github-app-client-id", str, "", "the GitHub App's client ID (or give "
               "--github-app-application-id)", metavar="ID"),
        Option("--github-app-application-id", parse_int, 0, "the GitHub App's application ID"),
        Option("--github-app-installation-id", parse_int, 0, "the installation whose token syncs "
               "the repository; required with a GitHub App"),
        Option("--add-user", parse_bool, False, "add an /etc/passwd entry for the running UID if it "
               "lacks one (ssh wants a user name)"),
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
        Option("--webhook-backoff", parse_duration, 3.0, "the wait before retrying a failed outbound "
               "webhook"),
        Option("--touch-file", str, "", "a file touched after each publish, relative to --root "
               "unless absolute", metavar="FILE"),
        Option("--error-file", str, "", "a file holding the last sync error as git-sync's JSON "
               "({\"Msg\", \"Err\", \"Args\"}), removed after a successful sync; relative to --root "
               "unless absolute", metavar="FILE"),
        Option("--group-write", parse_bool, False, "make everything gitsync writes group-writable "
               "(umask 002)"),
    ),
    *_group("triggers and the HTTP API",
        Option("--sync-on-signal", parse_signal, None, "sync at once when this signal arrives (e.g. HUP)",
               metavar="SIGNAL"),
        Option("--http-bind", str, "0.0.0.0:8080", "the address of the HTTP API; port 0 picks a "
               "free port; empty turns the API off", metavar="HOST:PORT"),
        Option("--http-metrics", parse_bool, True, "serve Prometheus metrics at /metrics"),
        Option("--http-pprof", parse_bool, False, "git-sync's Go profiler endpoints; accepted for "
               "compatibility, with a warning (there is no Go runtime to profile)"),
        Option("--receiver-secret-file", str, "", "a file holding the shared secret for inbound push "
               "webhooks (or set GITSYNC_RECEIVER_SECRET); without it /api/v1/webhook answers 404",
               metavar="FILE"),
        Option("--receiver-max-body", parse_bytes, DEFAULT_MAX_BODY, "the largest inbound webhook body "
               "accepted, in bytes (suffixes KiB, MiB allowed)"),
        Option("--api-token-file", str, "", "a file holding the bearer token for POST /api/v1/sync "
               "(or set GITSYNC_API_TOKEN); without it that endpoint answers 404", metavar="FILE"),
    ),
    *_group("rollouts",
        Option("--app-status-url", str, "", "gitsync-reload's status URL, e.g. "
               "http://127.0.0.1:9101/api/v1/status: follow each publish until the app runs it",
               metavar="URL"),
        Option("--app-health-url", str, "", "any app's health URL (no gitsync-reload): a publish is "
               "live once it answers 2xx", metavar="URL"),
        Option("--rollout-timeout", parse_duration, 60.0, "a publish the app does not run by then "
               "is a failed rollout"),
        Option("--rollback", parse_bool, True, "with a probe: flip the link back to the last live "
               "commit when a rollout fails, and mark the commit bad"),
        Option("--app-signal", parse_signal, None, "sidecar-only apps (shared process namespace): send "
               "this signal to the --app-process processes after each publish", metavar="SIGNAL"),
        Option("--app-process", str, "", "a regular expression matched against each process's "
               "command line, for --app-signal", metavar="REGEX"),
    ),
    *_group("fleet",
        Option("--peers", str, "", "the other replicas to pass a push on to: dns:NAME:PORT (every "
               "address of NAME, e.g. a headless Service) or HOST:PORT,HOST:PORT", metavar="LIST"),
        Option("--peer-secret-file", str, "", "a file holding the secret all replicas share for peer "
               "calls (or set GITSYNC_PEER_SECRET); required with --peers", metavar="FILE"),
    ),
    *_group("logging",
        Option("--log-format", str, "text", "the log line format", choices=("text", "json")),
        Option("--verbose", parse_int, 0, "log verbosity: 0 normal, 1 and up adds debug lines; -v "
               "alone is 1, as are -v=1 and -v 1",
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


TABLE = Table(
    prog="gitsync", env_prefix=ENV_PREFIX, options=OPTIONS, epilog=EXAMPLES, version=__version__,
    description="Keep <root>/<link> pointing at the newest commit of a git ref, "
                "published atomically, and serve a status, health and webhook API.",
    extra_env=("GITSYNC_PASSWORD", "GITSYNC_RECEIVER_SECRET", "GITSYNC_API_TOKEN", "GITSYNC_HASH",
               "GITSYNC_PEER_SECRET", "GITSYNC_GITHUB_APP_PRIVATE_KEY"),
)
