"""--prepare against real processes, real link flips and a real pip install from a wheel
built here (no network: --no-index --find-links)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

from gitsync.reload.config import DEFAULT_PREPARE_KEY, ConfigError, build_config
from gitsync.reload.cache import KEEP, content_key
from gitsync.reload.prepare import Preparer, expand, redacted
from test_reload import (  # noqa: F401  (trees, start_reload, child_script: fixtures)
    Reloader, Trees, child_script, free_port, gone, kill_group, refused_line, start_reload, stays, trees, wait_for,
)

# The app: answers GET with its commit, its GITSYNC_CACHE and the version of tinydep it can
# import (from PYTHONPATH="$GITSYNC_CACHE/site", as the docs' recipe sets it). Own port, or
# fd 3 with READY=1 under --listen.
APP = r"""
import json, os, signal, socket, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
try:
    import tinydep
    version = tinydep.VERSION
except ImportError:
    version = None

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"hash": os.environ.get("GITSYNC_HASH"), "pid": os.getpid(), "tinydep": version,
                           "cache": os.environ.get("GITSYNC_CACHE")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

signal.signal(signal.SIGTERM, lambda *args: sys.exit(0))
signal.signal(signal.SIGINT, lambda *args: sys.exit(0))
if os.environ.get("LISTEN_PID") == str(os.getpid()):
    server = HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=3)
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
else:
    server = HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
server.serve_forever()
"""

# A prepare that says what it saw in $MARKER (one JSON line a run) and then, as the tree's
# `mode` file says: pip with its arguments (the default), hang with a child, fail, or
# succeed at once (ok).
PREP = r"""
import json, os, subprocess, sys, time
mode = open("mode").read().strip() if os.path.exists("mode") else "pip"
seen = {"pid": os.getpid(), "pgid": os.getpgid(0), "cwd": os.getcwd(), "argv": sys.argv[1:],
        **{name: os.environ.get(name) for name in ("GITSYNC_HASH", "GITSYNC_PREV_HASH", "GITSYNC_CACHE")}}
if mode == "hang":
    seen["child"] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"]).pid
with open(os.environ["MARKER"], "a") as out:
    out.write(json.dumps(seen) + "\n")
if mode == "hang":
    print("resolving dependencies...", flush=True)
    time.sleep(300)
if mode == "ok":
    sys.exit(0)
if mode == "fail":
    print("collecting things", flush=True)
    print("boom: the index said no", flush=True)
    sys.exit(3)
os.execv(sys.executable, [sys.executable, "-m", "pip", *sys.argv[1:]])
"""


def build_wheel(directory: Path, name: str, version: str) -> Path:
    """A pure-Python wheel holding `name` (VERSION = version), written by hand: no build backend."""
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(text.encode())}" for path, text in files.items()]
    files[f"{name}-{version}.dist-info/RECORD"] = "\n".join([*record, f"{name}-{version}.dist-info/RECORD,,"]) + "\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.fixture
def wheels(tmp_path) -> Path:
    directory = tmp_path / "wheels"
    directory.mkdir()
    build_wheel(directory, "tinydep", "1.0")
    build_wheel(directory, "tinydep", "2.0")
    return directory


class Setup:
    """The files and settings of one test: the trees, the cache, the prepare's marker."""

    def __init__(self, tmp_path: Path, trees: Trees, wheels: Path):
        self.trees, self.wheels = trees, wheels
        self.cache = tmp_path / "cache"
        self.marker = tmp_path / "prepare-runs.jsonl"
        self.app = tmp_path / "app.py"
        self.app.write_text(APP)
        self.prep = tmp_path / "prep.py"
        self.prep.write_text(PREP)
        self.port = free_port()

    def tree(self, requirements: str = "", mode: str | None = None) -> str:
        sha = self.trees.make(os.urandom(4).hex())
        tree = Path(self.trees.tree(sha))
        (tree / "requirements.txt").write_text(requirements)
        if mode is not None:
            (tree / "mode").write_text(mode)
        return sha

    def prepare_line(self) -> str:
        """The docs' pip recipe, behind PREP so each run is counted."""
        return shlex.join([sys.executable, str(self.prep), "install", "--quiet", "--no-index",
                           "--find-links", str(self.wheels), "--target"]) + ' "$GITSYNC_CACHE/site" -r requirements.txt'

    def runs(self) -> list[dict]:
        if not self.marker.exists():
            return []
        return [json.loads(line) for line in self.marker.read_text().splitlines()]

    def answer(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=2) as response:
                return json.load(response)
        except OSError:
            return None

    def leftovers(self) -> list[str]:
        return sorted(name for name in os.listdir(self.cache) if name.startswith(".")) if self.cache.exists() else []


