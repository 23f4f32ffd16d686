"""The images, built from the project's Dockerfile and run as the manifests' pods.

Podman (rootful, runc) stands in for the kubelet: tests/podrun.py starts each
container of a rendered Deployment with the manifest's own env, mounts, user,
read-only root, capabilities and limits, in the kubelet's order. The repository
is served by `git http-backend` on 127.0.0.1; pushes are announced by signed
GitHub webhooks, as a forge would.

* the base (k8s/base): the sidecar and the Python demo under gitsync-reload;
  a push goes live; the sidecar is killed and started again, the app serving
  all along;
* any language (k8s/overlays/any-language): the gitsync image's standalone
  gitsync-reload, copied by an init container into an image with no Python, runs
  `node server.js` with --listen; a push goes live once the new app sent READY=1.
* sidecar-only (k8s/overlays/sidecar-only): `node server.js` runs unwrapped in a pod
  with one process namespace; after a push gitsync sends it SIGTERM and podman's
  restart policy (the kubelet's) starts it again on the new tree; a pattern that
  matches nothing kills nothing and says so in the status; one that matches gitsync
  itself is refused.

Skipped, with the install command, where podman or root is missing; in CI
(CI=true) a missing piece fails instead. Base images and build layers are kept
(tests/podutil.py), so a rerun builds nothing it already has.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from pathlib import Path

import pytest

import podutil
from support.api import FORGE_BY_NAME, SECRET
from support.ports import free_port
from support.repos import Remote
from support.servers import SmartHttpServer
from support.waiting import wait_for
from podrun import PodRun, http_status
from test_k8s import pod_spec

ROOT = Path(__file__).resolve().parents[1]
DEMO_APP = ROOT / "demo-app"
NODE_APP = Path(__file__).resolve().parent / "images" / "node-app"
TAG = "localhost/gitsync-test/{}:latest"
UID = 65532
REQUEST_TIMEOUT = 10.0
LIVE_DEADLINE = 60.0  # push -> webhook -> fetch -> publish -> the app restarted, on a loaded machine
GITHUB = FORGE_BY_NAME["github"]

pytestmark = pytest.mark.timeout(1200)  # a cold cache builds three images


@pytest.fixture(scope="module")
def images():
    """The manifests' image names -> local tags, built (or found in the layer cache),
    held for this module: a run from another checkout waits, rather than retag them."""
    reason = podutil.missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the pod tests: {reason}")
        pytest.skip(reason)
    with podutil.machine_lock():
        podutil.ensure_base_images()
        built = {
            "gitsync": TAG.format("gitsync"),
            "gitsync-demo": TAG.format("gitsync-demo"),
            "demo-node-app": TAG.format("demo-node-app"),
        }
        podutil.build(built["gitsync"], ROOT, target="gitsync")
        podutil.build(built["gitsync-demo"], ROOT, target="demo")
        podutil.build(built["demo-node-app"], NODE_APP.parent, file=NODE_APP.parent / "node-app.Containerfile")
        yield built


@pytest.fixture
def resources():
    made = podutil.Resources()
    yield made
    errors = made.cleanup()
    assert not errors, errors
    assert not made.leftovers(), made.leftovers()


@pytest.fixture
def git_server(tmp_path):
    (tmp_path / "remotes").mkdir()
    with SmartHttpServer(tmp_path / "remotes") as server:
        yield server


def start_pod(variant: str, *, images, resources, git_server, remote, tmp_path,
              env: dict[str, str] | None = None) -> PodRun:
    pod = PodRun(
        pod_spec(variant),
        images=images,
        resources=resources,
        ports={8080: free_port(), 8000: free_port()},
        secrets={"gitsync-receiver": {"secret": SECRET.decode()}},
        workdir=tmp_path,
        env={"GITSYNC_REPO": git_server.url_for(remote.path.name), **(env or {})},
    )
    try:
        pod.start()
    except BaseException:
        print(pod.all_logs())  # shown with the failure
        raise
    return pod


def announce_push(pod: PodRun, remote: Remote, sha: str) -> None:
    """The forge's signed push webhook, to the sidecar's API."""
    headers, body = GITHUB.delivery(f"refs/heads/{remote.branch}", sha)
    request = urllib.request.Request(pod.url("gitsync", "api", "/api/v1/webhook"), data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202, response.status


def served(url: str, timeout: float = 2.0) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def wait_serving(url: str, sha: str, pod: PodRun) -> dict:
    try:
        return wait_for(lambda: (found := served(url)) and found.get("commit") == sha and found,
                        timeout=LIVE_DEADLINE, interval=0.05, message=f"{url} to serve {sha}")
    except AssertionError:
        print(pod.all_logs())
        raise


class Watch:
    """Asks the app every 20 ms what it serves, from a thread, until stopped."""

    def __init__(self, url: str):
        self.url = url
        self.answers: list[str | None] = []  # the commit of each answer; None: no answer
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)

    def run(self) -> None:
        while not self.stopping.wait(0.02):
            # A slow answer on a loaded machine is an answer; a refused connection is not.
            answer = served(self.url, timeout=REQUEST_TIMEOUT)
            self.answers.append(answer.get("commit") if answer else None)

    def commits(self) -> list[str]:
        """The commits served, each once, in order."""
        return [c for i, c in enumerate(self.answers) if c is not None and (i == 0 or self.answers[i - 1] != c)]


def demo_files() -> dict[str, str]:
    files = {f"demo-app/{p.relative_to(DEMO_APP)}": p.read_text()
             for p in DEMO_APP.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    return {name: text for name, text in files.items() if not name.endswith(".pyc")}


def assert_hardened(pod: PodRun, name: str) -> None:
    """What the manifest's securityContext promises, seen from inside the container."""
    status = pod.exec(name, "cat", "/proc/1/status")
    assert f"Uid:\t{UID}\t{UID}" in status, status
    assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status, status
    result = podutil.podman("exec", pod.resources.name(name), "touch", "/written", check=False)
    assert result.returncode != 0 and "Read-only file system" in result.stderr, result.stderr


