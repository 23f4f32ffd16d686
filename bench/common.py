"""Shared pieces of the benchmarks: isolated git, cached test repositories,
processes that are always stopped, memory readings and small statistics."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent          # the venv's bin: gitsync, gitsync-reload live here
REPO_FORMAT = 1                            # bump to regenerate cached repositories
BRANCH = "main"
TOUCHED_FILE = "d000/f000.txt"             # the one file each benchmark commit changes


# -- environment --------------------------------------------------------------------

def isolated_env(home: Path) -> dict[str, str]:
    """The environment for every git, gitsync and app process: no user or system config."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GITSYNC_", "GIT_")) and k not in ("PORT",)}
    env.update({
        "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C",
        "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.com",
        "PYTHONUNBUFFERED": "1",
    })
    return env


class Context:
    """Where a run keeps its files, and the environment its processes get."""

    def __init__(self, out: Path, quick: bool):
        self.out = out = out.resolve()
        self.quick = quick
        self.cache = out / "repos"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="run-", dir=out))
        home = self.scratch / "home"
        home.mkdir()
        self.env = isolated_env(home)
        self.procs: list[Proc] = []
        self.notes: list[str] = []

    def git(self, *args: str, cwd: Path | None = None, check: bool = True) -> str:
        proc = subprocess.run(["git", *args], cwd=cwd, env=self.env, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def tempdir(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.scratch))
        return path

    def start(self, args: Sequence[str], name: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> "Proc":
        proc = Proc(list(args), self.scratch / f"{name}-{len(self.procs)}.log",
                    {**self.env, **(env or {})}, cwd)
        self.procs.append(proc)
        return proc

    def keep_log(self, proc: "Proc", name: str) -> Path:
        """Copy a process's log out of the scratch directory, for a failure report."""
        logs = self.out / "logs"
        logs.mkdir(exist_ok=True)
        dest = logs / f"{name}-{time.strftime('%H%M%S')}.log"
        shutil.copyfile(proc.log_path, dest)
        return dest

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)