@pytest.fixture
def setup(tmp_path, trees, wheels):
    """Torn down after start_reload: kills any prepare (and its child) a test left behind."""
    made = Setup(tmp_path, trees, wheels)
    yield made
    for run in made.runs():
        kill_group(run["pid"])
        if "child" in run:
            kill_group(run["child"])


def start(start_reload, setup: Setup, *options: str, listen: bool = False) -> Reloader:
    handoff = ("--listen", f"127.0.0.1:{setup.port}") if listen else ()
    return start_reload(
        "--link", str(setup.trees.link), "--cache-dir", str(setup.cache), "--prepare-key", "requirements.txt,mode",
        "--prepare", setup.prepare_line(), *handoff, *options,
        command=["sh", "-c", f'PYTHONPATH="$GITSYNC_CACHE/site" exec {shlex.quote(sys.executable)} {setup.app}'],
        env={"PORT": str(setup.port), "MARKER": str(setup.marker)},
    )


def serving(setup: Setup, reloader: Reloader, sha: str, timeout: float = 60.0) -> dict:
    return wait_for(lambda: (answer := setup.answer()) and answer["hash"] == sha and answer,
                    f"the app to serve {sha[:8]}", timeout, reloader)


# --- a dependency that comes with a push ---------------------------------------------------------


def test_a_push_that_adds_a_dependency_goes_live_with_it(setup, start_reload):
    first, second = setup.tree("# nothing yet\n"), setup.tree("tinydep==1.0\n")
    setup.trees.flip(first)
    reloader = start(start_reload, setup)
    before = serving(setup, reloader, first)
    assert before["tinydep"] is None
    setup.trees.flip(second)
    after = serving(setup, reloader, second)

    assert after["tinydep"] == "1.0"  # installed by pip from the wheel, into this key's directory
    cache = Path(after["cache"])
    assert cache.parent == setup.cache and (cache / "site" / "tinydep" / "__init__.py").is_file()
    assert cache != Path(before["cache"]) and Path(before["cache"]).is_dir()
    [_, run] = setup.runs()
    assert (run["GITSYNC_HASH"], run["GITSYNC_PREV_HASH"]) == (second, first)
    assert run["cwd"] == setup.trees.tree(second) and run["pgid"] == run["pid"]  # in the tree, its own group
    assert run["GITSYNC_CACHE"] != after["cache"] and run["argv"][-3] == f"{run['GITSYNC_CACHE']}/site"
    assert f"prepared {second}" in reloader.log() and setup.leftovers() == []  # made aside, renamed into place


def test_a_push_that_leaves_the_key_alone_starts_without_preparing(setup, start_reload):
    first, same, changed, back = (setup.tree("tinydep==1.0\n"), setup.tree("tinydep==1.0\n"),
                                  setup.tree("tinydep==2.0\n"), setup.tree("tinydep==1.0\n"))
    setup.trees.flip(first)
    reloader = start(start_reload, setup)
    one = serving(setup, reloader, first)
    assert len(setup.runs()) == 1 and one["tinydep"] == "1.0"

    setup.trees.flip(same)
    assert serving(setup, reloader, same)["cache"] == one["cache"]
    assert len(setup.runs()) == 1  # no second prepare: the same requirements.txt

    setup.trees.flip(changed)
    assert serving(setup, reloader, changed)["tinydep"] == "2.0"
    assert len(setup.runs()) == 2
    setup.trees.flip(back)  # back to content prepared before: its directory was kept
    assert serving(setup, reloader, back)["cache"] == one["cache"]
    assert len(setup.runs()) == 2 and reloader.log().count("preparing ") == 2


