"""gitsync-reload's main(): settings -> the parts -> signals become events -> run."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence

from .config import PROG, ConfigError, build_config
from .supervisor import Supervisor
from .systemd import LISTEN_FD, Activation, NoActivation, open_listener

logger = logging.getLogger(__name__)


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
    if isinstance(activation, Activation):
        host, port = activation.listener.getsockname()[:2]
        logger.info("listening on %s:%s; each command gets the socket as fd %s",
                    f"[{host}]" if ":" in host else host, port, LISTEN_FD)
    supervisor = Supervisor(config, activation)
    supervisor.install_signal_handlers()
    status = supervisor.run()
    if supervisor.fatal:
        print(f"{PROG}: error: {supervisor.fatal}", file=sys.stderr)
    return status
