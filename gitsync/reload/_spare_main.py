"""The --preload spare: import modules ahead of time, then run CMD where told.

Run by path in the command's own interpreter (any Python 3.8+, not gitsync's):
`python [OPTIONS] .../gitsync/reload/_spare_main.py SCRIPT ARGS` (or `-m MODULE ARGS`), so
ps shows what the process is and what it will run. It imports nothing of gitsync.
It reads its pipes and modules from the environment (taken out before CMD runs), writes
"ready" or "error MESSAGE" on the status pipe, then reads one JSON line (cwd, env, argv,
module) on the control pipe and runs the script as `python SCRIPT` would; end of file
there means it is not needed, and it exits 0.
"""

import io
import json
import os
import sys


def main():
    status = int(os.environ.pop("GITSYNC_RELOAD_STATUS_FD"))
    control = int(os.environ.pop("GITSYNC_RELOAD_CONTROL_FD"))
    modules = os.environ.pop("GITSYNC_RELOAD_PRELOAD_MODULES").split(",")
    forbidden = os.path.join(os.environ.pop("GITSYNC_RELOAD_PRELOAD_FORBIDDEN"), "")
    drop_own_directory()
    preload(status, modules, forbidden)
    os.write(status, b"ready\n")
    os.close(status)
    with os.fdopen(control, "rb") as pipe:
        line = pipe.readline()
    if not line:
        os._exit(0)  # not needed after all
    run(json.loads(line))


def drop_own_directory():
    # Python put this file's directory first (unless -I or -P); the app must not import from gitsync's.
    here = os.path.dirname(os.path.realpath(__file__))
    if sys.path and os.path.realpath(sys.path[0] or ".") == here:
        del sys.path[0]


def preload(status, modules, forbidden):
    import importlib

    def fail(message):
        os.write(status, ("error " + message.replace("\n", " ") + "\n").encode("utf-8", "replace"))
        os._exit(2)

    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as error:
            fail("cannot import %r with %s: %s: %s" % (name, sys.executable, type(error).__name__, error))
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)  # built-in modules have none
        path = path and os.path.realpath(path)
        if path and path.startswith(forbidden):
            fail("%r was imported from %s, the published tree; preload installed packages only"
                 % (module.__name__, path))


def run(order):
    os.chdir(order["cwd"])
    os.environ.update(order["env"])
    if "LISTEN_FDS" in order["env"]:
        os.environ["LISTEN_PID"] = str(os.getpid())  # the spare is the command's process
    sys.argv = list(order["argv"])
    safe_path = sys.flags.isolated or getattr(sys.flags, "safe_path", False)  # -I, -P: no path entry
    import runpy
    if order["module"]:
        if not safe_path:
            sys.path.insert(0, os.getcwd())
        runpy.run_module(order["module"], run_name="__main__", alter_sys=True)
        return
    script = os.path.abspath(sys.argv[0])  # __file__ is absolute, argv[0] as given (python 3.9+)
    if not safe_path:
        sys.path.insert(0, os.path.dirname(os.path.realpath(script)))
    import zipfile
    if os.path.isdir(script) or zipfile.is_zipfile(script):
        runpy.run_path(script, run_name="__main__")  # a directory or zip with __main__.py
        return
    run_script(script)


def run_script(script):
    try:
        with io.open_code(script) as handle:
            source = handle.read()
    except OSError as error:
        sys.stderr.write("%s: can't open file %r: [Errno %s] %s\n"
                         % (sys.executable, script, error.errno, error.strerror))
        sys.exit(2)
    import builtins
    import importlib.machinery
    import types
    main_module = types.ModuleType("__main__")
    main_module.__dict__.update(__file__=script, __cached__=None, __builtins__=builtins,
                                __loader__=importlib.machinery.SourceFileLoader("__main__", script))
    sys.modules["__main__"] = main_module
    exec(compile(source, script, "exec", dont_inherit=True), main_module.__dict__)


if __name__ == "__main__":
    main()
