"""`make harden`: attack a real gitsync on loopback and write docs/reliability.md.

    .venv/bin/python bench/harden.py                  # every attack, ~3 minutes
    .venv/bin/python bench/harden.py --quick          # short phases, a smoke run
    .venv/bin/python bench/harden.py --only idle,flood --no-write

gitsync runs as in a container: its own process, nofile=1024, a real remote
(file://), `--period 60s` so webhooks are the trigger. During each attack a
prober times /healthz and a valid signed webhook on fresh connections (as a
kubelet and a forge do), and the attack ends with a real push that must be
published through its webhook. The table counts what was sent, what was held,
the faults seen and what was lost. Attackers run in their own processes
(`--attacker KIND`), so they do not share the prober's interpreter.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))   # the receiver fuzz strategies

import common  # noqa: E402

NOFILE = 1024            # what containers run with
CAP = 5 * 1024 * 1024    # the default --receiver-max-body
PROBE_EVERY = 0.1
PROBE_TIMEOUT = 10.0
LIMIT_AND_EXEC = ("import os, resource, sys; n = int(sys.argv[1]); "
                  "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])")


# -- the target --------------------------------------------------------------------------

class Target:
    """A real gitsync with its API on 127.0.0.1, limited to NOFILE descriptors."""

    def __init__(self, ctx: common.Context, secret: bytes):
        self.ctx, self.secret = ctx, secret
        cached = common.ensure_repo(ctx, common.RepoSpec(50))
        self.remote = common.Remote(ctx, cached, "harden")
        root = ctx.tempdir("harden")
        secret_file = root / "secret"
        secret_file.write_bytes(secret + b"\n")
        self.link = root / "sync" / "repo"
        args = [str(common.BIN / "gitsync"), "--repo", self.remote.url, "--root", str(root / "sync"),
                "--link", "repo", "--ref", common.BRANCH, "--period", "60s", "--max-failures", "-1",
                "--http-bind", "127.0.0.1:0", "--receiver-secret-file", str(secret_file)]
        self.proc = ctx.start([sys.executable, "-c", LIMIT_AND_EXEC, str(NOFILE), *args], "gitsync")
        match = self.proc.wait_for_output(r"serving the HTTP API on http://([\d.]+):(\d+)", 30)
        if match is None:
            raise RuntimeError(f"gitsync did not serve its API: {common.failure_line(self.proc.output)}")
        self.port = int(match.group(2))
        if common.wait_for_link(self.link, self.remote.head(), 120) is None:
            raise RuntimeError(f"gitsync published nothing: {common.failure_line(self.proc.output)}")

    def descriptors(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            return -1

    def push_and_publish(self) -> float | None:
        """Push a commit, announce it by webhook; seconds to the link flip (None: not published)."""
        sha = self.remote.commit("harden")
        self.remote.push()
        started = time.monotonic()
        for _ in range(20):   # the webhook itself may meet the attack: retry it, count it
            try:
                status, _ = post_signed(self.port, self.secret, "refs/heads/main", sha)
                if status == 202:
                    break
            except OSError:
                time.sleep(0.5)
        flip = common.wait_for_link(self.link, sha, 60)
        return None if flip is None else time.monotonic() - started


def post_signed(port: int, secret: bytes, ref: str, sha: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
    try:
        return common.post_github(conn, secret, common.github_push(ref, sha))
    finally:
        conn.close()


# -- the prober --------------------------------------------------------------------------

class Prober:
    """Times /healthz and a valid signed webhook (to another ref: no sync) on fresh connections."""

    def __init__(self, target: Target):
        self.target = target
        self.times: dict[str, list[float]] = {"healthz": [], "webhook": []}
        self.failures: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(PROBE_TIMEOUT + 5)

    def _run(self) -> None:
        while not self._stop.wait(PROBE_EVERY):
            self._time("healthz", self._healthz, 200)
            self._time("webhook", lambda: post_signed(self.target.port, self.target.secret,
                                                       "refs/heads/other", "1" * 40)[0], 200)

    def _healthz(self) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.target.port, timeout=PROBE_TIMEOUT)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status
        finally:
            conn.close()

    def _time(self, name: str, call, expected: int) -> None:
        started = time.monotonic()
        try:
            status = call()
        except OSError as error:
            self.failures[f"{name} {type(error).__name__}"] += 1
            return
        if status != expected:
            self.failures[f"{name} {status}"] += 1
        self.times[name].append(time.monotonic() - started)


# -- one row of the table -------------------------------------------------------------------

@dataclass
class Row:
    attack: str
    sent: str = ""
    held: str = "-"
    faults: Counter = field(default_factory=Counter)
    probes: dict = field(default_factory=dict)
    publish_s: float | None = None
    lost: str = "nothing"
    notes: list[str] = field(default_factory=list)

    def measure(self, prober: Prober) -> None:
        for name, times in prober.times.items():
            self.probes[name] = common.summary_ms(times, 50, 99) | {"seconds": times}
        self.faults.update(prober.failures)


def attacker(kind: str, port: int, count: int, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--attacker", kind, "--port", str(port),
                             "--connections", str(count), "--seconds", str(seconds)],
                            stdout=subprocess.PIPE, text=True)


def attack_connections(target: Target, kind: str, opts) -> Row:
    row = Row(f"{opts.connections:,} {kind} connections, one client, {opts.seconds:g} s")
    attack = attacker(kind, target.port, opts.connections, opts.seconds)
    time.sleep(min(3.0, opts.seconds / 4))    # let it open them all
    peak_fds = 0
    with Prober(target) as prober:
        while attack.poll() is None:
            peak_fds = max(peak_fds, target.descriptors())
            time.sleep(0.5)
    report = json.loads(attack.stdout.read() or "{}")
    row.measure(prober)
    row.publish_s = target.push_and_publish()
    row.sent = f"{report.get('connects', 0):,} connects, {report.get('bytes', 0):,} bytes"
    row.held = f"{report.get('open_max', 0):,} open (client side)"
    row.notes.append(f"closed by gitsync: {report.get('closed_by_server', 0):,}; gitsync's open "
                     f"descriptors at most {peak_fds} of {NOFILE}")
    return row


def attack_flood(target: Target, opts) -> Row:
    row = Row(f"bad-signature flood, 8 keep-alive connections, {opts.seconds:g} s")
    attack = attacker("flood", target.port, 8, opts.seconds)
    with Prober(target) as prober:
        pushes = [target.push_and_publish() for _ in range(3)]
        attack.wait()
    report = json.loads(attack.stdout.read() or "{}")
    row.measure(prober)
    row.sent = f"{sum(report.get('statuses', {}).values()):,} requests"
    row.held = "8"
    row.faults.update({f"flood {k}": v for k, v in report.get("statuses", {}).items() if k != "401"})
    row.faults.update({f"flood {k}": v for k, v in report.get("errors", {}).items()})
    row.publish_s = max((p for p in pushes if p is not None), default=None)
    if any(p is None for p in pushes):
        row.lost = f"{sum(p is None for p in pushes)} of {len(pushes)} pushes"
    row.notes.append(f"3 pushes published during the flood, slowest {row.publish_s or 0:.2f} s")
    return row


def attack_oversize(target: Target, opts) -> Row:
    row = Row("bodies at, over and far over the 5 MiB cap (http.client: sends all, then reads)")
    # Up to the server's drain bound (64 MiB): beyond it the connection is cut on purpose.
    sizes = [CAP, CAP + 1, CAP + 2**20, CAP + 8 * 2**20, CAP + 56 * 2**20]
    statuses = Counter()
    for size in sizes * opts.repeat:
        head = b'{"ref": "refs/heads/other", "after": "' + b"1" * 40 + b'", "pad": "'
        body = head + b"x" * (size - len(head) - 2) + b'"}'
        headers = {"X-GitHub-Event": "push", "Content-Type": "application/json",
                   "X-Hub-Signature-256": "sha256=" + hmac.new(target.secret, body,
                                                               hashlib.sha256).hexdigest()}
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=60)
        try:
            conn.request("POST", "/api/v1/webhook", body=body, headers=headers)
            status = conn.getresponse().status
            statuses[f"{'cap' if size == CAP else 'over'} {status}"] += 1
        except OSError as error:
            row.faults[f"{'cap' if size == CAP else 'over'} {type(error).__name__}"] += 1
        finally:
            conn.close()
    row.sent = f"{len(sizes) * opts.repeat} requests, {sum(sizes) * opts.repeat / 2**20:,.0f} MiB"
    row.held = "1"
    row.faults.update({k: v for k, v in statuses.items() if k not in ("cap 200", "over 413")})
    row.notes.append(", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())))
    row.publish_s = target.push_and_publish()
    return row


def attack_fuzz(target: Target, opts) -> Row:
    """The receiver fuzz strategies of tests/test_receiver_fuzz.py, over real sockets."""
    from hypothesis import HealthCheck, Phase, given, settings

    import test_receiver_fuzz as fuzz
    from support.api import FORGES
    row = Row(f"fuzzed webhooks, {len(FORGES)} forges")
    outcome: Counter = Counter()
    before = status_of(target)["sync_count"]

    def send(delivery) -> None:
        headers, body, _ = delivery
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=PROBE_TIMEOUT)
        try:
            conn.request("POST", "/api/v1/webhook", body=body, headers=headers)
            answer = conn.getresponse()
            text = answer.read() + repr(answer.getheaders()).encode()
        except (OSError, http.client.HTTPException) as error:
            row.faults[f"fuzz {type(error).__name__}"] += 1
            return
        finally:
            conn.close()
        outcome[answer.status] += 1
        if answer.status >= 500:
            row.faults["fuzz 5xx"] += 1
        if answer.status == 202 and not fuzz.carries_valid_proof(headers, body):
            row.faults["sync without a valid proof"] += 1
        if any(form.encode() in text for form in fuzz.secret_forms()):
            row.faults["secret echoed"] += 1

    for forge in FORGES:
        run = settings(max_examples=opts.fuzz, deadline=None, database=None, phases=[Phase.generate],
                       suppress_health_check=list(HealthCheck))(given(fuzz.deliveries(forge))(send))
        run()
    row.sent = f"{sum(outcome.values()):,} requests"
    row.held = "1"
    row.notes.append("answers: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(outcome.items())))
    row.publish_s = target.push_and_publish()
    syncs = status_of(target)["sync_count"] - before
    row.notes.append(f"syncs: {syncs:,} for {outcome[202]:,} answers 202 (a burst coalesces)")
    return row


def status_of(target: Target) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=PROBE_TIMEOUT)
    try:
        conn.request("GET", "/api/v1/status")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def baseline(target: Target, opts) -> Row:
    row = Row("none (baseline)", sent="probes only")
    with Prober(target) as prober:
        time.sleep(min(opts.seconds, 5))
    row.measure(prober)
    row.publish_s = target.push_and_publish()
    return row


# Each attack: (name for --only, function(target, opts) -> Row).
# Engine-side attacks go here too, once they exist: a tmpfs filling up during a fetch
# and a checkout, SIGKILLs of gitsync during syncs (restart it, then check the link),
# SIGTERM during a large checkout. Each returns a Row whose `lost` names what a reader
# of the published tree lost (nothing).
ATTACKS = {
    "baseline": baseline,
    "idle": lambda target, opts: attack_connections(target, "idle", opts),
    "dribble": lambda target, opts: attack_connections(target, "dribbling", opts),
    "flood": attack_flood,
    "oversize": attack_oversize,
    "fuzz": attack_fuzz,
}


# -- the attackers (run as `harden.py --attacker KIND`, in their own process) ----------------

DRIBBLE_HEAD = b"POST /api/v1/webhook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-Slow: "


def hold_connections(port: int, count: int, seconds: float, dribble: bool) -> dict:
    """Keep `count` connections open (reopening any the server closes); dribblers send
    one byte of a request head that never ends to each, every half second."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 64)), hard))
    chooser = selectors.DefaultSelector()
    stats = Counter()
    sent: dict[socket.socket, int] = {}

    def open_one() -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        chooser.register(sock, selectors.EVENT_READ)
        sent[sock] = 0
        stats["connects"] += 1

    def drop(sock: socket.socket) -> None:
        chooser.unregister(sock)
        sent.pop(sock, None)
        sock.close()
        stats["closed_by_server"] += 1

    for _ in range(count):
        open_one()
    deadline, next_dribble = time.monotonic() + seconds, 0.0
    while time.monotonic() < deadline:
        for key, _ in chooser.select(timeout=0.1):
            try:
                data = key.fileobj.recv(65536)
            except OSError:
                data = b""
            if not data:   # closed (or refused): take its place again
                drop(key.fileobj)
                open_one()
        stats["open_max"] = max(stats["open_max"], len(sent))
        if dribble and time.monotonic() >= next_dribble:
            next_dribble = time.monotonic() + 0.5
            for sock, position in list(sent.items()):
                try:
                    stats["bytes"] += sock.send(DRIBBLE_HEAD[position:position + 1] or b"a")
                    sent[sock] = position + 1
                except OSError:
                    pass    # not connected yet, or being closed: the select loop sees it
    for sock in list(sent):
        sock.close()
    return dict(stats)


