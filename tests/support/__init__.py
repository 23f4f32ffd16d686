"""Shared test helpers, each written once.

repos       real git repositories: a bare remote and a clone that pushes (Remote, git)
waiting     wait_for(condition, timeout, message) and stays(condition, seconds)
ports       free_port()
processes   processes in their own group, always stopped with the whole group
servers     real git servers: git http-backend (SmartHttpServer) and sshd (SshServer)
tools       require_tool(): skip outside CI with the install command, fail in CI
api         signed webhook deliveries per forge and the API harness on a real engine
fake_engine a controller for API tests that need no git
"""
