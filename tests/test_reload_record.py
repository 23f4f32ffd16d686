"""The record of gitsync-reload's commands: restart back-off and why the last attempt failed."""

from __future__ import annotations

import subprocess
import sys
import time

from gitsync.reload.child import Child
from gitsync.reload.record import BACKOFF_FIRST, BACKOFF_MAX, HEALTHY_RUN, Backoff, Record


def test_backoff_doubles_up_to_the_maximum_and_resets_after_a_healthy_run():
    backoff = Backoff()
    delays = [backoff.schedule(ran_for=0.0) for _ in range(10)]
    assert delays[:3] == [BACKOFF_FIRST, BACKOFF_FIRST * 2, BACKOFF_FIRST * 4] and delays[-1] == BACKOFF_MAX
    assert backoff.schedule(ran_for=HEALTHY_RUN) == BACKOFF_FIRST
    assert backoff.due is not None and not backoff.is_due()
    backoff.due = time.monotonic()
    assert backoff.is_due()


def test_the_record_says_how_the_last_attempt_failed(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"])
    process.wait(timeout=30)
    record = Record()
    record.ended_on_its_own(Child(process, str(tmp_path / "abc"), time.monotonic()), 143)
    assert (record.status, record.failure) == (143, "killed by SIGTERM")
    assert record.snapshot()["attempt"] == {"commit": "abc", "state": "failed", "reason": "killed by SIGTERM"}
    record.could_not_start(FileNotFoundError(2, "No such file or directory"), "def")
    assert (record.status, record.failure) == (127, "cannot start: No such file or directory")
    assert record.children() == [] and record.state() == "failed"


def test_a_retry_of_a_failed_commit_stays_failed_until_it_is_ready(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=30)
    record = Record()
    record.attempt_starting("abc")
    assert record.snapshot()["attempt"] == {"commit": "abc", "state": "starting", "reason": None}
    record.attempt_failed("abc", "prepare failed: npm ERR! missing script", output="npm ERR! missing script")
    record.attempt_starting("abc")  # the retry after the back-off
    assert record.state() == "failed" and record.attempt.output == "npm ERR! missing script"
    record.serving = child = Child(process, str(tmp_path / "abc"), time.monotonic())
    record.became_ready(child)
    snapshot = record.snapshot()
    assert (snapshot["state"], snapshot["commit"], snapshot["attempt"]) == ("ready", "abc", None)
    record.attempt_starting("def")
    assert record.state() == "starting"
    record.back_to_serving()  # the link moved back to abc
    assert record.state() == "ready" and record.attempt is None
    record.stopping = True
    assert record.state() == "stopped"


def test_a_step_before_the_command_records_its_failed_attempt(tmp_path):
    record = Record(tree=str(tmp_path / "old"))
    record.attempt_failed("new", "prepare failed: ERROR: No matching distribution")
    assert record.failure == "prepare failed: ERROR: No matching distribution"
    assert record.snapshot()["attempt"] == {"commit": "new", "state": "failed",
                                            "reason": "prepare failed: ERROR: No matching distribution"}
