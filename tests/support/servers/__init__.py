"""Real git servers on 127.0.0.1, instead of mocks, so that what the tests prove holds
for what git really sends over the wire: smart HTTP (git http-backend) and sshd.
"""

from support.processes import descendant_pids
from support.servers.smart_http import RecordedRequest, SmartHttpServer
from support.servers.ssh import SshServer, git_ssh_command

__all__ = ["RecordedRequest", "SmartHttpServer", "SshServer", "descendant_pids", "git_ssh_command"]
