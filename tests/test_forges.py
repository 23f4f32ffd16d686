"""webhook.forges: every forge's deliveries, built and signed here with a test secret.

Each forge is one `Case`: how it signs a body and which headers it sends with
it (the full set the forge really sends, see test_forge_fixtures.py for where
each set comes from), and how its push payload spells a ref update. The tests
then run the same table across all forges.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote_plus

import pytest
from werkzeug.datastructures import EnvironHeaders
from werkzeug.test import EnvironBuilder

from webhook.forges import Delivery, DeliveryLog, DeliveryRejected, RefChange, parse_delivery

SECRET = b"test-secret-5f1e"
WRONG_SECRET = b"not-the-secret-99"
OLD = "1111111111111111111111111111111111111111"
NEW = "2222222222222222222222222222222222222222"
ZERO = "0" * 40


def hex_hmac(secret: bytes, content: bytes, digest=hashlib.sha256) -> str:
    return hmac.new(secret, content, digest).hexdigest()


def to_json(document: dict) -> bytes:
    return json.dumps(document).encode()


def short_name(ref: str) -> tuple[str, str]:
    """("branch", "main") for refs/heads/main, ("tag", "v1") for refs/tags/v1."""
    if ref.startswith("refs/tags/"):
        return "tag", ref.removeprefix("refs/tags/")
    return "branch", ref.removeprefix("refs/heads/")


# --- How each forge signs a delivery: (body, secret, event) -> headers ---------


def github_headers(body: bytes, secret: bytes, event: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/abc1234",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": "gh-delivery-1",
        "X-GitHub-Hook-ID": "42",
        "X-Hub-Signature": "sha1=" + hex_hmac(secret, body, hashlib.sha1),
        "X-Hub-Signature-256": "sha256=" + hex_hmac(secret, body),
    }


def gitea_headers(body: bytes, secret: bytes, event: str, delivery="gitea-delivery-1") -> dict[str, str]:
    """Gitea sends its own set plus Gogs' and GitHub's, all over the same body."""
    signature = hex_hmac(secret, body)
    return {
        "Content-Type": "application/json",
        "X-Gitea-Delivery": delivery,
        "X-Gitea-Event": event,
        "X-Gitea-Event-Type": event,
        "X-Gitea-Signature": signature,
        "X-Gogs-Delivery": delivery,
        "X-Gogs-Event": event,
        "X-Gogs-Event-Type": event,
        "X-Gogs-Signature": signature,
        "X-Hub-Signature": "sha1=" + hex_hmac(secret, body, hashlib.sha1),
        "X-Hub-Signature-256": "sha256=" + signature,
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Event": event,
        "X-GitHub-Event-Type": event,
    }


def forgejo_headers(body: bytes, secret: bytes, event: str) -> dict[str, str]:
    """Forgejo adds its own set in front of everything Gitea sends."""
    delivery = "forgejo-delivery-1"
    return {
        **gitea_headers(body, secret, event, delivery),
        "X-Forgejo-Delivery": delivery,
        "X-Forgejo-Event": event,
        "X-Forgejo-Event-Type": event,
        "X-Forgejo-Signature": hex_hmac(secret, body),
    }


def gogs_headers(body: bytes, secret: bytes, event: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Github-Delivery": "gogs-delivery-1",
        "X-Github-Event": event,
        "X-Gogs-Delivery": "gogs-delivery-1",
        "X-Gogs-Event": event,
        "X-Gogs-Signature": hex_hmac(secret, body),
    }


def gitlab_headers(body: bytes, secret: bytes, event: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitLab/17.5.1",
        "Idempotency-Key": "gitlab-idempotency-1",
        "X-Gitlab-Event": event,
        "X-Gitlab-Webhook-UUID": "gitlab-webhook-uuid-1",
        "X-Gitlab-Instance": "https://gitlab.example.com",
        "X-Gitlab-Event-UUID": "gitlab-event-uuid-1",
        "X-Gitlab-Token": secret.decode(),
    }


def bitbucket_cloud_headers(body: bytes, secret: bytes, event: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "Bitbucket-Webhooks/2.0",
        "X-Event-Key": event,
        "X-Hook-UUID": "bb-hook-uuid",
        "X-Request-UUID": "bb-request-uuid-1",
        "X-Attempt-Number": "1",
        "X-Hub-Signature": "sha256=" + hex_hmac(secret, body),
    }


def bitbucket_server_headers(body: bytes, secret: bytes, event: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json; charset=utf-8",
        "X-Event-Key": event,
        "X-Request-Id": "bbs-request-id-1",
        "X-Hub-Signature": "sha256=" + hex_hmac(secret, body),
    }


def azure_headers(body: bytes, secret: bytes, event: str) -> dict[str, str]:
    """Azure names the event in the body; the secret is the basic-auth password."""
    credentials = base64.b64encode(b"gitsync:" + secret).decode()
    return {
        "Content-Type": "application/json; charset=utf-8",
        "X-VSS-ActivityId": "azure-activity-1",
        "X-VSS-SubscriptionId": "azure-subscription",
        "Authorization": "Basic " + credentials,
    }


# --- How each forge spells a push ---------------------------------------------


def github_push(ref: str, after: str) -> bytes:
    deleted = after == ZERO
    return to_json({"ref": ref, "before": OLD, "after": after, "created": False, "deleted": deleted})


def gitea_push(ref: str, after: str) -> bytes:
    return to_json({"ref": ref, "before": OLD, "after": after, "commits": []})


def gitlab_push(ref: str, after: str) -> bytes:
    kind = "tag_push" if ref.startswith("refs/tags/") else "push"
    checkout = None if after == ZERO else after
    return to_json(
        {"object_kind": kind, "ref": ref, "before": OLD, "after": after, "checkout_sha": checkout})


def bitbucket_cloud_state(ref: str, sha: str) -> dict:
    kind, name = short_name(ref)
    return {"type": kind, "name": name, "target": {"type": "commit", "hash": sha}}


def bitbucket_cloud_push(ref: str, after: str) -> bytes:
    new = None if after == ZERO else bitbucket_cloud_state(ref, after)
    change = {"new": new, "old": bitbucket_cloud_state(ref, OLD), "closed": new is None}
    return to_json({"push": {"changes": [change]}})


def bitbucket_server_push(ref: str, after: str) -> bytes:
    kind, name = short_name(ref)
    change = {
        "ref": {"id": ref, "displayId": name, "type": kind.upper()},
        "refId": ref,
        "fromHash": OLD,
        "toHash": after,
        "type": "DELETE" if after == ZERO else "UPDATE",
    }
    return to_json({"eventKey": "repo:refs_changed", "changes": [change]})


def azure_push(ref: str, after: str) -> bytes:
    update = {"name": ref, "oldObjectId": OLD, "newObjectId": after}
    resource = {"refUpdates": [update]}
    return to_json({"id": "azure-event-1", "eventType": "git.push", "resource": resource})


def plain_event_body(event: str) -> bytes:
    return to_json({"zen": "Keep it logically awesome.", "hook_id": 7})


def azure_event_body(event: str) -> bytes:
    return to_json({"id": "azure-event-1", "eventType": event, "resource": {}})


@dataclass(frozen=True)
class Case:
    forge: str
    sign: Callable[[bytes, bytes, str], dict[str, str]]
    push_body: Callable[[str, str], bytes]
    push_event: str
    other_event: str
    delivery_id: str
    signature_headers: tuple[str, ...]
    tag_event: str = ""
    ping_event: str | None = None
    event_body: Callable[[str], bytes] = plain_event_body

    def __str__(self) -> str:
        return self.forge

    def push(self, ref: str, after: str, secret: bytes = SECRET) -> tuple[dict[str, str], bytes]:
        event = self.tag_event if ref.startswith("refs/tags/") and self.tag_event else self.push_event
        body = self.push_body(ref, after)
        return self.sign(body, secret, event), body

    def without_signature(self, headers: dict[str, str]) -> dict[str, str]:
        return {name: value for name, value in headers.items() if name not in self.signature_headers}


GITEA_SIGNATURES = ("X-Gitea-Signature", "X-Gogs-Signature", "X-Hub-Signature", "X-Hub-Signature-256")

# forge, signer, push body, push event, another event, delivery id, signature headers
CASES = [
    Case("github", github_headers, github_push, "push", "issues", "gh-delivery-1",
         ("X-Hub-Signature", "X-Hub-Signature-256"), ping_event="ping"),
    Case("gitea", gitea_headers, gitea_push, "push", "issues", "gitea-delivery-1",
         GITEA_SIGNATURES),
    Case("forgejo", forgejo_headers, gitea_push, "push", "issues", "forgejo-delivery-1",
         ("X-Forgejo-Signature", *GITEA_SIGNATURES)),
    Case("gogs", gogs_headers, gitea_push, "push", "issues", "gogs-delivery-1",
         ("X-Gogs-Signature",)),
    Case("gitlab", gitlab_headers, gitlab_push, "Push Hook", "Issue Hook", "gitlab-idempotency-1",
         ("X-Gitlab-Token",), tag_event="Tag Push Hook"),
    Case("bitbucket-cloud", bitbucket_cloud_headers, bitbucket_cloud_push, "repo:push",
         "pullrequest:created", "bb-request-uuid-1", ("X-Hub-Signature",)),
    Case("bitbucket-server", bitbucket_server_headers, bitbucket_server_push, "repo:refs_changed",
         "pr:opened", "bbs-request-id-1", ("X-Hub-Signature",), ping_event="diagnostics:ping"),
    Case("azure-devops", azure_headers, azure_push, "git.push", "git.pullrequest.created",
         "azure-event-1", ("Authorization",), event_body=azure_event_body),
]
PING_CASES = [case for case in CASES if case.ping_event]

every_forge = pytest.mark.parametrize("case", CASES, ids=str)


def rejection(headers, body: bytes, secret: bytes = SECRET) -> DeliveryRejected:
    with pytest.raises(DeliveryRejected) as caught:
        parse_delivery(headers, body, secret)
    return caught.value


# --- Valid deliveries -----------------------------------------------------------


@every_forge
def test_branch_push_is_parsed(case):
    headers, body = case.push("refs/heads/main", NEW)

    assert parse_delivery(headers, body, SECRET) == Delivery(
        forge=case.forge,
        kind="push",
        event=case.push_event,
        delivery_id=case.delivery_id,
        changes=(RefChange("refs/heads/main", NEW, deleted=False),),
    )


@every_forge
def test_tag_push_is_parsed(case):
    headers, body = case.push("refs/tags/v1.2.0", NEW)

    delivery = parse_delivery(headers, body, SECRET)

    assert (delivery.kind, delivery.event) == ("push", case.tag_event or case.push_event)
    assert delivery.changes == (RefChange("refs/tags/v1.2.0", NEW, deleted=False),)


@every_forge
def test_ref_deletion_is_marked_deleted(case):
    headers, body = case.push("refs/heads/old-feature", ZERO)

    delivery = parse_delivery(headers, body, SECRET)

    assert delivery.changes == (RefChange("refs/heads/old-feature", None, deleted=True),)


@pytest.mark.parametrize("case", PING_CASES, ids=str)
def test_ping_is_kind_ping(case):
    body = case.event_body(case.ping_event)
    delivery = parse_delivery(case.sign(body, SECRET, case.ping_event), body, SECRET)

    assert (delivery.forge, delivery.kind, delivery.event) == (case.forge, "ping", case.ping_event)
    assert delivery.changes == ()


@every_forge
def test_other_events_are_kind_other_without_changes(case):
    body = case.event_body(case.other_event)
    delivery = parse_delivery(case.sign(body, SECRET, case.other_event), body, SECRET)

    assert (delivery.forge, delivery.kind, delivery.event, delivery.changes) == (
        case.forge, "other", case.other_event, ())


# --- Rejected deliveries ----------------------------------------------------------


@every_forge
def test_wrong_secret_is_401(case):
    headers, body = case.push("refs/heads/main", NEW, secret=WRONG_SECRET)

    assert rejection(headers, body).status == 401


@every_forge
def test_missing_signature_is_401(case):
    headers, body = case.push("refs/heads/main", NEW)

    assert rejection(case.without_signature(headers), body).status == 401


# GitLab's token and Azure's basic auth do not cover the body, so only the
# forges that sign it can notice a change in transit.
BODY_SIGNING_CASES = [case for case in CASES if case.forge not in {"gitlab", "azure-devops"}]


@pytest.mark.parametrize("case", BODY_SIGNING_CASES, ids=str)
def test_tampered_body_is_401(case):
    headers, body = case.push("refs/heads/main", NEW)
    tampered = body.replace(NEW.encode(), b"3" * 40)
    assert tampered != body

    assert rejection(headers, tampered).status == 401


@every_forge
def test_signed_non_json_is_400(case):
    body = b"this is not json {"

    assert rejection(case.sign(body, SECRET, case.push_event), body).status == 400


@every_forge
def test_signed_push_without_its_ref_fields_is_400(case):
    body = case.event_body(case.push_event)

    assert rejection(case.sign(body, SECRET, case.push_event), body).status == 400


@every_forge
def test_verification_comes_before_parsing(case):
    """An unsigned garbage body is a 401, not a 400 that would confirm the URL parses."""
    body = b"\xff not json"

    assert rejection(case.sign(body, WRONG_SECRET, case.push_event), body).status == 401


@every_forge
def test_empty_secret_accepts_nothing(case):
    headers, body = case.push("refs/heads/main", NEW, secret=b"")

    assert rejection(headers, body, secret=b"").status == 401


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Content-Type": "application/json"},
        # A valid GitHub-style signature is not enough without an event header.
        {"X-Hub-Signature-256": "sha256=" + hex_hmac(SECRET, b"{}"), "X-Custom-Event": "push"},
    ],
    ids=["no-headers", "content-type-only", "signature-without-event"],
)
def test_unknown_forge_is_401(headers):
    assert rejection(headers, b"{}").status == 401


def test_a_forge_accepts_only_its_own_signature_headers():
    """GitHub never sends X-Gitea-Signature, so a delivery cannot swap one in."""
    body = github_push("refs/heads/main", NEW)
    headers = {"X-GitHub-Event": "push", "X-Gitea-Signature": hex_hmac(SECRET, body)}

    assert rejection(headers, body).status == 401


def test_sha1_hub_signature_alone_is_not_accepted():
    body = github_push("refs/heads/main", NEW)
    sha1 = "sha1=" + hex_hmac(SECRET, body, hashlib.sha1)
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature": sha1}

    assert rejection(headers, body).status == 401


# --- Forges that send several header sets ---------------------------------------


@pytest.mark.parametrize("broken", ["X-Gitea-Signature", "X-Hub-Signature-256"])
def test_gitea_is_accepted_when_any_one_signature_verifies(broken):
    body = gitea_push("refs/heads/main", NEW)
    headers = gitea_headers(body, SECRET, "push")
    headers[broken] = gitea_headers(body, WRONG_SECRET, "push")[broken]
    headers.pop("X-Gogs-Signature")

    assert parse_delivery(headers, body, SECRET).forge == "gitea"


def test_gitea_is_rejected_when_no_signature_verifies():
    body = gitea_push("refs/heads/main", NEW)
    headers = gitea_headers(body, SECRET, "push")
    for name in ("X-Gitea-Signature", "X-Gogs-Signature", "X-Hub-Signature-256"):
        headers[name] = gitea_headers(body, WRONG_SECRET, "push")[name]

    assert rejection(headers, body).status == 401


@pytest.mark.parametrize(
    "sign, forge",
    [(forgejo_headers, "forgejo"), (gitea_headers, "gitea"), (gogs_headers, "gogs")],
    ids=["forgejo", "gitea", "gogs"],
)
def test_forge_is_named_by_its_most_specific_event_header(sign, forge):
    body = gitea_push("refs/heads/main", NEW)
    headers = sign(body, SECRET, "push")
    assert "X-GitHub-Event".lower() in {name.lower() for name in headers}

    assert parse_delivery(headers, body, SECRET).forge == forge


def test_bitbucket_cloud_and_server_are_told_apart_by_cloud_only_headers():
    body = bitbucket_server_push("refs/heads/main", NEW)
    headers = bitbucket_server_headers(body, SECRET, "repo:refs_changed")

    assert parse_delivery(headers, body, SECRET).forge == "bitbucket-server"
    assert parse_delivery({**headers, "X-Hook-UUID": "h"}, body, SECRET).forge == "bitbucket-cloud"


# --- Form-encoded deliveries ------------------------------------------------------


def form_body(document: bytes) -> bytes:
    return b"payload=" + quote_plus(document.decode()).encode()


def as_form(headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "Content-Type": "application/x-www-form-urlencoded"}


def test_github_form_encoded_delivery_is_verified_over_the_raw_body():
    body = form_body(github_push("refs/heads/main", NEW))
    headers = as_form(github_headers(body, SECRET, "push"))

    delivery = parse_delivery(headers, body, SECRET)

    assert delivery.changes == (RefChange("refs/heads/main", NEW, deleted=False),)


def test_github_form_signed_over_the_json_instead_of_the_body_is_401():
    document = github_push("refs/heads/main", NEW)
    headers = as_form(github_headers(document, SECRET, "push"))

    assert rejection(headers, form_body(document)).status == 401


@pytest.mark.parametrize(
    "body", [b"payload", b"other=1", b"payload=1&payload=2"], ids=["bare", "no-payload", "two"])
def test_signed_form_without_one_payload_field_is_400(body):
    headers = as_form(github_headers(body, SECRET, "push"))

    assert rejection(headers, body).status == 400


@pytest.mark.parametrize("sign", [gitea_headers, gogs_headers], ids=["gitea", "gogs"])
def test_gitea_style_form_delivery_is_verified_over_the_json_payload(sign):
    """Gitea and Gogs sign the JSON document even when they send it as a form."""
    document = gitea_push("refs/heads/main", NEW)
    headers = as_form(sign(document, SECRET, "push"))

    delivery = parse_delivery(headers, form_body(document), SECRET)

    assert delivery.changes == (RefChange("refs/heads/main", NEW, deleted=False),)


def test_gitea_style_form_signed_over_the_raw_body_is_401():
    body = form_body(gitea_push("refs/heads/main", NEW))
    headers = as_form(gitea_headers(body, SECRET, "push"))

    assert rejection(headers, body).status == 401


# --- Reasons reveal nothing --------------------------------------------------------


def rejected_deliveries(case: Case):
    """Every way a delivery can be refused, as (headers sent, body sent)."""
    headers, body = case.push("refs/heads/main", NEW)
    wrong_headers, _ = case.push("refs/heads/main", NEW, secret=WRONG_SECRET)
    junk = b"not json"
    bare = case.event_body(case.push_event)
    yield wrong_headers, body
    yield case.without_signature(headers), body
    yield headers, body.replace(NEW.encode(), b"3" * 40)
    yield case.sign(junk, SECRET, case.push_event), junk
    yield case.sign(junk, WRONG_SECRET, case.push_event), junk
    yield case.sign(bare, SECRET, case.push_event), bare


@every_forge
def test_rejection_reasons_never_contain_the_secret_or_a_signature(case):
    secrets_shown = [SECRET.decode(), WRONG_SECRET.decode()]
    checked = 0
    for headers, body in rejected_deliveries(case):
        try:
            parse_delivery(headers, body, SECRET)
        except DeliveryRejected as rejected:
            sent = [headers[name] for name in case.signature_headers if name in headers]
            correct = [hex_hmac(SECRET, body), base64.b64encode(b"gitsync:" + SECRET).decode()]
            for text in (rejected.reason, str(rejected), repr(rejected)):
                assert text
                for value in (*secrets_shown, *sent, *correct):
                    assert value not in text
                assert "sha256=" not in text.lower()
            checked += 1
    assert checked >= 4


# --- Headers, ids and payload details -----------------------------------------------


@every_forge
def test_header_names_are_case_insensitive(case):
    headers, body = case.push("refs/heads/main", NEW)
    lowered = {name.lower(): value for name, value in headers.items()}

    assert parse_delivery(lowered, body, SECRET).forge == case.forge


@every_forge
def test_flask_environ_headers_are_accepted(case):
    headers, body = case.push("refs/heads/main", NEW)
    environ = EnvironBuilder(method="POST", headers=headers, data=body).get_environ()

    delivery = parse_delivery(EnvironHeaders(environ), body, SECRET)

    assert (delivery.forge, delivery.delivery_id) == (case.forge, case.delivery_id)


def test_gitlab_delivery_id_prefers_idempotency_key_and_never_uses_the_event_uuid():
    body = gitlab_push("refs/heads/main", NEW)
    headers = gitlab_headers(body, SECRET, "Push Hook")

    def delivery_id(drop: tuple[str, ...]) -> str | None:
        kept = {name: value for name, value in headers.items() if name not in drop}
        return parse_delivery(kept, body, SECRET).delivery_id

    assert delivery_id(()) == "gitlab-idempotency-1"
    assert delivery_id(("Idempotency-Key",)) == "gitlab-webhook-uuid-1"
    assert delivery_id(("Idempotency-Key", "X-Gitlab-Webhook-UUID")) is None


def test_bitbucket_cloud_push_with_several_changes():
    changes = [
        {"new": bitbucket_cloud_state("refs/heads/main", NEW),
         "old": bitbucket_cloud_state("refs/heads/main", OLD)},
        {"new": None, "old": bitbucket_cloud_state("refs/tags/v0", OLD)},
        {"new": bitbucket_cloud_state("refs/tags/v1", NEW), "old": None},
        {"new": {"type": "named_branch", "name": "default", "target": {"hash": NEW}}, "old": None},
    ]
    body = to_json({"push": {"changes": changes}})

    delivery = parse_delivery(bitbucket_cloud_headers(body, SECRET, "repo:push"), body, SECRET)

    assert delivery.changes == (
        RefChange("refs/heads/main", NEW, deleted=False),
        RefChange("refs/tags/v0", None, deleted=True),
        RefChange("refs/tags/v1", NEW, deleted=False),
    )


def test_bitbucket_server_and_azure_read_every_ref_in_a_push():
    server = to_json({"changes": [
        {"refId": "refs/heads/a", "toHash": NEW, "type": "ADD"},
        {"ref": {"id": "refs/heads/b"}, "toHash": ZERO, "type": "DELETE"},
    ]})
    azure = to_json({"eventType": "git.push", "resource": {"refUpdates": [
        {"name": "refs/heads/a", "newObjectId": NEW},
        {"name": "refs/heads/b", "newObjectId": ZERO},
    ]}})
    expected = (RefChange("refs/heads/a", NEW, False), RefChange("refs/heads/b", None, True))

    server_headers = bitbucket_server_headers(server, SECRET, "repo:refs_changed")
    assert parse_delivery(server_headers, server, SECRET).changes == expected
    assert parse_delivery(azure_headers(azure, SECRET, ""), azure, SECRET).changes == expected


@pytest.mark.parametrize(
    "after, change",
    [
        ("a" * 64, RefChange("refs/heads/main", "a" * 64, False)),
        ("0" * 64, RefChange("refs/heads/main", None, True)),
        (NEW.upper(), RefChange("refs/heads/main", NEW, False)),
        ("not-a-sha", RefChange("refs/heads/main", None, False)),
    ],
    ids=["sha256-id", "sha256-zero", "upper-case", "not-an-id"],
)
def test_after_is_a_normalised_object_id_hint(after, change):
    body = gitea_push("refs/heads/main", after)

    assert parse_delivery(gitea_headers(body, SECRET, "push"), body, SECRET).changes == (change,)


@pytest.mark.parametrize(
    "body", [b"[" * 100_000, b"[1, 2]", b'"push"'], ids=["deep", "array", "string"])
def test_signed_json_that_is_not_an_object_is_400(body):
    assert rejection(github_headers(body, SECRET, "push"), body).status == 400


def test_azure_basic_auth_user_name_is_ignored_but_password_must_match():
    body = azure_push("refs/heads/main", NEW)
    headers = azure_headers(body, SECRET, "")

    for user in (b"", b"someone"):
        headers["Authorization"] = "Basic " + base64.b64encode(user + b":" + SECRET).decode()
        assert parse_delivery(headers, body, SECRET).forge == "azure-devops"
    no_colon = "Basic " + base64.b64encode(SECRET).decode()
    for credentials in (no_colon, "Basic %%%", "Bearer " + SECRET.decode()):
        headers["Authorization"] = credentials
        assert rejection(headers, body).status == 401


# --- DeliveryLog -------------------------------------------------------------------


def test_delivery_log_remembers_1000_ids_and_forgets_the_oldest():
    log = DeliveryLog()
    assert not any(log.seen_before(f"id-{n}") for n in range(1000))
    assert all(log.seen_before(f"id-{n}") for n in range(1000))

    assert not log.seen_before("id-1000")  # pushes id-0 out
    assert log.seen_before("id-999")
    assert not log.seen_before("id-0")
    assert len(log) == 1000


def test_delivery_log_never_treats_a_missing_id_as_a_repeat():
    log = DeliveryLog(size=2)

    answers = [log.seen_before(delivery_id) for delivery_id in (None, None, "", "")]

    assert answers == [False] * 4
    assert len(log) == 0


def test_delivery_log_needs_room_for_one_id():
    with pytest.raises(ValueError):
        DeliveryLog(size=0)


class YieldingId(str):
    """A delivery id whose hashing lets other threads run, so an unguarded
    check-then-record in DeliveryLog interleaves instead of hiding behind the GIL."""

    def __hash__(self) -> int:
        time.sleep(0)
        return str.__hash__(self)


def test_delivery_log_answers_each_id_new_exactly_once_across_threads():
    log = DeliveryLog(size=100)
    ids = [YieldingId(f"delivery-{n}") for n in range(100)]
    firsts: list[str] = []
    start = threading.Barrier(8)

    def deliver() -> None:
        start.wait()
        for delivery_id in ids:
            if not log.seen_before(delivery_id):
                firsts.append(delivery_id)

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(firsts) == sorted(ids)
    assert len(log) == 100
