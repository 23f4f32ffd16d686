"""When a new command counts as ready, and when it has failed to be.

READY=1 on its NOTIFY_SOCKET always counts. With --ready-url (polled in a thread of
its own, so the loop never waits on HTTP) or --ready-after, a command not ready by
--ready-timeout is a failed attempt: "not ready after 10s". With neither, today's
rules hold: with --listen a new command takes over after --ready-timeout anyway
(counted ready then); without --listen it is ready once it has stayed up 1s.
"""

from __future__ import annotations

import http.client
import threading
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

from gitsync.durations import format_duration

if TYPE_CHECKING:
    from .child import Child
    from .config import ReloadConfig

UP_FOR = 1.0  # without --listen, --ready-url or --ready-after: up this long counts as ready
PROBE_INTERVAL = 0.1  # between two polls of --ready-url
PROBE_TIMEOUT = 1.0  # each poll; short, so a hung app is polled again soon


class ReadyProbe:
    """Polls a URL in a thread until it answers 2xx (`ok`) or close()."""

    def __init__(self, url: str):
        self.url = url
        self.ok = threading.Event()
        self.stop = threading.Event()
        # No proxy from the environment: the URL is the app's own, next to us.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.thread = threading.Thread(target=self.poll, daemon=True, name="ready-probe")
        self.thread.start()

    def poll(self) -> None:
        while not self.stop.is_set():
            if self.answers_2xx():
                self.ok.set()
                return
            self.stop.wait(PROBE_INTERVAL)

    def answers_2xx(self) -> bool:
        try:
            with self.opener.open(self.url, timeout=PROBE_TIMEOUT) as response:
                return 200 <= response.status < 300
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
            return False  # refused, 4xx/5xx, timed out, garbage: not yet

    def close(self) -> None:
        self.stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join(PROBE_TIMEOUT + 1.0)


class Readiness:
    def __init__(self, config: ReloadConfig):
        self.url = config.ready_url
        self.after = config.ready_after
        self.timeout = config.ready_timeout
        self.listen = config.listen is not None

    @property
    def strict(self) -> bool:
        """A readiness check was asked for: not passing it in time is a failure."""
        return self.url is not None or self.after is not None

    def check(self, child: Child) -> tuple[bool, str] | None:
        """(True, why) once ready, (False, reason) once it failed to be, None while waiting."""
        if self.url is not None and child.probe is None:
            child.probe = ReadyProbe(self.url)
        ran_for = child.ran_for()
        if child.ready:
            return True, f"pid {child.pid} is ready"
        if child.probe is not None and child.probe.ok.is_set():
            return True, f"pid {child.pid} answers {self.url}"
        if self.after is not None and ran_for >= self.after:
            return True, f"pid {child.pid} stayed up {format_duration(self.after)}"
        if self.strict:
            if ran_for >= self.timeout:
                return False, f"not ready after {format_duration(self.timeout)}"
            return None
        if self.listen:  # today's hand-off: take over after the timeout anyway
            if ran_for >= self.timeout:
                return True, f"pid {child.pid} sent no READY=1 in {format_duration(self.timeout)}"
            return None
        return (True, f"pid {child.pid} stayed up {format_duration(UP_FOR)}") if ran_for >= UP_FOR else None