@pytest.mark.parametrize("listen", [False, True], ids=["restart", "listen"])
def test_a_failing_prepare_keeps_the_old_app_serving_and_says_why(setup, start_reload, listen):
    good, broken, same_key, fixed = (setup.tree("tinydep==1.0\n"), setup.tree("nosuchdep==9\n"),
                                     setup.tree("nosuchdep==9\n"), setup.tree("tinydep==2.0\n"))
    setup.trees.flip(good)
    reloader = start(start_reload, setup, listen=listen)
    old = serving(setup, reloader, good)
    setup.trees.flip(broken)
    reloader.wait_log("prepare failed: ", timeout=60)

    assert "prepare failed: ERROR: No matching distribution found for nosuchdep==9" in reloader.log()
    assert stays(lambda: setup.answer() == old, 0.5)  # the same process, never stopped
    assert reloader.start_count() == 1 and setup.leftovers() == []
    assert [name for name in os.listdir(setup.cache) if not name.startswith(".")] == [Path(old["cache"]).name]

    setup.trees.flip(same_key)  # the next commit, the same requirements: not prepared again
    reloader.wait_log(f"not preparing {same_key}")
    assert len(setup.runs()) == 2 and setup.answer() == old
    setup.trees.flip(fixed)
    assert serving(setup, reloader, fixed)["tinydep"] == "2.0"
    wait_for(lambda: gone(old["pid"]), "the old app to be gone", reloader=reloader)


def test_an_old_app_that_crashes_while_the_new_tree_cannot_be_prepared_starts_again_in_its_own(setup, start_reload):
    good, broken = setup.tree("tinydep==1.0\n"), setup.tree(mode="fail")
    setup.trees.flip(good)
    reloader = start(start_reload, setup)
    old = serving(setup, reloader, good)
    setup.trees.flip(broken)
    reloader.wait_log("prepare failed: boom: the index said no", timeout=60)
    os.kill(old["pid"], signal.SIGKILL)
    again = wait_for(lambda: (answer := setup.answer()) and answer["pid"] != old["pid"] and answer,
                     "the old app to answer again", 30, reloader)
    assert (again["hash"], again["cache"], again["tinydep"]) == (good, old["cache"], "1.0")
    assert len(setup.runs()) == 2  # the broken tree's key was not prepared again


def test_a_prepare_that_hangs_is_killed_at_the_timeout_with_its_children(setup, start_reload):
    good, hangs = setup.tree(mode="ok"), setup.tree("tinydep==2.0\n", mode="hang")
    setup.trees.flip(good)
    reloader = start(start_reload, setup, "--prepare-timeout", "2s")
    old = serving(setup, reloader, good)
    setup.trees.flip(hangs)
    run = wait_for(lambda: len(setup.runs()) == 2 and setup.runs()[1], "the prepare to start", 30, reloader)
    reloader.wait_log("prepare timed out after 2s", timeout=30)

    wait_for(lambda: gone(run["pid"]) and gone(run["child"]), "the prepare and its child to be gone", 10, reloader)
    assert setup.answer() == old and setup.leftovers() == []
    assert reloader.process.poll() is None


def test_sigterm_during_a_prepare_exits_promptly_and_leaves_nothing_running(setup, start_reload):
    good, hangs = setup.tree("tinydep==1.0\n"), setup.tree("tinydep==2.0\n", mode="hang")
    setup.trees.flip(good)
    reloader = start(start_reload, setup)  # the default --prepare-timeout: 10m
    old = serving(setup, reloader, good)
    setup.trees.flip(hangs)
    run = wait_for(lambda: len(setup.runs()) == 2 and setup.runs()[1], "the prepare to start", 30, reloader)
    reloader.wait_log("resolving dependencies...")
    reloader.send(signal.SIGTERM)

    assert reloader.exit_code(timeout=10) == 0  # the app's own status: it exits 0 on SIGTERM
    pids = (old["pid"], run["pid"], run["child"])
    wait_for(lambda: all(gone(pid) for pid in pids), f"pids {pids} to be gone", 10, reloader)
    assert setup.leftovers() == [] and "stopping the prepare of" in reloader.log()


