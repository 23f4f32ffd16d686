"""What a person reads on the status page after a busy hour, in a real headless Chromium
at a desktop's and a phone's width (see test_api_page.py for the browser).

Screenshots of both widths go to <tmp_path>/screenshots/ (the test prints the folder) for
a person to look at; PAGE_SHOTS_DIR=<dir> writes them there instead, as
for docs/images/ (PAGE_SHOTS_DIR=docs/images pytest tests/test_api_page_layout.py).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from support.api import FORGE_BY_NAME
from support.fake_engine import FakeEngine
from support.waiting import wait_for
from test_api_page import browser  # noqa: F401  (fixture; the module skips without Chromium)

from gitsync.engine import SyncResult
from gitsync.git import CommitInfo

GOOD, BAD, TRIED = "b2" * 20, "d4" * 20, "c3" * 20
FETCH_ERROR = ("fetch: git fetch origin refs/heads/main failed: remote: fatal: "
               "pack-objects died of signal 9")
WIDTHS = {"desktop": (1280, 900, False), "phone": (390, 844, True)}


def busy_hour() -> FakeEngine:
    """A good deploy, a bug rolled back, a failed fetch of the next push, then recovery."""
    now = datetime.now(UTC)
    engine = FakeEngine(commit=None)
    engine.finish("published", commit=GOOD, subject="Add the pricing page", author="Ada Lovelace",
                  trigger="webhook", at=now - timedelta(minutes=50))
    engine.finish("published", commit=BAD, subject="Ship the new cart", author="Alan Turing",
                  trigger="webhook", at=now - timedelta(minutes=31))
    engine.history[0] = SyncResult(**{**engine.history[0].__dict__, "rollout": {
        "result": "failed", "reason": "exited 1: SyntaxError: '(' was never closed"}})
    flip = SyncResult("rollback", now - timedelta(minutes=30), 85, "published", GOOD,
                      attempted=GOOD, subject="Add the pricing page", author="Ada Lovelace",
                      rollout={"result": "rolled_back", "reason": f"{BAD[:7]} failed: exited 1"})
    engine.history.insert(0, flip)
    engine.commit, engine.publish_count = GOOD, engine.publish_count + 1
    engine.commit_info = CommitInfo(GOOD, "Add the pricing page", "Ada Lovelace",
                                    (now - timedelta(minutes=50)).isoformat())
    engine.finish("error", attempted=TRIED, subject="Refactor the checkout flow into smaller modules",
                  author="Grace Hopper", error=FETCH_ERROR, trigger="webhook",
                  at=now - timedelta(minutes=10))
    engine.finish("unchanged", trigger="poll", at=now - timedelta(minutes=2))
    engine.sync_count = 21
    engine.next_poll_at = now + timedelta(seconds=45)
    engine.deploy = {"live_commit": GOOD, "paused": False, "bad_commits": [], "held": None,
                     "rollout": {"commit": BAD, "state": "rolled_back",
                                 "reason": "exited 1: SyntaxError: '(' was never closed"}}
    return engine


def post_deliveries(base: str) -> None:
    """Three real deliveries: a push to the tracked branch, one to another, a forged one."""
    github, gitlab = FORGE_BY_NAME["github"], FORGE_BY_NAME["gitlab"]
    for headers, body in (github.delivery("refs/heads/main", TRIED),
                          gitlab.delivery("refs/heads/feature/login", TRIED),
                          github.delivery("refs/heads/main", TRIED, secret=b"not-the-secret")):
        requests.post(f"{base}/api/v1/webhook", data=body, headers=headers, timeout=30)


def rows(browser, tbody: str) -> list[str]:  # noqa: F811
    return browser.run("return Array.from(document.querySelectorAll('#' + arguments[0] + ' tr'))"
                       ".map(function (r) { return r.innerText; });", tbody)


def shots_folder(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("PAGE_SHOTS_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.parametrize("name", list(WIDTHS))
def test_the_page_reads_right_after_a_busy_hour(name, fake_api, serve, browser, tmp_path):  # noqa: F811
    engine = busy_hour()
    api = fake_api(engine=engine, test_config={"PAGE_REFRESH_SECONDS": 0.5})
    base = serve(api.app)
    post_deliveries(base)
    width, height, mobile = WIDTHS[name]
    browser.emulate(width, height, mobile=mobile)

    browser.open(base + "/")
    wait_for(lambda: int(browser.run("return document.body.dataset.refreshed || 0")) >= 1,
             timeout=20, message="the script's first refresh")

    assert browser.run("return window.innerWidth") == width
    overflow = browser.run("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert overflow[0] <= overflow[1], f"the page scrolls sideways at {width} px: {overflow}"
    assert browser.text("rollout-banner") == (
        f"{BAD[:7]} failed to start: exited 1: SyntaxError: '(' was never closed; "
        f"rolled back, serving {GOOD[:7]}")
    history = rows(browser, "history")
    newest, error = history[0], history[1]
    assert "recovered" in newest and "error" not in newest and "Add the pricing page" in newest
    assert TRIED[:7] in error and GOOD[:7] not in error, "the error row names the commit it tried"
    assert "Refactor the checkout flow" in error and "Grace Hopper" in error
    assert "Add the pricing page" in history[2] and "Ada Lovelace" in history[2]
    assert "min ago" in newest and "UTC" in newest
    assert browser.text("publish-count") == "3" and browser.text("sync-count") == "21"
    assert "in 4" in browser.text("next-poll") and "UTC" in browser.text("next-poll")
    assert browser.text("updated").endswith("UTC")
    deliveries = rows(browser, "deliveries")
    assert len(deliveries) == 3
    assert "unknown" in deliveries[0] and "rejected" in deliveries[0] and "401" in deliveries[0]
    assert "gitlab" in deliveries[1] and "another ref" in deliveries[1]
    assert "github" in deliveries[2] and "sync started (202)" in deliveries[2]
    assert not browser.run(_CLIPPED), "a value is cut off"
    problems = [entry for entry in browser.console() if entry.get("level") == "SEVERE"]
    assert problems == [], problems

    folder = shots_folder(tmp_path)
    browser.screenshot(folder / f"status-page-{name}.png")
    print(f"screenshot: {folder / f'status-page-{name}.png'}")
    assert (folder / f"status-page-{name}.png").stat().st_size > 10_000


# Any element whose content is wider than its box while its box hides the rest (a phone's
# table heads are hidden on purpose: each cell says its label).
_CLIPPED = """
return Array.from(document.querySelectorAll('main *, header *')).filter(function (e) {
  if (e.closest('thead')) { return false; }
  var style = getComputedStyle(e);
  return e.scrollWidth > e.clientWidth + 1 && style.overflowX !== 'visible'
         && e.clientWidth > 0;
}).map(function (e) { return e.id || e.tagName; });
"""