def flood(port: int, connections: int, seconds: float) -> dict:
    """Badly signed webhooks as fast as `connections` keep-alive connections allow."""
    body = json.dumps({"ref": "refs/heads/main", "after": "ab" * 20}).encode()
    variants = [{"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64},
                {"X-Gitea-Event": "push", "X-Gitea-Signature": "f" * 64},
                {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "guess"},
                {"X-Event-Key": "repo:refs_changed", "X-Hub-Signature": "sha256=" + "1" * 64}, {}]
    lock, statuses, errors = threading.Lock(), Counter(), Counter()
    deadline = time.monotonic() + seconds

    def worker(offset: int) -> None:
        conn, n = http.client.HTTPConnection("127.0.0.1", port, timeout=10), offset
        while time.monotonic() < deadline:
            n += 1
            try:
                conn.request("POST", "/api/v1/webhook", body=body,
                             headers={"Content-Type": "application/json", **variants[n % len(variants)]})
                response = conn.getresponse()
                response.read()
                with lock:
                    statuses[str(response.status)] += 1
            except (OSError, http.client.HTTPException) as error:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                with lock:
                    errors[type(error).__name__] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"statuses": dict(statuses), "errors": dict(errors)}


def run_attacker(opts) -> int:
    if opts.attacker == "flood":
        result = flood(opts.port, opts.connections, opts.seconds)
    else:
        result = hold_connections(opts.port, opts.connections, opts.seconds,
                                  dribble=opts.attacker == "dribbling")
    print(json.dumps(result))
    return 0


