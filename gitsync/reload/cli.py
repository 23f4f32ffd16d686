"""gitsync-reload's main(): settings -> the parts -> signals become events -> run."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence

from .config import PROG, ConfigError, ReloadConfig, build_config
from .status import Board, StatusServer
from .supervisor import Supervisor
from .systemd import Activation, NoActivation, open_listener


def run(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    try:
        config = build_config(argv, environ)
    except ConfigError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    activation = NoActivation()
    if config.listen is not None:
        host, port = config.listen
        try:
            listener = open_listener(config.listen)
        except OSError as error:
            print(f"{PROG}: error: --listen {host}:{port}: cannot listen: {error.strerror or error}", file=sys.stderr)
            return 1
        activation = Activation(listener)
    board = Board()
    try:
        server = open_status_server(config, board)
    except OSError as error:
        host, port = config.status_bind or ("", 0)
        print(f"{PROG}: error: --status-bind {host}:{port}: cannot listen: {error.strerror or error}",
              file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {PROG} %(levelname)s %(message)s")
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every batch at INFO
    activation.announce()
    supervisor = Supervisor(config, activation, board)
    supervisor.install_signal_handlers()
    if server is not None:
        server.start()
    try:
        status = supervisor.run()
    finally:
        if server is not None:
            server.close()
    if supervisor.fatal:
        print(f"{PROG}: error: {supervisor.fatal}", file=sys.stderr)
    return status


def open_status_server(config: ReloadConfig, board: Board) -> StatusServer | None:
    """Bind the status API before anything starts (raise OSError); None when it is off."""
    return StatusServer(config.status_bind, board) if config.status_bind is not None else None
