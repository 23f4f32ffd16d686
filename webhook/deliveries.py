"""The last few webhook deliveries as the receiver answered them, for the status page.

forges.DeliveryLog remembers verified ids so a redelivery syncs once; this keeps what a
person checks when a push did not deploy: did the forge call, when, and what it was
told. Rejected deliveries are kept too, since a wrong secret is the commonest setup
mistake; a flood of them can push real ones off this short list, never stop a sync.
Nothing from an unverified request is kept but the forge gitsync took it for.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from gitsync.model import rfc3339, utc_now

RECENT_DELIVERIES = 10
MAX_REF = 200   # a ref is the payload's: keep a line of it, not a page


@dataclass(frozen=True)
class DeliveryAnswer:
    at: str
    forge: str
    event: str | None     # the forge's event name, for a verified delivery
    result: str           # the receiver's result label, as in gitsync_webhook_requests_total
    status: int
    ref: str | None       # the pushed ref, for a push that concerned one

    def to_dict(self) -> dict:
        return {"at": self.at, "forge": self.forge, "event": self.event, "result": self.result,
                "status": self.status, "ref": self.ref}


class RecentDeliveries:
    def __init__(self, size: int = RECENT_DELIVERIES) -> None:
        self._answers: deque[DeliveryAnswer] = deque(maxlen=size)
        self._lock = threading.Lock()

    def record(self, forge: str, result: str, status: int, *, event: str | None = None,
               ref: str | None = None) -> None:
        answer = DeliveryAnswer(rfc3339(utc_now()) or "", forge, event, result, status,
                                ref[:MAX_REF] if ref else None)
        with self._lock:
            self._answers.append(answer)

    def newest_first(self) -> list[dict]:
        with self._lock:
            answers = list(self._answers)
        return [answer.to_dict() for answer in reversed(answers)]