# -- the table -------------------------------------------------------------------------------

def latency(row: Row, name: str) -> str:
    probe = row.probes.get(name)
    if probe is None:
        return "-"          # this attack is not probed
    if not probe["n"]:
        return "no answer"
    slow = sum(1 for seconds in probe["seconds"] if seconds > 1.0)
    return (f"{probe['p50_ms']:.0f} / {probe['p99_ms']:.0f} / {probe['max_ms']:.0f} "
            f"({probe['n']}; {slow} over 1 s)")


def table(rows: list[Row], machine: dict, opts) -> str:
    lines = [
        "# Reliability: what an attack on a real gitsync does", "",
        "Produced by `make harden` (bench/harden.py); rerun it to check these figures on your",
        "machine. gitsync runs as its own process with nofile=1024 (as in a container), on",
        "127.0.0.1, tracking a real remote with `--period 60s`. During each attack a prober",
        "sends `GET /healthz` and a valid signed webhook (a push to another ref) every",
        f"{PROBE_EVERY * 1000:.0f} ms, each on a fresh connection; each attack ends with a real push that must be",
        "published through its webhook. Latencies are p50 / p99 / max in ms (answers;",
        "how many took over 1 s);",
        "the goal is every probe answered within 1 s. *Connections held* counts the",
        "attacker's open sockets; it reopens each one gitsync closes at once, so *sent*",
        "counts its connects. *Faults* are 5xx answers, resets, timeouts, syncs without a",
        "valid proof of the secret, and echoed secrets; the bad-signature flood's 401s and",
        "the oversize bodies' 413s are the expected answers. *Lost* is what a reader of",
        "the published tree or a sender of a valid webhook lost.", "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: nproc={machine['nproc']}, {machine['git']}, "
        f"python {machine['python']}, load average {machine['loadavg_start'][0]:.1f} at the start"
        f"{', quick run' if opts.quick else ''}.", "",
        "| attack | sent | connections held | faults | /healthz | valid webhook | push → published | lost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        faults = ", ".join(f"{k}: {v}" for k, v in sorted(row.faults.items())) or "0"
        publish = "not published" if row.publish_s is None else f"{row.publish_s:.2f} s"
        lines.append(f"| {row.attack} | {row.sent} | {row.held} | {faults} | {latency(row, 'healthz')} "
                     f"| {latency(row, 'webhook')} | {publish} | {row.lost} |")
    lines += ["", "Notes:", ""]
    lines += [f"- {row.attack}: {note}" for row in rows for note in row.notes]
    lines += ["", "How the API holds (webhook/server.py): the kernel hands gitsync a connection only",
              "once it has sent data (TCP_DEFER_ACCEPT, 10 s), so idle sockets wait in the kernel;",
              "past 200 connections gitsync closes the oldest ones not being served, of the client",
              "holding the most, so a fresh request always gets in; a connection must send a",
              "complete request within 30 s; a body refused after its head (413) is read and",
              "discarded (up to 64 MiB or 10 s) before the close, so clients that send it all",
              "before reading see the 413. Faults in the engine (SIGKILLs, a full disk) are in",
              "the next table (bench/faults.py).", ""]
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases: a smoke run")
    parser.add_argument("--only", default=",".join(ATTACKS), help=f"comma list of {', '.join(ATTACKS)}")
    parser.add_argument("--seconds", type=float, help="length of each connection attack (20; quick 4)")
    parser.add_argument("--connections", type=int, default=1000, help="idle or dribbling connections")
    parser.add_argument("--fuzz", type=int, help="fuzzed webhooks per forge (1000; quick 30)")
    parser.add_argument("--repeat", type=int, help="rounds of oversize bodies (3; quick 1)")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="scratch and cached repos")
    parser.add_argument("--write", type=Path, default=HERE.parent / "docs" / "reliability.md")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--attacker", choices=("idle", "dribbling", "flood"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    for name, full, quick in (("seconds", 20.0, 4.0), ("fuzz", 1000, 30), ("repeat", 3, 1)):
        if getattr(opts, name) is None:
            setattr(opts, name, quick if opts.quick else full)
    opts.parts = [part.strip() for part in opts.only.split(",") if part.strip()]
    unknown = set(opts.parts) - set(ATTACKS)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}")
    return opts


def main(argv=None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if opts.attacker:
        return run_attacker(opts)
    from support.api import SECRET as fuzz_secret   # the fuzz strategies sign with this one
    opts.out.mkdir(parents=True, exist_ok=True)
    ctx = common.Context(opts.out, opts.quick)
    machine = common.machine_info(ctx.env)
    rows: list[Row] = []
    try:
        target = Target(ctx, fuzz_secret)
        for part in opts.parts:
            print(f"== {part}", flush=True)
            row = ATTACKS[part](target, opts)
            if not target.proc.alive():
                row.lost = "gitsync died: " + common.failure_line(target.proc.output)
            rows.append(row)
            probes = {name: latency(row, name) for name in row.probes}
            print(f"   faults {dict(row.faults)}, probes {probes}, published "
                  f"{row.publish_s}, lost {row.lost}", flush=True)
    finally:
        ctx.close()
    text = table(rows, machine, opts)
    print(text)
    if not opts.no_write:
        opts.write.parent.mkdir(parents=True, exist_ok=True)
        opts.write.write_text(text)
        print(f"written to {opts.write}")
    bad = any(row.faults or row.lost != "nothing" or row.publish_s is None for row in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
