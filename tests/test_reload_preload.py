"""gitsync-reload --preload: warm starts in a spare interpreter, against real processes and real trees.

The preloaded module is a real one written under tmp_path (gitsync_probe, on PYTHONPATH): at
import it records its pid, time and working directory, so a test can tell the import ran in
the spare before the flip, in the very process that later runs the app, and only once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gitsync.reload.config import ConfigError, build_config
from gitsync.reload.launcher import SPARE_RETRY, WARM_WAIT
from gitsync.reload.pycommand import PythonCommand
from gitsync.reload.spare import CONTROL_ENV, FORBIDDEN_ENV, MODULES_ENV, STATUS_ENV
from support.ports import free_port
from support.processes import alive, gone, kill_group
from test_reload import (  # noqa: F401  (trees, start_reload, child_script, listen_app: fixtures)
    REPO,
    Reloader,
    Trees,
    child_script,
    event_of,
    fetch,
    get_json,
    served,
    listen_app,
    refused_line,
    start_listening,
    start_reload,
    trees,
    wait_for,
)

PROBE = "gitsync_probe"  # the module every test preloads

# Records its own import, once per process that imports it. With PROBE_HOLD_FROM=N the
# import number N (counting from 0) and every later one never finish, so a spare can be
# caught in the middle of importing.
PROBE_SOURCE = r"""
import json, os, sys, time

IMPORTED = {"pid": os.getpid(), "time": time.time(), "cwd": os.getcwd()}
try:
    with open(os.environ["RECORD"]) as earlier:
        number = earlier.read().count('"event": "preloaded"')
except FileNotFoundError:
    number = 0
with open(os.environ["RECORD"], "a") as out:
    out.write(json.dumps({"event": "preloaded", **IMPORTED}) + "\n")
if 0 <= int(os.environ.get("PROBE_HOLD_FROM", "-1")) <= number:
    while True:
        time.sleep(1)
"""

# The command: lives in each tree (as app.py and as the module probe_app) and records what
# it sees as a program. APP_EXIT makes it exit at once with that status.
APP = r"""
import json, os, signal, sys, time

preloaded = "gitsync_probe" in sys.modules  # before this program imports anything itself
import gitsync_probe

def record(event, **extra):
    with open(os.environ["RECORD"], "a") as out:
        out.write(json.dumps({"event": event, "pid": os.getpid(), "time": time.time(), **extra}) + "\n")

def on_signal(signum, frame):
    record(signal.Signals(signum).name)
    sys.exit(int(os.environ.get("EXIT_ON_SIGNAL", "0")))

with open("message.txt") as handle:
    message = handle.read().strip()
record("start", pgid=os.getpgid(0), cwd=os.getcwd(), hash=os.environ.get("GITSYNC_HASH"), argv=sys.argv,
       name=__name__, path0=sys.path[0], file=__file__, preloaded=preloaded, probe=gitsync_probe.IMPORTED,
       message=message, environ=sorted(os.environ))
if os.environ.get("APP_EXIT"):
    sys.exit(int(os.environ["APP_EXIT"]))
for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, on_signal)
while True:
    time.sleep(0.05)
"""

# An app that starts a child with multiprocessing's spawn method (a fresh interpreter that
# re-runs the main script by its __file__), as Celery workers, PyTorch loaders and
# ProcessPoolExecutor(mp_context=spawn) do.
SPAWN_APP = r"""
import json, multiprocessing, os, sys, time

def child(path):
    with open(path, "w") as out:
        out.write("ran")

if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.environ["RECORD"]), "spawned-%d.txt" % os.getpid())
    process = multiprocessing.get_context("spawn").Process(target=child, args=(out,))
    process.start()
    process.join(60)
    with open(os.environ["RECORD"], "a") as handle:
        handle.write(json.dumps({"event": "start", "pid": os.getpid(), "file": __file__, "path0": sys.path[0],
                                 "exitcode": process.exitcode, "ran": os.path.exists(out)}) + "\n")
    if os.environ.get("APP_EXIT"):
        sys.exit(0)
    while True:
        time.sleep(0.05)
