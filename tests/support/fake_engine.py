"""A stand-in for the sync engine, for API tests that are about HTTP answers, not git.

webhook/ drives the engine only through `SyncController` (trigger, status,
is_healthy, is_ready, tracks, add_listener). `FakeEngine` implements exactly that
with state a test sets directly, and records every trigger: "no sync started" is
then `engine.triggers == []`, checked at once, with no git, no thread and no clock.
`finish(...)` plays one sync cycle's end to the listeners (metrics, hooks) as the
real engine would. Tests about a real sync (a push reaching a publish) keep a
real engine (support.api's `api_factory`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pytest

from gitsync.config import parse_args
from gitsync.engine import Status, SyncResult
from gitsync.git import CommitInfo
from support.api import API_TOKEN, SECRET
from webhook import create_app

FIRST_SHA = "a1" * 20
REPO_URL = "https://git.example.com/org/app.git"


def utc(text: str = "2024-05-01T12:00:00") -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


class FakeDeploys:
    """The rollout controls the API may use (webhook.DeployControl), recording each call."""

    def __init__(self) -> None:
        self.paused = False
        self.retried: list[str] = []
        self.bad: list[str] = []          # what retry() clears
        self.listeners: list[Callable] = []

    def retry(self) -> list[str]:
        cleared, self.bad = self.bad, []
        self.retried.extend(cleared)
        return cleared

    def set_paused(self, paused: bool) -> None:
        self.paused = paused

    def add_listener(self, listener: Callable) -> None:
        self.listeners.append(listener)


class FakeEngine:
    """What the API sees of an engine; every field is the test's to set."""

    def __init__(self, *, repo: str = REPO_URL, ref: str = "HEAD",
                 tracked_ref: str | None = "refs/heads/main", commit: str | None = FIRST_SHA,
                 link: str = "/srv/gitsync/current", version: str = "test"):
        self.repo, self.ref, self.tracked_ref, self.link, self.version = repo, ref, tracked_ref, link, version
        self.commit = commit
        self.commit_info: CommitInfo | None = None if commit is None else CommitInfo(
            commit, "first commit", "Test Author", "2024-05-01T11:59:00+00:00")
        self.state = "idle"
        self.started_at = utc("2024-05-01T11:00:00")
        self.last_sync_at: datetime | None = utc() if commit else None
        self.last_success_at: datetime | None = self.last_sync_at
        self.last_error: str | None = None
        self.consecutive_failures = 0
        self.sync_count = 1 if commit else 0
        self.publish_count = 1 if commit else 0
        self.next_poll_at: datetime | None = None
        self.history: list[SyncResult] = []   # newest first, as Status has it
        self.healthy = True
        self.ready: bool | None = None        # None: ready once a commit is published
        self.triggers: list[str] = []
        self.listeners: list[Callable[[SyncResult], None]] = []
        self.deploys = FakeDeploys()
        # What the status adds about rollouts (gitsync.deploy's snapshot), for the test to set.
        self.deploy: dict = {"live_commit": commit, "rollout": None, "bad_commits": [], "paused": False,
                             "held": None}

    # -- SyncController ---------------------------------------------------------------

    def trigger(self, reason: str) -> None:
        self.triggers.append(reason)

    def status(self) -> Status:
        return Status(
            repo=self.repo, ref=self.ref, tracked_ref=self.tracked_ref, commit=self.commit,
            commit_info=self.commit_info, link=self.link, state=self.state,
            started_at=self.started_at, last_sync_at=self.last_sync_at,
            last_success_at=self.last_success_at, last_error=self.last_error,
            consecutive_failures=self.consecutive_failures, sync_count=self.sync_count,
            history=tuple(self.history), version=self.version,
            deploy={**self.deploy, "paused": self.deploys.paused},
            publish_count=self.publish_count, next_poll_at=self.next_poll_at)

    def is_healthy(self) -> bool:
        return self.healthy

    def is_ready(self) -> bool:
        return self.commit is not None if self.ready is None else self.ready

    def tracks(self, ref: str) -> bool:
        """As the engine: the tracked ref, or any branch while the default is not known."""
        if self.tracked_ref is not None:
            return ref == self.tracked_ref
        return self.ref == "HEAD" and ref.startswith("refs/heads/")

    def add_listener(self, listener: Callable[[SyncResult], None]) -> None:
        self.listeners.append(listener)

    # -- playing a sync ------------------------------------------------------------

    def finish(self, result: str = "published", *, commit: str | None = None,
               subject: str = "a commit", error: str | None = None, trigger: str = "poll",
               duration_ms: int = 120, at: datetime | None = None,
               attempted: str | None = None, author: str = "Test Author") -> SyncResult:
        """One sync cycle ends, recorded as the engine records it; the listeners hear it.
        An error's `attempted` commit is the one it tried (its subject given, as if fetched)."""
        at = at or utc()
        recovered = result != "error" and self.consecutive_failures > 0
        if result == "published":
            self.commit = commit or self.commit
            self.commit_info = CommitInfo(self.commit, subject, author, at.isoformat())
            self.publish_count += 1
            attempted = self.commit
        elif result == "unchanged":
            attempted = self.commit
        if result == "error":
            self.last_error, self.consecutive_failures = error, self.consecutive_failures + 1
            self.state = "failing"
        else:
            self.last_error, self.consecutive_failures = None, 0
            self.last_success_at, self.state = at, "idle"
        if result == "unchanged" and self.commit_info is not None:
            subject, author = self.commit_info.subject, self.commit_info.author
        if attempted is None:
            subject = author = None
        entry = SyncResult(trigger, at, duration_ms, result, self.commit, error, attempted=attempted,
                           subject=subject, author=author, recovered=recovered)
        self.last_sync_at, self.sync_count = at, self.sync_count + 1
        if result != "unchanged" or recovered:   # as the engine: polls that changed nothing are not history
            self.history.insert(0, entry)
        for listener in self.listeners:
            listener(entry)
        return entry

@dataclass
class FakeApi:
    """The real Flask app on a FakeEngine, with a test client."""

    engine: FakeEngine
    app: object
    client: object = field(init=False)

    def __post_init__(self):
        self.client = self.app.test_client()

    def post_webhook(self, headers: dict[str, str], body: bytes):
        return self.client.post("/api/v1/webhook", data=body, headers=headers)


def fake_config(tmp_path: Path, *flags: str, env: dict[str, str | None] | None = None):
    """gitsync's real Config from flags, with the receiver secret and API token on unless
    `env` says otherwise (a None value removes a variable)."""
    environment = {"GITSYNC_RECEIVER_SECRET": SECRET.decode(), "GITSYNC_API_TOKEN": API_TOKEN,
                   **(env or {})}
    environment = {k: v for k, v in environment.items() if v is not None}
    args = ["--repo", REPO_URL, "--root", str(tmp_path / "root"), "--period", "60s",
            "--http-bind", "", *flags]
    return parse_args(args, environment)


@pytest.fixture
def fake_api(tmp_path):
    """`make(*flags, env=..., engine=..., test_config=...)`: the app on a FakeEngine."""
    counter = itertools.count()

    def make(*flags: str, env: dict[str, str | None] | None = None,
             engine: FakeEngine | None = None, test_config: dict | None = None) -> FakeApi:
        engine = engine or FakeEngine()
        config = fake_config(tmp_path / f"fake-{next(counter)}", *flags, env=env)
        return FakeApi(engine, create_app(engine, config, test_config))

    return make


@pytest.fixture
def fake(fake_api) -> FakeApi:
    """The app on a FakeEngine that tracks refs/heads/main and has FIRST_SHA published."""
    return fake_api()
