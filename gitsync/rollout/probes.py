"""Probes: ask the app what it runs, in one short HTTP request.

Two kinds share one interface, `observe() -> Observation`: gitsync-reload's status
API (`--app-status-url`), which says which commit runs, in which state, which attempt
failed and why, and which trees its commands use; and any app's own health URL
(`--app-health-url`), which only says "up" (2xx), and maybe which commit it serves.
A probe never raises: a refused connection, a timeout, a non-2xx or garbage becomes an
Observation whose `problem` says "unreachable: <one line>", and the rollout decides.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Protocol

import requests
from requests.adapters import HTTPAdapter

from ..git import redact_url

log = logging.getLogger(__name__)

APP_STATES = ("starting", "ready", "failed", "stopped")
BODY_LIMIT = 256 * 1024  # a status answer is a few hundred bytes; more is not one
REASON_LIMIT = 300
COMMIT_HEADERS = ("Gitsync-Hash", "X-Gitsync-Hash")
_COMMIT_RE = re.compile(r"^[0-9a-f]{7,64}$")


def one_line(text: str, limit: int = REASON_LIMIT) -> str:
    """Text from elsewhere as one short line, any URL credentials removed."""
    line = " ".join(redact_url(str(text)).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def short(commit: str | None) -> str:
    return commit[:7] if commit else "nothing"


def same_commit(a: str | None, b: str | None) -> bool:
    """Full SHAs or an abbreviation of one (at least 7 digits) name the same commit."""
    if not a or not b:
        return False
    shorter, longer = sorted((a.lower(), b.lower()), key=len)
    return len(shorter) >= 7 and longer.startswith(shorter)


@dataclass(frozen=True)
class Observation:
    """What one probe saw; `live_on`, `failure_of` and `why_not` judge it for a commit."""

    reachable: bool
    problem: str | None = None      # one line: why this is not "ready"
    commit: str | None = None       # what the app runs or serves; None: it does not say
    ready: bool = False             # the app runs `commit` (or, if None, answers 2xx)
    state: str | None = None        # gitsync-reload's state
    target: str | None = None       # the commit gitsync-reload has seen the link point to
    attempt_commit: str | None = None
    attempt_state: str | None = None
    attempt_reason: str | None = None
    trees: tuple[str, ...] = ()
    reports: bool = False           # the probe tells which trees run (gitsync-reload)

    def live_on(self, commit: str) -> bool:
        if not self.ready:
            return False
        return self.commit is None or same_commit(self.commit, commit)

    def failure_of(self, commit: str) -> str | None:
        """The app's one-line reason why `commit` failed, or None if it did not."""
        if self.target and not same_commit(self.target, commit):
            return None   # it has not seen this publish yet: an old failure is not this one
        if same_commit(self.attempt_commit, commit) and self.attempt_state == "failed":
            return self.attempt_reason or "failed"
        if same_commit(self.commit, commit) and self.state == "failed":
            return self.attempt_reason or "the command failed"
        return None

    def why_not(self, commit: str) -> str:
        """One line: why `commit` is not live by this observation."""
        if not self.reachable:
            return self.problem or "unreachable"
        if self.target and not same_commit(self.target, commit):
            return f"the app has not seen the publish (its link points to {short(self.target)})"
        if self.commit and not same_commit(self.commit, commit):
            runs = f"the app runs {short(self.commit)}"
            if same_commit(self.attempt_commit, commit) and self.attempt_state:
                return f"{runs}; {short(commit)} is {self.attempt_state}"
            return runs
        return self.problem or "not ready"

    def running(self) -> frozenset[str]:
        """The commits the app's commands run on: its commit and its trees' names."""
        names = {PurePath(tree).name for tree in self.trees}
        if self.commit:
            names.add(self.commit)
        if self.attempt_commit and self.attempt_state == "starting":
            names.add(self.attempt_commit)
        return frozenset(name for name in names if _COMMIT_RE.match(name))


class Probe(Protocol):
    name: str

    def observe(self) -> Observation: ...


