"""Issue 12: push -> live when the push changes the app's dependencies, and when it does
not. The demo app under `gitsync-reload --prepare` (pip installing
demo-app/extra-requirements.txt into $GITSYNC_CACHE/site, from a tiny wheel made here:
--no-index, no network), beside gitsync (webhook, or a 1s poll without the API). The
pushes alternate: one changes message.txt only (the key stays: no prepare), the next
also changes extra-requirements.txt (a new key: pip runs before the restart)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import re
import shlex
import time
import zipfile
from pathlib import Path

import common
from bench_live import APP_DIR, RELOAD_ARGS, SECRET, DemoRemote, wait_for_body
from common import BIN, Context, Gitsync

LIVE_TIMEOUT = 60
KEY_FILE = f"{APP_DIR}/extra-requirements.txt"
WHEEL = ("tinydep", "1.0")


def run(ctx: Context, opts) -> tuple[dict, list[str]]:
    remote = Remote(ctx)
    wheels = ctx.tempdir("wheels")
    build_wheel(wheels, *WHEEL)
    data = common.guarded(push_to_live, ctx, opts, remote, wheels, prepare=True)
    if "error" not in data:
        baseline = common.guarded(push_to_live, ctx, opts, remote, wheels, prepare=False)
        data["no_prepare"] = baseline.get("same_key", baseline)
        data["ratio_same_key_over_no_prepare_p50"] = common.ratio(data["same_key"]["p50_ms"],
                                                                  data["no_prepare"].get("p50_ms"))
    return {"pushes_each": opts.prepare_pushes, "settle_s": opts.settle, "reload_args": " ".join(RELOAD_ARGS),
            "prepare": prepare_line(wheels), **data}, report(data)


class Remote(DemoRemote):
    """The demo app's remote (bench_live) with a requirements file: the prepare's key."""

    def __init__(self, ctx: Context):
        super().__init__(ctx, "prepare-remote", {KEY_FILE: f"{WHEEL[0]}=={WHEEL[1]}\n"})

    def commit_and_push(self, change_key: bool = False) -> tuple[str, float]:  # type: ignore[override]
        """(new sha, monotonic time `git push` returned); with change_key the same requirement
        gets new content: a new key, so pip runs."""
        key = {KEY_FILE: f"{WHEEL[0]}=={WHEEL[1]}\n# push {self.counter + 1}\n"} if change_key else None
        return super().commit_and_push(key)


def build_wheel(directory: Path, name: str, version: str) -> Path:
    """A pure-Python wheel written by hand (no build backend, no network)."""
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\n"
                                             "Tag: py3-none-any\n",
    }
    rows = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        rows.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{name}-{version}.dist-info/RECORD"] = "\n".join([*rows, f"{name}-{version}.dist-info/RECORD,,"]) + "\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def prepare_line(wheels: Path) -> str:
    pip = shlex.join([str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                      "--no-index", "--find-links", str(wheels)])
    return f'{pip} --target "$GITSYNC_CACHE/site" -r {KEY_FILE}'


def push_to_live(ctx: Context, opts, remote: Remote, wheels: Path, prepare: bool) -> dict:
    """Pushes alternating same key / new key (with --prepare), or message-only pushes
    without --prepare (the baseline)."""
    root = ctx.tempdir("prepare-live")
    port = common.free_port()
    webhook = ctx.api_problem is None
    if webhook:
        secret_file = root / "secret"
        secret_file.write_bytes(SECRET + b"\n")
        sync = Gitsync(ctx, remote.url, root / "sync", period="60s", api=True, secret_file=secret_file)
    else:
        sync = Gitsync(ctx, remote.url, root / "sync", period="1s", api=False)
    reloader, conn = None, None
    times: dict[str, list[float]] = {"same_key": [], "new_key": []}
    try:
        first = sync.wait_published(60)
        if first is None:
            raise RuntimeError(f"gitsync published nothing: {common.failure_line(sync.proc.output)}")
        options = ["--prepare", prepare_line(wheels), "--prepare-key", KEY_FILE,
                   "--cache-dir", str(root / "cache")] if prepare else []
        reloader = ctx.start([str(BIN / "gitsync-reload"), "--link", str(sync.link), *RELOAD_ARGS, *options,
                              "--", str(BIN / "python"), f"{APP_DIR}/app.py"],
                             "reload-prepare", env={"PORT": str(port), "HOST": "127.0.0.1"})
        if wait_for_body(port, first, LIVE_TIMEOUT) is None:
            raise RuntimeError(f"the demo app never answered: {common.failure_line(reloader.output)}")
        if webhook:
            host, api_port = sync.api.split("//")[1].split(":")
            conn = http.client.HTTPConnection(host, int(api_port), timeout=10)
        time.sleep(opts.settle)
        for number in range(2 * opts.prepare_pushes if prepare else opts.prepare_pushes):
            kind = "new_key" if number % 2 and prepare else "same_key"
            sha, pushed = remote.commit_and_push(change_key=kind == "new_key")
            if conn is not None:
                status, _ = common.post_github(conn, SECRET, common.github_push(f"refs/heads/{common.BRANCH}", sha))
                if status != 202:
                    raise RuntimeError(f"webhook answered {status} to a push to the tracked branch")
            seen = wait_for_body(port, sha, LIVE_TIMEOUT)
            if seen is None:
                raise RuntimeError(f"the app never showed {sha[:12]}: {common.failure_line(reloader.output)}")
            times[kind].append(seen["at"] - pushed)
            sync.wait_spare_ready()
            time.sleep(opts.settle)
        output = reloader.output
    finally:
        if conn is not None:
            conn.close()
        if reloader is not None:
            reloader.stop(grace=8)
        sync.stop()
    prepares = [float(seconds) for seconds in re.findall(r"prepared \w+ in ([\d.]+)s", output)]
    same, new = common.summary_ms(times["same_key"], 50, 95), common.summary_ms(times["new_key"], 50, 95)
    return {"trigger": "webhook" if webhook else "poll_1s", "same_key": same, "new_key": new,
            "ratio_p50": common.ratio(new["p50_ms"], same["p50_ms"]),
            "prepare_runs": output.count("preparing "), "prepare_s": common.summary_ms(prepares, 50)}


def report(data: dict) -> list[str]:
    if "error" in data:
        return [f"prepare: FAILED ({data['error']})"]
    rows = [[title, data[key].get("n", "-"), common.fmt(data[key].get("p50_ms"), " ms"),
             common.fmt(data[key].get("p95_ms"), " ms")]
            for key, title in (("no_prepare", "baseline: no --prepare at all"),
                               ("same_key", "push leaves the key files alone (no prepare)"),
                               ("new_key", "push changes extra-requirements.txt (pip runs)"))]
    return [common.table(
        f"push -> live, demo app under gitsync-reload {' '.join(RELOAD_ARGS)} --prepare 'pip install --target "
        f"$GITSYNC_CACHE/site -r {KEY_FILE}' (a local wheel, --no-index); trigger: {data['trigger']}",
        ["push", "n", "p50", "p95"], rows),
        f"ratio new key / same key (p50): {common.fmt(data['ratio_p50'], 'x')}; same key / no --prepare: "
        f"{common.fmt(data.get('ratio_same_key_over_no_prepare_p50'), 'x')}; prepare runs: "
        f"{data['prepare_runs']} (the first start included); the prepare itself, as logged: "
        f"p50 {common.fmt(data['prepare_s']['p50_ms'], ' ms')}"]
