"""The link watcher on a real directory: a flip is seen, work inside .worktrees is not."""

from __future__ import annotations

import os
import threading
import time

import pytest

from gitsync.reload.watch import Debounce, LinkWatcher, resolve_tree
from test_reload import Trees, stays, wait_for


@pytest.fixture
def watcher(tmp_path):
    stop = threading.Event()
    made: list[LinkWatcher] = []

    def make(link) -> LinkWatcher:
        made.append(LinkWatcher(str(link), stop))
        return made[-1]

    yield make
    stop.set()
    for each in made:
        each.close()


def watching(watch: LinkWatcher) -> LinkWatcher:
    wait_for(lambda: watch.touched() or watch.watcher is not None, "the watch to begin", timeout=30)
    while watch.touched():  # whatever happened before the watch began
        pass
    return watch


def test_a_flip_is_seen_and_the_link_resolves_to_the_new_tree(tmp_path, watcher):
    trees = Trees(tmp_path)
    first, second = trees.make(), trees.make()
    trees.flip(first)
    watch = watching(watcher(trees.link))
    trees.flip(second)
    wait_for(watch.touched, "the flip to be seen", timeout=30)
    assert resolve_tree(str(trees.link)) == trees.tree(second)


def test_checkouts_and_clean_up_inside_worktrees_are_not_seen(tmp_path, watcher):
    trees = Trees(tmp_path)
    first = trees.make()
    trees.flip(first)
    watch = watching(watcher(trees.link))
    other = trees.make()
    for index in range(50):
        (tmp_path / ".worktrees" / other / f"file-{index}.txt").write_text("x")
    trees.remove(other)
    (tmp_path / "unrelated.txt").write_text("x")
    assert stays(lambda: not watch.touched(), 0.5)


def test_a_directory_that_appears_later_is_watched_then(tmp_path, watcher):
    trees = Trees(tmp_path / "later")
    watch = watcher(trees.link)
    assert not watch.touched() and watch.watcher is None
    trees.root.mkdir()
    sha = trees.make()
    wait_for(lambda: watch.touched() or watch.watcher is not None, "the watch to begin", timeout=30)
    trees.flip(sha)
    wait_for(watch.touched, "the flip to be seen", timeout=30)


def test_resolve_tree_is_none_while_there_is_no_tree(tmp_path):
    assert resolve_tree(str(tmp_path / "app")) is None
    os.symlink(".worktrees/gone", tmp_path / "app")
    assert resolve_tree(str(tmp_path / "app")) is None


def test_debounce_settles_once_the_burst_is_quiet():
    debounce = Debounce(quiet=0.0)
    assert not debounce.settled()  # nothing touched
    debounce.touch()
    assert debounce.settled() and not debounce.settled()  # once per burst
    slow = Debounce(quiet=3600.0)
    slow.touch()
    assert not slow.settled()
    slow.touched_at = time.monotonic() - 3600.0
    assert slow.settled()
