"""The engine against git's smart HTTP protocol (git http-backend on 127.0.0.1)."""

from __future__ import annotations

import pytest

from support.repos import published_sha
from support.servers import SmartHttpServer
from test_engine import sync


@pytest.fixture
def http_remote(remote):
    with SmartHttpServer(remote.path.parent) as server:
        yield remote, server, server.url_for(remote.path.name)


def test_publish_and_update_over_smart_http(http_remote, tmp_path):
    remote, _, url = http_remote
    root = tmp_path / "root"
    engine, first = sync(url, root)
    assert first.result == "published" and first.commit == remote.head()
    new = remote.commit_and_push({"app/main.py": "print('v2')\n"})
    assert engine.sync_once("poll").commit == new
    assert (root / "repo.git" / "app/main.py").read_text() == "print('v2')\n"


def test_an_unchanged_poll_is_one_ls_remote_and_no_fetch(http_remote, tmp_path):
    remote, server, url = http_remote
    engine, _ = sync(url, tmp_path / "root")
    server.clear_requests()
    assert engine.sync_once("poll").result == "unchanged"
    commands = [r.command for r in server.requests if r.is_upload_pack_post]
    assert commands == ["ls-refs"]
    assert server.fetch_requests() == []


def test_a_changed_poll_fetches_once(http_remote, tmp_path):
    remote, server, url = http_remote
    engine, _ = sync(url, tmp_path / "root")
    new = remote.commit_and_push({"x": "y"})
    server.clear_requests()
    assert engine.sync_once("poll").commit == new
    assert len(server.fetch_requests()) == 1
    assert published_sha(tmp_path / "root" / "repo.git") == new


def test_an_unreachable_server_is_an_error_that_keeps_the_tree(http_remote, tmp_path):
    remote, server, url = http_remote
    engine, first = sync(url, tmp_path / "root")
    server.stop()
    result = engine.sync_once("poll")
    assert result.result == "error" and result.error.startswith("ls-remote: fatal: unable to access")
    assert published_sha(tmp_path / "root" / "repo.git") == first.commit
