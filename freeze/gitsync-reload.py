"""Entry point of the standalone gitsync-reload (PyInstaller one-file; see the Dockerfile).

PyInstaller freezes a script, not a console-script entry point: this is
`gitsync-reload = "gitsync.reload:main"` of pyproject.toml as a script.
"""

from gitsync.reload import main

raise SystemExit(main())
