"""What rollouts keep on the volume, so a restarted sidecar carries on where it was.

One small JSON file, `<directory>/rollout.json`, always replaced whole (temp file,
fsync, rename): the last live commit, the rollout in progress with its deadline, the
bad commits with their reasons, and the pause flag. Times are RFC 3339 UTC, so the
file reads well and a deadline survives a restart as the wall-clock time it was.

The Ledger holds it behind one lock: the tracker changes it from the sync thread, the
HTTP API reads it (snapshot) and edits it (retry clears a mark, pause, resume) from its
own threads. It also counts finished rollouts and tells listeners (metrics, history).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "rollout.json"
FORMAT = 1
RESULTS = ("live", "rolled_back", "failed", "degraded", "superseded")


def rfc3339(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    when = datetime.fromtimestamp(seconds, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_rfc3339(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


@dataclass
class Rollout:
    """One publish followed until the app runs it (or a rollback after it)."""

    commit: str
    state: str                       # pending, live, failed, rolled_back, degraded
    started_at: float
    deadline: float | None           # when the commit being watched must be live
    target: str | None = None        # the last live commit at the publish: where a rollback goes
    reason: str | None = None
    finished_at: float | None = None
    watching: str | None = None      # the commit probed now: this one, or `target` after a rollback
    rollback_due: bool = False       # failed; the engine has not confirmed the flip back yet

    def to_json(self) -> dict:
        data = asdict(self)
        for key in ("started_at", "deadline", "finished_at"):
            data[key] = rfc3339(data[key])
        return data

    @classmethod
    def from_json(cls, data: dict) -> Rollout:
        values = dict(data)
        for key in ("started_at", "deadline", "finished_at"):
            values[key] = from_rfc3339(values.get(key))
        return cls(**{key: values[key] for key in cls.__dataclass_fields__ if key in values})


@dataclass(frozen=True)
class RolloutResult:
    """One finished rollout, for metrics and history: `result` is one of RESULTS."""

    commit: str
    result: str
    reason: str | None
    duration_seconds: float


@dataclass
class BadMark:
    commit: str
    reason: str
    at: str   # RFC 3339


@dataclass
class Kept:
    """Everything in the file; the tracker changes it under its lock and saves it whole."""

    live_commit: str | None = None
    paused: bool = False
    rollout: Rollout | None = None
    bad: dict[str, BadMark] = field(default_factory=dict)

    def mark_bad(self, commit: str, reason: str, now: float) -> None:
        self.bad[commit] = BadMark(commit, reason, rfc3339(now) or "")

    def to_json(self) -> dict:
        return {"format": FORMAT, "live_commit": self.live_commit, "paused": self.paused,
                "rollout": self.rollout.to_json() if self.rollout else None,
                "bad_commits": [asdict(mark) for mark in self.bad.values()]}

    @classmethod
    def from_json(cls, data: dict) -> Kept:
        rollout = data.get("rollout")
        marks = [BadMark(**mark) for mark in data.get("bad_commits", [])]
        return cls(live_commit=data.get("live_commit"), paused=bool(data.get("paused")),
                   rollout=Rollout.from_json(rollout) if rollout else None,
                   bad={mark.commit: mark for mark in marks})


class Store:
    def __init__(self, directory: Path):
        self.path = Path(directory) / FILE_NAME

    def load(self) -> Kept:
        """What was kept; a missing file is a first start, a damaged one is set aside."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return Kept()
        try:
            return Kept.from_json(json.loads(text))
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            aside = self.path.with_name(f"{FILE_NAME}.damaged")
            os.replace(self.path, aside)
            log.warning("rollout: %s is damaged (%s); starting afresh, the old file is %s",
                        self.path, type(err).__name__, aside.name)
            return Kept()

    def save(self, kept: Kept) -> None:
        """Readers (and a restart) see the old file or the new, never half of one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(f".{FILE_NAME}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with open(temp, "w") as out:
                json.dump(kept.to_json(), out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        finally:
            temp.unlink(missing_ok=True)


class Ledger:
    def __init__(self, directory: Path, clock: Callable[[], float]):
        self.lock = threading.RLock()
        self.kept = Kept()
        self._clock = clock
        self._store = Store(directory)
        self._events: list[RolloutResult] = []
        self._listeners: list[Callable[[RolloutResult], None]] = []
        self._totals = dict.fromkeys(RESULTS, 0)

    def load(self) -> Kept:
        with self.lock:
            self.kept = self._store.load()
            return self.kept

    @contextmanager
    def changing(self) -> Iterator[Kept]:
        """Change what is kept under the lock and save it; then tell the listeners."""
        with self.lock:
            before = self.kept.to_json()
            yield self.kept
            if self.kept.to_json() != before:   # a poll that changed nothing writes nothing
                self._store.save(self.kept)
            events, self._events = self._events, []
            for event in events:
                self._totals[event.result] += 1
        for event in events:
            for listener in self._listeners:
                listener(event)

    def record(self, result: RolloutResult) -> None:
        """Inside changing(): counted and told once the change is saved."""
        self._events.append(result)

    def add_listener(self, listener: Callable[[RolloutResult], None]) -> None:
        """`listener(result)` after each finished rollout, outside the lock."""
        self._listeners.append(listener)

    def totals(self) -> dict[str, int]:
        """Finished rollouts by result since start: gitsync_rollouts_total{result}."""
        with self.lock:
            return dict(self._totals)

    def is_bad(self, commit: str) -> bool:
        with self.lock:
            return commit in self.kept.bad

    def mark_bad(self, commit: str, reason: str) -> None:
        with self.changing() as kept:
            kept.mark_bad(commit, reason, self._clock())

    def clear(self, commit: str) -> bool:
        """Forget the bad mark of `commit` (POST /api/v1/retry); True if there was one."""
        with self.changing() as kept:
            return kept.bad.pop(commit, None) is not None

    def forget_others(self, head: str) -> list[str]:
        """The ref points at `head`: the marks of other commits no longer matter.

        A mark holds until the ref moves; should the ref come back to an old commit
        later, that is a new push of it, and it is tried again.
        """
        with self.changing() as kept:
            gone = [commit for commit in kept.bad if commit != head]
            for commit in gone:
                del kept.bad[commit]
            return gone

    @property
    def paused(self) -> bool:
        with self.lock:
            return self.kept.paused

    def set_paused(self, paused: bool) -> None:
        with self.changing() as kept:
            kept.paused = paused
        log.info("rollout: deploys %s", "paused" if paused else "resumed")

    def snapshot(self) -> dict:
        """What /api/v1/status adds: live_commit, rollout, bad_commits, paused."""
        with self.lock:
            kept, rollout = self.kept, self.kept.rollout
            shown = None
            if rollout:
                shown = {"commit": rollout.commit, "state": rollout.state, "reason": rollout.reason,
                         "started_at": rfc3339(rollout.started_at),
                         "finished_at": rfc3339(rollout.finished_at)}
            return {"live_commit": kept.live_commit, "rollout": shown, "paused": kept.paused,
                    "bad_commits": [{"commit": m.commit, "reason": m.reason, "at": m.at}
                                    for m in kept.bad.values()]}
