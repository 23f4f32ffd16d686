"""The cache directory of --prepare: one DIR/<key> per prepared content.

A key is a hash of a tree's key files (a missing one counts, as missing) and of the
prepare command line. A directory being made is DIR/.prepare-<key>-<random>, held
under flock(2) by the gitsync-reload making it, so another one (or the next after a
crash) can tell a live one from a leftover; removal renames out of the way first, so
no one sees a half-deleted DIR/<key>. Only entries named like keys are ever pruned.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
from collections.abc import Iterable

KEEP = 3  # prepared directories kept besides the ones in use, for a quick flip back
KEY_LENGTH = 24  # hex digits of the key: DIR/<key>
KEY_NAME = re.compile(rf"[0-9a-f]{{{KEY_LENGTH}}}")
TEMP_PREFIX = ".prepare-"  # being made
TRASH_PREFIX = ".remove-"  # renamed out of the way, then deleted


def content_key(tree: str, files: Iterable[str], command: Iterable[str]) -> str:
    """A hash of each key file's content (or that it is missing) and of the command line."""
    digest = hashlib.sha256()
    for word in command:
        digest.update(b"word\0" + word.encode() + b"\0")
    for name in sorted(set(files)):
        path = os.path.join(tree, name)
        try:
            with open(path, "rb") as handle:
                content = hashlib.file_digest(handle, "sha256").digest()
            digest.update(b"file\0" + name.encode() + b"\0" + content)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            digest.update(b"missing\0" + name.encode() + b"\0")
    return digest.hexdigest()[:KEY_LENGTH]


def make_temp(directory: str, key: str) -> tuple[str, int]:
    """A new empty directory for key's prepare, locked (flock) while it is being made."""
    os.makedirs(directory, exist_ok=True)
    temp = os.path.join(directory, f"{TEMP_PREFIX}{key}-{os.urandom(4).hex()}")
    os.mkdir(temp)
    lock = os.open(temp, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return temp, lock


def locked(path: str) -> bool:
    """Another live gitsync-reload makes this directory now."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)
    return False


def remove(path: str) -> None:
    """Rename out of the way, then delete: no one ever sees a half-deleted DIR/<key>."""
    name = f"{TRASH_PREFIX}{os.path.basename(path)}-{os.urandom(4).hex()}"
    trash = os.path.join(os.path.dirname(path), name)
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


def touch(path: str) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def unused(directory: str, in_use: set[str], keep: int = KEEP) -> list[str]:
    """The key directories no command uses, but the `keep` most recently used."""
    try:
        names = [name for name in os.listdir(directory) if KEY_NAME.fullmatch(name) and name not in in_use]
    except OSError:
        return []
    paths = sorted((os.path.join(directory, name) for name in names), key=modified, reverse=True)
    return paths[keep:]


def sweep(directory: str) -> None:
    """Make the directory; remove what a gitsync-reload that died left (no one holds its lock)."""
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.startswith(TRASH_PREFIX) or (name.startswith(TEMP_PREFIX) and not locked(path)):
            remove(path)


def modified(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
