"""What happens after a sync: files other containers watch, and notifications.

Each hook is a listener the engine calls with every SyncResult. Quick ones act
inline; slow ones hand the newest hash to a worker thread of their own.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from .engine import SyncResult

log = logging.getLogger(__name__)


def write_atomically(path: Path, text: str) -> None:
    """Readers of `path` see the old text or the new, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    temp.write_text(text)
    os.replace(temp, path)


class TouchFile:
    """--touch-file: its mtime moves on each publish, for watchers that poll a file."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, result: SyncResult) -> None:
        if not result.published:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        os.utime(self.path)


class ErrorFile:
    """--error-file: holds the last error while syncs fail; gone after a success."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, result: SyncResult) -> None:
        if result.result == "error":
            write_atomically(self.path, f"{result.error}\n")
        else:
            self.path.unlink(missing_ok=True)
