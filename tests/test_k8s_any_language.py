"""The manifests for apps in any language (docs/containers.md), rendered with
`kubectl kustomize` and validated strictly like the others (tests/test_k8s.py):

* overlays/any-language: an init container copies the gitsync image's standalone
  gitsync-reload into an emptyDir; the app container, of an image with no Python,
  runs it from there (run as a pod in tests/test_pod.py);
* overlays/sidecar-only: the app runs unwrapped, and gitsync signals it after each
  publish, through a shared process namespace (needs --app-signal, not in gitsync yet).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from test_dockerfile import SIDECAR_TARGET, stage
from test_k8s import (
    BASE,
    RELOAD_ENV,
    SIDECAR_ENV,
    app,
    env,
    env_value,
    mounts,
    pod_spec,
    rendered,
    rendered_text,
    sidecar,
    validate,
    volumes,
)

ANY_LANGUAGE = "any-language"
SIDECAR_ONLY = "sidecar-only"
VARIANTS = [ANY_LANGUAGE, SIDECAR_ONLY]
INSTALL = "gitsync-reload-install"
APP_SIGNAL_ENV = {"GITSYNC_APP_SIGNAL", "GITSYNC_APP_PROCESS"}  # CONTRACT.md, "Apps in any language"
PYTHON_IMAGES = {"gitsync", "gitsync-demo"}


def image_name(container: dict) -> str:
    return container["image"].rsplit("/", 1)[-1].split(":")[0].split("@")[0]


def init_container(variant: str, name: str) -> dict:
    [found] = [c for c in pod_spec(variant).get("initContainers", []) if c["name"] == name]
    return found


def standalone_path() -> str:
    """Where the gitsync image holds the standalone gitsync-reload (its Dockerfile stage)."""
    copies = [args.split() for args in stage(SIDECAR_TARGET).all("COPY") if "--from=build-standalone" in args]
    assert len(copies) == 1, copies
    return copies[0][-1]


@pytest.mark.parametrize("variant", VARIANTS)
def test_renders_and_validates_strict(variant, tmp_path):
    manifest = tmp_path / f"{variant}.yaml"
    manifest.write_text(rendered_text(variant))
    result = validate(manifest)
    lines = (result.stdout + result.stderr).splitlines()
    passed = [line for line in lines if line.startswith("INFO") and " passed " in line]
    assert result.returncode == 0 and len(passed) == len(lines) == len(rendered(variant)), "\n".join(lines)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_sidecar_is_the_bases(variant):
    container = dict(sidecar(variant))
    extra = {name for name in env(container) if name not in env(sidecar(BASE))}
    assert extra <= APP_SIGNAL_ENV, extra
    container["env"] = [e for e in container["env"] if e["name"] not in APP_SIGNAL_ENV]
    base = dict(sidecar(BASE))
    if "GITSYNC_APP_STATUS_URL" not in env(container):   # no gitsync-reload to follow there
        base["env"] = [e for e in base["env"] if e["name"] != "GITSYNC_APP_STATUS_URL"]
    assert container == base


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_container_is_hardened(variant):
    for container in pod_spec(variant).get("initContainers", []) + pod_spec(variant)["containers"]:
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True, container["name"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert container["resources"]["limits"]["memory"], container["name"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_app_image_is_not_a_python_one_of_ours(variant):
    assert image_name(app(variant)) not in PYTHON_IMAGES


# --- any language: the standalone gitsync-reload ------------------------------------

def test_an_init_container_copies_the_standalone_reload_into_an_empty_dir():
    install = init_container(ANY_LANGUAGE, INSTALL)
    assert image_name(install) == "gitsync"
    # A regular init container: it runs to completion before the app starts.
    assert "restartPolicy" not in install
    command = install["command"]
    assert command[:2] == ["cp", standalone_path()], command
    target = Path(command[-1])
    mount = mounts(install)[str(target.parent)]
    assert not mount.get("readOnly")
    assert "emptyDir" in volumes(ANY_LANGUAGE)[mount["name"]]


def test_the_app_runs_the_copied_reload_from_a_read_only_mount():
    install_target = Path(init_container(ANY_LANGUAGE, INSTALL)["command"][-1])
    container = app(ANY_LANGUAGE)
    command = container["command"]
    assert command == [str(install_target)], command
    mount = mounts(container)[str(install_target.parent)]
    assert mount.get("readOnly") is True
    assert mount["name"] == mounts(init_container(ANY_LANGUAGE, INSTALL))[str(install_target.parent)]["name"]


def test_the_app_follows_the_published_link_and_listens_on_its_port():
    root = env_value(sidecar(ANY_LANGUAGE), "GITSYNC_ROOT")
    link = env_value(sidecar(ANY_LANGUAGE), "GITSYNC_LINK")
    container = app(ANY_LANGUAGE)
    args = container["args"]
    options, child = args[: args.index("--")], args[args.index("--") + 1:]
    assert options[options.index("--link") + 1] == f"{root}/{link}"
    listen = options[options.index("--listen") + 1]
    [http] = [p["containerPort"] for p in container["ports"] if p["name"] == "http"]
    assert listen.rsplit(":", 1)[1] == str(http)
    assert container["readinessProbe"]["httpGet"]["port"] in ("http", http)
    # --preload is for Python commands, and the standalone executable refuses it.
    assert "--preload" not in options
    assert child and child[0] != "python", child
    for name in env(container):
        assert not name.startswith("GITSYNC_") or name in RELOAD_ENV, name


def test_the_standalone_reload_has_a_writable_tmp():
    # A PyInstaller one-file executable unpacks itself into $TMPDIR (/tmp) at each start.
    container = app(ANY_LANGUAGE)
    mount = mounts(container).get("/tmp")
    assert mount and not mount.get("readOnly")
    assert "emptyDir" in volumes(ANY_LANGUAGE)[mount["name"]]


# --- sidecar-only: gitsync signals the app ---------------------------------------------

def test_sidecar_only_shares_the_process_namespace_and_runs_the_app_unwrapped():
    spec = pod_spec(SIDECAR_ONLY)
    assert spec["shareProcessNamespace"] is True
    container = app(SIDECAR_ONLY)
    assert "gitsync-reload" not in " ".join(container["command"] + container.get("args", []))
    root = env_value(sidecar(SIDECAR_ONLY), "GITSYNC_ROOT")
    assert container["workingDir"] == f"{root}/{env_value(sidecar(SIDECAR_ONLY), 'GITSYNC_LINK')}"
    assert mounts(container)[root].get("readOnly") is True
    assert set(env(sidecar(SIDECAR_ONLY))) - APP_SIGNAL_ENV <= SIDECAR_ENV


def test_sidecar_only_flags_are_flags_of_the_real_cli():
    script = Path(sys.executable).parent / "gitsync"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    if "--app-signal" not in result.stdout:
        pytest.skip("gitsync has no --app-signal yet (issue 15, part 3): k8s/overlays/sidecar-only waits for it")
    for name in APP_SIGNAL_ENV:
        flag = "--" + name.removeprefix("GITSYNC_").lower().replace("_", "-")
        assert flag in result.stdout, f"{name}: `gitsync --help` lists no {flag}"
