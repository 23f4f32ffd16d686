"""What a rollout keeps on the volume, so a restarted sidecar carries on where it was.

One small JSON file, `<directory>/rollout.json`, always replaced whole (temp file,
fsync, rename): the last live commit, the rollout in progress with its deadline, the
bad commits with their reasons, and the pause flag. Times are RFC 3339 UTC, so the
file reads well and a deadline survives a restart as the wall-clock time it was.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "rollout.json"
FORMAT = 1


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
