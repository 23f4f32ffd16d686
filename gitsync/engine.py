"""One sync cycle, the loop that runs it, and the status others read.

The engine knows git and the layout; it knows nothing of HTTP. The API, the
CLI and the hooks drive it through four calls: trigger(), status(), stop() and
add_listener(), and rollouts through `deploys` (gitsync.deploy: retry, pause).
Triggers go through a SimpleQueue, whose put() is safe even from a signal
handler, and a burst of them is folded into one cycle.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Protocol

from . import recover
from .config import Config
from .deploy import ROLLOUT_POLL, Deployer
from .git import CommitInfo, Deadline, GitError, GitRunner, RemoteHead, is_full_sha, redact_url
from .model import Status, SyncError, SyncResult, utc_now
from .publish import Publisher
from .repository import Repository

log = logging.getLogger(__name__)

HISTORY_SIZE = 50
DEPTH_KEY = recover.DEPTH_KEY
_STOP = object()
# When several triggers arrive together, the cycle is credited to the most deliberate one.
_TRIGGER_RANK = {"webhook": 0, "manual": 1, "signal": 2, "start": 3, "poll": 4}


class CredentialSource(Protocol):
    """Gives git its credentials afresh before each sync (a rotated token just works)."""

    def git_environment(self) -> tuple[dict[str, str], list[str]]:
        """(extra environment for git, secret strings to scrub from messages)."""

    def remote_url(self) -> str:
        """The repository URL for git's argv, with any credentials taken out of it."""

    def drain_calls(self) -> tuple[tuple[str, str], ...]:
        """The credential fetches made since the last call, e.g. ("askpass", "error")."""


