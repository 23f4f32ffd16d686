"""Helpers for the webhook/ API tests: signed deliveries per forge, and an API harness.

Every forge's delivery is built and signed here from a test secret, with the
headers that forge sends (see test_forge_fixtures.py for the sources). A
`Forge` knows how to spell a push (and a deletion) of one ref, how to sign it,
and one event of its own that is not a push.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from gitsync.config import parse_args
from support.repos import ZERO_SHA, published_sha
from support.waiting import stays, wait_for
from webhook import create_app
from webhook.server import ApiServer

SECRET = b"receiver-secret-3b9f1c"
API_TOKEN = "api-token-8e2d7a41"
OLD_SHA = "1" * 40
_ids = itertools.count(1)


def new_delivery_id() -> str:
    return f"delivery-{time.monotonic_ns()}-{next(_ids)}"


def hex_hmac(secret: bytes, body: bytes, digest=hashlib.sha256) -> str:
    return hmac.new(secret, body, digest).hexdigest()


def _short(ref: str) -> tuple[str, str]:
    if ref.startswith("refs/tags/"):
        return "tag", ref.removeprefix("refs/tags/")
    return "branch", ref.removeprefix("refs/heads/")


# -- payloads: (ref, after) -> JSON document; after = ZERO_SHA for a deletion ---------

def top_level_payload(ref: str, after: str) -> dict:
    """GitHub, Gitea, Forgejo, Gogs, GitLab."""
    return {"ref": ref, "before": OLD_SHA, "after": after, "deleted": after == ZERO_SHA,
            "checkout_sha": None if after == ZERO_SHA else after,
            "repository": {"full_name": "org/app", "default_branch": "main"},
            "commits": [], "object_kind": "push"}


def bitbucket_cloud_payload(ref: str, after: str) -> dict:
    kind, name = _short(ref)
    old = {"type": kind, "name": name, "target": {"hash": OLD_SHA, "type": "commit"}}
    new = None if after == ZERO_SHA else {"type": kind, "name": name,
                                          "target": {"hash": after, "type": "commit"}}
    return {"push": {"changes": [{"new": new, "old": old, "created": False,
                                  "closed": new is None, "forced": False}]},
            "repository": {"full_name": "org/app", "type": "repository"}}


def bitbucket_server_payload(ref: str, after: str) -> dict:
    kind, name = _short(ref)
    return {"eventKey": "repo:refs_changed", "date": "2024-01-01T00:00:00+0000",
            "changes": [{"ref": {"id": ref, "displayId": name, "type": kind.upper()},
                         "refId": ref, "fromHash": OLD_SHA, "toHash": after,
                         "type": "DELETE" if after == ZERO_SHA else "UPDATE"}]}


def azure_payload(ref: str, after: str) -> dict:
    return {"id": new_delivery_id(), "eventType": "git.push", "publisherId": "tfs",
            "resource": {"refUpdates": [{"name": ref, "oldObjectId": OLD_SHA,
                                         "newObjectId": after}]}}


# -- headers: (body, secret, event, delivery id) -> headers ------------------------------

def github_headers(body: bytes, secret: bytes, event: str, delivery: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/abc1234",
            "X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "X-GitHub-Hook-ID": "42",
            "X-Hub-Signature": "sha1=" + hex_hmac(secret, body, hashlib.sha1),
            "X-Hub-Signature-256": "sha256=" + hex_hmac(secret, body)}


def gogs_headers(body: bytes, secret: bytes, event: str, delivery: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Gogs-Event": event,
            "X-Gogs-Delivery": delivery, "X-Gogs-Signature": hex_hmac(secret, body),
            "X-GitHub-Event": event, "X-GitHub-Delivery": delivery}


def gitea_headers(body: bytes, secret: bytes, event: str, delivery: str) -> dict[str, str]:
    signature = hex_hmac(secret, body)
    return {**gogs_headers(body, secret, event, delivery),
            "X-Gitea-Event": event, "X-Gitea-Event-Type": event, "X-Gitea-Delivery": delivery,
            "X-Gitea-Signature": signature,
            "X-Hub-Signature": "sha1=" + hex_hmac(secret, body, hashlib.sha1),
            "X-Hub-Signature-256": "sha256=" + signature}


def forgejo_headers(body: bytes, secret: bytes, event: str, delivery: str) -> dict[str, str]:
    return {**gitea_headers(body, secret, event, delivery),
            "X-Forgejo-Event": event, "X-Forgejo-Event-Type": event,
            "X-Forgejo-Delivery": delivery, "X-Forgejo-Signature": hex_hmac(secret, body)}


def gitlab_headers(body: bytes, secret: bytes, event: str, delivery: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Gitlab-Event": event,
            "X-Gitlab-Token": secret.decode(), "Idempotency-Key": delivery,
            "X-Gitlab-Webhook-UUID": delivery, "X-Gitlab-Event-UUID": "same-for-every-event",
            "X-Gitlab-Instance": "https://gitlab.example.com"}


def bitbucket_cloud_headers(body: bytes, secret: bytes, event: str, delivery: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Event-Key": event,
            "X-Hook-UUID": "{hook-uuid}", "X-Request-UUID": delivery, "X-Attempt-Number": "1",
            "X-Hub-Signature": "sha256=" + hex_hmac(secret, body)}


def bitbucket_server_headers(body: bytes, secret: bytes, event: str, delivery: str) -> dict[str, str]:
    return {"Content-Type": "application/json; charset=utf-8", "X-Event-Key": event,
            "X-Request-Id": delivery, "X-Hub-Signature": "sha256=" + hex_hmac(secret, body)}


def azure_headers(body: bytes, secret: bytes, event: str, delivery: str) -> dict[str, str]:
    token = base64.b64encode(b"gitsync:" + secret).decode()
    return {"Content-Type": "application/json; charset=utf-8", "X-VSS-ActivityId": delivery,
            "X-VSS-SubscriptionId": "sub-1", "Authorization": f"Basic {token}"}


@dataclass(frozen=True)
class Forge:
    name: str
    headers: Callable[[bytes, bytes, str, str], dict[str, str]]
    payload: Callable[[str, str], dict]
    push_event: str
    other_event: str                 # an event of this forge that is not a push
    tag_push_event: str | None = None
    ping_event: str | None = None

    def delivery(self, ref: str, after: str, *, secret: bytes = SECRET, event: str | None = None,
                 delivery_id: str | None = None) -> tuple[dict[str, str], bytes]:
        """(headers, body) of a signed push of `ref` to `after` (ZERO_SHA deletes it)."""
        if event is None:
            event = self.tag_push_event if ref.startswith("refs/tags/") and self.tag_push_event \
                else self.push_event
        document = self.payload(ref, after)
        if self.name == "azure-devops":
            document["eventType"] = event
        body = json.dumps(document).encode()
        return self.headers(body, secret, event, delivery_id or new_delivery_id()), body

    def signed(self, body: bytes, event: str, *, secret: bytes = SECRET,
               delivery_id: str | None = None) -> dict[str, str]:
        """Headers signing an arbitrary body."""
        return self.headers(body, secret, event, delivery_id or new_delivery_id())


FORGES = (
    Forge("github", github_headers, top_level_payload, "push", "issues", ping_event="ping"),
    Forge("gitea", gitea_headers, top_level_payload, "push", "issues"),
    Forge("forgejo", forgejo_headers, top_level_payload, "push", "issues"),
    Forge("gogs", gogs_headers, top_level_payload, "push", "issues"),
    Forge("gitlab", gitlab_headers, top_level_payload, "Push Hook", "Issue Hook",
          tag_push_event="Tag Push Hook"),
    Forge("bitbucket-cloud", bitbucket_cloud_headers, bitbucket_cloud_payload, "repo:push",
          "pullrequest:created"),
    Forge("bitbucket-server", bitbucket_server_headers, bitbucket_server_payload,
          "repo:refs_changed", "pr:opened", ping_event="diagnostics:ping"),
    Forge("azure-devops", azure_headers, azure_payload, "git.push", "git.pullrequest.created"),
)
FORGE_BY_NAME = {forge.name: forge for forge in FORGES}
forge_params = pytest.mark.parametrize("forge", FORGES, ids=[forge.name for forge in FORGES])


# -- a real engine with its API -----------------------------------------------------------

@dataclass
class Api:
    """A real engine on a real remote, its Flask app and a test client."""

    engine: object
    app: object
    root: Path
    client: object = field(init=False)

    def __post_init__(self):
        self.client = self.app.test_client()

    @property
    def link(self) -> Path:
        return Path(self.engine.status().link)

    def published(self) -> str | None:
        return published_sha(self.link)

    def post_webhook(self, headers: dict[str, str], body: bytes):
        return self.client.post("/api/v1/webhook", data=body, headers=headers)

    def sync_count(self) -> int:
        return self.engine.status().sync_count


def base_flags(remote_url: str, root: Path, *extra: str) -> list[str]:
    return ["--repo", remote_url, "--root", str(root), "--period", "60s", "--http-bind", "", *extra]


@pytest.fixture
def api_factory(engine_factory, tmp_path):
    """`make(remote_url, *flags, env=..., run=True)`: a real engine and its app.

    The receiver secret and API token are on unless `env` says otherwise.
    """
    counter = itertools.count()

    def make(remote_url: str, *flags: str, env: dict[str, str] | None = None,
             run: bool = True, test_config: dict | None = None) -> Api:
        root = tmp_path / f"root-{next(counter)}"
        args = base_flags(remote_url, root, *flags)
        environment = {"GITSYNC_RECEIVER_SECRET": SECRET.decode(), "GITSYNC_API_TOKEN": API_TOKEN}
        environment.update(env or {})
        environment = {k: v for k, v in environment.items() if v is not None}
        engine = engine_factory(*args, env=environment, run=run)
        app = create_app(engine, parse_args(args, environment), test_config)
        return Api(engine, app, root)

    return make


@pytest.fixture
def api(api_factory, remote) -> Api:
    """A real engine on the `remote` fixture, its first commit published, and its app."""
    made = api_factory(remote.url)
    wait_for(made.engine.is_ready, message="the first publish")
    return made


@pytest.fixture
def serve():
    """`serve(app)`: the app on waitress at 127.0.0.1 on a free port; its base URL."""
    servers: list[ApiServer] = []

    def start(app) -> str:
        server = ApiServer(app, "127.0.0.1", 0)
        server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        server.stop()


def settled(api: Api, count_before: int, wait: float = 0.4) -> bool:
    """True if no sync attempt started or ended for `wait` seconds after `count_before`.

    A real engine can only show that nothing happened for a while; on a FakeEngine
    `engine.triggers == []` says it at once.
    """
    def quiet() -> bool:
        status = api.engine.status()
        return status.sync_count == count_before and status.state != "syncing"
    return stays(quiet, wait)


SERVING = re.compile(r"serving the HTTP API on http://([\d.]+):(\d+)")


def served_port(output: Callable[[], str]) -> int | None:
    match = SERVING.search(output())
    return int(match.group(2)) if match else None

