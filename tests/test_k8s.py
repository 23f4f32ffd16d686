"""The Kubernetes manifests: rendered with `kubectl kustomize`, validated with
kubernetes-validate --strict against Kubernetes 1.30, then checked for the
wiring the API's schemas cannot see (volumes, probes, ports, env names).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import pytest
import yaml
from support.tools import require_tool
from test_dockerfile import (
    DEMO_TARGET,
    SIDECAR_TARGET,
    console_scripts,
    image_cmd,
    image_entrypoint,
    image_env,
    image_user,
)

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.30.0"
BASE = "base"
OVERLAYS = ["https-token", "ssh", "replicas"]
VARIANTS = [BASE, *OVERLAYS]

# Which Dockerfile target each image name in the manifests is built from.
IMAGE_TARGETS = {"gitsync": SIDECAR_TARGET, "gitsync-demo": DEMO_TARGET}

# Memory measured for docs/kubernetes.md ("Resource sizing") (MiB, from /proc): gitsync idle (VmRSS);
# its whole process tree, Python and git, at the peak of a first sync of a
# 20,000-file, 200 MB tree (sum of PSS); gitsync-reload, the demo app and the
# --preload spare interpreter (VmRSS of each).
SIDECAR_IDLE_MIB = 38
SIDECAR_SYNC_PEAK_MIB = 140
APP_IDLE_MIB = 19 + 33 + 32

# A copy of the flags in CONTRACT.md ("`gitsync` flags and environment"):
# each --flag is read from GITSYNC_<FLAG>; three more variables hold secrets.
CONTRACT_FLAGS = ["repo", "ref", "root", "link", "depth", "period", "sync-timeout", "max-failures", "one-time", "username", "password-file", "ssh-key-file", "ssh-known-hosts", "ssh-known-hosts-file", "submodules", "sparse-checkout-file", "git-config", "exechook-command", "exechook-timeout", "exechook-backoff", "webhook-url", "webhook-method", "webhook-success-status", "webhook-timeout", "webhook-backoff", "touch-file", "error-file", "sync-on-signal", "stale-worktree-timeout", "http-bind", "http-metrics", "receiver-secret-file", "api-token-file"]
CONTRACT_SECRET_VARS = {"GITSYNC_PASSWORD", "GITSYNC_RECEIVER_SECRET", "GITSYNC_API_TOKEN"}
RELOAD_OPTIONS = ["link", "signal", "grace", "debounce"]


def env_name(flag: str, prefix: str = "GITSYNC_") -> str:
    return prefix + flag.upper().replace("-", "_")


# The contract's "Fleet" section (test_k8s_fleet.py checks the wiring).
FLEET_FLAGS = ["peers", "peer-secret-file"]
FLEET_SECRET_VARS = {"GITSYNC_PEER_SECRET"}
# The contract's "Rollouts" section: the sidecar's probe flags and gitsync-reload's status API.
ROLLOUT_FLAGS = ["app-status-url", "app-health-url", "rollout-timeout", "rollback"]
ROLLOUT_RELOAD_OPTIONS = ["status-bind", "ready-url", "ready-after", "report-output"]
SIDECAR_ENV = ({env_name(f) for f in CONTRACT_FLAGS + FLEET_FLAGS + ROLLOUT_FLAGS}
               | CONTRACT_SECRET_VARS | FLEET_SECRET_VARS)
RELOAD_ENV = {env_name(o, "GITSYNC_RELOAD_") for o in RELOAD_OPTIONS + ROLLOUT_RELOAD_OPTIONS}


# --- rendering and validation -----------------------------------------------

def kubectl() -> str:
    return require_tool("kubectl", "to render k8s/ with kubectl kustomize")


def kustomize_dir(variant: str) -> Path:
    return K8S / BASE if variant == BASE else K8S / "overlays" / variant


@cache
def rendered_text(variant: str) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(kustomize_dir(variant))],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"kubectl kustomize {variant}: {result.stderr}"
    return result.stdout


@cache
def rendered(variant: str) -> list[dict]:
    """The rendered objects, parsed once: callers must not change them."""
    return [doc for doc in yaml.safe_load_all(rendered_text(variant)) if doc]


def validate(*paths: Path) -> subprocess.CompletedProcess:
    validator = Path(sys.executable).parent / "kubernetes-validate"
    command = [str(validator)] if validator.exists() else [sys.executable, "-m", "kubernetes_validate"]
    return subprocess.run(
        [*command, "--strict", "-k", KUBERNETES_VERSION, *map(str, paths)],
        capture_output=True, text=True, timeout=120,
    )


@cache
def validation_output() -> str:
    """One kubernetes-validate run over every variant and the Secret examples:
    the validator's start-up is most of its cost."""
    workdir = Path(tempfile.mkdtemp(prefix="gitsync-k8s-"))
    files = []
    for variant in VARIANTS:
        files.append(workdir / f"{variant}.yaml")
        files[-1].write_text(rendered_text(variant))
    files.append(K8S / "secrets.example.yaml")
    result = validate(*files)
    shutil.rmtree(workdir, ignore_errors=True)
    out = result.stdout + result.stderr
    assert "FATAL" not in out, out
    return out


