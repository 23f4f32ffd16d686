// A Node.js app deployed from git, run by the standalone gitsync-reload:
//
//   /gitsync/bin/gitsync-reload --link /git/app --listen 0.0.0.0:8000 -- node server.js
//
// or unwrapped, as `node server.js` in /git/app (k8s/overlays/sidecar-only): gitsync
// sends it SIGTERM after each publish, and the container is started again on the new tree.
//
// It serves on the socket gitsync-reload hands it as fd 3 (systemd's socket activation:
// LISTEN_FDS=1, LISTEN_PID) and sends READY=1 to NOTIFY_SOCKET once it serves, so the
// previous commit's app is stopped only when this one takes requests. GET / answers the
// commit it runs (GITSYNC_HASH) and the tree's message.txt, as JSON.
"use strict";
const http = require("node:http");
const fs = require("node:fs");
const path = require("node:path");
const { execFile } = require("node:child_process");

const LISTEN_FDS_START = 3;
// Run without gitsync-reload (sidecar-only: no GITSYNC_HASH), the working directory is
// the published tree itself, <root>/.worktrees/<sha>, resolved when the process started.
const tree = path.basename(process.cwd());
const commit = process.env.GITSYNC_HASH || (/^[0-9a-f]{40}([0-9a-f]{24})?$/.test(tree) ? tree : null);
const message = fs.readFileSync("message.txt", "utf8").trim();

const server = http.createServer((request, response) => {
  const body = JSON.stringify({ commit, message, runtime: `node ${process.version}`, pid: process.pid });
  response.writeHead(200, { "Content-Type": "application/json" });
  response.end(body + "\n");
});

function inheritedSocket() {
  const env = process.env;
  return env.LISTEN_PID === String(process.pid) && Number(env.LISTEN_FDS || 0) >= 1;
}

// Node has no unix datagram sockets: socat sends the one datagram sd_notify is.
function notifyReady() {
  const address = process.env.NOTIFY_SOCKET;
  if (!address) return;
  const target = address.startsWith("@") ? `ABSTRACT-SENDTO:${address.slice(1)}` : `UNIX-SENDTO:${address}`;
  const child = execFile("socat", ["-u", "STDIN", target], (error) => {
    if (error) console.error(`server.js: READY=1 not sent: ${error.message}`);
  });
  child.stdin.end("READY=1\n");
}

function stop() {
  server.close(() => process.exit(0));
  server.closeIdleConnections();
}

process.on("SIGTERM", stop);
process.on("SIGINT", stop);
const where = inheritedSocket()
  ? { fd: LISTEN_FDS_START }
  : { host: process.env.HOST || "127.0.0.1", port: Number(process.env.PORT || 8000) };
server.listen(where, () => {
  console.log(`server.js: serving ${commit} on ${where.fd ? "fd 3" : `${where.host}:${where.port}`}`);
  notifyReady();
});
