"""The fleet's manifests (overlays/replicas), rendered and validated as test_k8s.py
does: the headless Service the peers are found through, the sidecar's --peers and
peer secret, and the NetworkPolicy that keeps the API to the pods and the ingress."""

from __future__ import annotations

from test_k8s import (
    app,
    assert_every_resource_validates,
    bind_port,
    container_port,
    env_value,
    mounts,
    one,
    pods_selected,
    rendered,
    sidecar,
    volumes,
)

from gitsync.config import parse_args

VARIANT = "replicas"


def test_the_overlay_validates_strict():
    assert_every_resource_validates(f"{VARIANT}.yaml", len(rendered(VARIANT)))


def peer_service() -> dict:
    return one(VARIANT, "Service", "gitsync-peers")


def test_peers_are_found_through_a_headless_service_that_lists_unready_pods():
    spec = peer_service()["spec"]
    assert spec["clusterIP"] == "None"
    assert spec["publishNotReadyAddresses"] is True
    assert pods_selected(VARIANT, spec["selector"])
    [port] = spec["ports"]
    assert port["port"] == port["targetPort"] == bind_port()


def test_the_sidecar_names_the_headless_service_as_its_peers():
    peers = env_value(sidecar(VARIANT), "GITSYNC_PEERS")
    assert peers == f"dns:{peer_service()['metadata']['name']}:{bind_port()}"
    # gitsync itself accepts the value, and checks the secret is there.
    config = parse_args(["--repo", "https://git.example.com/x.git", "--root", "/git",
                         "--peers", peers, "--http-bind", "0.0.0.0:8080"],
                        {"GITSYNC_PEER_SECRET": "s"})
    assert config.peers.dns_name == "gitsync-peers" and config.peers.port == bind_port()


def test_the_peer_secret_comes_from_its_own_secret():
    container = sidecar(VARIANT)
    path = env_value(container, "GITSYNC_PEER_SECRET_FILE")
    folder, _, key = path.rpartition("/")
    mount = mounts(container)[folder]
    assert mount.get("readOnly") is True
    secret = volumes(VARIANT)[mount["name"]]["secret"]
    assert secret["secretName"] == "gitsync-peer" and key == "secret"
    assert secret["defaultMode"] == 0o400
    # Not the receiver's secret: a forge never learns what the peers sign with.
    receiver = env_value(container, "GITSYNC_RECEIVER_SECRET_FILE").rpartition("/")[0]
    assert volumes(VARIANT)[mounts(container)[receiver]["name"]]["secret"]["secretName"] != "gitsync-peer"


def policy() -> dict:
    return one(VARIANT, "NetworkPolicy")


def rules_for(port: int) -> list[dict]:
    return [rule for rule in policy()["spec"]["ingress"]
            if any(p["port"] == port for p in rule.get("ports", []))]


def test_the_policy_covers_the_pods_and_only_ingress():
    spec = policy()["spec"]
    assert pods_selected(VARIANT, spec["podSelector"]["matchLabels"])
    assert spec["policyTypes"] == ["Ingress"]


def test_only_the_pods_and_the_ingress_controller_reach_the_api():
    [rule] = rules_for(bind_port())
    sources = rule["from"]
    assert sources, "an API rule with no `from` admits everyone"
    app_labels = one(VARIANT, "Deployment")["spec"]["template"]["metadata"]["labels"]
    pods = [s for s in sources if "podSelector" in s and "namespaceSelector" not in s]
    namespaces = [s for s in sources if "namespaceSelector" in s and "podSelector" not in s]
    assert len(pods) + len(namespaces) == len(sources)
    assert [s["podSelector"]["matchLabels"] for s in pods] == [
        {"app.kubernetes.io/name": app_labels["app.kubernetes.io/name"]}]
    [controller] = namespaces
    assert controller["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
    assert {p["port"] for p in rule["ports"]} == {bind_port()}


def test_the_app_port_stays_open():
    target = one(VARIANT, "Service", "demo-app")["spec"]["ports"][0]["targetPort"]
    [rule] = rules_for(container_port(app(VARIANT), target))
    assert "from" not in rule
