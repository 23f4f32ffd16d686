"""Flags and GITSYNC_* variables become one frozen Config, or one clear error."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import pytest

from gitsync.config import OPTIONS, TABLE, ConfigError, parse_args
from gitsync.durations import parse_duration

BASE = ["--repo", "https://github.com/org/app.git", "--root", "/git"]


def test_defaults_match_git_sync_v4():
    config = parse_args(BASE, {})
    assert (config.ref, config.depth, config.period, config.sync_timeout) == ("HEAD", 1, 10.0, 120.0)
    assert (config.max_failures, config.one_time, config.submodules) == (0, False, "recursive")
    assert config.link == Path("/git/app.git")          # git-sync keeps the ".git"
    assert config.http_bind == ("0.0.0.0", 8080)        # our one deliberate difference
    assert config.stale_worktree_timeout == 0
    assert (config.webhook_method, config.webhook_success_status) == ("POST", 200)
    assert config.ssh_known_hosts is True
    assert config.receiver_max_body == 5 * 1024 * 1024


def test_config_is_frozen():
    config = parse_args(BASE, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.period = 1  # type: ignore[misc]


def test_every_flag_reads_its_environment_variable_and_the_flag_wins():
    env = {"GITSYNC_REPO": "file:///srv/r.git", "GITSYNC_ROOT": "/data", "GITSYNC_PERIOD": "2m",
           "GITSYNC_ONE_TIME": "true", "GITSYNC_SSH_KEY_FILE": "/k1,/k2",
           "GITSYNC_SYNC_ON_SIGNAL": "HUP", "GITSYNC_DEPTH": "0"}
    config = parse_args([], env)
    assert (config.repo, config.root, config.period, config.one_time) == (
        "file:///srv/r.git", Path("/data"), 120.0, True)
    assert config.ssh_key_files == ("/k1", "/k2")
    assert config.sync_on_signal == signal.SIGHUP
    assert parse_args(["--period", "5s"], env).period == 5.0


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.flag)
def test_each_option_has_an_environment_name(option):
    assert TABLE.env(option) == "GITSYNC_" + option.flag[2:].upper().replace("-", "_")


@pytest.mark.parametrize("argv, message", [
    (["--root", "/git"], "--repo is required (or set GITSYNC_REPO)"),
    (BASE + ["--period", "soon"], "--period: invalid duration 'soon' (use e.g. 500ms, 10s, 2m)"),
    (BASE + ["--period", "0s"], "--period: must be more than 0s"),
    (BASE + ["--depth", "-1"], "--depth: must be 0 or more"),
    (BASE + ["--depth", "one"], "--depth: expected a whole number, got 'one'"),
    (BASE + ["--max-failures", "-2"], "--max-failures: must be -1 or more"),
    (BASE + ["--submodules", "some"], "--submodules: must be one of recursive, shallow, off, got 'some'"),
    (BASE + ["--one-time=maybe"], "--one-time: expected true or false, got 'maybe'"),
    (BASE + ["--http-bind", "localhost"], "--http-bind: expected HOST:PORT, got 'localhost'"),
    (BASE + ["--sync-on-signal", "SIGNOPE"], "--sync-on-signal: unknown signal 'SIGNOPE' (use e.g. TERM, INT, HUP or 15)"),
    (BASE + ["--git-config", "novalue"], "--git-config: expected key:value, got 'novalue'"),
    (BASE + ["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_bad_input_is_one_line_naming_the_flag(argv, message):
    with pytest.raises(ConfigError) as err:
        parse_args(argv, {})
    assert str(err.value) == message


@pytest.mark.parametrize("argv, env, message", [
    (["--username", "bob"], {}, "--username needs --password-file or GITSYNC_PASSWORD"),
    ([], {"GITSYNC_PASSWORD": "x"}, "--username is required with --password-file or GITSYNC_PASSWORD"),
    (["--repo", "https://bob:pw@host/r.git", "--username", "bob"], {"GITSYNC_PASSWORD": "x"},
     "--repo holds credentials and --username or a password is set too; give them in one place only"),
    (["--sparse-checkout-file", "/nonexistent/patterns"], {},
     "--sparse-checkout-file: cannot read /nonexistent/patterns: No such file or directory"),
], ids=["username-alone", "password-alone", "both-places", "sparse-unreadable"])
def test_credential_combinations_that_cannot_work_are_refused_at_start(argv, env, message):
    with pytest.raises(ConfigError) as err:
        parse_args(BASE + argv, env)
    assert str(err.value) == message
    assert "pw" not in str(err.value).replace("password", "")


def test_a_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match=r"^--period \(GITSYNC_PERIOD\): invalid duration"):
        parse_args(BASE, {"GITSYNC_PERIOD": "often"})


def test_link_relative_absolute_and_derived():
    assert parse_args(BASE + ["--link", "current"], {}).link == Path("/git/current")
    assert parse_args(BASE + ["--link", "/srv/www"], {}).link == Path("/srv/www")
    assert parse_args(["--repo", "git@github.com:org/site", "--root", "/g"], {}).link == Path("/g/site")


def test_git_config_pairs_allow_quoted_commas():
    config = parse_args(BASE + ["--git-config", 'http.extraHeader:"X-A: 1, 2",core.symlinks:false'], {})
    assert config.git_config == (("http.extraHeader", "X-A: 1, 2"), ("core.symlinks", "false"))


def test_secrets_come_from_files_or_variables_and_stay_out_of_repr(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret-receiver\n")
    config = parse_args(BASE + ["--receiver-secret-file", str(secret_file), "--username", "bob"],
                        {"GITSYNC_API_TOKEN": "t0ken", "GITSYNC_PASSWORD": "pa55"})
    assert config.receiver_secret == b"s3cret-receiver"
    assert config.api_token == "t0ken"
    assert config.password == "pa55"
    assert "s3cret" not in repr(config) and "t0ken" not in repr(config)
    assert "pa55" not in repr(config)


def test_unreadable_secret_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^--receiver-secret-file: cannot read .*missing"):
        parse_args(BASE + ["--receiver-secret-file", str(tmp_path / "missing")], {})


@pytest.mark.parametrize("text, seconds", [("500ms", 0.5), ("10s", 10), ("2m", 120),
                                           ("1m30s", 90), ("1h", 3600), ("1.5s", 1.5), ("0", 0)])
def test_go_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_a_duration_without_a_unit_is_refused_as_git_sync_does():
    with pytest.raises(ConfigError, match=r"^--period: invalid duration '10': a number needs a unit, e\.g\. 10s"):
        parse_args(BASE + ["--period", "10"], {})


def test_receiver_max_body_takes_units():
    assert parse_args(BASE + ["--receiver-max-body", "64KiB"], {}).receiver_max_body == 65536


@pytest.mark.parametrize("argv, message", [
    (["--repo", "htps://example.com/app.git", "--root", "/git"],
     "--repo: unknown URL scheme 'htps://' (use https://, http://, ssh://, git://, file:// or user@host:path)"),
    (BASE + ["--link", ".git"], "--link: '.git' would be inside .git, which gitsync keeps for itself; choose another name"),
    (BASE + ["--link", ".worktrees/x"],
     "--link: '.worktrees/x' would be inside .worktrees, which gitsync keeps for itself; choose another name"),
    (BASE + ["--link", ".gitsync"],   # what rollouts keep on the volume (bad marks) lives there
     "--link: '.gitsync' would be inside .gitsync, which gitsync keeps for itself; choose another name"),
    (BASE + ["--link", ".gitsync/app"],
     "--link: '.gitsync/app' would be inside .gitsync, which gitsync keeps for itself; choose another name"),
])
def test_settings_that_cannot_work_are_refused_at_start(argv, message):
    with pytest.raises(ConfigError) as err:
        parse_args(argv, {})
    assert str(err.value) == message


def test_a_root_that_is_a_file_is_refused_at_start(tmp_path):
    root = tmp_path / "root"
    root.write_text("not a directory")
    with pytest.raises(ConfigError, match=rf"^--root: {root} exists and is not a directory$"):
        parse_args(["--repo", "https://example.com/a.git", "--root", str(root)], {})


@pytest.mark.parametrize("flags, level", [(["-v"], 1), (["-v=6"], 6), (["-v", "2"], 2), (["--verbose=3"], 3)])
def test_verbose_as_git_sync_takes_it(flags, level):
    assert parse_args(BASE + flags, {}).verbose == level


def test_no_abbreviated_flags():
    with pytest.raises(ConfigError, match="unrecognized arguments: --git-conf=x"):
        parse_args(BASE + ["--git-conf=x"], {})


def test_rollout_and_fleet_settings():
    config = parse_args(BASE + ["--app-status-url", "http://127.0.0.1:9101/api/v1/status",
                                "--peers", "dns:gitsync-peers:8080"], {"GITSYNC_PEER_SECRET": "s3cret"})
    assert (config.rollout_timeout, config.rollback) == (60.0, True)
    assert (config.peers.dns_name, config.peers.port) == ("gitsync-peers", 8080)
    assert config.peer_secret == b"s3cret" and "s3cret" not in repr(config)
    fixed = parse_args(BASE + ["--peers", "127.0.0.2:8080, [::1]:81"], {"GITSYNC_PEER_SECRET": "s"})
    assert fixed.peers.addresses == (("127.0.0.2", 8080), ("::1", 81))


@pytest.mark.parametrize("argv, message", [
    (BASE + ["--peers", "127.0.0.2:8080"], "--peers needs --peer-secret-file or GITSYNC_PEER_SECRET"),
    (BASE + ["--peers", "dns:svc", "--peer-secret-file", __file__], "--peers: expected dns:NAME:PORT"),
    (BASE + ["--app-status-url", "127.0.0.1:9101"], "--app-status-url: expected an http:// or https:// URL"),
    (BASE + ["--app-status-url", "http://a/s", "--app-health-url", "http://a/h"], "give one"),
    (BASE + ["--app-signal", "HUP"], "--app-signal and --app-process go together"),
    (BASE + ["--app-signal", "HUP", "--app-process", "("], "--app-process: not a regular expression"),
    (BASE + ["--rollout-timeout", "soon"], "--rollout-timeout: invalid duration 'soon'"),
])
def test_rollout_and_fleet_mistakes_are_one_line(argv, message):
    with pytest.raises(ConfigError) as err:
        parse_args(argv, {})
    assert str(err.value).startswith(message) or message in str(err.value)
