"""The shared test helpers keep their promises: tools skip or fail, the fake engine
speaks the whole interface the API uses, waits and process groups end as they say."""

from __future__ import annotations

import inspect
import sys

import pytest

from support.fake_engine import FakeEngine
from support.processes import alive, group_members, running
from support.tools import require_tool
from support.waiting import stays, wait_for
from webhook import SyncController

ABSENT = "gitsync-test-no-such-program"


def test_a_missing_tool_skips_with_the_install_command_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="sshd not found.*apt-get install openssh-server"):
        _require_missing("sshd", monkeypatch)


def test_a_missing_tool_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"{ABSENT} not found"):
        require_tool(ABSENT)


def test_a_present_tool_is_found_with_its_absolute_path():
    assert require_tool("git").startswith("/")


def _require_missing(name: str, monkeypatch) -> str:
    """require_tool(name) on a machine where `name` is nowhere to be found."""
    monkeypatch.setattr("support.tools.find_tool", lambda _name: None)
    return require_tool(name)


def test_the_fake_engine_has_every_method_the_api_may_call():
    wanted = {name for name, _ in inspect.getmembers(SyncController, inspect.isfunction)
              if not name.startswith("_")}
    assert wanted <= {name for name in dir(FakeEngine) if not name.startswith("_")}
    for name in wanted:
        expected = inspect.signature(getattr(SyncController, name)).parameters
        assert list(inspect.signature(getattr(FakeEngine, name)).parameters) == list(expected), name


def test_the_fake_engine_records_triggers_and_plays_a_sync_to_its_listeners():
    engine, heard = FakeEngine(), []
    engine.add_listener(heard.append)
    engine.trigger("webhook")
    entry = engine.finish("published", commit="b2" * 20, trigger="webhook")
    assert engine.triggers == ["webhook"] and heard == [entry]
    status = engine.status()
    assert status.commit == "b2" * 20 and status.history[0] is entry and status.state == "idle"
    engine.finish("error", error="fetch: refused")
    assert engine.status().state == "failing" and engine.status().consecutive_failures == 1


def test_wait_for_returns_the_value_and_names_what_it_waited_for():
    assert wait_for(lambda: 42, message="the answer") == 42
    with pytest.raises(AssertionError, match="(?s)timed out after 0.1s waiting for nothing.*the log"):
        wait_for(lambda: None, 0.1, "nothing", detail=lambda: "the log")


def test_stays_fails_as_soon_as_the_condition_breaks():
    calls = iter([True, True, False])
    assert not stays(lambda: next(calls), 30)
    assert stays(lambda: True, 0.05)


def test_running_stops_the_whole_group_however_the_block_ends():
    child = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"
    with pytest.raises(RuntimeError):
        with running([sys.executable, "-c", child]) as proc:
            wait_for(lambda: len(group_members(proc.pid)) >= 2, message="the child and grandchild")
            members = group_members(proc.pid)
            raise RuntimeError("the test body failed")
    assert not any(alive(pid) for pid in members)
