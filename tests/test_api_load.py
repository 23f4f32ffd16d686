"""Under a flood of badly signed webhooks, real pushes still publish.

A second process sends badly signed POSTs to the real `gitsync` process as fast as
it can, on 8 keep-alive connections, until it is told to stop and has sent at least
2,000; meanwhile this test pushes real commits with valid signed webhooks, each one
only once the flood has been answered more since the last. So every push meets the
flood by construction, however busy the machine: nothing here counts on a clock.
How fast a push publishes under a flood is measured in bench/, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import requests

from support.api import FORGE_BY_NAME, SECRET, served_port
from support.repos import published_sha
from support.waiting import wait_for

FLOOD_SIZE = 2000      # the flood sends at least this many, and goes on until told to stop
PUSHES = 5
FLOOD_LIMIT = 300.0    # seconds: only a flood that hangs gets this far (then the test fails)

FLOOD = textwrap.dedent("""
    import http.client, json, sys, threading, time
    port, minimum, deadline = int(sys.argv[1]), int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
    body = json.dumps({"ref": "refs/heads/main", "after": "ab" * 20}).encode()
    variants = [
        {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64},
        {"X-Gitea-Event": "push", "X-Gitea-Signature": "f" * 64},
        {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "guess"},
        {"X-Event-Key": "repo:refs_changed", "X-Hub-Signature": "sha256=" + "1" * 64},
        {},
    ]
    lock, statuses, errors, sent = threading.Lock(), {}, [], [0]
    stop = threading.Event()   # set when stdin closes: the test's pushes are done

    def wait_for_stop():
        sys.stdin.read()
        stop.set()

    def next_index():
        with lock:
            if (stop.is_set() and sent[0] >= minimum) or time.monotonic() > deadline:
                return None
            sent[0] += 1
            return sent[0]

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while (n := next_index()) is not None:
            headers = {"Content-Type": "application/json", **variants[n % len(variants)]}
            try:
                conn.request("POST", "/api/v1/webhook", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except Exception as err:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                with lock:
                    errors.append(repr(err))
                continue
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
        conn.close()

    print(json.dumps({"started": time.monotonic()}), flush=True)
    threading.Thread(target=wait_for_stop, daemon=True).start()
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(json.dumps({"ended": time.monotonic(), "sent": sent[0], "statuses": statuses,
                      "errors": errors[:20], "error_count": len(errors),
                      "hit_limit": time.monotonic() > deadline}), flush=True)
""")


def unauthorized_answers(base: str) -> float:
    """How many webhooks gitsync has refused as unsigned or badly signed, from /metrics."""
    text = requests.get(f"{base}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("gitsync_webhook_requests_total") and 'result="unauthorized"' in line)


def test_pushes_publish_during_a_flood_of_bad_webhooks(gitsync, remote, tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET)
    root = tmp_path / "root"
    proc = gitsync("--repo", remote.url, "--root", str(root), "--period", "60s",
                   "--http-bind", "127.0.0.1:0", "--receiver-secret-file", str(secret_file))
    port = wait_for(lambda: served_port(lambda: proc.output), message="gitsync to serve")
    base = f"http://127.0.0.1:{port}"
    link = root / "repo.git"
    wait_for(lambda: published_sha(link) == remote.remote_head("main"), message="the first publish")

    flood = subprocess.Popen([sys.executable, "-c", FLOOD, str(port), str(FLOOD_SIZE), str(FLOOD_LIMIT)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        started = json.loads(flood.stdout.readline())["started"]
        flips: list[tuple[float, float]] = []   # (webhook sent, link flipped), monotonic
        answers = []
        refused = 0.0
        for n in range(1, PUSHES + 1):
            # This push meets the flood: it has been answered more since the last push.
            refused = wait_for(lambda: (count := unauthorized_answers(base)) > refused and count,
                               message=f"the flood to go on before release {n}")
            sha = remote.commit_and_push({"app/main.py": f"print({n})\n"}, f"release {n}")
            headers, body = FORGE_BY_NAME["github"].delivery("refs/heads/main", sha)
            sent = time.monotonic()
            answers.append(requests.post(f"{base}/api/v1/webhook", data=body, headers=headers,
                                         timeout=30).status_code)
            wait_for(lambda: published_sha(link) == sha, interval=0.005,
                     message=f"release {n} to publish during the flood")
            flips.append((sent, time.monotonic()))
        assert flood.poll() is None, "the flood ended before the pushes did"
        out, _ = flood.communicate("", timeout=FLOOD_LIMIT + 60)   # stdin closes: stop
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait(10)
    report = json.loads(out.strip().splitlines()[-1])

    assert not report["hit_limit"], f"the flood ran into its {FLOOD_LIMIT} s limit: {report}"
    assert all(started <= s and f <= report["ended"] for s, f in flips), (started, flips, report)
    assert report["sent"] >= FLOOD_SIZE, report
    assert sum(report["statuses"].values()) == report["sent"], report
    assert report["error_count"] == 0, report["errors"]
    assert set(report["statuses"]) == {"401"}, report["statuses"]
    assert answers == [202] * PUSHES
    assert "Traceback" not in proc.output
