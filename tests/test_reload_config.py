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


@pytest.mark.parametrize("word, value", [("t", True), ("yes", True), ("f", False), ("off", False)])
def test_true_and_false_words_are_the_sidecar_s(word, value):
    # One set of words for both programs (gitsync.options.parse_bool).
    assert build_config(["--link", "a", "--", "x"], {"GITSYNC_RELOAD_SIGNAL_ONLY": word}).signal_only is value
    assert build_config(["--link", "a", f"--signal-only={word}", "--", "x"], {}).signal_only is value
