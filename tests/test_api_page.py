"""The status page in a real headless Chromium, driven over WebDriver by chromedriver.

Debian's `chromium` and `chromium-driver` packages provide both (.ci/run installs
them). The page must show the published commit, and then follow a new publish
by itself, without a reload, through its script (under its own CSP).
"""

from __future__ import annotations

import base64
import subprocess

import pytest
import requests

from support.api import FORGE_BY_NAME
from support.fake_engine import FakeEngine
from support.ports import free_port
from support.processes import start_group, stop_group
from support.tools import find_tool, require_tool
from support.waiting import wait_for


class Browser:
    """A W3C WebDriver session over plain HTTP: no client library needed."""

    def __init__(self, driver_url: str, session_id: str):
        self.url = f"{driver_url}/session/{session_id}"

    def _call(self, method: str, path: str, payload: dict | None = None):
        answer = requests.request(method, self.url + path, json=payload, timeout=30)
        data = answer.json()
        assert answer.status_code == 200, data
        return data["value"]

    def open(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def run(self, script: str, *args):
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def text(self, element_id: str) -> str | None:
        return self.run("var e = document.getElementById(arguments[0]);"
                        "return e ? e.textContent : null;", element_id)

    def console(self) -> list[dict]:
        return self._call("POST", "/se/log", {"type": "browser"})

    def cdp(self, command: str, params: dict | None = None):
        """A Chrome DevTools command, through chromedriver's own endpoint for them."""
        return self._call("POST", "/goog/cdp/execute", {"cmd": command, "params": params or {}})

    def emulate(self, width: int, height: int, *, mobile: bool) -> None:
        """A screen of `width` CSS pixels, as a phone has it when `mobile` (the viewport meta
        tag then counts), not a window that merely looks narrow."""
        self.cdp("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 2 if mobile else 1, "mobile": mobile})

    def screenshot(self, path) -> None:
        """The whole page, below the fold too, as a PNG file."""
        shot = self.cdp("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture
def browser(tmp_path):
    chromium = find_tool("chromium-browser") or require_tool("chromium", "the status page test")
    chromedriver = require_tool("chromedriver", "the status page test")
    port = free_port()
    driver = start_group([chromedriver, f"--port={port}"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    driver_url = f"http://127.0.0.1:{port}"
    session_id = None
    try:
        wait_for(lambda: _ready(driver_url), timeout=60, message="chromedriver to start")
        options = {"binary": chromium,
                   "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                            "--disable-dev-shm-usage", "--no-first-run",
                            f"--user-data-dir={tmp_path / 'chromium-profile'}"]}
        answer = requests.post(f"{driver_url}/session", timeout=60, json={"capabilities": {
            "alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options,
                            "goog:loggingPrefs": {"browser": "ALL"}}}})
        assert answer.status_code == 200, answer.text
        session_id = answer.json()["value"]["sessionId"]
        yield Browser(driver_url, session_id)
    finally:
        if session_id:
            requests.delete(f"{driver_url}/session/{session_id}", timeout=30)
        stop_group(driver)   # chromedriver and any chromium it left


def _ready(driver_url: str) -> bool:
    try:
        return requests.get(f"{driver_url}/status", timeout=2).json()["value"]["ready"]
    except (requests.RequestException, ValueError, KeyError):
        return False


def test_the_page_shows_the_commit_and_follows_a_new_publish(api_factory, remote, serve, browser):
    api = api_factory(remote.url, test_config={"PAGE_REFRESH_SECONDS": 0.5})
    wait_for(api.engine.is_ready, message="the first publish")
    first = api.engine.status().commit
    base = serve(api.app)

    browser.open(base + "/")

    assert browser.text("commit-sha") == first[:7]
    assert browser.text("commit-subject") == "first"
    assert browser.text("commit-author") == "Test Author"
    assert browser.text("state") == "idle"
    assert browser.text("ref") == "HEAD"
    assert browser.run("return document.title").startswith("gitsync")

    second = remote.commit_and_push({"app/main.py": "print('v2')\n"}, "Ship <i>v2</i>")
    headers, body = FORGE_BY_NAME["github"].delivery("refs/heads/main", second)
    assert requests.post(f"{base}/api/v1/webhook", data=body, headers=headers,
                         timeout=30).status_code == 202

    wait_for(lambda: browser.text("commit-sha") == second[:7], timeout=30,
             message="the page to show the new commit without a reload")
    assert browser.text("commit-subject") == "Ship <i>v2</i>"   # shown as text
    assert browser.run("return document.querySelector('#commit-subject i')") is None
    wait_for(lambda: "webhook" in browser.run(
        "return document.querySelector('#history tr').textContent"), timeout=30)
    assert browser.run("return document.getElementById('updated').className") == "live"
    assert browser.run("return document.title").endswith(second[:7])
    problems = [entry for entry in browser.console() if entry.get("level") == "SEVERE"]
    assert problems == [], problems


def test_the_page_shows_a_failing_sync(fake_api, serve, browser):
    engine = FakeEngine(repo="file:///srv/missing.git", commit=None)
    api = fake_api(engine=engine, test_config={"PAGE_REFRESH_SECONDS": 0.5})
    engine.finish("error", error="git fetch failed: 'file:///srv/missing.git' does not appear "
                                 "to be a git repository")
    base = serve(api.app)

    browser.open(base + "/")

    assert browser.text("state") == "failing"
    assert browser.run("return document.getElementById('error-box').hidden") is False
    assert "missing.git" in browser.text("last-error")
    assert "Nothing published yet" in browser.text("commit")
    color = browser.run("return getComputedStyle(document.getElementById('state')).backgroundColor")
    assert color == "rgb(207, 34, 46)"   # the stylesheet loaded: failing is red


def test_the_page_turns_red_when_a_push_is_rolled_back(api_factory, remote, serve, browser):
    from appserver import FakeApp, reload_status

    app = FakeApp()
    try:
        first = remote.head()
        app.answer(reload_status(first))
        api = api_factory(remote.url, "--app-status-url", app.url,
                          test_config={"PAGE_REFRESH_SECONDS": 0.5})
        wait_for(lambda: (api.engine.status().deploy["rollout"] or {}).get("state") == "live",
                 message="the first publish to be live")
        browser.open(serve(api.app) + "/")
        assert browser.run("return document.getElementById('rollout-banner').hidden") is True

        bad = remote.commit({"app/main.py": "print(\n"}, "a syntax error")
        app.answer(reload_status(first, target=bad, attempt={
            "commit": bad, "state": "failed", "reason": "exited 1: SyntaxError: '(' was never closed"}))
        remote.push()
        api.engine.trigger("webhook")

        expected = (f"{bad[:7]} failed to start: exited 1: SyntaxError: '(' was never closed; "
                    f"rolled back, serving {first[:7]}")
        wait_for(lambda: browser.text("rollout-banner") == expected, timeout=20,
                 message="the page to show the rollback without a reload")
        assert browser.run("return document.getElementById('rollout-banner').hidden") is False
        color = browser.run("return getComputedStyle(document.getElementById('rollout-banner')).backgroundColor")
        assert color == "rgb(207, 34, 46)"
        wait_for(lambda: "rolled back" in browser.run(
            "return document.querySelector('#history tr').textContent"), timeout=5)
        problems = [entry for entry in browser.console() if entry.get("level") == "SEVERE"]
        assert problems == [], problems
    finally:
        app.stop()