def assert_every_resource_validates(filename: str, count: int) -> None:
    lines = [line for line in validation_output().splitlines() if f"/{filename} " in line]
    report = "\n".join(lines)
    # kubernetes-validate only WARNs, exit 0, for a kind it has no schema for:
    # require one "passed" per resource, and nothing else.
    passed = [line for line in lines if line.startswith("INFO") and " passed " in line]
    assert len(passed) == count and len(lines) == count, report or validation_output()
    version = KUBERNETES_VERSION.rsplit(".", 1)[0]
    assert all(line.endswith(f"against version {version}") for line in passed), report


@pytest.mark.parametrize("variant", VARIANTS)
def test_renders_and_validates_strict(variant):
    assert_every_resource_validates(f"{variant}.yaml", len(rendered(variant)))


def test_k8s_directory_renders_the_base():
    result = subprocess.run([kubectl(), "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == rendered_text(BASE)


def test_secret_examples_validate_and_are_not_applied():
    docs = [d for d in yaml.safe_load_all((K8S / "secrets.example.yaml").read_text()) if d]
    assert_every_resource_validates("secrets.example.yaml", len(docs))
    for variant in VARIANTS:
        assert not [d for d in rendered(variant) if d["kind"] == "Secret"], (
            f"{variant}: a Secret in the kustomization would overwrite the real one on apply"
        )


def test_strict_validation_rejects_an_unknown_field(tmp_path):
    # The validation above can fail: a misspelt field is an error under --strict.
    deployment = copy.deepcopy(one(BASE, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(deployment))
    result = validate(broken)
    assert result.returncode != 0 and "readOnlyRootFileSystem" in result.stdout, result.stdout


# --- helpers over the rendered objects --------------------------------------

def objects(variant: str, kind: str) -> list[dict]:
    return [d for d in rendered(variant) if d["kind"] == kind]


def one(variant: str, kind: str, name: str | None = None) -> dict:
    found = [d for d in objects(variant, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"{variant}: expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(variant: str) -> dict:
    return one(variant, "Deployment")["spec"]["template"]["spec"]


def sidecar(variant: str) -> dict:
    [container] = [c for c in pod_spec(variant).get("initContainers", []) if c["name"] == "gitsync"]
    return container


def app(variant: str) -> dict:
    [container] = [c for c in pod_spec(variant)["containers"] if c["name"] == "app"]
    return container


def all_containers(variant: str) -> list[dict]:
    spec = pod_spec(variant)
    return spec.get("initContainers", []) + spec["containers"]


def env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def env_value(container: dict, name: str) -> str:
    entry = env(container).get(name)
    assert entry is not None and "value" in entry, f"{container['name']}: no literal {name}"
    return entry["value"]


def container_port(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert named, f"{container['name']}: no port named {port!r}"
    return named[0]


def mounts(container: dict) -> dict[str, dict]:
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def volumes(variant: str) -> dict[str, dict]:
    return {v["name"]: v for v in pod_spec(variant).get("volumes", [])}


def image_target(container: dict) -> str:
    name = container["image"].rsplit("/", 1)[-1].split(":")[0].split("@")[0]
    assert name in IMAGE_TARGETS, f"{container['name']}: image {container['image']} is not built here"
    return IMAGE_TARGETS[name]


def bind_port() -> int:
    return int(env_value(sidecar(BASE), "GITSYNC_HTTP_BIND").rsplit(":", 1)[1])


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1e3 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity)).groups()
    return float(number) * units.get(unit, 1 / 2**20)


# --- the pod ----------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_gitsync_is_a_native_sidecar(variant):
    container = sidecar(variant)
    assert container.get("restartPolicy") == "Always"
    assert image_target(container) == SIDECAR_TARGET
    assert image_target(app(variant)) == DEMO_TARGET


@pytest.mark.parametrize("variant", VARIANTS)
def test_shared_volume_mounted_in_both_containers(variant):
    shared = mounts(sidecar(variant)).get(env_value(sidecar(variant), "GITSYNC_ROOT"))
    assert shared, "the sidecar must mount a volume at GITSYNC_ROOT"
    assert "emptyDir" in volumes(variant)[shared["name"]]
    assert not shared.get("readOnly"), "the sidecar writes the trees"
    app_mounts = [m for m in app(variant)["volumeMounts"] if m["name"] == shared["name"]]
    assert len(app_mounts) == 1, "the app must mount the shared volume"
    assert app_mounts[0].get("readOnly") is True, "the app must not write into the published trees"
    # Same path in both, so the link the app is told to follow is where it is.
    assert app_mounts[0]["mountPath"] == shared["mountPath"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_app_follows_the_link_the_sidecar_publishes(variant):
    root = env_value(sidecar(variant), "GITSYNC_ROOT")
    link = env_value(sidecar(variant), "GITSYNC_LINK")
    published = link if link.startswith("/") else f"{root.rstrip('/')}/{link}"
    container = app(variant)
    command = container.get("command") or image_entrypoint(image_target(container))
    args = container.get("args") or image_cmd(image_target(container))
    assert command == ["gitsync-reload"], command
    options = args[: args.index("--")]
    assert options[options.index("--link") + 1] == published
    assert args[args.index("--") + 1:], "gitsync-reload needs a command after --"


@pytest.mark.parametrize("variant", VARIANTS)
def test_entrypoints_are_console_scripts(variant):
    scripts = console_scripts()
    for container in all_containers(variant):
        command = container.get("command") or image_entrypoint(image_target(container))
        assert command[0] in scripts, f"{container['name']}: {command[0]} is not a console script"


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_match_the_api(variant):
    container = sidecar(variant)
    expected = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert container_port(container, get["port"]) == bind_port(), probe
    assert container_port(container, "api") == bind_port()
    # The first clone may take --sync-timeout (120 s) and a retry or two.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 240


@pytest.mark.parametrize("variant", VARIANTS)
def test_app_listens_where_its_port_and_probe_say(variant):
    container = app(variant)
    port = int(env_value(container, "PORT"))
    assert env_value(container, "HOST") == "0.0.0.0", "the demo app binds 127.0.0.1 by default"
    assert container_port(container, "http") == port
    probe = container["readinessProbe"]["httpGet"]
    assert container_port(container, probe["port"]) == port


@pytest.mark.parametrize("variant", VARIANTS)
def test_env_names_match_the_contract(variant):
    for name in env(sidecar(variant)):
        assert name in SIDECAR_ENV, f"gitsync reads no {name} (CONTRACT.md)"
    for name in env(app(variant)):
        if name.startswith("GITSYNC_"):
            assert name in RELOAD_ENV, f"gitsync-reload reads no {name} (CONTRACT.md)"
    # Service links would inject GITSYNC_WEBHOOK_PORT and friends into the sidecar.
    assert pod_spec(variant).get("enableServiceLinks") is False


@pytest.mark.parametrize("variant", VARIANTS)
def test_secrets_come_from_mounted_files(variant):
    examples = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all((K8S / "secrets.example.yaml").read_text()) if d
    }
    container = sidecar(variant)
    for name, entry in env(container).items():
        assert name not in CONTRACT_SECRET_VARS | FLEET_SECRET_VARS, f"{name}: pass secrets as files (*_FILE)"
        if not name.endswith("_FILE") or name in {"GITSYNC_SPARSE_CHECKOUT_FILE", "GITSYNC_TOUCH_FILE",
                                                  "GITSYNC_ERROR_FILE"}:
            continue
        path = Path(entry["value"])
        mount = mounts(container).get(str(path.parent))
        assert mount and mount.get("readOnly"), f"{name}: {path.parent} is not a read-only mount"
        secret = volumes(variant)[mount["name"]].get("secret")
        assert secret, f"{name}: {path.parent} is not a Secret volume"
        assert secret.get("defaultMode") == 0o400, f"{name}: mount the Secret with defaultMode 0400"
        keys = {item["path"]: item["key"] for item in secret.get("items", [])} or None
        key = keys[path.name] if keys else path.name
        assert key in examples[secret["secretName"]]["stringData"], (
            f"{name}: Secret {secret['secretName']} has no key {key} (secrets.example.yaml)"
        )
    for entry in env(container).values():
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["key"] in examples[ref["name"]]["stringData"], ref


@pytest.mark.parametrize("variant", VARIANTS)
def test_rollouts_follow_gitsync_reloads_status_on_loopback_only(variant):
    """The sidecar follows each publish through gitsync-reload's status API, which no
    port or Service exposes; an app without gitsync-reload has no such URL to follow."""
    probe = env(sidecar(variant)).get("GITSYNC_APP_STATUS_URL")
    runs_reload = "--link" in (app(variant).get("args") or [])
    if not runs_reload:
        assert probe is None
        return
    assert probe == {"name": "GITSYNC_APP_STATUS_URL",
                     "value": "http://127.0.0.1:9101/api/v1/status"}
    bind = env(app(variant)).get("GITSYNC_RELOAD_STATUS_BIND", {}).get("value", "127.0.0.1:9101")
    assert bind == "127.0.0.1:9101"
    ports = [p["containerPort"] for c in pod_spec(variant)["containers"] for p in c.get("ports", [])]
    assert 9101 not in ports


def test_contract_copy_is_current():
    """The flag list above against CONTRACT.md, where shared/ sits beside the repo."""
    contract = ROOT.parent / "shared" / "CONTRACT.md"
    if not contract.is_file():
        pytest.skip(f"{contract} not present (shared/ is beside the repo on the project's machines)")
    text = contract.read_text()
    section = text.split("## `gitsync` flags and environment", 1)[1].split("## `gitsync-reload`", 1)[0]
    flags = set(re.findall(r"`--([a-z][a-z0-9-]+)`", section)) - {"name-of-flag"}  # the rule's example
    assert flags == set(CONTRACT_FLAGS)
    named = set(re.findall(r"`(GITSYNC_[A-Z_]+)`", section)) - {"GITSYNC_NAME_OF_FLAG"}
    assert named <= SIDECAR_ENV, named - SIDECAR_ENV
    reload_section = text.split("## `gitsync-reload`", 1)[1].split("\n## ", 1)[0]
    assert set(re.findall(r"\[--([a-z]+)", reload_section)) == set(RELOAD_OPTIONS)


def test_env_names_are_flags_of_the_real_cli():
    pytest.importorskip("gitsync.cli", reason="gitsync.cli has not landed yet")
    script = Path(sys.executable).parent / "gitsync"
    command = [str(script)] if script.exists() else [sys.executable, "-c", "from gitsync.cli import main; main()"]
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    for variant in VARIANTS:
        for name in env(sidecar(variant)):
            flag = "--" + name.removeprefix("GITSYNC_").lower().replace("_", "-")
            assert flag in result.stdout, f"{name}: `gitsync --help` lists no {flag}"


# --- hardening and sizing ---------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_hardening(variant):
    spec = pod_spec(variant)
    pod = spec["securityContext"]
    uid = int(image_user(SIDECAR_TARGET).partition(":")[0])
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == uid == int(image_user(DEMO_TARGET).partition(":")[0])
    assert pod["fsGroup"] == pod["runAsGroup"], "emptyDirs and secret files must belong to the user's group"
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    for container in all_containers(variant):
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True, container["name"]
        assert sc["readOnlyRootFilesystem"] is True, container["name"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), container["name"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", container["name"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_home_is_a_writable_volume(variant):
    # readOnlyRootFilesystem: the image's HOME must be a mounted emptyDir.
    for container in all_containers(variant):
        home = image_env(image_target(container))["HOME"]
        mount = mounts(container).get(home)
        assert mount and not mount.get("readOnly"), f"{container['name']}: nothing writable at HOME={home}"
        assert "emptyDir" in volumes(variant)[mount["name"]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_resources_sized_from_measured_memory(variant):
    for container in all_containers(variant):
        resources = container["resources"]
        for key in ("cpu", "memory"):
            assert key in resources["requests"] and key in resources["limits"], (container["name"], key)
        request = mebibytes(resources["requests"]["memory"])
        limit = mebibytes(resources["limits"]["memory"])
        assert limit >= request
    side = sidecar(variant)["resources"]
    assert mebibytes(side["requests"]["memory"]) >= SIDECAR_IDLE_MIB * 1.5
    # Python and git at the peak of a large checkout, with headroom.
    assert mebibytes(side["limits"]["memory"]) >= SIDECAR_SYNC_PEAK_MIB * 1.5
    demo = app(variant)["resources"]
    assert mebibytes(demo["requests"]["memory"]) >= APP_IDLE_MIB
    assert mebibytes(demo["limits"]["memory"]) >= APP_IDLE_MIB * 2


# --- services and ingress ---------------------------------------------------

def pods_selected(variant: str, selector: dict) -> bool:
    labels = one(variant, "Deployment")["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("variant", VARIANTS)
def test_services_reach_the_right_ports(variant):
    app_service = one(variant, "Service", "demo-app")
    webhook_service = one(variant, "Service", "gitsync-webhook")
    for service in (app_service, webhook_service):
        assert pods_selected(variant, service["spec"]["selector"]), service["metadata"]["name"]
    [app_port] = app_service["spec"]["ports"]
    assert container_port(app(variant), app_port["targetPort"]) == int(env_value(app(variant), "PORT"))
    [hook_port] = webhook_service["spec"]["ports"]
    # Named ports of native sidecars resolve in Services only from 1.32.
    assert hook_port["targetPort"] == bind_port()


@pytest.mark.parametrize("variant", VARIANTS)
def test_ingress_exposes_only_the_webhook(variant):
    ingress = one(variant, "Ingress")
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert [(p["path"], p["pathType"]) for p in paths] == [("/api/v1/webhook", "Exact")]
    backend = paths[0]["backend"]["service"]
    service = one(variant, "Service", backend["name"])
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert backend["port"].get("name") in port_names or backend["port"].get("number") in {
        p["port"] for p in service["spec"]["ports"]
    }
    assert service["metadata"]["name"] == "gitsync-webhook"


# --- overlays ---------------------------------------------------------------

def test_base_polls_a_public_repo_with_one_replica():
    assert one(BASE, "Deployment")["spec"]["replicas"] == 1
    assert env_value(sidecar(BASE), "GITSYNC_REPO").startswith("https://")
    names = set(env(sidecar(BASE)))
    assert {"GITSYNC_REPO", "GITSYNC_ROOT", "GITSYNC_LINK", "GITSYNC_PERIOD",
            "GITSYNC_HTTP_BIND", "GITSYNC_RECEIVER_SECRET_FILE"} <= names
    assert not names & {"GITSYNC_USERNAME", "GITSYNC_PASSWORD_FILE", "GITSYNC_SSH_KEY_FILE"}


def test_https_token_overlay():
    container = sidecar("https-token")
    assert env_value(container, "GITSYNC_REPO").startswith("https://")
    assert env(container)["GITSYNC_USERNAME"]["valueFrom"]["secretKeyRef"]["name"] == "gitsync-git-https"
    assert env_value(container, "GITSYNC_PASSWORD_FILE")


def test_ssh_overlay():
    container = sidecar("ssh")
    repo = env_value(container, "GITSYNC_REPO")
    assert repo.startswith("ssh://") or re.match(r"^[\w.-]+@[\w.-]+:", repo), repo
    key = Path(env_value(container, "GITSYNC_SSH_KEY_FILE"))
    known_hosts = Path(env_value(container, "GITSYNC_SSH_KNOWN_HOSTS_FILE"))
    assert env_value(container, "GITSYNC_SSH_KNOWN_HOSTS") == "true"
    volume = volumes("ssh")[mounts(container)[str(key.parent)]["name"]]
    assert volume["secret"]["secretName"] == "gitsync-git-ssh"
    assert volume["secret"]["defaultMode"] == 0o400
    assert known_hosts.parent == key.parent
    assert pod_spec("ssh")["securityContext"]["fsGroup"]


def test_replicas_overlay():
    deployment = one("replicas", "Deployment")
    assert deployment["spec"]["replicas"] > 1
    pdb = one("replicas", "PodDisruptionBudget")
    assert pods_selected("replicas", pdb["spec"]["selector"]["matchLabels"])
    # Pods the webhook did not reach catch up on their next poll: keep it short.
    period = env_value(sidecar("replicas"), "GITSYNC_PERIOD")
    base_period = env_value(sidecar(BASE), "GITSYNC_PERIOD")
    seconds = {"s": 1, "m": 60}
    assert int(period[:-1]) * seconds[period[-1]] <= int(base_period[:-1]) * seconds[base_period[-1]]
