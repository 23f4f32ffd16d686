"""Replay the real payloads in ../shared/fixtures/webhooks through webhook.forges.

The fixture files are bodies only (see SOURCES.md there), so each is signed here
with a test secret and given the full header set its forge really sends:

- GitHub: X-GitHub-Event, X-GitHub-Delivery, X-GitHub-Hook-ID, SHA-1
  X-Hub-Signature and X-Hub-Signature-256 (GitHub's webhook docs).
- Gitea: X-Gitea-*, X-Gogs-* and X-GitHub-* (Delivery, Event, Event-Type), bare
  hex X-Gitea-Signature and X-Gogs-Signature, SHA-1 X-Hub-Signature and
  X-Hub-Signature-256 (gitea services/webhook/deliver.go, addDefaultHeaders).
- Forgejo: X-Forgejo-* (Delivery, Event, Event-Type, Signature) on top of all
  of Gitea's (forgejo services/webhook/shared/payloader.go).
- Gogs: X-Gogs-Delivery, X-Gogs-Event, X-Gogs-Signature, X-Github-Delivery and
  X-Github-Event (gogs internal/database/webhook.go, HookTask.deliver).
- GitLab: X-Gitlab-Event, X-Gitlab-Token, Idempotency-Key,
  X-Gitlab-Webhook-UUID, X-Gitlab-Event-UUID, X-Gitlab-Instance
  (gitlab app/services/web_hook_service.rb, build_headers).
- Bitbucket Cloud: X-Event-Key, X-Hook-UUID, X-Request-UUID, X-Attempt-Number,
  X-Hub-Signature (Atlassian "Event payloads" page).
- Bitbucket Server/Data Center: X-Event-Key, X-Request-Id, X-Hub-Signature
  (Atlassian "Event payload" page).
- Azure DevOps: X-VSS-ActivityId, X-VSS-SubscriptionId and basic auth; Microsoft
  does not document the headers, these are what receivers observe.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest

from webhook.forges import DeliveryRejected, RefChange, parse_delivery

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "webhooks"
if not FIXTURES.is_dir():
    pytest.skip(f"no webhook fixtures at {FIXTURES}", allow_module_level=True)

SECRET = b"fixture-secret-7c2a"
DELIVERY = "3f0c1d8e-5b7a-4e2f-9c61-0d2b8a4e7f10"


def hex_hmac(body: bytes, digest=hashlib.sha256) -> str:
    return hmac.new(SECRET, body, digest).hexdigest()


def github(body: bytes, event: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/044aadd",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": DELIVERY,
        "X-GitHub-Hook-ID": "109948940",
        "X-Hub-Signature": "sha1=" + hex_hmac(body, hashlib.sha1),
        "X-Hub-Signature-256": "sha256=" + hex_hmac(body),
    }


def gitea(body: bytes, event: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    for family in ("Gitea", "Gogs"):
        headers |= {
            f"X-{family}-Delivery": DELIVERY,
            f"X-{family}-Event": event,
            f"X-{family}-Event-Type": event,
            f"X-{family}-Signature": hex_hmac(body),
        }
    return headers | {
        "X-Hub-Signature": "sha1=" + hex_hmac(body, hashlib.sha1),
        "X-Hub-Signature-256": "sha256=" + hex_hmac(body),
        "X-GitHub-Delivery": DELIVERY,
        "X-GitHub-Event": event,
        "X-GitHub-Event-Type": event,
    }


def forgejo(body: bytes, event: str) -> dict[str, str]:
    return gitea(body, event) | {
        "X-Forgejo-Delivery": DELIVERY,
        "X-Forgejo-Event": event,
        "X-Forgejo-Event-Type": event,
        "X-Forgejo-Signature": hex_hmac(body),
    }


def gogs(body: bytes, event: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Github-Delivery": DELIVERY,
        "X-Github-Event": event,
        "X-Gogs-Delivery": DELIVERY,
        "X-Gogs-Event": event,
        "X-Gogs-Signature": hex_hmac(body),
    }


def gitlab(body: bytes, event: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitLab/17.5.1",
        "Idempotency-Key": DELIVERY,
        "X-Gitlab-Event": event,
        "X-Gitlab-Webhook-UUID": "9cebe914-4827-408f-b014-cfa23a47a35f",
        "X-Gitlab-Instance": "https://gitlab.example.com",
        "X-Gitlab-Event-UUID": "a5461c4d-9c7f-4af9-add6-cddebe3c426f",
        "X-Gitlab-Token": SECRET.decode(),
    }


def bitbucket_cloud(body: bytes, event: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "Bitbucket-Webhooks/2.0",
        "X-Event-Key": event,
        "X-Hook-UUID": "{cd2f2b49-d0f4-4b59-a3a8-3a4e2f9b7c55}",
        "X-Request-UUID": DELIVERY,
        "X-Attempt-Number": "1",
        "X-Hub-Signature": "sha256=" + hex_hmac(body),
    }


def bitbucket_server(body: bytes, event: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json; charset=utf-8",
        "X-Event-Key": event,
        "X-Request-Id": DELIVERY,
        "X-Hub-Signature": "sha256=" + hex_hmac(body),
    }


def azure_devops(body: bytes, event: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json; charset=utf-8",
        "X-VSS-ActivityId": "6e9b0a55-2d3c-4b0e-8f3c-3d2b1a0e9f87",
        "X-VSS-SubscriptionId": "f9a6b0a2-1b1c-4c8e-9d2f-5e6a7b8c9d0e",
        "Authorization": "Basic " + base64.b64encode(b"gitsync:" + SECRET).decode(),
    }


def push(ref: str, after: str | None, deleted: bool = False) -> tuple[RefChange, ...]:
    return (RefChange(ref=ref, after=after, deleted=deleted),)


# file: (sign, event header value, expected forge, kind, delivery id, changes)
EXPECTED = {
    "github-push.json": (
        github, "push", "github", "push", DELIVERY,
        push("refs/heads/master", "6113728f27ae82c7b1a177c8d03f9e96e0adf246")),
    "github-push-branch-update.json": (
        github, "push", "github", "push", DELIVERY,
        push("refs/heads/master", "fd489864e7642b48eaad6e3f155c10e46810ec72")),
    "github-push-tag.json": (
        github, "push", "github", "push", DELIVERY,
        push("refs/tags/simple-tag", "6113728f27ae82c7b1a177c8d03f9e96e0adf246")),
    "github-push-tag-delete.json": (
        github, "push", "github", "push", DELIVERY,
        push("refs/tags/simple-tag", None, deleted=True)),
    "github-ping.json": (
        github, "ping", "github", "ping", DELIVERY, ()),
    "gitlab-push.json": (
        gitlab, "Push Hook", "gitlab", "push", DELIVERY,
        push("refs/heads/master", "da1560886d4f094c3e6c9ef40349f7d38b5d27d7")),
    "gitlab-push-goplayground.json": (
        gitlab, "Push Hook", "gitlab", "push", DELIVERY,
        push("refs/heads/master", "da1560886d4f094c3e6c9ef40349f7d38b5d27d7")),
    "gitlab-tag-push.json": (
        gitlab, "Tag Push Hook", "gitlab", "push", DELIVERY,
        push("refs/tags/v1.0.0", "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7")),
    "gitea-push.json": (
        gitea, "push", "gitea", "push", DELIVERY,
        push("refs/heads/master", "67b56589a45103f891bdee7c0546e5d40bc02001")),
    "forgejo-push.json": (
        forgejo, "push", "forgejo", "push", DELIVERY,
        push("refs/heads/develop", "bffeb74224043ba2feb48d137756c8a9331c449a")),
    "gogs-push.json": (
        gogs, "push", "gogs", "push", DELIVERY,
        push("refs/heads/develop", "bffeb74224043ba2feb48d137756c8a9331c449a")),
    "bitbucket-push.json": (
        bitbucket_cloud, "repo:push", "bitbucket-cloud", "push", DELIVERY,
        push("refs/heads/name-of-branch", "709d658dc5b6d6afcd46049c2f332ee3f515a67d")),
    "bitbucket-server-push.json": (
        bitbucket_server, "repo:refs_changed", "bitbucket-server", "push", DELIVERY,
        push("refs/heads/master", "22671f0349857934857983457983475ec39f196b")),
    "bitbucket-server-branch-delete.json": (
        bitbucket_server, "repo:refs_changed", "bitbucket-server", "push", DELIVERY,
        push("refs/heads/feature/wip", None, deleted=True)),
    # Azure names the event in the body and has no delivery header; the id is
    # the event id from the body.
    "azure-devops-push.json": (
        azure_devops, "git.push", "azure-devops", "push", "03c164c2-8912-4d5e-8009-3707d5f83734",
        push("refs/heads/main", "33b55f7cb7e7e245323987634f960cf4a6e6bc74")),
}

FILES = sorted(path.name for path in FIXTURES.glob("*.json"))


@pytest.mark.parametrize("name", FILES)
def test_fixture_is_parsed_as_expected(name):
    assert name in EXPECTED, f"new fixture {name}: add its expected event to EXPECTED"
    sign, event, forge, kind, delivery_id, changes = EXPECTED[name]
    body = (FIXTURES / name).read_bytes()

    delivery = parse_delivery(sign(body, event), body, SECRET)

    assert (delivery.forge, delivery.kind, delivery.event) == (forge, kind, event)
    assert delivery.delivery_id == delivery_id
    assert delivery.changes == changes


@pytest.mark.parametrize("name", FILES)
def test_fixture_signed_with_another_secret_is_refused(name):
    sign, event, *_ = EXPECTED[name]
    body = (FIXTURES / name).read_bytes()

    with pytest.raises(DeliveryRejected) as caught:
        parse_delivery(sign(body, event), body, b"some-other-secret")
    assert caught.value.status == 401


def test_every_expectation_has_its_fixture():
    assert sorted(EXPECTED) == FILES