def test_a_prepare_killed_with_gitsync_reload_never_leaves_a_directory_under_the_real_name(setup, start_reload):
    hangs = setup.tree("tinydep==1.0\n", mode="hang")
    setup.trees.flip(hangs)
    first = start(start_reload, setup)
    run = wait_for(lambda: setup.runs() and setup.runs()[0], "the prepare to start", 30, first)
    os.killpg(first.process.pid, signal.SIGKILL)  # gitsync-reload dies; the prepare's own group lives on
    first.process.wait(timeout=10)
    os.killpg(run["pid"], signal.SIGKILL)
    assert [name for name in os.listdir(setup.cache) if not name.startswith(".")] == []  # only the temporary one

    fixed = setup.tree("tinydep==1.0\n")
    setup.trees.flip(fixed)
    second = start(start_reload, setup)
    assert serving(setup, second, fixed)["tinydep"] == "1.0"
    assert setup.leftovers() == []  # the dead one's temporary directory was swept


def test_a_failed_first_prepare_starts_nothing_until_a_push_changes_the_key(setup, start_reload):
    broken, fixed = setup.tree("nosuchdep==9\n"), setup.tree("tinydep==1.0\n")
    setup.trees.flip(broken)
    reloader = start(start_reload, setup)
    reloader.wait_log("prepare failed: ", timeout=60)
    assert stays(lambda: reloader.start_count() == 0, 0.5) and reloader.log().count("prepare failed: ") == 1
    setup.trees.flip(fixed)
    assert serving(setup, reloader, fixed)["tinydep"] == "1.0"
    assert setup.runs()[1]["GITSYNC_PREV_HASH"] == ""  # nothing ran before


# --- the key, the words, the cache directory ------------------------------------------------------