class Proc:
    """A process in its own group, logging to a file; stop() ends the whole group."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str], cwd: Path | None):
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                      cwd=cwd, start_new_session=True)
        self.pid = self.popen.pid

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_for_output(self, pattern: str, timeout: float) -> re.Match | None:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = regex.search(self.output)
            if match:
                return match
            if not self.alive():
                return regex.search(self.output)
            time.sleep(0.02)
        return None

    def stop(self, grace: float = 3.0) -> None:
        if self.popen.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.pid, signal.SIGKILL)   # leftovers in the group (git, the app)
        if self.popen.poll() is None:
            self.popen.wait(10)
        self._log.close()


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def guarded(measure, *args, **kwargs) -> dict:
    """One failed measurement is reported as such (in results.json); the others still run."""
    try:
        return measure(*args, **kwargs)
    except (RuntimeError, OSError) as err:
        print(f"  FAILED: {type(err).__name__}: {err}", flush=True)
        return {"error": f"{type(err).__name__}: {err}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine_info(env: dict[str, str]) -> dict:
    git_version = subprocess.run(["git", "--version"], capture_output=True, text=True,
                                 env=env).stdout.strip()
    return {"nproc": os.cpu_count(), "git": git_version, "python": sys.version.split()[0],
            "kernel": os.uname().release, "loadavg_start": loadavg(),
            "time_v": os.access("/usr/bin/time", os.X_OK)}


def loadavg() -> list[float]:
    """Other work on a shared 2-core machine skews absolute times; say how busy it was."""
    return [round(x, 2) for x in os.getloadavg()]


# -- test repositories ----------------------------------------------------------------

@dataclass(frozen=True)
class RepoSpec:
    files: int
    file_size: int = 10_000

    @property
    def per_dir(self) -> int:
        return 100 if self.files >= 100 else 10

    @property
    def dirs(self) -> int:
        return math.ceil(self.files / self.per_dir)

    @property
    def name(self) -> str:
        return f"files{self.files}-size{self.file_size}-v{REPO_FORMAT}.git"

    def paths(self):
        for number in range(self.files):
            yield f"d{number // self.per_dir:03d}/f{number % self.per_dir:03d}.txt"


def _text_pool(seed: int, size: int) -> bytes:
    """Deterministic, source-like text (compresses about as well as code does)."""
    rng = random.Random(seed)
    words = ["def", "return", "self", "value", "import", "class", "for", "in", "if", "else",
             "None", "True", "config", "path", "result", "items", "commit", "tree", "link",
             "sync", "error", "log", "name", "data", "index", "=", "(", ")", ":", "+", "0", "1"]
    words += ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(3, 12)))
              for _ in range(400)]
    lines = []
    total = 0
    while total < size:
        indent = " " * (4 * rng.randint(0, 3))
        line = indent + " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + "\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def ensure_repo(ctx: Context, spec: RepoSpec) -> Path:
    """A bare repository with one commit of `spec`, built once with fast-import and cached."""
    bare = ctx.cache / spec.name
    if (bare / "bench-complete").is_file():
        return bare
    shutil.rmtree(bare, ignore_errors=True)
    building = ctx.cache / f".building-{uuid.uuid4().hex[:8]}.git"
    ctx.git("init", "--quiet", "--bare", f"--initial-branch={BRANCH}", str(building))
    pool = _text_pool(1234, 1 << 20)
    proc = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=building, env=ctx.env,
                            stdin=subprocess.PIPE)
    assert proc.stdin is not None
    message = f"generated {spec.files} files".encode()
    out = proc.stdin
    out.write(b"commit refs/heads/%s\ncommitter Bench <bench@example.com> 1700000000 +0000\n"
              b"data %d\n%s\n" % (BRANCH.encode(), len(message), message))
    out.write(_inline(b"README.md", b"benchmark repository: %d files\n" % spec.files))
    for number, path in enumerate(spec.paths()):
        size = spec.file_size + (number * 37) % 2000 - 1000      # 9-11 KB, varied
        offset = (number * 7919) % (len(pool) - size)
        body = f"# {path}\n".encode() + pool[offset:offset + size]
        out.write(_inline(path.encode(), body))
    out.write(b"\n")
    out.close()
    if proc.wait() != 0:
        raise RuntimeError("git fast-import failed")
    ctx.git("--git-dir", str(building), "gc", "--quiet", "--prune=now")
    (building / "bench-complete").write_text("ok\n")
    os.rename(building, bare)
    return bare


def _inline(path: bytes, body: bytes) -> bytes:
    return b"M 100644 inline %s\ndata %d\n%s\n" % (path, len(body), body)


class Remote:
    """A private copy of a cached repository (pushes must not change the cache) and a
    sparse work clone that commits one-file changes and pushes them."""

    def __init__(self, ctx: Context, cached: Path, name: str):
        self.ctx = ctx
        base = ctx.tempdir(name)
        self.path = base / "remote.git"
        self.work = base / "work"
        ctx.git("clone", "--quiet", "--mirror", str(cached), str(self.path))
        ctx.git("clone", "--quiet", "--sparse", str(self.path), str(self.work))
        ctx.git("sparse-checkout", "set", TOUCHED_FILE.split("/")[0], cwd=self.work)
        self.counter = 0

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    def head(self) -> str:
        return self.ctx.git("rev-parse", "HEAD", cwd=self.work)

    def commit(self, label: str = "change") -> str:
        """Change one file and commit it; return the new SHA."""
        self.counter += 1
        target = self.work / TOUCHED_FILE
        with open(target, "a") as handle:
            handle.write(f"{label} {self.counter} {uuid.uuid4().hex}\n")
        self.ctx.git("commit", "--quiet", "-am", f"{label} {self.counter}", cwd=self.work)
        return self.head()

    def push(self) -> None:
        self.ctx.git("push", "--quiet", "origin", f"HEAD:refs/heads/{BRANCH}", cwd=self.work)


# -- the link ---------------------------------------------------------------------------

def link_sha(link: Path) -> str | None:
    try:
        return os.path.basename(os.readlink(link))
    except OSError:
        return None


def wait_for_link(link: Path, sha: str, timeout: float, interval: float = 0.001) -> float | None:
    """Poll the link about every millisecond; the monotonic time it named `sha`, or None."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        if link_sha(link) == sha:
            return now
        if now > deadline:
            return None
        time.sleep(interval)


# -- gitsync --------------------------------------------------------------------------