"""

# sys.path[0] as the program sees it, for interpreter options that change it (-I).
PATH_APP = r"""
import json, os, sys, time
with open(os.environ["RECORD"], "a") as out:
    out.write(json.dumps({"event": "start", "pid": os.getpid(), "path0": sys.path[0]}) + "\n")
if os.environ.get("APP_EXIT"):
    sys.exit(0)
while True:
    time.sleep(0.05)
"""


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def site(tmp_path) -> Path:
    """A directory on the commands' PYTHONPATH holding the module to preload."""
    directory = tmp_path / "site"
    directory.mkdir()
    (directory / f"{PROBE}.py").write_text(PROBE_SOURCE)
    return directory


def python_path(*directories: Path | str) -> str:
    return os.pathsep.join([*map(str, directories), *filter(None, [os.environ.get("PYTHONPATH")])])


def marked_processes(tmp_path: Path) -> list[int]:
    """Live processes whose environment names this test's RECORD file: gitsync-reload, its
    commands and their spares (each gets the environment gitsync-reload was given)."""
    marker = f"RECORD={tmp_path}{os.sep}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours
            continue
        if any(var.startswith(marker) for var in environ.split(b"\0")) and alive(int(entry)):
            found.append(int(entry))
    return found


@pytest.fixture
def start(start_reload, tmp_path, site):
    """start_reload with the probe on PYTHONPATH; at teardown nothing of the test survives,
    spares included (they lead their own sessions, out of reach of the reloader's group)."""
    started: list[Reloader] = []

    def run(*options: str, args: tuple[str, ...] = (), env: dict | None = None, command=None) -> Reloader:
        environ = {"PYTHONPATH": python_path(site), **(env or {})}
        reloader = start_reload(*options, args=args, env=environ, command=command)
        started.append(reloader)
        return reloader

    yield run
    for reloader in started:
        if reloader.process.poll() is None:
            reloader.send(signal.SIGTERM)
            try:
                reloader.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        kill_group(reloader.process.pid)
        reloader.process.wait(timeout=10)
        for pid in re.findall(r"(?:started pid|spare interpreter pid) (\d+)", reloader.log()):
            kill_group(int(pid))
    for pid in marked_processes(tmp_path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def make_tree(trees: Trees, message: str, files: dict[str, str] | None = None) -> str:
    """A published-to-be tree with message.txt, the app (as app.py and as module probe_app)."""
    sha = trees.make(message)
    for name, text in {"app.py": APP, "probe_app.py": APP, **(files or {})}.items():
        path = trees.root / ".worktrees" / sha / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return sha


def spares(reloader: Reloader) -> list[int]:
    return [int(pid) for pid in re.findall(r"spare interpreter pid (\d+) is ready", reloader.log())]


def wait_spares(reloader: Reloader, count: int, timeout: float = 20.0) -> list[int]:
    """The pids of the first `count` spares gitsync-reload announced as ready."""
    return wait_for(lambda: len(spares(reloader)) >= count and spares(reloader), f"{count} ready spares",
                    timeout, reloader)


def start_line(reloader: Reloader, pid: int) -> str:
    [line] = [line for line in reloader.log().splitlines() if f"started pid {pid} in " in line]
    return line


def is_warm(reloader: Reloader, pid: int) -> bool:
    return ", warm)" in start_line(reloader, pid)


def imports_by(reloader: Reloader, pid: int) -> list[dict]:
    return [r for r in reloader.records("preloaded") if r["pid"] == pid]


def plain_run(tmp_path: Path, site: Path, tree: str, command: list[str]) -> dict:
    """What the program sees when `python ...` runs it directly in tree: the reference."""
    record = tmp_path / f"plain-{os.urandom(4).hex()}.jsonl"
    env = {**os.environ, "RECORD": str(record), "PYTHONPATH": python_path(site),
           "GITSYNC_HASH": os.path.basename(tree), "APP_EXIT": "0"}
    subprocess.run(command, cwd=tree, env=env, timeout=60, check=True)
    [start] = [line for line in map(json.loads, record.read_text().splitlines()) if line["event"] == "start"]
    return start


def require(condition: bool, what: str) -> None:
    if not condition:
        pytest.fail(f"premise does not hold: {what}")


def fatal_line(reloader: Reloader) -> str:
    """The one error line gitsync-reload ends with (its log lines go to stderr too)."""
    log = reloader.log()
    errors = [line for line in log.splitlines() if line.startswith("gitsync-reload: error:")]
    assert len(errors) == 1 and log.rstrip().splitlines()[-1] == errors[0], log
    assert "Traceback" not in log, log
    return errors[0]


# --- the settings -------------------------------------------------------------------------------


def test_config_splits_the_python_command_and_the_module_list():
    py = sys.executable
    config = build_config(["--link", "a", "--preload", " flask , jinja2.ext", "--",
                           py, "-u", "-X", "dev", "-Wignore", "-OO", "app.py", "--port", "1"], {})
    assert config.preload == ("flask", "jinja2.ext")
    assert config.python == PythonCommand((py, "-u", "-X", "dev", "-Wignore", "-OO"), "app.py", None,
                                                  ("--port", "1"))
    assert config.python.argv == ["app.py", "--port", "1"]
    module = build_config(["--link", "a", "--", "python3.11", "-B", "-m", "pkg.app", "-m", "x"],
                          {"GITSYNC_RELOAD_PRELOAD": "waitress"})
    assert module.preload == ("waitress",)
    assert module.python == PythonCommand(("python3.11", "-B"), None, "pkg.app", ("-m", "x"))
    # The flag wins over the environment, and no list means no spare, for any command.
    flag = build_config(["--link", "a", "--preload", "json", "--", py, "app.py"],
                        {"GITSYNC_RELOAD_PRELOAD": "x-y"})
    assert flag.preload == ("json",)
    none = build_config(["--link", "a", "--preload", " , ", "--", "node", "app.js"],
                        {"GITSYNC_RELOAD_SIGNAL_ONLY": "1"})
    assert (none.preload, none.python) == ((), None)


@pytest.mark.parametrize(
    "argv, env, named",
    [
        (["--preload", "json", "--signal-only", "--", "PY", "app.py"], {}, "--signal-only"),
        (["--", "PY", "app.py"], {"GITSYNC_RELOAD_PRELOAD": "json", "GITSYNC_RELOAD_SIGNAL_ONLY": "true"},
         "--signal-only"),
        (["--preload", "json", "--", "sh", "-c", "exec python app.py"], {}, "CMD must start with python"),
        (["--", "node", "app.js"], {"GITSYNC_RELOAD_PRELOAD": "json"}, "CMD must start with python"),
        (["--preload", "json", "--", "PY", "-c", "print(1)"], {}, "'-c'"),
        (["--preload", "json", "--", "PY", "-u"], {}, "python without a script"),
        (["--preload", "json", "--", "PY", "-m"], {}, "-m needs a module name"),
        (["--preload", "json", "--", "PY", "-X"], {}, "-X needs a value"),
        (["--preload", "flask,not-a-module", "--", "PY", "app.py"], {}, "'not-a-module' is not a module name"),
        (["--preload", "flask..ext", "--", "PY", "app.py"], {}, "--preload: 'flask..ext'"),
        (["--", "PY", "app.py"], {"GITSYNC_RELOAD_PRELOAD": "json,2fast"}, "GITSYNC_RELOAD_PRELOAD"),
        (["--preload", "json", "--", "venv/bin/python", "app.py"], {}, "on PATH or an absolute path"),
    ],
    ids=["signal-only", "signal-only-env", "not-python", "not-python-env", "python-c", "no-script",
         "m-without-module", "X-without-value", "bad-name", "double-dot", "bad-name-env", "relative-python"],
)
def test_bad_preload_settings_exit_2_with_one_line(tmp_path, argv, env, named):
    argv = ["--link", str(tmp_path / "app"), *(sys.executable if word == "PY" else word for word in argv)]
    with pytest.raises(ConfigError, match=re.escape(named)):
        build_config(argv, env)
    line = refused_line(tmp_path, argv, env)
    assert named in line and ("--preload" in line or "GITSYNC_RELOAD_PRELOAD" in line), line


# --- warm starts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "form, words",
    [("script", ["srv/app.py", "--name", "two words"]), ("module", ["-m", "probe_app", "--name", "two words"])],
)
def test_warm_start_runs_the_program_as_python_would_with_the_module_imported_before_the_flip(
    tmp_path, site, trees, start, form, words
):
    first, second = (make_tree(trees, message, {"srv/app.py": APP}) for message in ("first", "second"))
    trees.flip(first)
    command = [sys.executable, *words]
    reloader = start("--link", str(trees.link), "--preload", PROBE, command=command)
    [one] = reloader.wait_starts(1)
    next_spare = wait_spares(reloader, 2)[1]
    assert alive(next_spare) and f"started pid {next_spare} " not in reloader.log()  # ready, waiting
    flipped = time.time()
    trees.flip(second)
    two = reloader.wait_starts(2)[1]

    tree = trees.tree(second)
    assert (two["cwd"], two["hash"], two["message"], two["name"]) == (tree, second, "second", "__main__")
    script = "srv/app.py" if form == "script" else os.path.join(tree, "probe_app.py")
    assert two["argv"] == [script, "--name", "two words"]
    # The script's directory (with -m: the working directory), in the new tree.
    assert two["path0"] == (os.path.join(tree, "srv") if form == "script" else tree)
    assert two["pgid"] == two["pid"]  # its own process group, as a cold start has

    # The module was imported in the spare, in /, before the flip; the program did not import it again.
    assert two["pid"] == next_spare and two["preloaded"]
    assert two["probe"] == {"pid": two["pid"], "time": two["probe"]["time"], "cwd": "/"}
    assert two["probe"]["time"] < flipped
    assert len(imports_by(reloader, two["pid"])) == 1
    assert f"in {tree} (GITSYNC_HASH={second}, warm)" in start_line(reloader, two["pid"])
    internal = {CONTROL_ENV, STATUS_ENV, MODULES_ENV, FORBIDDEN_ENV}
    assert not internal & set(two["environ"])  # the spare's own settings are not the program's

    # What `python ...` itself gives the same program in the same tree.
    plain = plain_run(tmp_path, site, tree, command)
    assert not plain["preloaded"] and plain["probe"]["pid"] == plain["pid"]
    seen = ("argv", "name", "path0", "cwd")
    assert [two[key] for key in seen] == [plain[key] for key in seen]

    # The first start was warm too (the first spare imports while the link is awaited), and it is stopped.
    assert one["preloaded"] and is_warm(reloader, one["pid"]) and one["hash"] == first
    wait_for(lambda: gone(one["pid"]), "the old app to be gone and reaped", reloader=reloader)
    assert "imported gitsync_probe in" in reloader.log()


