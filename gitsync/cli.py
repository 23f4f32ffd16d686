"""`gitsync`: build the Config, wire the parts, turn signals into events, run."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Sequence

from . import compat
from . import config as config_module
from .appsignal import AppSignaller, WithAppSignal
from .auth import Credentials
from .config import STATE_DIR, Config
from .engine import Engine
from .fleet import Fleet
from .git import GitRunner, git_environment
from .hooks import ErrorFile, ExecHook, HookRunner, TouchFile, WebHook
from .publish import Layout, Publisher
from .repository import Repository
from .rollout import Rollouts, probe_for

log = logging.getLogger("gitsync")
SHUTDOWN_GRACE = 1.5
SIGNAL_POLL = 0.1


def main(argv: Sequence[str] | None = None) -> int:
    config = config_module.load(sys.argv[1:] if argv is None else argv, os.environ)
    setup_logging(config.log_format, config.verbose)
    for warning in config_module.TABLE.unknown_env(os.environ, ignore_prefixes=("GITSYNC_RELOAD_",)):
        log.warning("%s", warning)
    problem = apply_process_settings(config)
    if problem:
        print(f"gitsync: error: {problem}", file=sys.stderr)
        return 1
    engine = build_engine(config)
    hooks = attach_hooks(config, engine)
    wake = threading.Event()
    install_signal_handlers(config, engine, wake)
    try:
        api = start_api(config, api_view(engine, hooks))
    except OSError as err:
        host, port = config.http_bind or ("", 0)
        print(f"gitsync: error: --http-bind: cannot listen on {host}:{port}: {err.strerror}",
              file=sys.stderr)
        return 1
    exit_code = run_until_stopped(engine, wake)
    for hook in hooks:
        getattr(hook, "close", lambda: None)()
    failed_hooks = [hook for hook in hooks if getattr(hook, "last_error", None)]
    if config.one_time and exit_code == 0 and failed_hooks:
        log.error("--one-time: the sync succeeded but a hook failed: %s", failed_hooks[0].last_error)
        exit_code = 1
    if api is not None:
        api.stop()
    log.info("stopped (exit status %d)", exit_code)
    return exit_code


def apply_process_settings(config: Config) -> str | None:
    """What git-sync's flags ask of the process itself; a reason to exit 1, or None."""
    for warning in compat.ignored_flag_warnings(config.http_pprof):
        log.warning("%s", warning)
    if shutil.which(config.git) is None:
        return f"--git: {config.git} is not an executable program (looked up on PATH)"
    if config.group_write:
        os.umask(0o002)   # trees, the repository and the link: writable by the pod's group
    if config.add_user:
        try:
            if compat.add_user():
                log.info("--add-user: added an /etc/passwd entry for uid %d", os.getuid())
        except OSError as err:
            return f"--add-user: cannot write {compat.PASSWD}: {err.strerror}"
    return None


def build_engine(config: Config) -> Engine:
    runner = GitRunner(env=git_environment(config.root), config=config.git_config, program=config.git)
    repo = Repository(config.root, runner, gc=config.git_gc, filter=config.filter)
    publisher = Publisher(repo, Layout(config.root, config.link),
                          stale_timeout=config.stale_worktree_timeout,
                          sparse_patterns=config.sparse_patterns,
                          submodules=config.submodules, depth=config.depth)
    probe = probe_for(config.app_status_url, config.app_health_url, timeout=1.0)
    rollouts = Rollouts(config.root / STATE_DIR, probe, timeout=config.rollout_timeout,
                        rollback=config.rollback)
    return Engine(config, repo, publisher, credentials=Credentials(config), rollouts=rollouts)


def attach_hooks(config: Config, engine: Engine) -> list:
    hooks: list = []
    if config.touch_file:
        hooks.append(TouchFile(config.touch_file))
    if config.error_file:
        hooks.append(ErrorFile(config.error_file))
    if config.exechook_command:
        exechook = ExecHook(config.exechook_command, config.exechook_timeout, os.environ)
        hooks.append(HookRunner(exechook, config.exechook_backoff, one_time=config.one_time))
    if config.webhook_url:
        webhook = WebHook(config.webhook_url, config.webhook_method,
                          config.webhook_success_status, config.webhook_timeout)
        hooks.append(HookRunner(webhook, config.webhook_backoff, one_time=config.one_time))
    if config.app_signal is not None:
        hooks.append(AppSignaller(config.app_signal, config.app_process))
    for hook in hooks:
        engine.add_listener(hook)
    return hooks


def api_view(engine: Engine, hooks: list):
    """The engine for the API; with --app-signal its status also says what the signal did."""
    for hook in hooks:
        if isinstance(hook, AppSignaller):
            return WithAppSignal(engine, hook)
    return engine


def install_signal_handlers(config: Config, engine: Engine, wake: threading.Event) -> None:
    """Handlers only set an event (or enqueue a trigger, which is signal-safe)."""
    def request_stop(signum, _frame):
        wake.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    if config.sync_on_signal:
        signal.signal(config.sync_on_signal, lambda _s, _f: engine.trigger("signal"))


def start_api(config: Config, engine: Engine):
    if config.http_bind is None or config.one_time:
        return None
    from webhook import create_app
    from webhook.server import ApiServer

    server = ApiServer(create_app(engine, config, fleet=build_fleet(config)), *config.http_bind)
    server.start()
    log.info("serving the HTTP API on http://%s:%d", server.host, server.port)
    return server


def build_fleet(config: Config) -> Fleet | None:
    """The replica's peers (--peers), told of each push the API accepts."""
    if config.peers is None or config.peer_secret is None or config.http_bind is None:
        return None
    return Fleet(config.peers, config.peer_secret, config.http_bind)


def run_until_stopped(engine: Engine, wake: threading.Event) -> int:
    """The loop runs in a thread; this thread waits for a signal or for the loop to end."""
    result: dict[str, int] = {}

    def loop():
        try:
            result["code"] = engine.run()
        except Exception:
            log.exception("the sync loop crashed")
            result["code"] = 1
        finally:
            wake.set()

    worker = threading.Thread(target=loop, name="sync-loop", daemon=True)
    worker.start()
    # A bounded wait: the kernel may deliver SIGTERM to another thread, and Python runs
    # the handler only when the main thread next executes, which an endless wait delays.
    while not wake.wait(SIGNAL_POLL):
        pass
    if "code" in result:
        return result["code"]
    log.info("stopping: signal received")
    engine.stop()
    worker.join(SHUTDOWN_GRACE)
    if not engine.wait_for_git(SHUTDOWN_GRACE):
        log.error("a git process did not end after SIGKILL; exiting anyway")
    return 0


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines (--log-format json)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name,
                 "msg": record.getMessage()}
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        for key, value in getattr(record, "fields", {}).items():
            entry[key] = value
        return json.dumps(entry, default=str)


def setup_logging(log_format: str, verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = _utc
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 0 else logging.INFO)
    if verbose < 2:
        logging.getLogger("git").setLevel(logging.WARNING)   # GitPython's own chatter


def _utc(seconds):
    import time
    return time.gmtime(seconds)


if __name__ == "__main__":
    raise SystemExit(main())
