"""The engine's side of rollouts: carry out on the volume what gitsync.rollout decides.

gitsync.rollout follows each publish until the app runs it and decides (live, roll
back, failed, degraded); it keeps its state in <root>/.gitsync/, outside .git, which
a damaged repository loses. This module, called from the sync thread only, holds a
head that is marked bad or paused, begins a rollout after each publish, asks the app
while one runs, flips the link back on a Rollback (the tree rebuilt first if it is
damaged), says which trees must stay, and gives each history row its rollout result.
The API reaches it through `retry`, `set_paused`, `add_listener` and `snapshot`, safe
from any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from .config import STATE_DIR, Config
from .git import Deadline
from .model import SyncError, SyncResult, utc_now
from .publish import Publisher
from .rollout import Rollback, RolloutResult, Rollouts
from .rollout.probes import one_line, short

log = logging.getLogger(__name__)

ROLLOUT_POLL = 0.15   # seconds between questions to the app while a rollout runs
MARKS_KEPT = 200      # history rows whose rollout result is remembered (the engine keeps 50)

RowKey = tuple[str, datetime]   # a history row: its commit and when it started


class Deployer:
    def __init__(self, rollouts: Rollouts | None, publisher: Publisher, config: Config, *,
                 trigger: Callable[[str], None], stopping: Callable[[], bool] = lambda: False):
        """`rollouts` None: publishes are live at once, bad marks and the pause still kept."""
        self.rollouts = rollouts or Rollouts(config.root / STATE_DIR)
        self.ledger = self.rollouts.ledger
        self._publisher = publisher
        self._sync_timeout = config.sync_timeout
        self._trigger = trigger
        self._stopping = stopping
        self._lock = threading.Lock()
        self._head: str | None = None
        self._held: str | None = None
        self._begun: tuple[str, dict] | None = None   # a rollout begun this cycle, its row not made yet
        self._marks: OrderedDict[RowKey, dict] = OrderedDict()
        self._rows: dict[str, RowKey] = {}   # commit -> its newest publish row
        self._rollback_row: RowKey | None = None
        self.ledger.add_listener(self._on_result)

    # -- the sync thread ----------------------------------------------------------------

    def resume(self) -> None:
        """Once at start: a rollout the last run left goes on by its own deadline."""
        self.rollouts.resume()

    def active(self) -> bool:
        return self.rollouts.active()

    def ref_at(self, head: str, published: str | None) -> None:
        """Each cycle: the ref points at `head`; the bad marks of other commits no longer count."""
        self._head = head
        for commit in self.ledger.forget_others(head):
            log.info("rollout: the ref moved to %s; %s is no longer marked bad", short(head), short(commit))
        if head == published:
            self._note_hold(None)

    def choose(self, head: str, published: str | None, published_usable: bool) -> str | None:
        """What to publish: `head`, unless it is marked bad or deploys are paused; then
        nothing, or the published commit again if its tree needs mending."""
        held = None if head == published else self._hold_reason(head)
        self._note_hold(held)
        if held is None:
            return head
        return published if published and not published_usable else None

    def begin(self, commit: str, previous: str | None) -> None:
        """After a publish of a new commit: follow it (live at once without a probe)."""
        if commit == previous:
            return   # the published tree mended in place: nothing new for the app
        self._begun = (commit, {"result": "pending", "reason": None})
        try:
            self.rollouts.begin(commit, previous_live=previous)
        except OSError as err:
            raise SyncError("rollout", f"cannot keep the rollout state: {err}") from err

    def tag(self, outcome: SyncResult) -> SyncResult:
        """The history row of this cycle's publish carries its rollout from now on."""
        begun, self._begun = self._begun, None
        if begun is None or not outcome.published or begun[0] != outcome.commit:
            return outcome
        key = (begun[0], outcome.at)
        with self._lock:
            self._rows[begun[0]] = key
            self._remember(key, begun[1])
        return replace(outcome, rollout=begun[1])

    def follow(self, fetch_commit: Callable[[str, Deadline], object],
               record: Callable[[SyncResult], None]) -> None:
        """Ask the app once; flip back on a Rollback, and `record` the flip's history row
        before the rollout says "rolled_back" (a reader never sees it ahead of the link)."""
        try:
            decision = self.rollouts.poll()
            if isinstance(decision, Rollback):
                self._roll_back(decision, fetch_commit, record)
        except OSError as err:
            log.warning("rollout: cannot keep the rollout state: %s", err)
        # Live, Failed and Degraded are logged and counted by the tracker

    def trees_to_keep(self) -> tuple[frozenset[str], bool]:
        """(commits whose trees must stay, whether the app reports what it runs: then
        every other old tree may go at once)."""
        return self.rollouts.protected_commits(), self.rollouts.app_reports()

    def _roll_back(self, decision: Rollback, fetch_commit: Callable[[str, Deadline], object],
                   record: Callable[[SyncResult], None]) -> None:
        started, at, deadline = time.monotonic(), utc_now(), Deadline(self._sync_timeout)
        try:
            fetch_commit(decision.to, deadline)   # a re-initialised repository may lack it
            self._publisher.publish(decision.to, deadline)   # rebuilds a damaged tree before the flip
        except (SyncError, OSError) as err:
            if self._stopping():   # git was stopped, not refused: the rollback stays due for the next start
                log.warning("rollout: stopping before %s is rolled back; the next start does it",
                            short(decision.bad))
                return
            log.error("rollout: rolling %s back to %s failed: %s", short(decision.bad),
                      short(decision.to), err)
            error = f"rollback: {one_line(str(err))}"
            mark = {"result": "failed", "reason": error}
            record(self._row(at, started, "error", self._publisher.published_sha(), mark, error))
            self.rollouts.rollback_failed(decision.bad, str(err))
            return
        mark = {"result": "rolled_back", "reason": f"{short(decision.bad)} failed: {decision.reason}"}
        record(self._row(at, started, "published", decision.to, mark))
        try:
            self.rollouts.rolled_back(decision.bad)
        except OSError as err:   # the link is back all the same; a restart flips it again, harmlessly
            log.warning("rollout: cannot keep the rollout state: %s", err)

    def _row(self, at: datetime, started: float, result: str, commit: str | None, mark: dict,
             error: str | None = None) -> SyncResult:
        row = SyncResult(trigger="rollback", at=at, duration_ms=int((time.monotonic() - started) * 1000),
                         result=result, commit=commit, error=error, rollout=mark,
                         tree=str(self._publisher.tree(commit)) if commit else None)
        with self._lock:
            self._rollback_row = (commit or "", at)
            self._remember(self._rollback_row, mark)
        return row

    # -- holding a head back ------------------------------------------------------------

    def _hold_reason(self, head: str) -> str | None:
        with self.ledger.lock:
            mark = self.ledger.kept.bad.get(head)
            paused = self.ledger.kept.paused
        if mark is not None:
            return (f"ref at {short(head)} is marked bad: {mark.reason}; "
                    "POST /api/v1/retry to try it again")
        if paused:
            return f"deploys are paused: {short(head)} waits; POST /api/v1/resume to publish it"
        return None

    def _note_hold(self, held: str | None) -> None:
        if held != self._held and held is not None:
            log.warning("not publishing: %s", held)
        self._held = held

    # -- history rows -------------------------------------------------------------------

    def _on_result(self, result: RolloutResult) -> None:
        """A rollout ended: its publish's row shows how (a degraded one: the rollback's row)."""
        mark = {"result": result.result, "reason": result.reason}
        if result.result == "superseded":
            log.info("rollout: %s superseded: %s", short(result.commit), result.reason)
        if self._begun is not None and self._begun[0] == result.commit:
            self._begun = (result.commit, mark)   # live at once (no probe): before its row exists
            return
        with self._lock:
            key = self._rollback_row if result.result == "degraded" else self._rows.get(result.commit)
            if key is not None:
                self._remember(key, mark)

    def _remember(self, key: RowKey, mark: dict) -> None:
        self._marks[key] = mark
        self._marks.move_to_end(key)
        while len(self._marks) > MARKS_KEPT:
            self._marks.popitem(last=False)

    def annotate(self, history: tuple[SyncResult, ...]) -> tuple[SyncResult, ...]:
        """History rows with the newest rollout result of each."""
        with self._lock:
            marks = dict(self._marks)
        return tuple(replace(row, rollout=marks[(row.commit or "", row.at)])
                     if (row.commit or "", row.at) in marks else row for row in history)

    # -- the API's side, from any thread --------------------------------------------------

    def snapshot(self) -> dict:
        """What /api/v1/status adds: live_commit, rollout, bad_commits, paused, held."""
        return {**self.ledger.snapshot(), "held": self._held}

    def retry(self) -> list[str]:
        """POST /api/v1/retry: clear the bad mark of the ref's commit, then sync."""
        head = self._head
        if head is not None:
            cleared = [head] if self.ledger.clear(head) else []
        else:   # no cycle has seen the ref yet: every mark is the ref's (forget_others)
            cleared = [mark["commit"] for mark in self.ledger.snapshot()["bad_commits"]
                       if self.ledger.clear(mark["commit"])]
        for commit in cleared:
            log.info("rollout: %s is no longer marked bad (retry)", short(commit))
        self._trigger("manual")
        return cleared

    def set_paused(self, paused: bool) -> None:
        """POST /api/v1/pause and /resume; a resume publishes what waits at once."""
        self.ledger.set_paused(paused)
        if not paused:
            self._trigger("manual")

    def add_listener(self, listener: Callable[[RolloutResult], None]) -> None:
        self.ledger.add_listener(listener)
