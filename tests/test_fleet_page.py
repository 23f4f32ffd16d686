"""The status page's fleet table, in a real headless Chromium (see test_api_page.py),
on real replicas (see test_fleet_e2e.py)."""

from __future__ import annotations

import requests
from support.waiting import wait_for
from test_api_page import browser  # noqa: F401  (fixture; the module skips without Chromium)
from test_fleet_e2e import addresses, fleet, push, wait_all_on  # noqa: F401  (fixture)


def fleet_rows(browser) -> list[list[str]]:  # noqa: F811
    return browser.run("return Array.from(document.querySelectorAll('#fleet tr')).map("
                       "function (r) { return Array.from(r.cells).map(function (c) {"
                       " return c.textContent; }); });")


def test_the_page_shows_the_fleet(fleet, remote, browser):  # noqa: F811
    replicas = fleet(addresses(2))
    sha = push(remote, "v2")
    replicas[0].push_webhook(sha)
    wait_all_on(replicas, sha)

    browser.open(replicas[0].url + "/")

    wait_for(lambda: browser.text("fleet-converged") == "converged", timeout=20,
             message="the fleet table drawn")
    rows = fleet_rows(browser)
    assert sorted(row[0] for row in rows) == sorted(f"{r.host}:{r.port}" for r in replicas)
    assert all(row[1] == sha[:7] and row[5] == "yes" for row in rows)

    replicas[1].stop()
    wait_for(lambda: any(row[5] == "no" for row in fleet_rows(browser)), timeout=20,
             message="the stopped replica shown unreachable")
    problems = [entry for entry in browser.console() if entry.get("level") == "SEVERE"]
    assert problems == [], problems


def test_without_peers_the_page_has_no_fleet_table(tmp_path, remote, gitsync):
    from support.api import served_port
    proc = gitsync("--repo", remote.url, "--root", str(tmp_path / "solo"), "--http-bind",
                   "127.0.0.1:0", "--period", "60s")
    port = wait_for(lambda: served_port(lambda: proc.output), message="the API")
    page = requests.get(f"http://127.0.0.1:{port}/", timeout=5).text
    assert 'id="fleet"' not in page and "data-fleet-url" not in page
