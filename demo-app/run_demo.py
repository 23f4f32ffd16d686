"""`make demo`: a git remote, gitsync and the demo app on this machine; `git push` and watch.

Everything lives in DEMO_DIR (default `.demo/`, git-ignored; `make clean` removes it):

    remote.git        a bare repository standing in for your git server, seeded with
                      this demo app; its post-receive hook sends gitsync a signed
                      GitHub-style push event, as a forge would
    sync/             gitsync's --root; sync/app is the link it publishes
    cache/            gitsync-reload's --cache-dir: demo-app/extra-requirements.txt as
                      installed by its --prepare, one directory per content
    receiver-secret   the shared secret the hook signs with (mode 0600, new each run)
    api-token         the bearer token for POST /api/v1/sync (mode 0600, new each run)
    gitsync.log       what gitsync prints
    app.log           what gitsync-reload and the app print

gitsync polls the remote every 10s and syncs at once when the hook's push event
arrives; gitsync-reload runs `python demo-app/app.py` inside the published tree and
restarts it when the link flips, after installing demo-app/extra-requirements.txt with
pip when a push changed it. Once the app answers, this prints `app: URL`,
`status: URL` and `remote: PATH`, then waits. SIGINT (Ctrl-C) or SIGTERM stops the app,
then gitsync, and leaves no process behind.

A remote from an earlier run is kept, so your pushes survive a restart; its hook is
written again each run, since the API port and the secret change. APP_PORT and API_PORT
fix the ports (default: free ones the kernel picks).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP_SOURCE = ROOT / "demo-app"
BIN = Path(sys.executable).parent
# The tree a push publishes, laid out as the Dockerfile and k8s/ expect: the app at
# demo-app/, the greeting at the top (app.py reads the top-level message.txt first).
APP_FILES = ("app.py", "requirements.txt", "extra-requirements.txt", "README.md", "templates")
EXTRA_REQUIREMENTS = "demo-app/extra-requirements.txt"  # the --prepare key: pip installs it on change
FIRST_MESSAGE = "Hello from gitsync! Edit message.txt, commit, push, and watch this page change.\n"
IDENTITY = ("-c", "user.name=gitsync demo", "-c", "user.email=demo@example.invalid")
# Every process this run starts carries this variable, so a stray one can be found.
RUN_MARKER = "GITSYNC_DEMO_RUN"
STARTUP_TIMEOUT = 60.0
RELOAD_GRACE = 3.0   # the app's time to drain after SIGINT, before gitsync-reload kills it
STOP_TIMEOUT = RELOAD_GRACE + 2.0   # each of ours, before its process group is killed
ROLLOUT_TIMEOUT = "20s"   # a new commit not running by then is rolled back
HOOK_TIMEOUT = 5     # the hook's POST; a push never waits longer than this for gitsync
HOOK_CONFIG = "gitsync-demo.json"
PR_SET_PDEATHSIG = 1   # prctl(2)

HOOK_SOURCE = '''\
#!{python}
"""post-receive, written by demo-app/run_demo.py: tell gitsync about each pushed ref.

