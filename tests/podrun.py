"""Run a rendered Deployment's pod under podman, the way the kubelet runs it.

`podman kube play` crashes on Secret volumes (podman 4.3), so the containers are
started one by one from the manifest's own values: image, command and args, literal
env and env from Secrets, every volume mount (emptyDirs as fresh volumes, Secrets as
read-only files), the pod's and the container's user, read-only root, dropped
capabilities, no privilege escalation, memory and CPU limits. Init containers run in
order and each must exit 0; a native sidecar (restartPolicy: Always) is left running
and the next container starts only once its startupProbe answers, as the kubelet does.

One thing differs on purpose: the pod shares the host's network (no CNI here), so each
container port is moved to a free port on 127.0.0.1, in env values, args and probes.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from support.waiting import wait_for
from podutil import Resources, podman

PROBE_TIMEOUT = 2.0
START_DEADLINE = 120.0  # a loaded machine, a first clone, a cold interpreter
ADDRESS = re.compile(r"^(0\.0\.0\.0|127\.0\.0\.1|localhost)?:(\d+)$")


def http_status(url: str, timeout: float = PROBE_TIMEOUT) -> int | None:
    """The status a probe would see, None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, ValueError):
        return None


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9, "": 1}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity)).groups()
    return int(float(number) * units[unit])


def cpus(quantity: str) -> str:
    text = str(quantity)
    return str(int(text[:-1]) / 1000) if text.endswith("m") else text


