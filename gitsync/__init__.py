"""gitsync: keep a symlink pointing at the newest commit of a git ref."""

__version__ = "0.1.0"