def test_the_key_is_the_content_of_the_key_files_and_the_command(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    files, command = ("requirements.txt", "package-lock.json"), ("pip", "install")
    missing = content_key(str(tree), files, command)
    (tree / "requirements.txt").write_text("")
    empty = content_key(str(tree), files, command)
    (tree / "requirements.txt").write_text("flask\n")
    flask = content_key(str(tree), files, command)
    (tree / "unrelated.py").write_text("print()\n")
    assert len({missing, empty, flask}) == 3  # a missing file is not an empty one
    assert content_key(str(tree), tuple(reversed(files)), command) == flask
    assert content_key(str(tree), files, ("pip", "install", "-U")) != flask


def test_only_the_three_variables_are_replaced_in_the_words():
    values = {"GITSYNC_CACHE": "/c", "GITSYNC_HASH": "abc", "GITSYNC_PREV_HASH": ""}
    words = ["$GITSYNC_CACHE/site", "${GITSYNC_HASH}.txt", "$GITSYNC_HASHES", "$HOME", "x$GITSYNC_PREV_HASH"]
    assert expand(words, values) == ["/c/site", "abc.txt", "$GITSYNC_HASHES", "$HOME", "x"]


def test_a_url_s_credentials_stay_out_of_the_log_line():
    argv = ["pip", "install", "--index-url", "https://user:s3cret@pypi.example/simple", "-r", "requirements.txt"]
    assert redacted(argv) == "pip install --index-url https://***@pypi.example/simple -r requirements.txt"


def test_old_key_directories_go_but_those_in_use_and_the_newest_stay(tmp_path):
    config = build_config(["--link", "app", "--cache-dir", str(tmp_path / "cache"), "--prepare", "true", "--", "x"], {})
    preparer = Preparer(config, {})
    trees, names = [], []
    for number in range(KEEP + 3):
        tree = tmp_path / f"tree-{number}"
        tree.mkdir()
        (tree / "requirements.txt").write_text(f"dep=={number}\n")
        trees.append(str(tree))
        names.append(preparer.key_of(str(tree)))
        (tmp_path / "cache" / names[-1]).mkdir(parents=True)
        os.utime(tmp_path / "cache" / names[-1], (1000 + number, 1000 + number))
    (tmp_path / "cache" / "not-a-key").mkdir()
    preparer.used([trees[0]])  # the oldest is in use
    kept = set(os.listdir(tmp_path / "cache"))
    assert kept == {names[0], *names[-KEEP:], "not-a-key"}


def test_prepare_settings_and_their_defaults():
    config = build_config(["--link", "a", "--", "x"], {"TMPDIR": "/var/tmp/x"})
    assert (config.prepare, config.prepare_timeout, config.cache_dir) == ((), 600.0, "/var/tmp/x/gitsync-reload")
    assert {"requirements.txt", "poetry.lock", "package-lock.json", "yarn.lock"} <= set(config.prepare_key)
    assert config.prepare_key == DEFAULT_PREPARE_KEY
    assert build_config(["--link", "a", "--", "x"], {}).cache_dir == "/tmp/gitsync-reload"
    env = {"GITSYNC_RELOAD_PREPARE": "npm ci --prefix '$GITSYNC_CACHE'", "GITSYNC_RELOAD_PREPARE_TIMEOUT": "2m",
           "GITSYNC_RELOAD_PREPARE_KEY": "package.json, package-lock.json", "GITSYNC_RELOAD_CACHE_DIR": "/c"}
    config = build_config(["--link", "a", "--", "x"], env)
    assert config.prepare == ("npm", "ci", "--prefix", "$GITSYNC_CACHE")
    assert (config.prepare_key, config.prepare_timeout, config.cache_dir) == (
        ("package.json", "package-lock.json"), 120.0, "/c")


@pytest.mark.parametrize(
    "argv, env, named",
    [
        (["--prepare", "pip install -r 'requirements.txt"], {}, "--prepare"),
        ([], {"GITSYNC_RELOAD_PREPARE": 'sh -c "echo'}, "GITSYNC_RELOAD_PREPARE"),
        (["--prepare", "true", "--prepare-timeout", "soon"], {}, "--prepare-timeout"),
        (["--prepare", "true", "--prepare-timeout", "0"], {}, "--prepare-timeout"),
        (["--prepare", "true"], {"GITSYNC_RELOAD_PREPARE_TIMEOUT": "-1s"}, "GITSYNC_RELOAD_PREPARE_TIMEOUT"),
        (["--prepare", "true", "--prepare-key", "/etc/passwd"], {}, "--prepare-key"),
        (["--prepare", "true", "--prepare-key", "../outside.txt"], {}, "--prepare-key"),
        (["--prepare", "true", "--prepare-key", ","], {}, "--prepare-key"),
        (["--prepare", "true", "--signal-only"], {}, "--prepare"),
    ],
)
def test_bad_prepare_settings_exit_2_with_one_line(tmp_path, argv, env, named):
    argv = ["--link", "a", *argv, "--", "x"]
    with pytest.raises(ConfigError, match=named):
        build_config(argv, env)
    assert named in refused_line(tmp_path, argv, env)


# --- the Python recipes in docs/reload.md, word for word (pip told by PIP_* to use the wheels) ---------

TARGET_PREPARE = 'python -m pip install --target "$GITSYNC_CACHE/site" -r requirements.txt'
TARGET_COMMAND = 'PYTHONPATH="$GITSYNC_CACHE/site" exec python app.py'
VENV_PREPARE = ('sh -c "python -m venv $GITSYNC_CACHE/venv && $GITSYNC_CACHE/venv/bin/python -m pip install '
                '-r requirements.txt"')
VENV_COMMAND = 'exec "$GITSYNC_CACHE/venv/bin/python" app.py'


@pytest.mark.parametrize("prepare, command", [(TARGET_PREPARE, TARGET_COMMAND), (VENV_PREPARE, VENV_COMMAND)],
                         ids=["target", "venv"])
def test_the_python_recipes_install_a_new_dependency(setup, start_reload, prepare, command):
    docs = (Path(__file__).resolve().parents[1] / "docs" / "reload.md").read_text()
    assert f"--prepare '{prepare}'" in docs and f"-- sh -c '{command}'" in docs
    shas = [setup.tree("# nothing yet\n"), setup.tree("tinydep==2.0\n")]
    for sha in shas:
        (Path(setup.trees.tree(sha)) / "app.py").write_text(APP)
    setup.trees.flip(shas[0])
    python = Path(sys.executable).parent  # `python` on PATH is this one, with pip
    reloader = start_reload(
        "--link", str(setup.trees.link), "--cache-dir", str(setup.cache), "--prepare-key", "requirements.txt",
        "--prepare", prepare, command=["sh", "-c", command],
        env={"PORT": str(setup.port), "PATH": f"{python}:{os.environ['PATH']}", "PIP_NO_INDEX": "1",
             "PIP_FIND_LINKS": str(setup.wheels), "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert serving(setup, reloader, shas[0])["tinydep"] is None
    setup.trees.flip(shas[1])
    assert serving(setup, reloader, shas[1])["tinydep"] == "2.0"


# --- the Node recipe in docs/reload.md: npm ci from a local tarball, offline -------------------------

NODE_APP = r"""
const http = require("http");
let version = null;
try { version = require("tiny"); } catch (error) {}
http.createServer((req, res) => res.end(JSON.stringify({hash: process.env.GITSYNC_HASH, pid: process.pid,
    tinydep: version, cache: process.env.GITSYNC_CACHE}))).listen(Number(process.env.PORT), "127.0.0.1");
process.on("SIGTERM", () => process.exit(0));
"""
NODE_PREPARE = 'sh -c "cp package.json package-lock.json $GITSYNC_CACHE/ && npm ci --prefix $GITSYNC_CACHE"'
NODE_COMMAND = 'NODE_PATH="$GITSYNC_CACHE/node_modules" exec node server.js'


def npm(*args: str, cwd: Path) -> None:
    subprocess.run(["npm", *args, "--offline", "--no-audit", "--no-fund"], cwd=cwd, check=True,
                   capture_output=True, timeout=120)


@pytest.mark.skipif(shutil.which("npm") is None or shutil.which("node") is None, reason="needs node and npm")
def test_the_node_recipe_installs_a_new_dependency_with_npm_ci(setup, start_reload, tmp_path):
    docs = (Path(__file__).resolve().parents[1] / "docs" / "reload.md").read_text()
    assert f"--prepare '{NODE_PREPARE}'" in docs and f"-- sh -c '{NODE_COMMAND}'" in docs
    package = tmp_path / "tiny"
    package.mkdir()
    (package / "package.json").write_text('{"name": "tiny", "version": "1.0.0", "main": "index.js"}')
    (package / "index.js").write_text('module.exports = "1.0";\n')
    npm("pack", "--silent", cwd=package)
    shas = []
    for dependencies in ({}, {"tiny": f"file:{package / 'tiny-1.0.0.tgz'}"}):
        sha = setup.trees.make()
        tree = Path(setup.trees.tree(sha))
        (tree / "server.js").write_text(NODE_APP)
        (tree / "package.json").write_text(json.dumps({"name": "app", "version": "1.0.0",
                                                       "dependencies": dependencies}))
        npm("install", "--package-lock-only", cwd=tree)
        shas.append(sha)
    setup.trees.flip(shas[0])
    reloader = start_reload("--link", str(setup.trees.link), "--cache-dir", str(setup.cache),
                            "--prepare-key", "package.json,package-lock.json", "--prepare", NODE_PREPARE,
                            command=["sh", "-c", NODE_COMMAND],
                            env={"PORT": str(setup.port), "npm_config_offline": "true"})
    assert serving(setup, reloader, shas[0])["tinydep"] is None
    setup.trees.flip(shas[1])
    after = serving(setup, reloader, shas[1])
    assert after["tinydep"] == "1.0" and (Path(after["cache"]) / "node_modules" / "tiny").is_dir()
    assert not (Path(setup.trees.tree(shas[1])) / "node_modules").exists()  # the tree is never written to
