"""Podman for the pod tests: base images made once and kept, images built with the
layer cache, and every container, pod and volume a test makes removed at its end.

No image registry is reached from these machines, so the two base images the builds
name are stand-ins made here, and made only when podman's storage lacks them:

* ``debian:bookworm-slim``: a debootstrap minbase of bookworm, imported from a tarball
  kept in CACHE (the tarball outlives a wiped podman storage);
* ``python:3.11-slim-bookworm``: that base plus Debian's Python 3.11 (images/python.Containerfile).

A machine that has the real images (a CI with a registry mirror) uses those instead.
Podman itself runs with a containers.conf of ours (CONTAINERS_CONF): runc, since crun
fails on these hosts' hybrid cgroups, and rlimits no higher than the host allows.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE = Path(os.environ.get("GITSYNC_TEST_CACHE", "/var/cache/gitsync-tests"))
IMAGES = Path(__file__).resolve().parent / "images"
DEBIAN_IMAGE = "docker.io/library/debian:bookworm-slim"
PYTHON_IMAGE = "docker.io/library/python:3.11-slim-bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PACKAGES = ("podman", "runc", "catatonit", "debootstrap")
INSTALL_HINT = f"apt-get install {' '.join(PACKAGES)} (as root)"
BUILD_TIMEOUT = 900  # a cold build downloads Debian packages and wheels
LOCK_WAIT = 1200.0  # another checkout's pod tests, cold, may hold the machine this long
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
"""


def missing() -> str | None:
    """Why pods cannot run here, or None."""
    if os.geteuid() != 0:
        return f"the pod tests need root (rootful podman with runc); install with: {INSTALL_HINT}"
    absent = [name for name in ("podman", "runc", "debootstrap") if shutil.which(name) is None]
    if absent:
        return f"{', '.join(absent)} not found; install with: {INSTALL_HINT}"
    return None


def environment() -> dict[str, str]:
    CACHE.mkdir(parents=True, exist_ok=True)
    conf = CACHE / "containers.conf"
    if not conf.is_file() or conf.read_text() != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


@contextmanager
def machine_lock() -> Iterator[None]:
    """One pod-test run at a time on a machine: the base images and image tags are shared."""
    CACHE.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + LOCK_WAIT
    with open(CACHE / "lock", "w") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, f"{CACHE / 'lock'}: another pod-test run held it {LOCK_WAIT}s"
                time.sleep(0.5)
        yield  # closing the file releases the lock


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=environment())
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def image_size(name: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())


# --- base images -------------------------------------------------------------

def debian_mirror() -> str:
    """The host's own Debian mirror: the one apt here is known to reach."""
    for sources in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        text = sources.read_text()
        if re.search(r"^Suites:.*\bbookworm\b", text, re.M):
            found = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M)
            if found:
                return found.group(1)
    return DEFAULT_MIRROR


def debootstrap_tarball() -> Path:
    """CACHE/bookworm-minbase.tar, made once (about half a minute)."""
    tarball = CACHE / "bookworm-minbase.tar"
    if tarball.is_file():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bookworm-", dir=CACHE))
    try:
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=ca-certificates", "bookworm", str(root), debian_mirror()],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT,
        )
        assert result.returncode == 0, f"debootstrap failed: {result.stdout[-2000:]}{result.stderr[-2000:]}"
        # Downloads from inside a build may pass a TLS-inspecting proxy whose CA only
        # the host's bundle holds.
        if HOST_CA_BUNDLE.is_file():
            shutil.copyfile(HOST_CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")
        prune(root)
        partial = tarball.with_suffix(".tar.partial")
        with tarfile.open(partial, "w") as tar:
            tar.add(root, arcname=".")
        partial.rename(tarball)  # a run killed mid-way leaves no truncated tarball behind
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return tarball


def prune(root: Path) -> None:
    """Drop what Debian's slim images leave out too: package lists, caches, docs, man pages."""
    for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb",
                    "usr/share/doc/*", "usr/share/man/*", "usr/share/info/*", "usr/share/locale/*"):
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def ensure_base_images() -> None:
    if not image_exists(DEBIAN_IMAGE):
        podman("import", "--change", "CMD=/bin/bash", str(debootstrap_tarball()), DEBIAN_IMAGE, timeout=BUILD_TIMEOUT)
    if not image_exists(PYTHON_IMAGE):
        build(PYTHON_IMAGE, IMAGES, file=IMAGES / "python.Containerfile")


def build(tag: str, context: Path, *, target: str | None = None, file: Path | None = None) -> None:
    """podman build with the layer cache, from local images only."""
    args = ["build", "--pull=never", "--network", "host", "--layers", "--tag", tag]
    if target:
        args += ["--target", target]
    if file:
        args += ["--file", str(file)]
    result = podman(*args, str(context), timeout=BUILD_TIMEOUT, check=False)
    assert result.returncode == 0, f"podman build {tag} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


# --- what a test makes, and removes --------------------------------------------

class Resources:
    """Names for one test's pods, containers and volumes, all removed by cleanup()."""

    def __init__(self, prefix: str = "gitsync-test"):
        self.prefix = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.pods: list[str] = []
        self.containers: list[str] = []
        self.volumes: list[str] = []

    def name(self, part: str) -> str:
        return f"{self.prefix}-{part}"

    def pod(self, part: str = "pod", *, share_pid: bool = False) -> str:
        name = self.name(part)
        # Host networking: every address stays 127.0.0.1, as in a pod's shared localhost.
        # share_pid: one process namespace for the pod, as shareProcessNamespace: true.
        share = ["--share", "ipc,net,uts,pid"] if share_pid else []
        podman("pod", "create", "--network", "host", *share, "--name", name)
        self.pods.append(name)
        return name

    def volume(self, part: str, uid: int, gid: int) -> str:
        """An emptyDir: a fresh volume, group-owned and setgid as with fsGroup."""
        name = self.name(part)
        podman("volume", "create", name)
        self.volumes.append(name)
        mountpoint = Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", name).stdout.strip())
        os.chown(mountpoint, 0, gid)
        mountpoint.chmod(0o2775)
        return name

    def run(self, part: str, args: list[str], *, detach: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        name = self.name(part)
        self.containers.append(name)
        return podman("run", *(["--detach"] if detach else []), "--name", name, *args, timeout=timeout)

    def cleanup(self) -> list[str]:
        """Remove everything, the pods first (they take their containers); return the errors."""
        errors = []
        for kind, names in (("pod", self.pods), ("container", self.containers), ("volume", self.volumes)):
            for name in reversed(names):
                result = podman(kind, "rm", "--force", name, check=False, timeout=120)
                if result.returncode != 0 and "no such" not in result.stderr.lower():
                    errors.append(f"podman {kind} rm {name}: {result.stderr.strip()}")
        return errors

    def leftovers(self) -> list[str]:
        """Whatever of ours podman still lists."""
        listings = {
            "pod": ("pod", "ps", "--format", "{{.Name}}"),
            "container": ("ps", "--all", "--format", "{{.Names}}"),
            "volume": ("volume", "ls", "--format", "{{.Name}}"),
        }
        found = []
        for kind, args in listings.items():
            names = podman(*args, check=False).stdout.split()
            found += [f"{kind} {name}" for name in names if name.startswith(self.prefix)]
        return found