def test_each_flip_runs_in_a_new_warm_interpreter_and_stops_the_old_one(trees, start):
    shas = [make_tree(trees, f"tree {n}") for n in range(4)]
    trees.flip(shas[0])
    reloader = start("--link", str(trees.link), "--preload", PROBE, "--signal", "INT",
                     command=[sys.executable, "app.py"])
    runs = reloader.wait_starts(1)
    wait_spares(reloader, 2)
    fds = open_fds(reloader.process.pid)  # one app, one spare ready
    for n, sha in enumerate(shas[1:], start=2):
        spare = wait_spares(reloader, n)[-1]
        trees.flip(sha)
        runs = reloader.wait_starts(n)
        new, old = runs[-1], runs[-2]
        assert (new["pid"], new["hash"], new["message"]) == (spare, sha, f"tree {n - 1}")
        assert new["preloaded"] and is_warm(reloader, new["pid"])
        wait_for(lambda: gone(old["pid"]), f"pid {old['pid']} to be gone", reloader=reloader)
        assert [r["event"] for r in reloader.records() if r["pid"] == old["pid"]] == ["preloaded", "start", "SIGINT"]
    assert len({r["pid"] for r in runs}) == len(shas)
    assert all(len(imports_by(reloader, r["pid"])) == 1 for r in runs)  # one import per interpreter, in its spare
    wait_spares(reloader, len(shas) + 1)
    assert open_fds(reloader.process.pid) == fds  # the spares' pipes were closed
    assert zombies_of(reloader.process.pid) == []