It sends what GitHub would: a push event signed with HMAC-SHA256 over the raw body
(X-Hub-Signature-256), to the URL in {config} beside this file. git shows what it
prints to the pusher as `remote: ...`. It never fails the push: if gitsync is not
there, its next poll finds the commit anyway.
"""
import hashlib, hmac, http.client, json, os, sys, urllib.parse, uuid


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "{config}"), encoding="utf-8") as handle:
        config = json.load(handle)
    with open(config["secret_file"], "rb") as handle:
        secret = handle.read().strip()
    repo = os.path.dirname(here)
    for line in sys.stdin:
        words = line.split()
        if len(words) == 3:
            print("gitsync: " + notify(config, secret, push_event(repo, *words)), flush=True)


def push_event(repo, old, new, ref):
    return {{
        "ref": ref, "before": old, "after": new,
        "created": old.strip("0") == "", "deleted": new.strip("0") == "", "forced": False,
        "commits": [], "head_commit": None,
        "repository": {{"name": os.path.basename(repo), "full_name": "demo/" + os.path.basename(repo),
                        "clone_url": "file://" + repo, "default_branch": default_branch(repo)}},
        "pusher": {{"name": os.environ.get("USER", "demo")}},
    }}


def default_branch(repo):
    try:
        with open(os.path.join(repo, "HEAD"), encoding="utf-8") as handle:
            return handle.read().strip().removeprefix("ref: refs/heads/")
    except OSError:
        return "main"


def notify(config, secret, event):
    body = json.dumps(event).encode("utf-8")
    headers = {{
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/gitsync-demo",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest(),
    }}
    # http.client, not urllib: it sends the header names as GitHub spells them, and
    # never goes through a proxy (the receiver is on this machine).
    url = urllib.parse.urlsplit(config["url"])
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout={timeout})
    try:
        connection.request("POST", url.path, body=body, headers=headers)
        response = connection.getresponse()
        return describe(response.status, response.read())
    except (OSError, http.client.HTTPException) as error:
        return f"could not reach {{config['url']}} ({{error}}); is make demo running?"
    finally:
        connection.close()


def describe(status, body):
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {{}}
    words = [answer.get("result") or answer.get("error") or "", answer.get("reason") or ""]
    return f"{{status}} " + ": ".join(word for word in words if word)


if __name__ == "__main__":
    main()
'''


@dataclass(frozen=True)
class Demo:
    """Where the demo lives and the ports it serves on; built once from the environment."""

    dir: Path
    app_port: int
    api_port: int
    run_id: str
    reload_port: int = 0   # gitsync-reload's own status API (--status-bind), on loopback

    @property
    def remote(self) -> Path:
        return self.dir / "remote.git"

    @property
    def sync_root(self) -> Path:
        return self.dir / "sync"

    @property
    def link(self) -> Path:
        return self.sync_root / "app"

    @property
    def receiver_secret(self) -> Path:
        return self.dir / "receiver-secret"

    @property
    def api_token(self) -> Path:
        return self.dir / "api-token"

    @property
    def app_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}/"

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/"

    @property
    def reload_status_url(self) -> str:
        return f"http://127.0.0.1:{self.reload_port}/api/v1/status"

    @property
    def sidecar_status_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/api/v1/status"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/api/v1/webhook"


class DemoError(Exception):
    """Something the person running the demo can fix; the message says what."""


def load_demo(environ: Mapping[str, str]) -> Demo:
    directory = Path(environ.get("DEMO_DIR") or ROOT / ".demo").expanduser().resolve()
    app_port = port_setting(environ, "APP_PORT")
    api_port = port_setting(environ, "API_PORT")
    app_port, api_port = free_ports(app_port, api_port)
    if app_port == api_port:
        raise DemoError(f"APP_PORT and API_PORT are both {app_port}; they must differ")
    reload_port = next(port for port in iter(lambda: free_ports(0)[0], None)
                       if port not in (app_port, api_port))
    return Demo(directory, app_port, api_port, secrets.token_hex(8), reload_port)


def port_setting(environ: Mapping[str, str], name: str) -> int:
    """The port in `name`, or 0 (pick a free one) when unset."""
    value = environ.get(name, "").strip() or "0"
    if not value.isdigit() or int(value) > 65535:
        raise DemoError(f"{name}: {value!r} is not a port number")
    return int(value)


def free_ports(*wanted: int) -> list[int]:
    """Each port as given, or a free one where it is 0; the sockets are held together, so they differ."""
    with contextlib.ExitStack() as held:
        ports = []
        for port in wanted:
            if not port:
                sock = held.enter_context(socket.socket())
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            ports.append(port)
        return ports


# -- the remote ---------------------------------------------------------------------------


def git(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(["git", *IDENTITY, *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise DemoError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def seed_remote(demo: Demo) -> bool:
    """A bare remote holding the demo app; True if made now, False if kept from an earlier run."""
    if (demo.remote / "HEAD").is_file():
        check_remote(demo.remote)
        return False
    demo.dir.mkdir(parents=True, exist_ok=True)
    # Built beside the real one and renamed into place, so a half-made remote never stays.
    with tempfile.TemporaryDirectory(prefix=".seed-", dir=demo.dir) as scratch:
        tree, bare = Path(scratch) / "tree", Path(scratch) / "remote.git"
        lay_out_tree(tree)
        git("init", "--quiet", "--initial-branch=main", str(tree))
        git("add", "--all", cwd=tree)
        git("commit", "--quiet", "--message", "The gitsync demo app", cwd=tree)
        git("init", "--quiet", "--bare", "--initial-branch=main", str(bare))
        git("push", "--quiet", str(bare), "main", cwd=tree)
        bare.rename(demo.remote)
    return True


def lay_out_tree(tree: Path) -> None:
    app = tree / "demo-app"
    app.mkdir(parents=True)
    for name in APP_FILES:
        source = APP_SOURCE / name
        if source.is_dir():
            shutil.copytree(source, app / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, app / name)
    (tree / "message.txt").write_text(FIRST_MESSAGE, encoding="utf-8")


def check_remote(remote: Path) -> None:
    """A kept remote must still hold the app, or the demo would wait for it in vain."""
    result = subprocess.run(["git", "--git-dir", str(remote), "cat-file", "-e", "HEAD:demo-app/app.py"],
                            capture_output=True)
    if result.returncode != 0:
        raise DemoError(f"{remote} has no demo-app/app.py on its default branch (made by an older "
                        f"demo, or the app was pushed away); remove {remote.parent} (make clean "
                        "does, for .demo/) and run make demo again for a fresh one")


def install_hook(demo: Demo) -> None:
    """The post-receive hook and its settings, written again each run: the port and secret change."""
    hooks = demo.remote / "hooks"
    hooks.mkdir(exist_ok=True)
    settings = {"url": demo.webhook_url, "secret_file": str(demo.receiver_secret)}
    write_file(hooks / HOOK_CONFIG, json.dumps(settings, indent=2) + "\n", 0o644)
    source = HOOK_SOURCE.format(python=sys.executable, config=HOOK_CONFIG, timeout=HOOK_TIMEOUT)
    write_file(hooks / "post-receive", source, 0o755)


def write_secrets(demo: Demo) -> None:
    write_file(demo.receiver_secret, secrets.token_hex(32) + "\n", 0o600)
    write_file(demo.api_token, secrets.token_urlsafe(32) + "\n", 0o600)


def write_file(path: Path, text: str, mode: int) -> None:
    """Write to a temporary file with its final mode, then rename: never readable half-written."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(temporary, mode)   # the umask may have taken bits away
    os.replace(temporary, path)


