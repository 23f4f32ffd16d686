"""gitsync-reload's main(): settings -> the parts -> signals become events -> run."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence

from .config import PROG, ConfigError, build_config
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
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {PROG} %(levelname)s %(message)s")
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every batch at INFO
    activation.announce()
    supervisor = Supervisor(config, activation)
    supervisor.install_signal_handlers()
    status = supervisor.run()
    if supervisor.fatal:
        print(f"{PROG}: error: {supervisor.fatal}", file=sys.stderr)
    return status
