"""Under a flood of badly signed webhooks, real pushes still publish within 1 s.

A second process sends 2,000 badly signed POSTs to the real `gitsync` process
as fast as it can, on 8 keep-alive connections; meanwhile this test pushes real
commits with valid signed webhooks and times each push's webhook to its link flip.
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

FLOOD_SIZE = 2000
FLIP_WITHIN = 1.0

FLOOD = textwrap.dedent("""
    import http.client, json, sys, threading, time
    port, total, deadline = int(sys.argv[1]), int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
    body = json.dumps({"ref": "refs/heads/main", "after": "ab" * 20}).encode()
    variants = [
        {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64},
        {"X-Gitea-Event": "push", "X-Gitea-Signature": "f" * 64},
        {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "guess"},
        {"X-Event-Key": "repo:refs_changed", "X-Hub-Signature": "sha256=" + "1" * 64},
        {},
    ]
    lock, statuses, errors, sent = threading.Lock(), {}, [], [0]

    def next_index():
        with lock:
            if sent[0] >= total or time.monotonic() > deadline:
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
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(json.dumps({"ended": time.monotonic(), "statuses": statuses, "errors": errors[:20],
                      "error_count": len(errors)}), flush=True)
""")


def test_pushes_publish_within_a_second_during_a_flood_of_bad_webhooks(gitsync, remote, tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET)
    root = tmp_path / "root"
    proc = gitsync("--repo", remote.url, "--root", str(root), "--period", "60s",
                   "--http-bind", "127.0.0.1:0", "--receiver-secret-file", str(secret_file))
    port = wait_for(lambda: served_port(lambda: proc.output), timeout=15,
                    message="gitsync to serve")
    base = f"http://127.0.0.1:{port}"
    link = root / "repo.git"
    wait_for(lambda: published_sha(link) == remote.remote_head("main"), message="the first publish")

    flood = subprocess.Popen([sys.executable, "-c", FLOOD, str(port), str(FLOOD_SIZE), "25"],
                             stdout=subprocess.PIPE, text=True)
    try:
        started = json.loads(flood.stdout.readline())["started"]
        flips: list[tuple[float, float]] = []   # (webhook sent, link flipped), monotonic
        answers = []
        n = 0
        while flood.poll() is None and n < 40:
            n += 1
            sha = remote.commit_and_push({"app/main.py": f"print({n})\n"}, f"release {n}")
            headers, body = FORGE_BY_NAME["github"].delivery("refs/heads/main", sha)
            sent = time.monotonic()
            answers.append(requests.post(f"{base}/api/v1/webhook", data=body, headers=headers,
                                         timeout=5).status_code)
            wait_for(lambda: published_sha(link) == sha, timeout=5, interval=0.005,
                     message=f"release {n} to publish")
            flips.append((sent, time.monotonic()))
        out, _ = flood.communicate(timeout=60)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait(10)
    report = json.loads(out.strip().splitlines()[-1])

    during = [(s, f) for s, f in flips if started <= s and f <= report["ended"]]
    assert len(during) >= 3, f"only {len(during)} pushes ran during the flood; it was too short"
    assert sum(report["statuses"].values()) == FLOOD_SIZE, report
    assert report["error_count"] == 0, report["errors"]
    assert set(report["statuses"]) == {"401"}, report["statuses"]
    assert answers == [202] * len(answers)
    slowest = max(f - s for s, f in flips)
    assert slowest < FLIP_WITHIN, f"a push took {slowest:.2f} s from webhook to link flip"
    assert "Traceback" not in proc.output
