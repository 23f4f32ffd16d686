"""Ports on 127.0.0.1 for programs that cannot bind port 0 and report it."""

from __future__ import annotations

import socket

LOCALHOST = "127.0.0.1"


def free_port() -> int:
    """A port that was free a moment ago (another process may take it: retry on a clash)."""
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]
