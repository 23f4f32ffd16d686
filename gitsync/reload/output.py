"""--report-output: pass a command's stdout and stderr through to ours, keeping its last lines.

The app's log must still reach `kubectl logs`, so every byte is written on to
gitsync-reload's own stdout or stderr as it arrives (os.read: a partial line is not
held back); only the last TAIL_LINES lines, each cut at LINE_BYTES, are kept for the
status. One reader thread per stream; each ends when the command's whole process
group has closed the pipe.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
from typing import BinaryIO

TAIL_LINES = 20  # lines shown in attempt.output
LINE_BYTES = 500  # a longer line is cut: the tail stays under ~10 KB
READ_SIZE = 65536
JOIN_WAIT = 1.0  # how long text() waits for the last bytes of an ended command


class OutputTail:
    def __init__(self, process: subprocess.Popen):
        self.lines: collections.deque[bytes] = collections.deque(maxlen=TAIL_LINES)
        self.lock = threading.Lock()
        self.readers = [
            threading.Thread(target=self.pump, args=(pipe, out), daemon=True, name=f"output-{process.pid}")
            for pipe, out in ((process.stdout, sys.stdout.buffer), (process.stderr, sys.stderr.buffer))
            if pipe is not None
        ]
        for reader in self.readers:
            reader.start()

    def pump(self, pipe: BinaryIO, out: BinaryIO) -> None:
        partial = b""
        try:
            while chunk := os.read(pipe.fileno(), READ_SIZE):
                try:
                    out.write(chunk)
                    out.flush()
                except (OSError, ValueError):  # our own stdout is gone: keep reading, or the app blocks
                    pass
                partial = self.keep(partial + chunk)
        finally:
            pipe.close()
        if partial:
            self.keep(partial + b"\n")

    def keep(self, data: bytes) -> bytes:
        """Store the complete lines of data; the unfinished rest (cut to LINE_BYTES)."""
        *complete, rest = data.split(b"\n")
        with self.lock:
            self.lines.extend(line[:LINE_BYTES] for line in complete)
        return rest[:LINE_BYTES]

    def text(self, wait: float = JOIN_WAIT) -> str:
        """The last lines; waits up to `wait` for the pipes to close (a command that ended)."""
        for reader in self.readers:
            reader.join(wait)
        with self.lock:
            lines = list(self.lines)
        return "\n".join(line.decode("utf-8", "replace").rstrip("\r") for line in lines)

    def close(self) -> None:
        for reader in self.readers:
            reader.join(JOIN_WAIT)