# -- the processes ------------------------------------------------------------------------


def child_environment(demo: Demo, extra: Mapping[str, str]) -> dict[str, str]:
    # The caller's GITSYNC_* settings would change what the demo shows; leave them out.
    env = {name: value for name, value in os.environ.items() if not name.startswith("GITSYNC_")}
    return {**env, RUN_MARKER: demo.run_id, **extra}


def start(demo: Demo, name: str, command: list[str], extra_env: Mapping[str, str]) -> subprocess.Popen:
    with open(demo.dir / f"{name}.log", "ab") as log:
        # Its own session: Ctrl-C reaches only this script, which then stops them in order.
        return subprocess.Popen(command, cwd=demo.dir, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent, env=child_environment(demo, extra_env))


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM it should this script die unable to stop it (SIGKILL)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_gitsync(demo: Demo) -> subprocess.Popen:
    return start(demo, "gitsync", [
        str(BIN / "gitsync"),
        "--repo", demo.remote.as_uri(),
        "--root", str(demo.sync_root),
        "--link", "app",
        "--period", "10s",
        "--max-failures", "-1",   # a bad push shows in the status page; the demo keeps going
        "--http-bind", f"127.0.0.1:{demo.api_port}",
        "--receiver-secret-file", str(demo.receiver_secret),
        "--api-token-file", str(demo.api_token),
        # Follow each publish until gitsync-reload runs it; a commit that fails to start
        # is rolled back to the last live one and marked bad.
        "--app-status-url", demo.reload_status_url,
        "--rollout-timeout", ROLLOUT_TIMEOUT,
    ], {})


