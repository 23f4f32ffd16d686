"""gitsync.compat and the git-sync v4 flags in the option table: the forms git-sync takes
(--credential JSON, --git-config's quoted list), the rules between them, --help, and the
metrics git-sync exports with their names, labels and types."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gitsync.compat import Credential, parse_credentials, parse_git_config
from gitsync.config import ConfigError, parse_args

BASE = ["--repo", "https://example.com/org/app.git", "--root", "/tmp/gitsync-compat"]


@pytest.mark.parametrize("text, pairs", [
    ("http.postBuffer:10485760,sect.k1:\"a val\",sect.k2:another val",
     [("http.postBuffer", "10485760"), ("sect.k1", "a val"), ("sect.k2", "another val")]),
    ('"sect.k5":"quoted_all"', [("sect.k5", "quoted_all")]),
    (r'sect.k:a\,b\\c\td,"q.k":"x\"y\nz"', [("sect.k", "a,b\\c\td"), ("q.k", 'x"y\nz')]),
    ('sect.k:"has, comma"', [("sect.k", "has, comma")]),
    ("http.extraHeader:Authorization: Bearer t", [("http.extraHeader", "Authorization: Bearer t")]),
    ("", []),
])
def test_git_config_grammar(text, pairs):
    assert parse_git_config(text) == pairs


@pytest.mark.parametrize("text, message", [
    ("novalue", "expected key:value, got 'novalue'"),
    ('"sect.k"x', "key 'sect.k': expected ':' after the quoted key, got 'x'"),
    ('sect.k:"open', "key 'sect.k': unterminated quoted string 'open'"),
    ('sect.k:"v"x', "key 'sect.k': expected ',' after the quoted value, got 'x'"),
    (r"sect.k:a\qb", r"'sect.k': unsupported escape \q"),
])
def test_git_config_grammar_errors(text, message):
    with pytest.raises(ValueError) as err:
        parse_git_config(text)
    assert message in str(err.value)


def test_git_config_flags_reach_the_config_in_order():
    config = parse_args(BASE + ["--git-config", 'a.b:1,"c.d":"2"', "--git-config-add", "e.f:3",
                                "--git-config-add", 'g.h:"4, four"'], {})
    assert config.git_config == (("a.b", "1"), ("c.d", "2"), ("e.f", "3"), ("g.h", "4, four"))
    with pytest.raises(ConfigError, match="^--git-config-add: expected key:value"):
        parse_args(BASE + ["--git-config-add", "nokey"], {})


def test_credentials_one_a_list_and_repeated():
    one = '{"url": "https://a.example/x", "username": "u", "password": "p"}'
    many = '[{"url": "https://b.example", "username": "v", "password-file": "/run/pw"}]'
    config = parse_args(BASE + ["--credential", one, "--credential", many], {})
    assert config.credentials == (Credential("https://a.example/x", "u", "p"),
                                  Credential("https://b.example", "v", None, "/run/pw"))
    assert "p'" not in repr(config.credentials) and "password" not in repr(config.credentials)
    from_env = parse_args(BASE, {"GITSYNC_CREDENTIAL": one})
    assert from_env.credentials[0].username == "u"


@pytest.mark.parametrize("text, message", [
    ("{", "not JSON"),
    ('{"url": "u", "username": "n"}', "give one of password and password-file"),
    ('{"url": "u", "username": "n", "password": "p", "password-file": "f"}', "give one of"),
    ('{"username": "n", "password": "p"}', "url must be given"),
    ('{"url": "u", "username": "n", "password": "p", "token": "t"}', "unknown field 'token'"),
    ('["x"]', "expected a JSON object"),
])
def test_credential_errors_name_the_flag(text, message):
    with pytest.raises(ConfigError) as err:
        parse_args(BASE + ["--credential", text], {})
    assert str(err.value).startswith("--credential: ") and message in str(err.value)
    assert "\n" not in str(err.value)
    assert parse_credentials("  ") == ()


def test_every_new_flag_has_its_variable():
    env = {"GITSYNC_FILTER": "blob:none", "GITSYNC_GIT_GC": "aggressive", "GITSYNC_GIT": "/usr/bin/git",
           "GITSYNC_INIT_PERIOD": "250ms", "GITSYNC_INIT_MAX_FAILURES": "-1",
           "GITSYNC_ASKPASS_URL": "http://127.0.0.1:9/pass", "GITSYNC_COOKIE_FILE": "true",
           "GITSYNC_ADD_USER": "true", "GITSYNC_GROUP_WRITE": "true", "GITSYNC_HTTP_PPROF": "true"}
    config = parse_args(BASE, env)
    assert (config.filter, config.git_gc, config.git) == ("blob:none", "aggressive", "/usr/bin/git")
    assert (config.init_period, config.init_max_failures) == (0.25, -1)
    assert config.askpass_url == "http://127.0.0.1:9/pass"
    assert config.cookie_file and config.add_user and config.group_write and config.http_pprof


def test_init_settings_default_to_the_normal_ones():
    config = parse_args(BASE + ["--period", "3s", "--max-failures", "2"], {})
    assert (config.init_period, config.init_max_failures) == (3.0, None)


def test_github_app_settings(tmp_path):
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    config = parse_args(BASE + ["--github-app-client-id", "Iv1.x", "--github-app-installation-id", "7",
                                "--github-app-private-key-file", str(key)], {})
    assert (config.github_app.issuer, config.github_app.installation_id) == ("Iv1.x", 7)
    assert config.github_app.base_url == "https://api.github.com/"
    assert "PRIVATE" not in repr(config)
    from_env = parse_args(BASE + ["--github-app-application-id", "12", "--github-app-installation-id",
                                  "7"], {"GITSYNC_GITHUB_APP_PRIVATE_KEY": "pem text"})
    assert (from_env.github_app.issuer, from_env.github_app.private_key) == ("12", b"pem text")


@pytest.mark.parametrize("flags, env, message", [
    (["--github-app-installation-id", "7"], {}, "need --github-app-application-id or"),
    (["--github-app-application-id", "1", "--github-app-client-id", "c",
      "--github-app-installation-id", "7"], {"GITSYNC_GITHUB_APP_PRIVATE_KEY": "k"}, "give one of"),
    (["--github-app-application-id", "1"], {"GITSYNC_GITHUB_APP_PRIVATE_KEY": "k"},
     "needs --github-app-installation-id"),
    (["--github-app-application-id", "1", "--github-app-installation-id", "7"], {},
     "needs one of --github-app-private-key-file"),
    (["--github-app-application-id", "1", "--github-app-installation-id", "7", "--username", "u"],
     {"GITSYNC_GITHUB_APP_PRIVATE_KEY": "k", "GITSYNC_PASSWORD": "p"}, "drop --username"),
    (["--git-gc", "sometimes"], {}, "--git-gc: must be one of auto, always, aggressive, off"),
    (["--init-max-failures", "-2"], {}, "--init-max-failures: must be -1 or more"),
    (["--askpass-url", "ftp://x"], {}, "--askpass-url: expected an http"),
])
def test_bad_combinations_are_one_line(flags, env, message):
    with pytest.raises(ConfigError) as err:
        parse_args(BASE + flags, env)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_help_lists_the_new_flags_in_their_groups():
    out = subprocess.run([sys.executable, "-m", "gitsync.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    groups = {"repository:": ["--filter", "--git-gc", "--git ", "--git-config-add"],
              "timing:": ["--init-period", "--init-max-failures"],
              "credentials:": ["--credential", "--askpass-url", "--cookie-file", "--github-base-url",
                               "--github-app-private-key-file", "--github-app-client-id",
                               "--github-app-application-id", "--github-app-installation-id",
                               "--add-user"],
              "after a publish:": ["--group-write"],
              "triggers and the HTTP API:": ["--http-pprof"]}
    for heading, flags in groups.items():
        section = out.split(f"\n{heading}\n", 1)[1].split("\n\n", 1)[0]
        for flag in flags:
            assert flag in section, f"{flag} not under {heading}"
    assert "GITSYNC_GITHUB_APP_INSTALLATION_ID" in out and "default auto" in out


def test_the_metrics_git_sync_exports_with_names_labels_and_types(api_factory, remote):
    api = api_factory(remote.url)
    text = api.client.get("/metrics").get_data(as_text=True)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    expected = {"git_sync_count": "counter", "git_sync_duration_seconds": "summary",
                "git_fetch_count": "counter", "process_cpu_seconds": "counter",
                "process_resident_memory_bytes": "gauge", "process_start_time_seconds": "gauge",
                "process_virtual_memory_max_bytes": "gauge",
                "promhttp_metric_handler_requests": "counter",
                "promhttp_metric_handler_requests_in_flight": "gauge",
                "gitsync_ready": "gauge"}
    for name, kind in expected.items():
        assert families[name].type == kind, name
    statuses = {s.labels.get("status") for s in families["git_sync_count"].samples}
    assert statuses == {"success", "noop", "error"}
    # Without _total, as git-sync's Go client names them (Python's parser would add it).
    for name in ("git_sync_askpass_calls", "git_sync_refresh_github_app_token_count"):
        assert f"# TYPE {name} counter\n" in text
        assert f'{name}{{status="success"}} 0.0\n' in text and f'{name}{{status="error"}} 0.0\n' in text
    assert "git_fetch_count_total 0.0" in text
    # A scrape is counted after its text, as Go's handler counts it.
    assert 'promhttp_metric_handler_requests_total{code="200"} 0.0' in text
    again = api.client.get("/metrics").get_data(as_text=True)
    assert 'promhttp_metric_handler_requests_total{code="200"} 1.0' in again
