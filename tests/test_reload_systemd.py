"""--listen's parts: the LISTEN_PID shim in its three forms, NOTIFY_SOCKET, the environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from gitsync.reload.systemd import (LISTEN_FD, PYTHON_SHIM, SH_SHIM, SHIM_FLAG, Activation, NoActivation,
                                    Notices, exec_shim)

# A single-executable gitsync-reload runs the shim itself; the installed one does the same.
SELF_SHIM = (sys.executable, "-m", "gitsync.reload", SHIM_FLAG)


@pytest.mark.parametrize("shim", [SH_SHIM, PYTHON_SHIM, SELF_SHIM], ids=["sh", "python-file", "self"])
def test_each_shim_execs_the_command_in_place_with_listen_pid_its_own(shim):
    probe = "import os; print(os.environ['LISTEN_PID'] == str(os.getpid()), os.getppid())"
    result = subprocess.run([*shim, sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert result.stdout.split() == ["True", str(os.getpid())], result.stderr
    missing = subprocess.run([*shim, "no-such-command-gitsync"], capture_output=True, text=True, timeout=30)
    assert missing.returncode == 127 and "no-such-command-gitsync" in missing.stderr


def test_the_python_shim_is_a_file_run_isolated():
    assert PYTHON_SHIM[1:3] == ("-I", "-S") and os.path.isfile(PYTHON_SHIM[3])
    assert exec_shim() == (SH_SHIM if os.access("/bin/sh", os.X_OK) else PYTHON_SHIM)


def test_notices_see_ready_among_other_lines(tmp_path):
    notices = Notices(str(tmp_path / "notify"))
    try:
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.sendto(b"STATUS=loading", notices.path)
        assert not notices.ready()
        sender.sendto(b"STATUS=serving\nREADY=1\n", notices.path)
        assert notices.ready()
        sender.close()
    finally:
        notices.close()
    assert not os.path.exists(notices.path)


def test_activation_gives_each_command_its_own_variables_never_the_parents(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        activation = Activation(listener)
        parent = {"PATH": "/bin", "LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "x", "NOTIFY_SOCKET": "/y"}
        assert activation.base_environ(parent) == {"PATH": "/bin"}
        first, environ = activation.prepare()
        second, _ = activation.prepare()
        assert environ == {"LISTEN_FDS": "1", "NOTIFY_SOCKET": first.path} and first.path != second.path
        assert activation.pass_fds == (LISTEN_FD,)
        first.close(), second.close()
        activation.close()
        assert not os.path.exists(activation.notice_dir)
    plain = NoActivation()  # without --listen: no socket, but a NOTIFY_SOCKET of its own all the same
    assert plain.base_environ(parent) == {name: value for name, value in parent.items() if name != "NOTIFY_SOCKET"}
    notices, environ = plain.prepare()
    assert environ == {"NOTIFY_SOCKET": notices.path} and plain.pass_fds == () and plain.shim == ()
    notices.close()
    plain.close()
    assert not os.path.exists(plain.notice_dir)