def start_app(demo: Demo) -> subprocess.Popen:
    # waitress finishes requests in flight on SIGINT (not on SIGTERM), so that is the signal;
    # --listen keeps the port open across restarts (the app serves on the socket it is handed);
    # --preload runs each start in an interpreter that has imported Flask and waitress already;
    # --prepare installs extra-requirements.txt when a push changed it, before that start.
    return start(demo, "app", [
        str(BIN / "gitsync-reload"), "--link", str(demo.link), "--signal", "INT",
        "--grace", f"{RELOAD_GRACE:g}s", "--listen", f"127.0.0.1:{demo.app_port}",
        "--status-bind", f"127.0.0.1:{demo.reload_port}", "--report-output",
        "--preload", "flask,waitress", *prepare_options(demo), "--", sys.executable, "demo-app/app.py",
    ], {"PORT": str(demo.app_port), "HOST": "127.0.0.1", "SIDECAR_STATUS_URL": demo.sidecar_status_url})


def prepare_options(demo: Demo) -> list[str]:
    """pip, told to put the packages in the directory gitsync-reload gives this content.
    None for a remote kept from a demo older than extra-requirements.txt: pip would fail."""
    probe = ["git", "--git-dir", str(demo.remote), "cat-file", "-e", f"HEAD:{EXTRA_REQUIREMENTS}"]
    found = subprocess.run(probe, capture_output=True)
    if found.returncode != 0:
        return []
    pip = shlex.join([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
    return ["--prepare", f'{pip} --target "$GITSYNC_CACHE/site" -r {EXTRA_REQUIREMENTS}',
            "--prepare-key", EXTRA_REQUIREMENTS, "--cache-dir", str(demo.dir / "cache")]


def get_json(url: str) -> dict | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # local: no proxy
    try:
        with opener.open(url, timeout=2) as response:
            return json.load(response)
    except (OSError, ValueError):
        return None


def wait_until_serving(demo: Demo, processes: dict[str, subprocess.Popen], stop: threading.Event) -> None:
    """Return once the app answers /version; raise if a process ends or time runs out."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not stop.is_set():
        answer = get_json(f"{demo.app_url}version")
        if answer and answer.get("commit"):
            return
        check_running(demo, processes)
        if time.monotonic() > deadline:
            raise DemoError(f"the app did not answer within {STARTUP_TIMEOUT:.0f}s; "
                            f"see {demo.dir / 'gitsync.log'} and {demo.dir / 'app.log'}")
        stop.wait(0.2)


def check_running(demo: Demo, processes: dict[str, subprocess.Popen]) -> None:
    for name, process in processes.items():
        if process.poll() is not None:
            log = demo.dir / f"{name}.log"
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
            raise DemoError(f"{name} exited with status {process.returncode}; "
                            f"the end of {log}:\n{tail}")


def shut_down(demo: Demo, processes: dict[str, subprocess.Popen]) -> None:
    """The app first (it reads what gitsync publishes), then gitsync; then any stray."""
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            kill_group(process.pid)
            process.wait()
    kill_strays(demo.run_id)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def kill_strays(run_id: str) -> None:
    """Kill what outlived its parent (the app, if gitsync-reload had to be killed)."""
    marker = f"{RUN_MARKER}={run_id}".encode()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue   # gone, or not ours to read
        if marker in environment and int(entry.name) != os.getpid():
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


# -- what the person sees -----------------------------------------------------------------


def print_ready(demo: Demo, seeded: bool) -> None:
    work = demo.dir / "work"
    if (work / ".git").is_dir():
        get_clone = f"  cd {work} && git pull"
    else:
        get_clone = f"  git clone {demo.remote} {work}\n  cd {work}"
    kept = "made now" if seeded else "kept from an earlier run"
    print(f"""
gitsync demo is running.
app: {demo.app_url}
status: {demo.status_url}
remote: {demo.remote}

The app runs the newest commit on the remote's main branch (the remote was {kept}).
To change it, edit message.txt in a clone, commit and push:

{get_clone}
  echo 'Hello from my first push' > message.txt
  git commit -am 'Say hello' && git push

The push prints "remote: gitsync: 202 sync started": the remote's post-receive hook
sent gitsync a signed push event, as GitHub would. gitsync publishes the commit,
gitsync-reload restarts the app in the new tree, and the app page changes (gitsync
also polls every 10s). The page says "live" once gitsync's status counts its commit live.

To push a bug (the demo is made to take one), break app.py and push:

  echo 'def broken(:' >> demo-app/app.py && git commit -qam 'A bug' && git push

What you will see: the old commit keeps serving (gitsync-reload starts the new app
beside it, and it dies with a SyntaxError, in {demo.dir / 'app.log'}); the status page
shows a red banner "... failed to start: exited 1; rolled back, serving ...", usually within a
few seconds (at most {ROLLOUT_TIMEOUT}); the commit is marked bad and not published again.
Push a fix (git revert --no-edit HEAD && git push), or, after fixing what the app
needed outside git, publish the same commit again:

  curl -X POST -H "Authorization: Bearer $(cat {demo.api_token})" {demo.status_url}api/v1/retry

Logs: {demo.dir / 'gitsync.log'}, {demo.dir / 'app.log'}.
Ctrl-C stops everything.
""", flush=True)


def say(text: str) -> None:
    try:
        print(text, flush=True)
    except OSError:
        pass   # nobody is reading any more (a closed terminal); carry on stopping


def run(demo: Demo, stop: threading.Event) -> int:
    check_tools()
    demo.dir.mkdir(parents=True, exist_ok=True)
    with only_run(demo):
        seeded = prepare(demo)
        processes: dict[str, subprocess.Popen] = {}
        try:
            processes["app"] = start_app(demo)
            processes["gitsync"] = start_gitsync(demo)
            wait_until_serving(demo, processes, stop)
            if not stop.is_set():
                print_ready(demo, seeded)
            while not stop.wait(0.5):
                check_running(demo, processes)
            say("stopping...")
            return 0
        finally:
            shut_down(demo, processes)


def check_tools() -> None:
    missing = [str(BIN / name) for name in ("gitsync", "gitsync-reload") if not (BIN / name).exists()]
    if missing or not shutil.which("git"):
        raise DemoError(f"needs git and {', '.join(missing) or 'gitsync'}: run it with make demo, "
                        "which installs gitsync into .venv")


def prepare(demo: Demo) -> bool:
    """The remote (kept if there), fresh secrets and the hook that uses them; True if seeded now."""
    seeded = seed_remote(demo)
    write_secrets(demo)
    install_hook(demo)
    return seeded


@contextlib.contextmanager
def only_run(demo: Demo):
    """Hold a lock on the demo directory: a second run would rewrite the hook under the first."""
    with open(demo.dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DemoError(f"another make demo is already running in {demo.dir}") from None
        yield


def main() -> int:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    try:
        demo = load_demo(os.environ)
        code = run(demo, stop)
    except DemoError as error:
        print(f"make demo: {error}", file=sys.stderr, flush=True)
        return 1
    say("stopped; nothing left running.")
    return code


if __name__ == "__main__":
    sys.exit(main())