class _HttpProbe:
    """One GET with short timeouts and no retries: the next poll is the retry."""

    name = "probe"

    def __init__(self, url: str, timeout: float = 1.0):
        self.url = url
        self.timeout = timeout
        self.shown_url = redact_url(url)
        self._session = requests.Session()
        adapter = HTTPAdapter(max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def observe(self) -> Observation:
        try:
            with self._session.get(self.url, timeout=self.timeout, stream=True,
                                   headers={"Accept": "application/json"}) as response:
                body = _read_limited(response)
                return self.judge(response.status_code, response.headers, body)
        except requests.Timeout:
            return self.unreachable(f"no answer within {self.timeout:g}s")
        except requests.ConnectionError as err:
            return self.unreachable(_connection_reason(err))
        except requests.RequestException as err:
            return self.unreachable(type(err).__name__)

    def judge(self, status: int, headers, body: bytes) -> Observation:
        raise NotImplementedError

    def unreachable(self, why: str) -> Observation:
        return Observation(reachable=False, problem=f"{self.name} unreachable: {why}")

    def close(self) -> None:
        self._session.close()


class StatusProbe(_HttpProbe):
    """gitsync-reload's `GET /api/v1/status`: the shape is checked field by field."""

    name = "app status"

    def judge(self, status: int, headers, body: bytes) -> Observation:
        if not 200 <= status < 300:
            return self.unreachable(f"answered {status}")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return self.unreachable("the answer is not JSON")
        shape_error = status_shape_error(data)
        if shape_error:
            return self.unreachable(f"unexpected answer: {shape_error}")
        return observation_of_status(data)


class HealthProbe(_HttpProbe):
    """Any app's health URL: 2xx is up; a `commit` in its JSON or a hash header pins it."""

    name = "health URL"

    def judge(self, status: int, headers, body: bytes) -> Observation:
        if not 200 <= status < 300:
            return Observation(reachable=True, problem=f"{self.name} answered {status}")
        commit = _header_commit(headers) or _body_commit(body)
        return Observation(reachable=True, ready=True, commit=commit)


def probe_for(status_url: str | None, health_url: str | None, timeout: float = 1.0) -> Probe | None:
    """The probe the flags ask for; the status URL says more, so it wins if both are set."""
    if status_url:
        return StatusProbe(status_url, timeout)
    if health_url:
        return HealthProbe(health_url, timeout)
    return None


def status_shape_error(data: object) -> str | None:
    """What is wrong with a gitsync-reload status answer, in one line, or None."""
    if not isinstance(data, dict):
        return "not a JSON object"
    for key in ("commit", "state"):
        if key not in data:
            return f"no {key!r}"
    if data["state"] not in APP_STATES:
        return f"state is not one of {', '.join(APP_STATES)}"
    for key in ("commit", "target"):
        if data.get(key) is not None and not isinstance(data[key], str):
            return f"{key!r} is not a string"
    if data["state"] == "ready" and not data["commit"]:
        return "ready without a commit"
    if data.get("pid") is not None and not isinstance(data["pid"], int):
        return "'pid' is not a number"
    trees = data.get("trees", [])
    if not isinstance(trees, list) or not all(_tree_path(tree) for tree in trees):
        return "'trees' is not a list of paths (or of objects with a path)"
    attempt = data.get("attempt")
    if attempt is not None:
        if not isinstance(attempt, dict) or not isinstance(attempt.get("commit"), str) \
                or not isinstance(attempt.get("state"), str):
            return "'attempt' has no commit and state"
        if not isinstance(attempt.get("reason") or "", str):
            return "'attempt.reason' is not a string"
    return None


def observation_of_status(data: dict) -> Observation:
    attempt = data.get("attempt") or {}
    state = data["state"]
    problem = None if state == "ready" else ("not ready" if state == "starting" else f"the app is {state}")
    return Observation(
        reachable=True, problem=problem, commit=data["commit"], ready=state == "ready",
        state=state, target=data.get("target"),
        attempt_commit=attempt.get("commit"), attempt_state=attempt.get("state"),
        attempt_reason=_attempt_reason(attempt) if attempt else None,
        trees=tuple(path for tree in data.get("trees", []) if (path := _tree_path(tree))), reports=True)


def _tree_path(tree: object) -> str | None:
    """gitsync-reload lists {role, commit, path, pid} per tree; a plain path is taken too."""
    if isinstance(tree, str):
        return tree
    if isinstance(tree, dict) and isinstance(tree.get("path"), str):
        return tree["path"]
    return None


def _attempt_reason(attempt: dict) -> str:
    """The app's reason, with the last line of its output when it sent some (the error)."""
    reason = one_line(attempt.get("reason") or attempt.get("state") or "failed")
    output = attempt.get("output")
    if isinstance(output, str):
        lines = [line for line in output.splitlines() if line.strip()]
        if lines:
            return one_line(f"{reason}: {lines[-1]}")
    return reason


def _read_limited(response: requests.Response) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_content(16384):
        chunks.append(chunk)
        size += len(chunk)
        if size > BODY_LIMIT:
            break
    return b"".join(chunks)


def _header_commit(headers) -> str | None:
    for name in COMMIT_HEADERS:
        value = (headers.get(name) or "").strip().lower()
        if _COMMIT_RE.match(value):
            return value
    return None


def _body_commit(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    commit = data.get("commit") if isinstance(data, dict) else None
    return commit.lower() if isinstance(commit, str) and _COMMIT_RE.match(commit.lower()) else None


def _connection_reason(err: Exception) -> str:
    """'connection refused', 'connection reset', ... from the innermost cause; never the URL."""
    cause: BaseException = err
    seen = set()
    while id(cause) not in seen:
        seen.add(id(cause))
        inner = getattr(cause, "reason", None) or cause.__cause__ or cause.__context__
        if not isinstance(inner, BaseException):
            break
        cause = inner
    known = {ConnectionRefusedError: "connection refused", ConnectionResetError: "connection reset",
             TimeoutError: "timed out"}
    for kind, text in known.items():
        if isinstance(cause, kind):
            return text
    if "Timeout" in type(cause).__name__:
        return "timed out"
    if "NameResolution" in type(cause).__name__ or "getaddrinfo" in str(cause):
        return "cannot resolve the host name"
    return type(cause).__name__
