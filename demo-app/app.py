"""gitsync demo: a page that shows the commit it runs and notices when that changes.

Run it under gitsync-reload, so every publish restarts it inside the new tree:

    gitsync-reload --link /repo/app --signal INT -- python demo-app/app.py

It reads everything from the published tree it runs in (its working directory): the
greeting in message.txt (at the top of the tree, or beside this file when the tree is a
checkout of this project) and the commit's subject, author and time from git. Settings
come from the environment: GITSYNC_HASH (set by gitsync-reload), HOST (127.0.0.1),
PORT (8000), and SIDECAR_STATUS_URL (the sidecar's /api/v1/status, optional): with it,
/version says whether the sidecar counts this commit as live (its `live_commit`).

Under `gitsync-reload --listen HOST:PORT` it serves on the socket handed to it as fd 3
(systemd's socket activation: LISTEN_FDS, LISTEN_PID) instead of binding HOST:PORT, and
sends READY=1 to NOTIFY_SOCKET just before it serves, so the old app is stopped only
once this one is taking requests.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Mapping

from flask import Flask, jsonify, render_template

MESSAGE_FILE = "message.txt"
DEFAULT_MESSAGE = "Hello from gitsync! Edit message.txt, push, and watch this page change."
MAX_MESSAGE = 500
LISTEN_FDS_START = 3  # systemd's SD_LISTEN_FDS_START


def settings_from_environment(environ: Mapping[str, str]) -> dict:
    return {
        "COMMIT": environ.get("GITSYNC_HASH") or None,
        "HOST": environ.get("HOST", "127.0.0.1"),
        "PORT": int(environ.get("PORT", "8000")),
        "TREE": os.getcwd(),
        "LISTEN_FD": inherited_fd(environ),
        "NOTIFY_SOCKET": environ.get("NOTIFY_SOCKET") or None,
        "SIDECAR_STATUS_URL": environ.get("SIDECAR_STATUS_URL") or None,
    }


def sidecar_view(url: str | None, commit: str | None) -> dict:
    """What the sidecar says of this commit: `live` is True only when its live_commit is
    ours (None when there is no sidecar to ask), and its last rollout, for the page."""
    if not url:
        return {"live": None, "rollout": None}
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # local: no proxy
    try:
        with opener.open(url, timeout=1) as response:
            status = json.load(response)
    except (OSError, ValueError):
        return {"live": None, "rollout": None}
    rollout = status.get("rollout") or None
    return {"live": bool(commit) and status.get("live_commit") == commit, "rollout": rollout}


def inherited_fd(environ: Mapping[str, str]) -> int | None:
    """fd 3 when a supervisor handed us a listening socket (LISTEN_PID must be our pid)."""
    if environ.get("LISTEN_PID") != str(os.getpid()) or environ.get("LISTEN_FDS", "0") == "0":
        return None
    return LISTEN_FDS_START


def notify_ready(address: str | None) -> None:
    """sd_notify("READY=1"): tell the supervisor we are about to take requests."""
    if not address:
        return
    if address.startswith("@"):  # an abstract socket (Linux)
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(b"READY=1", address)
        except OSError:
            pass  # a supervisor that stopped listening does not stop us from serving


def read_message(tree: str) -> str:
    """message.txt at the top of the tree, else beside this file (when the tree holds the app too)."""
    for path in (os.path.join(tree, MESSAGE_FILE), os.path.join(os.path.dirname(__file__), MESSAGE_FILE)):
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read(MAX_MESSAGE).strip()
        except OSError:
            continue
        if text:
            return text
    return DEFAULT_MESSAGE


def read_commit(tree: str) -> dict:
    """HEAD's sha, subject, author and time, or {} where git cannot tell (no git, no .git)."""
    try:
        result = subprocess.run(
            # safe.directory: the tree belongs to the sidecar's user, not necessarily ours.
            ["git", "-c", "safe.directory=*", "log", "-1", "--format=%H%x00%s%x00%an%x00%cI"],
            cwd=tree, capture_output=True, text=True, timeout=5, check=True,
        )
        sha, subject, author, when = result.stdout.rstrip("\n").split("\x00")
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}
    return {"sha": sha, "subject": subject, "author": author, "time": when}


def hue(commit: str | None) -> int:
    """A colour per commit, so a change is visible from across the room."""
    try:
        return int((commit or "")[:6], 16) % 360
    except ValueError:
        return 210


def create_app(settings: Mapping | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(settings_from_environment(os.environ))
    app.config.from_mapping(settings or {})

    tree = app.config["TREE"]
    details = read_commit(tree)
    commit = app.config["COMMIT"] or details.get("sha")
    running = {
        "commit": commit,
        "short": commit[:7] if commit else "unknown",
        "message": read_message(tree),
        "details": details,
        "hue": hue(commit),
    }

    @app.get("/")
    def index():
        return render_template("index.html", **running)

    @app.get("/version")
    def version():
        return jsonify(commit=running["commit"], message=running["message"],
                       **sidecar_view(app.config["SIDECAR_STATUS_URL"], running["commit"]))

    return app


def use_prepared_packages(environ: Mapping[str, str]) -> None:
    """Put extra-requirements.txt, as gitsync-reload --prepare installed it, first on the path.
    (Not PYTHONPATH: with --preload the interpreter started before the prepare ran.)"""
    if environ.get("GITSYNC_CACHE"):
        sys.path.insert(0, os.path.join(environ["GITSYNC_CACHE"], "site"))


def main() -> None:
    use_prepared_packages(os.environ)
    from waitress import create_server

    logging.basicConfig()  # as waitress.serve() does: its warnings reach stderr
    app = create_app()
    if app.config["LISTEN_FD"] is not None:
        server = create_server(app, sockets=[socket.socket(fileno=app.config["LISTEN_FD"])])
    else:
        server = create_server(app, host=app.config["HOST"], port=app.config["PORT"])
    server.print_listen("Serving on http://{}:{}")
    notify_ready(app.config["NOTIFY_SOCKET"])
    server.run()


if __name__ == "__main__":
    main()
