"""What the engine emits and the errors it raises: plain data, no behaviour.

Every part below the engine raises `SyncError(step, message)`, so a log line or
a status answer names the step that failed ("init", "auth", "fetch", "publish",
...). Git's steps raise `gitsync.git.GitError`, a SyncError that may also say the
sync timeout ran out. The API and the hooks read `SyncResult` and `Status`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .git import CommitInfo


class SyncError(Exception):
    """A step of a sync failed; str() is one line: '<step>: <what went wrong>'."""

    def __init__(self, step: str, message: str):
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message


def utc_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(when: datetime | None) -> str | None:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z") if when else None


@dataclass(frozen=True)
class SyncResult:
    """What one cycle did, or a flip back (trigger "rollback"); listeners (hooks, metrics)
    get one per attempt."""

    trigger: str
    at: datetime
    duration_ms: int
    result: str               # "published", "unchanged" or "error"
    commit: str | None        # the published commit after the cycle
    error: str | None = None
    tree: str | None = None   # the published tree's path, for hooks
    rollout: dict | None = None   # {"result", "reason"} of the publish's rollout (gitsync.deploy)
    # The first success of this process: hooks and git-sync's metrics treat it as a publish
    # even when nothing changed, so a hook lost in a crash runs after the restart.
    first: bool = False
    # Credential fetches this cycle made, e.g. ("askpass", "success"), for the metrics.
    auth_calls: tuple[tuple[str, str], ...] = ()
    # What the cycle tried to publish, so an error row names it rather than the commit still
    # served: the remote head once known, with its subject and author once it is fetched.
    attempted: str | None = None
    subject: str | None = None
    author: str | None = None
    recovered: bool = False   # the first success after failures: it ends an error streak

    @property
    def announces(self) -> bool:
        """Hooks run for this result: a publish, or the first success of the process."""
        return self.published or (self.first and self.commit is not None)

    @property
    def published(self) -> bool:
        return self.result == "published"

    def to_dict(self) -> dict:
        data: dict = {"commit": self.commit, "at": rfc3339(self.at), "trigger": self.trigger,
                "duration_ms": self.duration_ms, "result": self.result}
        if self.error:
            data["error"] = self.error
        if self.rollout:
            data["rollout"] = self.rollout
        if self.attempted:
            data["attempted"] = self.attempted
        if self.subject is not None:
            data["subject"], data["author"] = self.subject, self.author
        if self.recovered:
            data["recovered"] = True
        return data


@dataclass(frozen=True)
class Status:
    """A snapshot of the engine, safe to hand to another thread."""

    repo: str
    ref: str
    tracked_ref: str | None
    commit: str | None
    commit_info: CommitInfo | None
    link: str
    state: str
    started_at: datetime
    last_sync_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    consecutive_failures: int
    sync_count: int
    history: tuple[SyncResult, ...]
    version: str
    deploy: dict = field(default_factory=dict)   # live_commit, rollout, bad_commits, paused, held
    publish_count: int = 0                 # syncs and rollbacks that moved the link
    next_poll_at: datetime | None = None   # when the loop wakes to poll, unless triggered sooner
    app_signal: dict | None = None   # --app-signal: what the last publish's signal did (gitsync.appsignal)

    def to_dict(self) -> dict:
        data = {
            "repo": self.repo, "ref": self.ref, "tracked_ref": self.tracked_ref,
            "commit": self.commit,
            "commit_info": asdict(self.commit_info) if self.commit_info else None,
            "link": self.link, "state": self.state, "started_at": rfc3339(self.started_at),
            "last_sync_at": rfc3339(self.last_sync_at),
            "last_success_at": rfc3339(self.last_success_at),
            "last_error": self.last_error, "consecutive_failures": self.consecutive_failures,
            "sync_count": self.sync_count, "publish_count": self.publish_count,
            "next_poll_at": rfc3339(self.next_poll_at),
            "history": [entry.to_dict() for entry in self.history], "version": self.version,
            **self.deploy,
        }
        if self.app_signal is not None:
            data["app_signal"] = self.app_signal
        return data