# --- the base: sidecar + the Python demo -----------------------------------------

def test_base_pod_publishes_pushes_and_survives_a_sidecar_kill(images, resources, git_server, tmp_path):
    remote = Remote(git_server.project_root)
    first = remote.commit_and_push({**demo_files(), "demo-app/message.txt": "first\n"}, "first")
    pod = start_pod("base", images=images, resources=resources, git_server=git_server, remote=remote,
                    tmp_path=tmp_path)
    app_url = pod.probe_url("app", "readinessProbe")
    assert wait_serving(app_url, first, pod)["message"] == "first"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert http_status(pod.probe_url("gitsync", probe)) == 200, probe
    for name in ("gitsync", "app"):
        assert_hardened(pod, name)

    second = remote.commit_and_push({"demo-app/message.txt": "second\n"}, "second")
    announce_push(pod, remote, second)
    assert wait_serving(app_url, second, pod)["message"] == "second"

    with Watch(app_url) as watch:
        pod.kill("gitsync")
        # The app serves the published tree while nothing syncs.
        answered = len(watch.answers)
        wait_for(lambda: len(watch.answers) >= answered + 20, timeout=60,
                 message="the app to answer while gitsync is down")
        assert pod.exited("gitsync")
        pod.restart("gitsync")
        third = remote.commit_and_push({"demo-app/message.txt": "third\n"}, "third")
        announce_push(pod, remote, third)
        wait_serving(app_url, third, pod)
        wait_for(lambda: watch.commits()[-1:] == [third], timeout=10, message="the watch to see the third commit")
    assert None not in watch.answers, f"the app failed {watch.answers.count(None)} of {len(watch.answers)} requests"
    assert watch.commits() == [second, third], watch.commits()
    assert http_status(pod.probe_url("gitsync", "livenessProbe")) == 200
    # --preload works in the slimmer demo image: each new commit started in a warm interpreter.
    logs = pod.logs("app")
    assert f"(GITSYNC_HASH={third}, warm)" in logs, logs


# --- any language: the standalone gitsync-reload in a Node image -------------------

def test_any_language_pod_runs_node_under_the_standalone_reload(images, resources, git_server, tmp_path):
    remote = Remote(git_server.project_root)
    app = {"server.js": (NODE_APP / "server.js").read_text()}
    first = remote.commit_and_push({**app, "message.txt": "first\n"}, "first")
    pod = start_pod("any-language", images=images, resources=resources, git_server=git_server, remote=remote,
                    tmp_path=tmp_path)
    app_url = pod.probe_url("app", "readinessProbe")
    answer = wait_serving(app_url, first, pod)
    assert answer["message"] == "first" and answer["runtime"].startswith("node "), answer
    # No Python in the app's image: the reloader runs from the volume the init container filled.
    python = podutil.podman("exec", pod.resources.name("app"), "sh", "-c",
                            "command -v python3 python; ls -d /usr/lib/python3* /usr/local/lib/python3*",
                            check=False)
    assert python.returncode != 0 and not python.stdout.strip(), python.stdout
    assert "gitsync-reload" in pod.exec("app", "cat", "/proc/1/cmdline")
    assert_hardened(pod, "app")

    with Watch(app_url) as watch:
        second = remote.commit_and_push({"message.txt": "second\n"}, "second")
        announce_push(pod, remote, second)
        assert wait_serving(app_url, second, pod)["message"] == "second"
        wait_for(lambda: watch.commits()[-1:] == [second], timeout=10, message="the watch to see the second commit")
    assert None not in watch.answers, f"the app failed {watch.answers.count(None)} of {len(watch.answers)} requests"
    assert watch.commits() == [first, second], watch.commits()
    logs = pod.logs("app")
    # The old node process was stopped on the new one's READY=1, not after --ready-timeout.
    assert " is ready" in logs and "sent no READY=1" not in logs, logs