class PodRun:
    """One pod: start() it, talk to its containers by name, and resources.cleanup() it."""

    def __init__(self, spec: dict, *, images: dict[str, str], resources: Resources, ports: dict[int, int],
                 secrets: dict[str, dict[str, str]], workdir: Path, env: dict[str, str] | None = None):
        self.spec = spec
        self.images = images
        self.resources = resources
        self.ports = ports  # container port -> the free host port it becomes
        self.secrets = secrets
        self.workdir = workdir
        self.env_overrides = env or {}
        self.volume_sources: dict[str, str] = {}
        self.pod: str | None = None

    # --- the kubelet's order -------------------------------------------------

    def start(self) -> None:
        self.pod = self.resources.pod(share_pid=bool(self.spec.get("shareProcessNamespace")))
        self.make_volumes()
        for container in self.spec.get("initContainers", []):
            if container.get("restartPolicy") == "Always":
                self.run(container)
                self.wait_probe(container, "startupProbe")
            else:
                self.run(container, detach=False)
        for container in self.spec["containers"]:
            self.run(container, restart=self.spec.get("restartPolicy", "Always"))
        for container in self.spec["containers"]:
            self.wait_probe(container, "readinessProbe")

    def make_volumes(self) -> None:
        security = self.spec.get("securityContext", {})
        uid, gid = security.get("runAsUser", 0), security.get("fsGroup", security.get("runAsGroup", 0))
        for volume in self.spec.get("volumes", []):
            if "emptyDir" in volume:
                self.volume_sources[volume["name"]] = self.resources.volume(volume["name"], uid, gid)
            elif "secret" in volume:
                self.volume_sources[volume["name"]] = str(self.secret_dir(volume, gid))
            else:
                raise AssertionError(f"volume {volume['name']}: only emptyDir and secret volumes are run here")

    def secret_dir(self, volume: dict, fs_group: int) -> Path:
        """The Secret's keys as files: mode defaultMode, group fsGroup with group read, as the kubelet does."""
        secret = volume["secret"]
        data = self.secrets[secret["secretName"]]
        folder = self.workdir / "secrets" / volume["name"]
        folder.mkdir(parents=True)
        mode = secret.get("defaultMode", 0o644) | (0o040 if fs_group else 0)
        paths = {item["key"]: item["path"] for item in secret.get("items", [])} or {key: key for key in data}
        for key, path in paths.items():
            target = folder / path
            target.write_text(data[key])
            target.chmod(mode)
            if fs_group:
                os.chown(target, 0, fs_group)
        return folder

    def run(self, container: dict, *, detach: bool = True, restart: str | None = None) -> None:
        """restart: the pod's restartPolicy, which podman applies as the kubelet would
        (Always: an app that exits, even with 0, is started again)."""
        policies = {"Always": ["--restart", "always"], "OnFailure": ["--restart", "on-failure"]}
        args = policies.get(restart or "Never", []) + self.run_args(container)
        result = self.resources.run(container["name"], args, detach=detach, timeout=START_DEADLINE)
        if not detach:
            assert result.returncode == 0, f"init container {container['name']}: {result.stderr}"

    # --- the manifest's values as podman's flags --------------------------------

    def run_args(self, container: dict) -> list[str]:
        args = ["--pod", self.pod, *self.security_args(container), *self.limit_args(container)]
        for name, value in self.environment(container).items():
            args += ["--env", f"{name}={value}"]
        for mount in container.get("volumeMounts", []):
            read_only = mount.get("readOnly") or mount["name"] in self.secret_volumes()
            args += ["--volume", f"{self.volume_sources[mount['name']]}:{mount['mountPath']}" + (":ro" if read_only else "")]
        if container.get("workingDir"):
            args += ["--workdir", container["workingDir"]]
        if container.get("command"):
            args += ["--entrypoint", json.dumps(container["command"])]
        args.append(self.image(container))
        return args + [self.moved(arg) for arg in container.get("args", [])]

    def security_args(self, container: dict) -> list[str]:
        pod = self.spec.get("securityContext", {})
        own = container.get("securityContext", {})
        uid = own.get("runAsUser", pod.get("runAsUser"))
        gid = own.get("runAsGroup", pod.get("runAsGroup"))
        args = []
        if uid is not None:
            args += ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]
        if pod.get("fsGroup") is not None:
            args += ["--group-add", str(pod["fsGroup"])]
        if own.get("readOnlyRootFilesystem"):
            # Only what the manifest mounts is writable: no tmpfs of podman's own on /tmp, /run.
            args += ["--read-only", "--read-only-tmpfs=false"]
        capabilities = own.get("capabilities", {})
        for name in capabilities.get("drop", []):
            args += ["--cap-drop", name]
        for name in capabilities.get("add", []):
            args += ["--cap-add", name]
        if own.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        # seccompProfile RuntimeDefault: podman's default profile applies.
        return args

    def limit_args(self, container: dict) -> list[str]:
        limits = container.get("resources", {}).get("limits", {})
        args = []
        if "memory" in limits:
            args += ["--memory", str(memory_bytes(limits["memory"]))]
        if "cpu" in limits:
            args += ["--cpus", cpus(limits["cpu"])]
        return args

    def environment(self, container: dict) -> dict[str, str]:
        env = {}
        for entry in container.get("env", []):
            if "value" in entry:
                env[entry["name"]] = self.moved(entry["value"])
            else:
                ref = entry["valueFrom"]["secretKeyRef"]
                env[entry["name"]] = self.secrets[ref["name"]][ref["key"]]
        env.update({k: v for k, v in self.env_overrides.items() if k in env})
        return env

    def moved(self, value: str) -> str:
        """A container port, alone or in an address, as the free host port it becomes."""
        if value == "0.0.0.0":
            return "127.0.0.1"
        if value.isdigit() and int(value) in self.ports:
            return str(self.ports[int(value)])
        found = ADDRESS.match(value)
        if found and int(found.group(2)) in self.ports:
            return f"127.0.0.1:{self.ports[int(found.group(2))]}"
        return value

    def image(self, container: dict) -> str:
        name = container["image"].rsplit("/", 1)[-1].split(":")[0].split("@")[0]
        assert name in self.images, f"{container['name']}: no image {name} built for the pod test"
        return self.images[name]

    def secret_volumes(self) -> set[str]:
        return {v["name"] for v in self.spec.get("volumes", []) if "secret" in v}

    # --- talking to it ------------------------------------------------------------

    def container(self, name: str) -> dict:
        everything = self.spec.get("initContainers", []) + self.spec["containers"]
        [found] = [c for c in everything if c["name"] == name]
        return found

    def url(self, name: str, port: int | str, path: str = "/") -> str:
        container = self.container(name)
        if isinstance(port, str):
            [port] = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
        return f"http://127.0.0.1:{self.ports[port]}{path}"

    def probe_url(self, name: str, probe: str) -> str:
        get = self.container(name)[probe]["httpGet"]
        return self.url(name, get["port"], get["path"])

    def wait_probe(self, container: dict, probe: str, timeout: float = START_DEADLINE) -> None:
        if probe not in container:
            return
        url = self.probe_url(container["name"], probe)
        wait_for(lambda: http_status(url) == 200 or self.exited(container["name"]), timeout=timeout, interval=0.1,
                 message=f"{container['name']}'s {probe} ({url}) to answer 200")
        assert not self.exited(container["name"]), f"{container['name']} exited:\n{self.logs(container['name'])}"

    def state(self, name: str) -> str:
        return podman("inspect", "--format", "{{.State.Status}}", self.resources.name(name)).stdout.strip()

    def exited(self, name: str) -> bool:
        return self.state(name) in {"exited", "stopped", "dead"}

    def restart_count(self, name: str) -> int:
        """How often podman's restart policy started the container again."""
        found = podman("inspect", "--format", "{{.RestartCount}}", self.resources.name(name))
        return int(found.stdout.strip())

    def exec(self, name: str, *command: str) -> str:
        return podman("exec", self.resources.name(name), *command).stdout

    def kill(self, name: str) -> None:
        podman("kill", "--signal", "KILL", self.resources.name(name))
        wait_for(lambda: self.exited(name), timeout=30, message=f"{name} to be killed")

    def restart(self, name: str) -> None:
        """Start the killed container again, as the kubelet restarts a pod's container."""
        podman("start", self.resources.name(name))
        self.wait_probe(self.container(name), "startupProbe")

    def logs(self, name: str) -> str:
        result = podman("logs", "--tail", "60", self.resources.name(name), check=False)
        return result.stdout + result.stderr

    def all_logs(self) -> str:
        names = [c["name"] for c in self.spec.get("initContainers", []) + self.spec["containers"]]
        return "\n".join(f"--- {name}\n{self.logs(name)}" for name in names)
