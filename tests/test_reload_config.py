"""gitsync-reload settings that depend on how it was installed (the rest: test_reload*.py)."""

from __future__ import annotations

import sys

import pytest

from gitsync.reload.config import ConfigError, build_config


def test_a_single_executable_refuses_preload_in_one_line(monkeypatch):
    argv = ["--link", "/repo/app", "--preload", "json", "--", "python", "app.py"]
    assert build_config(argv, {}).preload == ("json",)
    monkeypatch.setattr(sys, "frozen", True, raising=False)  # what PyInstaller sets
    with pytest.raises(ConfigError) as refused:
        build_config(argv, {})
    assert "--preload" in str(refused.value) and "\n" not in str(refused.value)
    assert build_config(argv[:2] + argv[4:], {}).preload == ()  # without --preload it runs
