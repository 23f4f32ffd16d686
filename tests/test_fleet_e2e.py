"""The fleet end to end: real gitsync processes on 127.0.0.2, .3, ... (own roots and
ports) syncing one file:// remote; a signed forge push to one reaches them all.

The `dns:` form runs against a real DNS server (dnsmasq) on 127.0.0.53:53 that the
test starts; the replicas run under `unshare --mount` with a bind-mounted
/etc/resolv.conf naming it, so the system resolver (getaddrinfo) asks it. That
needs root: outside CI it is skipped without, in CI (CI=true) it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from support.api import FORGE_BY_NAME, SECRET
from support.waiting import wait_for

from gitsync.fleet import SIGNATURE_HEADER, TIMESTAMP_HEADER, signed_headers

BIN = Path(sys.executable).parent
PEER_SECRET = "peer-secret-e2e-71c2"
GITHUB = FORGE_BY_NAME["github"]
DEADLINE = 30.0   # generous: the machine is shared; speed is measured in bench/


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class Replica:
    """One gitsync process bound to host:port; `prefix` wraps the command (unshare)."""

    def __init__(self, tmp: Path, index: int, host: str, port: int, remote_url: str,
                 peers: str, *extra: str, prefix: tuple[str, ...] = ()):
        self.host, self.port, self.index = host, port, index
        self.root = tmp / f"replica-{index}"
        self.log_path = tmp / f"replica-{index}.log"
        self.args = [str(BIN / "gitsync"), "--repo", remote_url, "--root", str(self.root),
                     "--period", "60s", "--http-bind", f"{host}:{port}", "--peers", peers, *extra]
        self.prefix = prefix
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Replica:
        env = {**os.environ, "GITSYNC_RECEIVER_SECRET": SECRET.decode(),
               "GITSYNC_PEER_SECRET": PEER_SECRET}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*self.prefix, *self.args], stdout=log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict | None:
        try:
            return requests.get(self.url + "/api/v1/status", timeout=2).json()
        except (requests.RequestException, ValueError):
            return None

    def commit(self) -> str | None:
        status = self.status()
        return status and status["commit"]

    def metric(self, name: str, result: str) -> float:
        text = requests.get(self.url + "/metrics", timeout=2).text
        for line in text.splitlines():
            if line.startswith(f'{name}_total{{result="{result}"}}'):
                return float(line.split()[-1])
        return 0.0

    def push_webhook(self, sha: str) -> requests.Response:
        headers, body = GITHUB.delivery("refs/heads/main", sha)
        return requests.post(self.url + "/api/v1/webhook", data=body, headers=headers, timeout=5)

    def peer_call(self, body: bytes, headers: dict[str, str]) -> requests.Response:
        return requests.post(self.url + "/api/v1/peer/sync", data=body, headers=headers, timeout=5)


def addresses(count: int, first: int = 2) -> list[tuple[str, int]]:
    """Loopback addresses 127.0.0.<first>.., each with a port free on it."""
    hosts = [f"127.0.0.{first + i}" for i in range(count)]
    return [(host, free_port(host)) for host in hosts]


def listing(pairs) -> str:
    return ",".join(f"{host}:{port}" for host, port in pairs)


@pytest.fixture
def fleet(tmp_path, remote):
    """`fleet(pairs, *extra, peers=...)`: a replica on each (host, port), all ready.

    --peers is the full list of `pairs` unless given (every replica skips itself)."""
    made: list[Replica] = []

    def start(pairs, *extra: str, peers: str | None = None,
              prefix: tuple[str, ...] = ()) -> list[Replica]:
        replicas = [Replica(tmp_path, len(made) + i, host, port, remote.url,
                            peers or listing(pairs), *extra, prefix=prefix)
                    for i, (host, port) in enumerate(pairs)]
        made.extend(replicas)
        for replica in replicas:
            replica.start()
        for replica in replicas:
            wait_for(replica.commit, timeout=DEADLINE, message=f"{replica.url} ready")
        return replicas

    yield start
    for replica in made:
        replica.stop()


def push(remote, text: str) -> str:
    return remote.commit_and_push({"app/main.py": f"print({text!r})\n"}, text)


def wait_all_on(replicas, sha: str) -> None:
    for replica in replicas:
        wait_for(lambda r=replica: r.commit() == sha, timeout=DEADLINE,
                 message=f"{replica.url} on {sha[:7]}")


def synced_by(replica: Replica, trigger: str, sha: str) -> bool:
    return any(e["trigger"] == trigger and e["commit"] == sha for e in replica.status()["history"])


# -- one push, every replica -----------------------------------------------------------

def test_a_push_to_one_replica_reaches_every_replica(fleet, remote):
    replicas = fleet(addresses(3))
    # A push to another branch is not passed on.
    headers, body = GITHUB.delivery("refs/heads/other", "2" * 40)
    other = requests.post(replicas[0].url + "/api/v1/webhook", data=body, headers=headers, timeout=5)
    assert other.status_code == 200
    sha = push(remote, "v2")
    assert replicas[0].push_webhook(sha).status_code == 202
    wait_all_on(replicas, sha)
    # The others were told by their peer, not by a poll (the period is 60 s).
    for replica in replicas[1:]:
        assert synced_by(replica, "peer", sha)
    wait_for(lambda: replicas[0].metric("gitsync_peer_notifications_sent", "sync") == 2,
             message="two notifications sent")
    assert replicas[0].metric("gitsync_peer_notifications_received", "sync") == 0
    assert replicas[1].metric("gitsync_peer_notifications_received", "sync") == 1
    # A peer never passes a notification on.
    assert replicas[1].metric("gitsync_peer_notifications_sent", "sync") == 0
    # The peer secret shows nowhere.
    shown = [replica.output for replica in replicas] + [
        requests.get(replicas[0].url + path, timeout=10).text
        for path in ("/", "/api/v1/status", "/api/v1/fleet", "/metrics")]
    assert not [text for text in shown if PEER_SECRET in text]


def test_the_fleet_view_shows_every_replica_and_convergence(fleet, remote):
    replicas = fleet(addresses(3))
    sha = push(remote, "v2")
    replicas[0].push_webhook(sha)
    wait_all_on(replicas, sha)
    view = requests.get(replicas[1].url + "/api/v1/fleet", timeout=10).json()
    assert sorted(r["address"] for r in view["replicas"]) == sorted(
        f"{r.host}:{r.port}" for r in replicas)
    assert all(r["reachable"] and r["commit"] == sha for r in view["replicas"])
    assert view["converged"] is True and view["commits"] == {sha: 3}
    replicas[2].stop()
    view = requests.get(replicas[1].url + "/api/v1/fleet", timeout=10).json()
    down = [r for r in view["replicas"] if not r["reachable"]]
    assert [r["address"] for r in down] == [f"{replicas[2].host}:{replicas[2].port}"]
    assert down[0]["last_error"]
    assert view["converged"] is True and view["commits"] == {sha: 2}


def test_a_dead_peer_does_not_stop_the_others(fleet, remote):
    pairs = addresses(3)
    replicas = fleet(pairs[:2], peers=listing([*pairs, ("127.0.0.9", free_port("127.0.0.9"))]))
    sha = push(remote, "v2")
    assert replicas[0].push_webhook(sha).status_code == 202
    wait_all_on(replicas, sha)
    # Nothing listens on the third and fourth addresses: counted, and nothing else.
    wait_for(lambda: replicas[0].metric("gitsync_peer_notifications_sent", "unreachable") == 2,
             message="the dead peers counted")
    assert replicas[0].metric("gitsync_peer_notifications_sent", "sync") == 1


def test_a_restarted_peer_catches_up_and_is_told_again(fleet, remote):
    replicas = fleet(addresses(3))
    replicas[2].stop()
    missed = push(remote, "v2")
    replicas[0].push_webhook(missed)
    wait_all_on(replicas[:2], missed)
    replicas[2].start()
    wait_all_on(replicas[2:], missed)       # its start sync
    sha = push(remote, "v3")
    replicas[1].push_webhook(sha)           # any replica can be the one the forge reaches
    wait_all_on(replicas, sha)
    assert synced_by(replicas[2], "peer", sha)


def test_a_replica_that_missed_a_notification_catches_up_by_polling(fleet, remote):
    first, second = addresses(2)
    # The first replica does not know the second; the second polls every second.
    [told] = fleet([first], peers=listing([first]))
    [missed] = fleet([second], "--period", "1s", peers=listing([first, second]))
    sha = push(remote, "v2")
    told.push_webhook(sha)
    wait_all_on([told, missed], sha)
    assert synced_by(missed, "poll", sha)


def test_a_dns_failure_is_logged_and_the_local_sync_still_happens(fleet, remote):
    [host_port] = addresses(1)
    [replica] = fleet([host_port], peers=f"dns:no-such-peer.invalid:{host_port[1]}")
    sha = push(remote, "v2")
    assert replica.push_webhook(sha).status_code == 202
    wait_all_on([replica], sha)
    wait_for(lambda: "cannot resolve no-such-peer.invalid" in replica.output,
             message="the DNS failure logged")


# -- peer calls that must not start syncs ------------------------------------------------

def notice(sha: str, delivery: str) -> bytes:
    return json.dumps({"commit": sha, "ref": "refs/heads/main", "delivery": delivery,
                       "origin": "test"}).encode()


def test_bad_peer_calls_are_refused_and_replays_ignored(fleet, remote):
    [replica] = fleet(addresses(1))
    sha = push(remote, "v2")
    body = notice(sha, "delivery-1")
    good = signed_headers(PEER_SECRET.encode(), body)
    wrong = signed_headers(b"not-the-secret", body)
    stale = signed_headers(PEER_SECRET.encode(), body, now=time.time() - 120)
    unsigned = {"Content-Type": "application/json"}
    for headers in (unsigned, wrong, stale, {**good, SIGNATURE_HEADER: "sha256=" + "0" * 64},
                    {**good, TIMESTAMP_HEADER: str(int(good[TIMESTAMP_HEADER]) + 5)}):
        response = replica.peer_call(body, headers)
        assert response.status_code == 401, headers
        assert "error" in response.json()
    assert replica.commit() != sha, "a refused call started a sync"
    assert replica.peer_call(body, good).status_code == 202
    wait_all_on([replica], sha)
    replayed = replica.peer_call(body, good)
    assert replayed.status_code == 200 and replayed.json()["result"] == "ignored"
    fresh = notice(sha, "delivery-2")
    already = replica.peer_call(fresh, signed_headers(PEER_SECRET.encode(), fresh))
    assert already.status_code == 200 and "already" in already.json()["reason"]
    assert replica.metric("gitsync_peer_notifications_received", "unauthorized") == 4
    assert replica.metric("gitsync_peer_notifications_received", "stale") == 1


def test_a_flood_of_valid_calls_starts_only_rate_limited_syncs(fleet, remote):
    [replica] = fleet(addresses(1))
    before = replica.status()["sync_count"]
    started = time.monotonic()
    answers = []
    for n in range(40):
        body = notice("f" * 40, f"flood-{n}")   # a commit it never has: no "already there"
        answers.append(replica.peer_call(body, signed_headers(PEER_SECRET.encode(), body)))
    elapsed = time.monotonic() - started
    assert {a.status_code for a in answers} == {202}
    assert any(a.json()["result"] == "sync scheduled" for a in answers)
    wait_for(lambda: replica.status()["state"] != "syncing", message="the syncs done")
    # SyncLimiter: a burst of 5, then 2 a second, and one scheduled.
    assert replica.status()["sync_count"] - before <= 5 + 2 * (elapsed + 1) + 1


def test_without_peers_the_fleet_endpoints_are_off(tmp_path, remote, gitsync):
    from support.api import served_port
    proc = gitsync("--repo", remote.url, "--root", str(tmp_path / "solo"), "--http-bind",
                   "127.0.0.1:0", "--period", "60s")
    port = wait_for(lambda: served_port(lambda: proc.output), message="the API")
    for method, path in (("GET", "/api/v1/fleet"), ("POST", "/api/v1/peer/sync")):
        response = requests.request(method, f"http://127.0.0.1:{port}{path}", timeout=5)
        assert response.status_code == 404
        assert "no --peers" in response.json()["error"]


# -- the dns: form against a real DNS server ---------------------------------------------

DNS_ADDRESS = "127.0.0.53"
PEER_NAME = "gitsync-peers.fleet.test"


def need_root_for_dns() -> None:
    missing = [tool for tool in ("dnsmasq", "unshare") if not shutil.which(tool)
               and not Path("/usr/sbin", tool).exists()]
    reason = None
    if os.geteuid() != 0:
        reason = "the dns: test needs root (a DNS server on port 53, unshare --mount)"
    elif missing:
        reason = f"the dns: test needs {', '.join(missing)} (Debian: dnsmasq-base, util-linux)"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def dns_server(tmp_path):
    """`set(hosts)`: dnsmasq on 127.0.0.53:53 answers PEER_NAME with `hosts` (started on
    the first call; later calls rewrite its hosts file and have it re-read)."""
    need_root_for_dns()
    hosts_file, log_path = tmp_path / "peers.hosts", tmp_path / "dnsmasq.log"
    running: list[subprocess.Popen] = []

    def set_hosts(hosts) -> None:
        hosts_file.write_text("".join(f"{host} {PEER_NAME}\n" for host in hosts))
        if running:
            running[0].send_signal(signal.SIGHUP)   # dnsmasq re-reads its hosts files
            return
        with open(log_path, "wb") as log:
            running.append(subprocess.Popen(
                [shutil.which("dnsmasq") or "/usr/sbin/dnsmasq", "--keep-in-foreground",
                 "--no-resolv", "--no-hosts", "--no-poll", f"--addn-hosts={hosts_file}",
                 f"--listen-address={DNS_ADDRESS}", "--bind-interfaces", "--port=53",
                 "--cache-size=0", "--user=root", "--log-facility=-"],
                stdout=log, stderr=subprocess.STDOUT))
        # Until it has read the file it may die of a SIGHUP, so wait for that.
        wait_for(lambda: f"read {hosts_file}" in log_path.read_text(), timeout=DEADLINE,
                 message="dnsmasq started")

    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {DNS_ADDRESS}\noptions timeout:1 attempts:2\n")
    set_hosts.resolv = resolv
    yield set_hosts
    for proc in running:
        proc.terminate()
        proc.wait(10)


def resolves(resolv: Path, expected: set[str]) -> bool:
    """Ask through the system resolver, as gitsync will, in the same kind of namespace."""
    script = ("import socket,sys;print(' '.join(sorted({i[4][0] for i in "
              f"socket.getaddrinfo({PEER_NAME!r}, 80, type=socket.SOCK_STREAM)}})))")
    result = subprocess.run(in_namespace(resolv) + [sys.executable, "-c", script],
                            capture_output=True, text=True, timeout=20)
    return result.returncode == 0 and set(result.stdout.split()) == expected


def in_namespace(resolv: Path) -> list[str]:
    """A private mount namespace where /etc/resolv.conf is `resolv`: gone with the process."""
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv)]


def test_dns_peers_are_found_through_a_real_dns_server(fleet, remote, dns_server):
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    port = free_port("127.0.0.2")
    dns_server(hosts)
    wait_for(lambda: resolves(dns_server.resolv, set(hosts)), timeout=DEADLINE,
             message="dnsmasq answering")
    replicas = fleet([(host, port) for host in hosts], peers=f"dns:{PEER_NAME}:{port}",
                     prefix=tuple(in_namespace(dns_server.resolv)))
    sha = push(remote, "v2")
    assert replicas[0].push_webhook(sha).status_code == 202
    wait_all_on(replicas, sha)
    for replica in replicas[1:]:
        assert synced_by(replica, "peer", sha)
    view = requests.get(replicas[2].url + "/api/v1/fleet", timeout=10).json()
    assert sorted(r["address"] for r in view["replicas"]) == [f"{h}:{port}" for h in hosts]
    assert view["converged"] is True
    # Resolved afresh each time: a replica the name no longer lists is not told.
    dns_server(hosts[:2])
    wait_for(lambda: resolves(dns_server.resolv, set(hosts[:2])), timeout=DEADLINE,
             message="dnsmasq answering the new list")
    sha = push(remote, "v3")
    replicas[0].push_webhook(sha)
    wait_all_on(replicas[:2], sha)
    # Two notifications for the first push, one for the second.
    wait_for(lambda: replicas[0].metric("gitsync_peer_notifications_sent", "sync") == 3,
             message="the second push passed on")
    assert replicas[0].metric("gitsync_peer_notifications_sent", "unreachable") == 0
    assert replicas[2].commit() != sha