def open_fds(pid: int) -> list[str]:
    """What pid's descriptors point at (pipes and sockets by kind only: each spare has new
    pipes, each command its own NOTIFY_SOCKET)."""
    targets = (os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
    return sorted(target.split(":", 1)[0] if target.startswith(("pipe:", "socket:")) else target
                  for target in targets)


def zombies_of(pid: int) -> list[int]:
    """Children of pid that ended and were never reaped."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            state, parent = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        if int(parent) == pid and state == "Z":
            found.append(int(entry))
    return found


def test_warm_program_exit_status_is_reported_and_restarts_run_warm(trees, start):
    sha = make_tree(trees, "exits")
    trees.flip(sha)
    reloader = start("--link", str(trees.link), "--preload", PROBE, command=[sys.executable, "app.py"],
                     env={"APP_EXIT": "3"})
    runs = reloader.wait_starts(4, timeout=30)  # back-off 0.5s, 1s, 2s: spares are ready by then
    assert "exited with status 3" in reloader.log() and "exited with status 1" not in reloader.log()
    assert runs[0]["preloaded"] and is_warm(reloader, runs[0]["pid"])
    assert any(is_warm(reloader, r["pid"]) for r in runs[1:]), reloader.log()
    assert all(r["preloaded"] == is_warm(reloader, r["pid"]) for r in runs)  # the log tells the truth


def test_missing_script_fails_warm_as_it_does_cold(tmp_path, site, trees, start):
    sha = make_tree(trees, "no script here")
    trees.flip(sha)
    command = [sys.executable, "missing.py"]
    plain = subprocess.run(command, cwd=trees.tree(sha), capture_output=True, text=True, timeout=30)
    require(plain.returncode == 2 and "can't open file" in plain.stderr, f"python's own answer: {plain.stderr}")
    reloader = start("--link", str(trees.link), "--preload", PROBE, command=command)
    reloader.wait_log("exited with status 2", timeout=30)
    log = reloader.log()
    assert ", warm): " in log
    assert f"can't open file {os.path.join(trees.tree(sha), 'missing.py')!r}: [Errno 2]" in log
    assert "Traceback" not in log


# --- spares that cannot work -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    ["missing-module", "missing-module-before-publish", "module-only-in-the-tree", "no-interpreter"],
)
def test_spare_that_never_worked_exits_2_with_one_line_and_leaves_no_process(tmp_path, trees, start, case):
    sha = make_tree(trees, "v1", {"tree_helper.py": "VALUE = 1\n"})
    if case != "missing-module-before-publish":
        trees.flip(sha)
    module = "tree_helper" if case == "module-only-in-the-tree" else "gitsync_no_such_module"
    python = "/nonexistent/bin/python3" if case == "no-interpreter" else sys.executable
    reloader = start("--link", str(trees.link), "--preload", f"json,{module}", command=[python, "app.py"])
    assert reloader.exit_code(timeout=30) == 2
    line = fatal_line(reloader)
    assert line.startswith("gitsync-reload: error: --preload: ")
    if case == "no-interpreter":
        assert "cannot run /nonexistent/bin/python3" in line
    else:
        assert f"cannot import '{module}'" in line and sys.executable in line
    assert "started pid" not in reloader.log() and not reloader.starts()
    assert marked_processes(tmp_path) == []


@pytest.mark.parametrize("entry", ["link", "tree"])
def test_module_from_the_published_tree_is_refused(tmp_path, site, trees, start, entry):
    sha = make_tree(trees, "v1", {"tree_helper.py": "VALUE = 1\n"})
    trees.flip(sha)
    path = trees.link if entry == "link" else trees.root / ".worktrees" / sha
    reloader = start("--link", str(trees.link), "--preload", f"{PROBE},tree_helper", command=[sys.executable, "app.py"],
                     env={"PYTHONPATH": python_path(site, path)})
    assert reloader.exit_code(timeout=30) == 2
    line = fatal_line(reloader)
    helper = os.path.join(trees.tree(sha), "tree_helper.py")
    assert line.startswith("gitsync-reload: error: --preload: 'tree_helper' was imported from ")
    assert f"{helper}, the published tree" in line
    assert not reloader.starts()
    assert marked_processes(tmp_path) == []


def test_spare_killed_after_it_worked_warns_starts_cold_then_warms_again(trees, start):
    shas = [make_tree(trees, f"tree {n}") for n in range(3)]
    trees.flip(shas[0])
    reloader = start("--link", str(trees.link), "--preload", PROBE, command=[sys.executable, "app.py"])
    [one] = reloader.wait_starts(1)
    assert is_warm(reloader, one["pid"])
    killed = wait_spares(reloader, 2)[1]
    os.kill(killed, signal.SIGKILL)
    reloader.wait_log("spare interpreter failed")
    assert f"exited with status {-int(signal.SIGKILL)} before it was used" in reloader.log()
    wait_for(lambda: gone(killed), "the killed spare to be reaped", reloader=reloader)

    trees.flip(shas[1])
    two = reloader.wait_starts(2)[1]
    assert two["hash"] == shas[1] and two["pid"] != killed
    assert not two["preloaded"] and not is_warm(reloader, two["pid"])  # a fresh interpreter...
    assert two["probe"]["pid"] == two["pid"] and two["probe"]["cwd"] == trees.tree(shas[1])  # ...that imported it
    wait_for(lambda: gone(one["pid"]), "the first app to be gone", reloader=reloader)

    # After the retry delay a new spare is made, and the next start runs in it.
    again = wait_spares(reloader, 3, timeout=SPARE_RETRY + 30)[2]
    trees.flip(shas[2])
    three = reloader.wait_starts(3)[2]
    assert (three["pid"], three["hash"]) == (again, shas[2])
    assert three["preloaded"] and is_warm(reloader, three["pid"])
    assert reloader.process.poll() is None and "gitsync-reload: error" not in reloader.log()


# --- shutting down ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spare_state", ["ready", "importing"])
def test_sigterm_while_a_spare_waits_stops_everything_with_the_app_status(tmp_path, trees, start, spare_state):
    sha = make_tree(trees, "v1")
    trees.flip(sha)
    hold = {"PROBE_HOLD_FROM": "1"} if spare_state == "importing" else {}  # the second spare never gets ready
    reloader = start("--link", str(trees.link), "--preload", PROBE, command=[sys.executable, "app.py"],
                     env={"EXIT_ON_SIGNAL": "7", **hold})
    [app] = reloader.wait_starts(1)
    assert is_warm(reloader, app["pid"])
    if spare_state == "ready":
        spare = wait_spares(reloader, 2)[1]
    else:
        spare = wait_for(lambda: [r["pid"] for r in reloader.records("preloaded") if r["pid"] != app["pid"]],
                         "the next spare to be importing", reloader=reloader)[0]
        assert len(spares(reloader)) == 1
    assert alive(spare)
    reloader.send(signal.SIGTERM)
    assert reloader.exit_code(timeout=20) == 7
    assert reloader.records("SIGTERM")[0]["pid"] == app["pid"]
    assert gone(app["pid"]) and gone(spare)
    assert marked_processes(tmp_path) == []


def test_sigterm_while_the_first_start_waits_for_an_importing_spare(tmp_path, trees, start):
    sha = make_tree(trees, "v1")
    trees.flip(sha)
    reloader = start("--link", str(trees.link), "--preload", PROBE, command=[sys.executable, "app.py"],
                     env={"PROBE_HOLD_FROM": "0"})  # the first spare never finishes importing
    wait_for(lambda: reloader.records("preloaded"), "the spare to be importing", reloader=reloader)
    time.sleep(1)  # the first start is waiting for it by now (for up to WARM_WAIT)
    reloader.send(signal.SIGTERM)
    assert reloader.exit_code(timeout=WARM_WAIT - 2) == 0  # the wait ends at the signal, not at WARM_WAIT
    assert "started pid" not in reloader.log() and not reloader.starts()
    assert marked_processes(tmp_path) == []


# --- with --listen ------------------------------------------------------------------------------------


def test_listen_warm_start_gets_the_socket_and_replaces_the_old_app_only_once_ready(trees, start, listen_app):
    first, second = trees.make(), trees.make()
    trees.flip(first)
    reloader, port = start_listening(start, trees, listen_app, "--preload", PROBE, env={"START_DELAY": "0.3"})
    [old] = reloader.starts()
    assert old["listen_fds"] == "1" and old["listen_pid"] == str(old["pid"])
    assert is_warm(reloader, old["pid"]) and len(imports_by(reloader, old["pid"])) == 1
    spare = wait_spares(reloader, 2)[1]
    flipped = time.time()
    trees.flip(second)
    new = reloader.wait_starts(2)[1]
    wait_for(lambda: reloader.records("exit"), "the old app to exit", reloader=reloader)

    assert new["pid"] == spare and is_warm(reloader, new["pid"])
    [imported] = imports_by(reloader, new["pid"])
    assert imported["time"] < flipped and imported["cwd"] == "/"
    assert (new["hash"], new["listen_fds"], new["listen_pid"]) == (second, "1", str(new["pid"]))
    assert new["address"] == ["127.0.0.1", port] and new["listening"] == 1  # fd 3 is the listening socket
    # The old app was told to stop only after the new one had said READY=1.
    assert event_of(reloader, new["pid"], "ready")["time"] < event_of(reloader, old["pid"], "SIGINT")["time"]
    assert f"pid {new['pid']} is ready; stopping pid {old['pid']}" in reloader.log()
    assert fetch(port) == {"pid": new["pid"], "hash": second}
    wait_for(lambda: gone(old["pid"]), "the old app to be reaped", reloader=reloader)


def test_demo_app_serves_each_published_tree_warm(trees, start):
    first, second = trees.make("Hello, first"), trees.make("Hello, second")
    trees.flip(first)
    port = free_port()
    reloader = start(
        "--link", str(trees.link), "--signal", "INT", "--grace", "5s", "--listen", f"127.0.0.1:{port}",
        "--preload", "flask,waitress", command=[sys.executable, str(REPO / "demo-app" / "app.py")], env={"PORT": "1"},
    )
    url = f"http://127.0.0.1:{port}/version"
    assert wait_for(lambda: served(url), "the demo app", 30, reloader) == {"commit": first, "message": "Hello, first"}
    spare = wait_spares(reloader, 2, timeout=30)[1]
    trees.flip(second)
    wait_for(lambda: served(url) == {"commit": second, "message": "Hello, second"}, "the second commit", 30, reloader)
    reloader.wait_log(f"pid {spare} is ready; stopping pid", timeout=20)  # it said READY=1 from the socket it got
    assert is_warm(reloader, spare) and f"(GITSYNC_HASH={second}, warm)" in start_line(reloader, spare)
    assert "imported flask,waitress in" in reloader.log()


# --- details where a warm start must still be what `python SCRIPT` gives ------------------------------


def test_warm_main_file_is_absolute_so_spawned_children_find_the_script(tmp_path, site, trees, start):
    sha = make_tree(trees, "v1", {"spawn_app.py": SPAWN_APP})
    trees.flip(sha)
    command = [sys.executable, "spawn_app.py"]
    plain = plain_run(tmp_path, site, trees.tree(sha), command)
    require((plain["exitcode"], plain["ran"]) == (0, True), f"`python spawn_app.py` spawns a child: {plain}")
    require(plain["file"] == os.path.join(trees.tree(sha), "spawn_app.py"), "python makes __file__ absolute")
    reloader = start("--link", str(trees.link), "--preload", "multiprocessing", command=command)
    [run] = reloader.wait_starts(1, timeout=60)
    require(is_warm(reloader, run["pid"]), "the start ran in the spare")
    assert (run["exitcode"], run["ran"]) == (0, True)  # the spawned child ran, as it does cold
    assert run["file"] == plain["file"]


def test_warm_start_keeps_isolated_mode_sys_path(tmp_path, site, trees, start):
    sha = make_tree(trees, "v1", {"path_app.py": PATH_APP})
    trees.flip(sha)
    command = [sys.executable, "-I", "path_app.py"]
    plain = plain_run(tmp_path, site, trees.tree(sha), command)
    require(plain["path0"] != trees.tree(sha), "python -I leaves the script's directory off sys.path")
    reloader = start("--link", str(trees.link), "--preload", "email.message", command=command)
    [run] = reloader.wait_starts(1)
    require(is_warm(reloader, run["pid"]), "the start ran in the spare")
    assert run["path0"] == plain["path0"]