class Engine:
    def __init__(self, config: Config, repo: Repository, publisher: Publisher,
                 credentials: CredentialSource | None = None, rollouts=None):
        self.config = config
        self.repo = repo
        self.publisher = publisher
        self._base_runner: GitRunner = repo.runner
        self._credentials = credentials
        self._url = credentials.remote_url() if credentials is not None else config.repo
        self._triggers: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._listeners: list[Callable[[SyncResult], None]] = []
        self._lock = threading.Lock()
        self._state = "starting"
        self._started_at = utc_now()
        self._last_attempt_end = time.monotonic()
        self._last_sync_at: datetime | None = None
        self._last_success_at: datetime | None = None
        self._last_error: str | None = None
        self._failures = 0
        self._sync_count = 0
        self._publish_count = 0
        self._next_poll_at: datetime | None = None
        # This cycle's target (remote head, then the commit chosen) and its info once fetched.
        self._attempt: tuple[str | None, CommitInfo | None] = (None, None)
        self._commit: str | None = None
        self._commit_info: CommitInfo | None = None
        self._tracked_ref: str | None = None if config.ref == "HEAD" else _full_ref_guess(config.ref)
        self._history: deque[SyncResult] = deque(maxlen=HISTORY_SIZE)
        self._published_tree_damaged = False
        self._depth_changed = False  # --depth differs from the last fetch's: fetch even if unchanged
        self._depth_recorded = False  # DEPTH_KEY holds this run's --depth
        self.deploys = Deployer(rollouts, publisher, config, trigger=self.trigger,  # gitsync.deploy
                                stopping=self._stopping.is_set)
        self._succeeded = False  # a sync of this process succeeded: --init-* no longer apply

    # -- the interface the API, CLI and hooks use ----------------------------------

    def trigger(self, reason: str) -> None:
        """Ask for a sync now; safe from any thread and from a signal handler."""
        self._triggers.put(reason)

    def stop(self) -> None:
        """End the loop soon: a running git is killed, the published tree stays as it is."""
        self._stopping.set()
        self._triggers.put(_STOP)
        self._base_runner.cancel()

    def wait_for_git(self, timeout: float) -> bool:
        """After stop(): True once every git the engine started has ended."""
        return self._base_runner.wait_until_idle(timeout)

    def add_listener(self, listener: Callable[[SyncResult], None]) -> None:
        self._listeners.append(listener)

    def status(self) -> Status:
        with self._lock:
            return Status(
                repo=redact_url(self.config.repo), ref=self.config.ref,
                tracked_ref=self._tracked_ref, commit=self._commit, commit_info=self._commit_info,
                link=str(self.config.link), state=self._state, started_at=self._started_at,
                last_sync_at=self._last_sync_at, last_success_at=self._last_success_at,
                last_error=self._last_error, consecutive_failures=self._failures,
                sync_count=self._sync_count, version=self.config.version,
                history=self.deploys.annotate(tuple(reversed(self._history))),
                deploy=self.deploys.snapshot(), publish_count=self._publish_count,
                next_poll_at=self._next_poll_at)

    def is_healthy(self) -> bool:
        """Making progress: an attempt ended lately, and failures are within budget."""
        with self._lock:
            quiet_for = time.monotonic() - self._last_attempt_end
            failures = self._failures
        stuck = quiet_for > self.config.period + self.config.sync_timeout
        over_budget = self.config.max_failures >= 0 and failures > self.config.max_failures
        return not stuck and not over_budget

    def is_ready(self) -> bool:
        with self._lock:
            return self._commit is not None

    def tracks(self, ref: str) -> bool:
        """Whether a push to the full ref name `ref` concerns the ref we publish."""
        with self._lock:
            tracked = self._tracked_ref
        if tracked is not None:
            return ref == tracked
        if self.config.ref == "HEAD":
            return ref.startswith("refs/heads/")   # default branch not learned yet
        return False

    # -- the loop -------------------------------------------------------------------

    def run(self) -> int:
        """Sync until stopped; return the process exit status."""
        try:
            self.prepare()
        except (SyncError, OSError) as err:
            log.error("cannot prepare %s: %s", self.config.root, err)
            self._set_state("failing", error=str(err))
            return 1
        reason: str | None = "start"
        while not self._stopping.is_set():
            result = self.sync_once(reason or "poll")
            if self._stopping.is_set():
                break
            if self.config.one_time:
                return 0 if result.result != "error" else 1
            if result.result == "error" and self._failure_budget_spent():
                log.error("%d consecutive sync failures (allowed: %d); exiting",
                          self._failures, self.config.max_failures)
                return 1
            reason = self._next_trigger()
            if reason is None:
                break
        self._set_state("stopped")
        return 0

    def _next_trigger(self) -> str | None:
        """Wait for a trigger or the period's end; while a rollout runs, ask the app meanwhile."""
        period = self.config.period if self._succeeded else self.config.init_period
        due = time.monotonic() + period
        with self._lock:
            self._next_poll_at = utc_now() + timedelta(seconds=period)
        while True:
            left = max(0.0, due - time.monotonic())
            reason = self._wait_for_trigger(min(left, ROLLOUT_POLL) if self.deploys.active() else left)
            if reason != "poll" or time.monotonic() >= due:
                return reason
            self._follow_rollout()

    def _wait_for_trigger(self, timeout: float) -> str | None:
        """Block until a trigger or the period ends; fold a burst into one reason."""
        try:
            first = self._triggers.get(timeout=timeout)
        except queue.Empty:
            return "poll"
        reasons = [first]
        while True:
            try:
                reasons.append(self._triggers.get_nowait())
            except queue.Empty:
                break
        if _STOP in reasons or self._stopping.is_set():
            return None
        return min(reasons, key=lambda r: _TRIGGER_RANK.get(r, 9))

    def _failure_budget_spent(self) -> bool:
        allowed = self.config.max_failures
        if not self._succeeded and self.config.init_max_failures is not None:
            allowed = self.config.init_max_failures
        return allowed >= 0 and self._failures > allowed

    # -- start-up -------------------------------------------------------------------

    def prepare(self) -> recover.Recovery:
        """Make <root> usable again after any earlier run, however it ended (gitsync.recover)."""
        found = recover.recover(self.config, self.repo, self.publisher)
        self._depth_changed = found.depth_changed
        self._published_tree_damaged = found.published_damaged
        if found.published is not None:
            self._record_published(found.published)
        self.deploys.resume()
        return found

    def _reinit_repo(self) -> None:
        self.repo.reinit()
        recover.apply_sparse(self.config, self.repo)
        self._depth_recorded = False

    # -- one cycle ------------------------------------------------------------------

    def sync_once(self, trigger: str) -> SyncResult:
        started, at = time.monotonic(), utc_now()
        self._set_state("syncing")
        self._attempt = (None, None)
        try:
            self._use_fresh_credentials()
            published = self._sync(Deadline(self.config.sync_timeout))
            result = "published" if published else "unchanged"
            error = None
        except SyncError as err:
            result, error = "error", str(err)
        first = result != "error" and not self._succeeded
        self._succeeded = self._succeeded or first
        outcome = SyncResult(trigger=trigger, at=at,
                             duration_ms=int((time.monotonic() - started) * 1000),
                             result=result, commit=self._commit, error=error,
                             tree=str(self.publisher.tree(self._commit)) if self._commit else None,
                             first=first, auth_calls=self._drain_auth_calls(),
                             recovered=result != "error" and self._failures > 0,
                             **self._attempt_fields())
        outcome = self.deploys.tag(outcome)
        self._record(outcome)
        self._log(outcome)
        self._notify(outcome)
        self._follow_rollout()   # once a cycle, before housekeeping: which trees the app runs
        self._housekeep()
        with self._lock:
            self._last_attempt_end = time.monotonic()
        return outcome

    def _sync(self, deadline: Deadline) -> bool:
        """Publish the remote's newest commit of the ref; False when nothing changed."""
        head = self._remote_head(deadline)
        self._attempt = (head.sha, None)
        current = self.publisher.published_sha()
        self.deploys.ref_at(head.sha, current)
        if head.sha == current and self._current_tree_is_usable():
            self._apply_depth_change(head, deadline)
            return False
        fetched = self._fetch_with_recovery(head, deadline)
        sha = self.deploys.choose(fetched, current, self._current_tree_is_usable())   # bad or paused: None
        if sha is None or (sha == current and self._current_tree_is_usable()):
            return False
        if sha != fetched:   # held, and the published tree needs mending: a re-cloned .git lacks it
            self._fetch(RemoteHead(sha, None), deadline)
        info = self._read_commit_info(sha)   # before the publish, so a failed one names its commit
        self._attempt = (sha, info)
        self.publisher.publish(sha, deadline)
        self._published_tree_damaged = False
        self.deploys.begin(sha, current)
        self._record_published(sha, info)
        return True

    def _attempt_fields(self) -> dict:
        """The history row's view of what this cycle tried: no git call, only what it learnt."""
        sha, info = self._attempt
        if info is None and sha is not None and sha == self._commit:
            info = self._commit_info   # unchanged: the published commit's info is at hand
        if info is None or info.sha != sha:
            return {"attempted": sha}
        return {"attempted": sha, "subject": info.subject, "author": info.author}

    def _current_tree_is_usable(self) -> bool:
        current = self.publisher.published_sha()
        return (current is not None and not self._published_tree_damaged
                and self.publisher.tree_exists(current)
                and self.publisher.tree_head_matches(current))   # HEAD moved in place: rebuild

    def _remote_head(self, deadline: Deadline) -> RemoteHead:
        if is_full_sha(self.config.ref):
            return RemoteHead(sha=self.config.ref, ref=None)
        head = self.repo.ls_remote(self._url, self.config.ref, deadline)
        with self._lock:
            self._tracked_ref = head.ref
        return head

    def _fetch_with_recovery(self, head: RemoteHead, deadline: Deadline) -> str:
        try:
            return self._fetch(head, deadline)
        except GitError as err:
            if err.timed_out or self.repo.is_healthy(deadline):
                raise
            log.warning("fetch failed on a damaged repository (%s); starting it again", err)
            self._reinit_repo()
            return self._fetch(head, deadline)

    def _fetch(self, head: RemoteHead, deadline: Deadline) -> str:
        if head.ref is None and self.repo.has_commit(head.sha) and not self._depth_changed:
            return head.sha  # a pinned SHA we have: nothing to fetch
        sha = self.repo.fetch(self._url, head.ref or head.sha, self.config.depth, deadline)
        self._note_depth()
        return head.sha if head.ref is None else sha

    def _apply_depth_change(self, head: RemoteHead, deadline: Deadline) -> None:
        """A --depth changed across a restart reshapes the history of the published commit
        now, not at the next commit: 0 fetches all of it, N makes it N commits deep."""
        if not self._depth_changed:
            return
        log.info("--depth is now %s; fetching %s again to match", self.config.depth, head.sha[:12])
        self._fetch(head, deadline)

    def _note_depth(self) -> None:
        if not self._depth_recorded:  # once a run: the first fetch, or a fresh repository's
            self.repo.set_config(DEPTH_KEY, str(self.config.depth))
            self._depth_recorded = True
        self._depth_changed = False

    def _drain_auth_calls(self) -> tuple[tuple[str, str], ...]:
        return self._credentials.drain_calls() if self._credentials is not None else ()

    def _use_fresh_credentials(self) -> None:
        if self._credentials is None:
            return
        env, secrets = self._credentials.git_environment()
        self.repo.runner = self._base_runner.with_env(env, secrets)

    def _housekeep(self) -> None:
        """Remove trees past their stale time, let git drop their objects, ready the next tree."""
        if self._stopping.is_set():
            return
        try:
            self.publisher.discard_strays()
            keep, at_once = self.deploys.trees_to_keep()
            if self.publisher.remove_stale_trees(keep, at_once=at_once):
                self.repo.collect_garbage()
            if not self.publisher.spare_is_ready():
                self.publisher.prepare_spare()
        except (SyncError, OSError) as err:
            log.warning("housekeeping after the sync failed: %s", err)

    def _follow_rollout(self) -> None:
        """Ask the app how the rollout goes; gitsync.deploy flips back if it must."""
        self.deploys.follow(lambda sha, deadline: self._fetch(RemoteHead(sha, None), deadline),
                            self._record_flip)

    def _record_flip(self, row: SyncResult) -> None:
        """A flip back is a history row of its own (trigger "rollback")."""
        if row.published and row.commit:
            self._published_tree_damaged = False
            self._record_published(row.commit)
            self._attempt = (row.commit, self._commit_info)
            row = replace(row, **self._attempt_fields())
        with self._lock:
            self._history.append(row)
            self._publish_count += row.published
        self._notify(row)

    # -- bookkeeping ------------------------------------------------------------------

    def _record_published(self, sha: str, info: CommitInfo | None = None) -> None:
        info = info if info is not None else self._read_commit_info(sha)
        with self._lock:
            self._commit, self._commit_info = sha, info

    def _read_commit_info(self, sha: str) -> CommitInfo | None:
        try:
            return self.repo.commit_info(sha)
        except GitError:
            return None

    def _record(self, outcome: SyncResult) -> None:
        with self._lock:
            self._last_attempt_end = time.monotonic()
            self._last_sync_at = outcome.at
            self._sync_count += 1
            if outcome.result == "error":
                self._failures += 1
                self._last_error = outcome.error
                self._state = "failing"
            else:
                self._failures = 0
                self._last_error = None
                self._last_success_at = outcome.at
                self._state = "idle"
            self._publish_count += outcome.published
            if outcome.result != "unchanged" or outcome.recovered:   # a row ends the error streak
                self._history.append(outcome)

    def _set_state(self, state: str, error: str | None = None) -> None:
        with self._lock:
            self._state = state
            self._next_poll_at = None   # syncing or stopped: no poll is waiting
            if error:
                self._last_error = error

    def _log(self, outcome: SyncResult) -> None:
        if outcome.result == "error":
            log.error("sync failed (trigger=%s, %d ms, %d in a row): %s", outcome.trigger,
                      outcome.duration_ms, self._failures, outcome.error)
        elif outcome.published:
            log.info("sync published %s (trigger=%s, %d ms)", outcome.commit, outcome.trigger,
                     outcome.duration_ms)
        else:
            level = logging.DEBUG if outcome.trigger == "poll" else logging.INFO
            log.log(level, "sync unchanged at %s (trigger=%s, %d ms)", outcome.commit,
                    outcome.trigger, outcome.duration_ms)

    def _notify(self, outcome: SyncResult) -> None:
        for listener in self._listeners:
            try:
                listener(outcome)
            except Exception:   # a broken listener must not stop syncing; say which one
                log.exception("listener %r failed", listener)


def _full_ref_guess(ref: str) -> str | None:
    """Before the first ls-remote, the full name a push of `ref` would carry."""
    if is_full_sha(ref):
        return None
    return ref if ref.startswith("refs/") else f"refs/heads/{ref}"