# --- sidecar-only: gitsync signals the unwrapped app ---------------------------------

def app_signal_for(pod: PodRun, sha: str) -> dict:
    """The sidecar's status once its app_signal.last is about commit sha."""
    url = pod.url("gitsync", "api", "/api/v1/status")
    try:
        return wait_for(lambda: (found := served(url)) and ((found.get("app_signal") or {}).get("last") or {})
                        .get("commit") == sha and found, timeout=LIVE_DEADLINE, interval=0.05,
                        message=f"app_signal.last for {sha}")
    except AssertionError:
        print(pod.all_logs())
        raise


def node_tree(message: str) -> dict[str, str]:
    return {"server.js": (NODE_APP / "server.js").read_text(), "message.txt": f"{message}\n"}


def test_sidecar_only_pod_restarts_the_unwrapped_app_on_each_push(images, resources, git_server, tmp_path):
    remote = Remote(git_server.project_root)
    first = remote.commit_and_push(node_tree("first"), "first")
    pod = start_pod("sidecar-only", images=images, resources=resources, git_server=git_server, remote=remote,
                    tmp_path=tmp_path)
    app_url = pod.probe_url("app", "readinessProbe")
    before = wait_serving(app_url, first, pod)
    assert before["message"] == "first", before
    assert pod.exec("app", "cat", f"/proc/{before['pid']}/cmdline").split("\0")[:2] == ["node", "server.js"]
    # The first publish came before the app started (the sidecar's startupProbe): nothing to signal, no error.
    last = app_signal_for(pod, first)["app_signal"]["last"]
    assert last["pids"] == [] and last["error"] is None, last
    restarts = pod.restart_count("app")

    second = remote.commit_and_push({"message.txt": "second\n"}, "second")
    announce_push(pod, remote, second)
    after = wait_serving(app_url, second, pod)
    assert after["message"] == "second" and after["pid"] != before["pid"], after
    answer = app_signal_for(pod, second)["app_signal"]
    assert answer["signal"] == "SIGTERM" and answer["last"]["error"] is None, answer
    # gitsync saw node through the shared namespace and signalled it, with every capability dropped.
    assert answer["last"]["pids"] == [before["pid"]], answer
    assert pod.restart_count("app") == restarts + 1
    assert_hardened_sidecar(pod)


def assert_hardened_sidecar(pod: PodRun) -> None:
    """The sidecar's own process, read on the host (in the pod, /proc/1 is podman's infra)."""
    found = podutil.podman("inspect", "--format", "{{.State.Pid}}", pod.resources.name("gitsync"))
    pid = found.stdout.strip()
    status = Path(f"/proc/{pid}/status").read_text()
    assert "gitsync" in Path(f"/proc/{pid}/cmdline").read_text(), pid
    assert f"Uid:\t{UID}\t{UID}" in status and "CapEff:\t0000000000000000" in status, status


def test_sidecar_only_pod_with_no_matching_process_kills_nothing(images, resources, git_server, tmp_path):
    remote = Remote(git_server.project_root)
    first = remote.commit_and_push(node_tree("first"), "first")
    pod = start_pod("sidecar-only", images=images, resources=resources, git_server=git_server, remote=remote,
                    tmp_path=tmp_path, env={"GITSYNC_APP_PROCESS": r"^node nothing-runs-this\.js"})
    app_url = pod.probe_url("app", "readinessProbe")
    before = wait_serving(app_url, first, pod)
    restarts = pod.restart_count("app")

    second = remote.commit_and_push({"message.txt": "second\n"}, "second")
    announce_push(pod, remote, second)
    status = app_signal_for(pod, second)
    last = status["app_signal"]["last"]
    assert status["commit"] == second and last["pids"] == [], last
    assert "no process matches --app-process" in last["error"], last
    assert "no process matches" in pod.logs("gitsync")
    # Nothing was killed: the same node process serves the first tree.
    now = served(app_url)
    assert now and now["pid"] == before["pid"] and now["commit"] == first, now
    assert pod.restart_count("app") == restarts


def test_sidecar_only_refuses_a_pattern_that_matches_gitsync(images, resources):
    name = resources.name("refused")
    resources.containers.append(name)
    result = podutil.podman(
        "run", "--name", name, "--user", f"{UID}:{UID}", "--read-only", "--cap-drop", "ALL",
        "--env", "GITSYNC_REPO=https://git.example.com/team/demo-app.git", "--env", "GITSYNC_ROOT=/tmp/git",
        "--env", "GITSYNC_APP_SIGNAL=KILL", "--env", "GITSYNC_APP_PROCESS=gitsync", images["gitsync"],
        check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("gitsync: error: --app-process: 'gitsync' matches gitsync's own "
                                    "command line"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