class ApiUnavailable(Exception):
    pass


class Gitsync:
    """A running `gitsync`; `api` is its base URL when the HTTP API came up."""

    def __init__(self, ctx: Context, repo_url: str, root: Path, *, period: str,
                 api: bool, secret_file: Path | None = None, extra: Sequence[str] = ()):
        self.root = root
        self.link = root / "repo"
        args = [str(BIN / "gitsync"), "--repo", repo_url, "--root", str(root), "--link", "repo",
                "--ref", BRANCH, "--period", period, "--max-failures", "-1",
                "--http-bind", "127.0.0.1:0" if api else "", *extra]
        if secret_file is not None:
            args += ["--receiver-secret-file", str(secret_file)]
        self.proc = ctx.start(args, "gitsync")
        self.api: str | None = None
        if api:
            # The second alternative: the line was attempted but failed to format; stop waiting.
            match = self.proc.wait_for_output(r"serving the HTTP API on (http://[\d.]+:\d+)"
                                              r"|Message: 'serving the HTTP API", 15)
            if match is None or match.group(1) is None:
                why = failure_line(self.proc.output)
                self.proc.stop()
                raise ApiUnavailable(f"gitsync did not log 'serving the HTTP API on ...' ({why})")
            self.api = match.group(1)

    def wait_published(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sha = link_sha(self.link)
            if sha:
                return sha
            if not self.proc.alive():
                return None
            time.sleep(0.005)
        return None

    def spare_ready(self) -> bool:
        """gitsync's hard-linked copy of the published tree has its index: only the
        index refresh can still be running (wait_spare_ready also waits for that)."""
        spare = self.root / ".worktrees" / ".spare"
        try:
            text = (spare / ".git").read_text().strip()
        except OSError:
            return False
        admin = Path(text.split(":", 1)[1].strip())
        admin = admin if admin.is_absolute() else spare / admin
        return (admin / "index").exists() and not (admin / "index.lock").exists()

    def busy(self) -> bool:
        """A child other than the periodic ls-remote: housekeeping after a publish
        (worktree prune, cp -al of the spare, update-index) or a sync."""
        for child in descendants(self.proc.pid):
            cmdline = _cmdline(child)
            if cmdline is not None and b"ls-remote" not in cmdline and b"cat-file" not in cmdline:
                return True
        return False

    def wait_spare_ready(self, timeout: float = 60, quiet: float = 0.1) -> float | None:
        """Wait until the spare for the next build is ready and no housekeeping child
        has run for `quiet` seconds; the seconds waited, or None after `timeout`."""
        started = time.monotonic()
        last_busy = started
        while True:
            now = time.monotonic()
            if self.busy() or not self.spare_ready():
                last_busy = now
            elif now - last_busy >= quiet:
                return now - started
            if now - started > timeout or not self.proc.alive():
                return None
            time.sleep(0.005)

    def stop(self) -> None:
        self.proc.stop()


def failure_line(output: str) -> str:
    """The most telling line of a log that ended badly: the last error, else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"(Error|Exception)\b|^fatal:|ERROR", line):
            return line[-300:]
    return lines[-1][-300:] if lines else "no output"


def api_available(ctx: Context, remote_url: str) -> str | None:
    """None when gitsync serves its API with a working webhook receiver; else the reason."""
    root = ctx.tempdir("probe")
    secret = root.parent / f"{root.name}.secret"
    secret.write_text("probe-secret\n")
    try:
        sync = Gitsync(ctx, remote_url, root / "sync", period="60s", api=True, secret_file=secret)
    except ApiUnavailable as err:
        return str(err)
    try:
        import http.client
        host, port = sync.api.split("//")[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        status, _ = post_github(conn, b"probe-secret", github_push("refs/heads/other", "0" * 40))
        conn.close()
        if status != 200:
            return f"POST /api/v1/webhook answered {status} to a signed push to another ref"
        return None
    except OSError as err:
        return f"POST /api/v1/webhook failed: {err}"
    finally:
        sync.stop()


# -- GitHub webhooks ----------------------------------------------------------------------

def github_push(ref: str, after: str, before: str = "0" * 40) -> bytes:
    """A push event shaped like GitHub's (a trimmed real payload)."""
    person = {"name": "Bench", "email": "bench@example.com", "username": "bench"}
    commit = {"id": after, "tree_id": "0" * 40, "distinct": True, "message": "bench change",
              "timestamp": "2024-01-01T00:00:00Z", "url": f"https://github.com/bench/repo/commit/{after}",
              "author": person, "committer": person, "added": [], "removed": [],
              "modified": [TOUCHED_FILE]}
    payload = {
        "ref": ref, "before": before, "after": after, "created": False, "deleted": False,
        "forced": False, "base_ref": None,
        "compare": f"https://github.com/bench/repo/compare/{before[:12]}...{after[:12]}",
        "commits": [commit], "head_commit": commit,
        "repository": {"id": 1, "name": "repo", "full_name": "bench/repo", "private": False,
                       "owner": {"name": "bench", "login": "bench", "id": 1},
                       "html_url": "https://github.com/bench/repo",
                       "clone_url": "https://github.com/bench/repo.git",
                       "default_branch": BRANCH, "master_branch": BRANCH},
        "pusher": {"name": "bench", "email": "bench@example.com"},
        "sender": {"login": "bench", "id": 1, "type": "User"},
    }
    return json.dumps(payload).encode()


def post_github(conn, secret: bytes, body: bytes, event: str = "push") -> tuple[int, bytes]:
    """POST a correctly signed GitHub delivery over `conn` (kept alive); (status, body)."""
    signature = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/bench",
               "X-GitHub-Event": event, "X-GitHub-Delivery": str(uuid.uuid4()),
               "X-GitHub-Hook-ID": "1", "X-Hub-Signature-256": signature}
    conn.request("POST", "/api/v1/webhook", body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


# -- memory ---------------------------------------------------------------------------

def proc_status_kib(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    kids = [int(k) for k in handle.read().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


class MemorySampler:
    """Sample VmRSS of a process and its descendants every few milliseconds."""

    def __init__(self, pid: int, interval: float = 0.01):
        import threading
        self.pid = pid
        self.interval = interval
        self.peak_total_kib = 0        # the largest sum over the tree at one instant
        self.peak_child_kib = 0        # the largest single descendant (VmHWM where readable)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        own = _cmdline(self.pid)
        while not self._stop.is_set():
            total = proc_status_kib(self.pid, "VmRSS") or 0
            for child in descendants(self.pid):
                if _cmdline(child) in (own, None):
                    continue       # forked but not yet exec'd: its pages are the parent's
                rss = proc_status_kib(child, "VmRSS") or 0
                hwm = proc_status_kib(child, "VmHWM") or rss
                total += rss
                self.peak_child_kib = max(self.peak_child_kib, hwm)
            self.peak_total_kib = max(self.peak_total_kib, total)
            self._stop.wait(self.interval)


def _cmdline(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return None


def timed_max_rss(args: Sequence[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, int | None]:
    """Run a command; (wall seconds, peak RSS in KiB of its largest process).

    `/usr/bin/time -v` where it exists; otherwise getrusage of children (which is a
    maximum over every child this process ever waited for, so only an upper bound)."""
    if os.access("/usr/bin/time", os.X_OK):
        started = time.monotonic()
        proc = subprocess.run(["/usr/bin/time", "-v", *args], env=env, cwd=cwd,
                              capture_output=True, text=True)
        elapsed = time.monotonic() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {proc.stderr.strip()[-500:]}")
        match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        return elapsed, int(match.group(1)) if match else None
    import resource
    started = time.monotonic()
    subprocess.run(list(args), env=env, cwd=cwd, check=True, capture_output=True)
    elapsed = time.monotonic() - started
    return elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


# -- statistics and output --------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary_ms(seconds: Sequence[float], *quantiles: int) -> dict:
    data = {"n": len(seconds)}
    for q in quantiles:
        value = percentile(seconds, q)
        data[f"p{q}_ms"] = round(value * 1000, 2) if value is not None else None
    if seconds:
        data["max_ms"] = round(max(seconds) * 1000, 2)
    return data


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 2)


def fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    else:
        text = f"{value:,}"
    return text + unit


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(cells[0], widths)),
             "  ".join("-" * w for w in widths)]
    for row in cells[1:]:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def until(condition: Callable[[], object], timeout: float, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return None
