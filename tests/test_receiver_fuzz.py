"""POST /api/v1/webhook fuzzed with hypothesis, per forge: headers dropped, garbled,
re-cased or borrowed from other forges; bodies reshaped, replaced or tampered with
after signing; signed with the secret, another one or none.

Whatever arrives: never a 5xx; no sync unless the request carries a valid proof
of the secret (checked here by an oracle of its own, not by webhook/forges.py);
the secret never appears in an answer or a log line. `make test` runs a bounded,
reproducible set of examples; `make fuzz` (HYPOTHESIS_PROFILE=fuzz) a long random run.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
from urllib.parse import parse_qs, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.api import SECRET, forge_params, new_delivery_id
from support.repos import ZERO_SHA

settings.register_profile(
    "quick", max_examples=200, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile(
    "fuzz", max_examples=5000, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))

SHA = "ab" * 20
PROOF_HEADERS = ("X-Hub-Signature-256", "X-Hub-Signature", "X-Gitea-Signature",
                 "X-Forgejo-Signature", "X-Gogs-Signature", "X-Gitlab-Token", "Authorization")
KNOWN_HEADERS = PROOF_HEADERS + (
    "Content-Type", "X-GitHub-Event", "X-GitHub-Delivery", "X-Gitea-Event", "X-Gitea-Delivery",
    "X-Forgejo-Event", "X-Forgejo-Delivery", "X-Gogs-Event", "X-Gogs-Delivery", "X-Gitlab-Event",
    "Idempotency-Key", "X-Gitlab-Webhook-UUID", "X-Event-Key", "X-Hook-UUID", "X-Request-UUID",
    "X-Request-Id", "X-VSS-ActivityId", "X-VSS-SubscriptionId")
FORM = "application/x-www-form-urlencoded"

# What a real server can hand over: latin-1 without control characters.
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                    blacklist_categories=("Cc",)), max_size=80)
json_leaf = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
             | st.text(max_size=20) | st.sampled_from(["refs/heads/main", SHA, ZERO_SHA, "branch"]))
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


# -- the oracle: does the request prove the secret in any way any forge does? ----------------

def _hex(content: bytes) -> str:
    return hmac.new(SECRET, content, hashlib.sha256).hexdigest()


def signed_contents(headers: dict[str, str], body: bytes) -> list[bytes]:
    contents = [body]
    try:
        payload = parse_qs(body.decode("ascii"), strict_parsing=True).get("payload", [])
        contents += [value.encode() for value in payload]
    except ValueError:
        pass
    return contents


def carries_valid_proof(headers: dict[str, str], body: bytes) -> bool:
    values = {}
    for name, value in headers.items():
        values.setdefault(name.lower(), value.strip())
    for content in signed_contents(headers, body):
        digest = _hex(content)
        for name in ("x-hub-signature-256", "x-hub-signature"):
            if values.get(name, "").lower() == "sha256=" + digest:
                return True
        for name in ("x-gitea-signature", "x-forgejo-signature", "x-gogs-signature"):
            if values.get(name, "").lower() == digest:
                return True
    if values.get("x-gitlab-token", "").encode("latin-1") == SECRET:
        return True
    scheme, _, encoded = values.get("authorization", "").partition(" ")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return scheme.lower() == "basic" and decoded.partition(b":")[2] == SECRET


# -- the strategies -------------------------------------------------------------------------

def other_kind(value) -> st.SearchStrategy:
    """Any JSON value of another type than `value`: where parsers trip."""
    kinds = {"null": st.none(), "bool": st.booleans(), "number": st.integers() | st.floats(allow_nan=False),
             "string": st.text(max_size=20), "list": st.lists(json_value, max_size=3),
             "object": st.dictionaries(st.text(max_size=8), json_value, max_size=3)}
    own = {type(None): "null", bool: "bool", int: "number", float: "number", str: "string",
           list: "list", dict: "object"}[type(value)]
    return st.one_of([strategy for kind, strategy in kinds.items() if kind != own])


@st.composite
def reshaped(draw, document):
    """The document with each value, at any depth, replaced by one of another type now and then."""
    container = isinstance(document, (dict, list))
    if draw(st.integers(0, 19 if container else 2)) == 0:
        return draw(other_kind(document))
    if isinstance(document, dict):
        return {key: draw(reshaped(value)) for key, value in document.items()}
    if isinstance(document, list):
        return [draw(reshaped(item)) for item in document]
    return document


def mostly(common: st.SearchStrategy, rare: st.SearchStrategy) -> st.SearchStrategy:
    """`common` four times in five, else `rare` (`a | b` would be half and half)."""
    return st.integers(0, 4).flatmap(lambda n: rare if n == 0 else common)


@st.composite
def deliveries(draw, forge):
    """(headers, body, pristine): pristine = a correctly signed push of main, untouched."""
    ref = draw(mostly(st.sampled_from(["refs/heads/main", "refs/heads/other", "refs/tags/v1"]),
                      st.text(max_size=30)))
    after = draw(mostly(st.sampled_from([SHA, ZERO_SHA]), st.text("0123456789abcdef", max_size=64)))
    events = [forge.push_event, forge.other_event, forge.ping_event, forge.tag_push_event]
    # Pushes mostly: only their payloads are read past the signature.
    event = draw(mostly(st.just(forge.push_event),
                        st.sampled_from([e for e in events if e]) | header_text))
    document = forge.payload(ref, after)
    if forge.name == "azure-devops":
        document["eventType"] = event
    reshape = draw(st.booleans())
    if reshape:
        document = draw(reshaped(document))
    body = json.dumps(document).encode()
    replaced = draw(st.integers(0, 9)) == 0
    if replaced:
        body = draw(st.binary(max_size=200))
    content, as_form = body, forge.name in ("gitea", "forgejo", "gogs") and draw(st.booleans())
    if as_form:
        body = urlencode({"payload": body.decode("utf-8", "replace")}).encode()
        content = signed_contents({}, body)[-1]
    secret = draw(mostly(st.just(SECRET), st.sampled_from([b"", b"wrong-secret"])
                         | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                                   max_size=30).map(str.encode)))
    headers = forge.headers(content, secret, event, new_delivery_id())
    if as_form:
        headers["Content-Type"] = FORM
    mutate = draw(st.integers(0, 4)) == 0
    if mutate:
        headers = draw(mutated_headers(headers))
    tamper = draw(st.integers(0, 7)) == 0 and body
    if tamper:
        at = draw(st.integers(0, len(body) - 1))
        body = body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1:]
    pristine = (secret == SECRET and not (reshape or replaced or mutate or tamper)
                and event == forge.push_event and ref == "refs/heads/main" and after == SHA)
    return headers, body, pristine


@st.composite
def mutated_headers(draw, headers):
    names = sorted(headers)
    drop = draw(st.sets(st.sampled_from(names), max_size=3)) if names else set()
    result = {name: value for name, value in headers.items() if name not in drop}
    for name in draw(st.lists(st.sampled_from(KNOWN_HEADERS), max_size=3)):
        cased = draw(st.sampled_from([name, name.lower(), name.upper()]))
        result[cased] = draw(header_text | st.sampled_from(["sha256=" + "0" * 64, "Basic Og==",
                                                            SECRET.decode()[:-1]]))
    return result


# -- the test ---------------------------------------------------------------------------------

class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage() + repr(getattr(record, "fields", "")))


@pytest.fixture
def receiver(api_factory, remote, monkeypatch):
    """A real engine (not running: a trigger only queues) and its app; triggers recorded."""
    api = api_factory(remote.url, run=False)
    triggers = []
    real_trigger = api.engine.trigger
    monkeypatch.setattr(api.engine, "trigger", lambda reason: (triggers.append(reason),
                                                               real_trigger(reason)))
    records = Records()
    logging.getLogger().addHandler(records)
    yield api, triggers, records
    logging.getLogger().removeHandler(records)


def proofs_sent(headers: dict[str, str], body: bytes) -> list[str]:
    """Signature and token values long enough to tell, and not also sent elsewhere
    (an event header may carry the same text, and that one may be quoted back)."""
    proof_names = {name.lower() for name in PROOF_HEADERS}
    elsewhere = [value for name, value in headers.items() if name.lower() not in proof_names]
    return [value.strip() for name, value in headers.items()
            if name.lower() in proof_names and len(value.strip()) >= 12
            and not any(value.strip() in other for other in elsewhere)
            and value.strip().encode("latin-1") not in body]


def secret_forms() -> list[str]:
    return [SECRET.decode(), base64.b64encode(b"gitsync:" + SECRET).decode()]


@forge_params
def test_fuzzed_deliveries_never_fail_never_sync_unproven_never_echo_the_secret(receiver, forge):
    api, triggers, records = receiver

    @PROFILE
    @given(deliveries(forge))
    def check(delivery):
        headers, body, pristine = delivery
        before, lines_before = len(triggers), len(records.lines)
        answer = api.post_webhook(headers, body)
        text = answer.get_data(as_text=True) + repr(list(answer.headers.items()))

        assert answer.status_code < 500, (answer.status_code, text)
        synced = len(triggers) - before
        assert synced == (1 if answer.status_code == 202 else 0)
        if not carries_valid_proof(headers, body):
            assert answer.status_code == 401 and synced == 0, text
        if pristine:
            assert answer.status_code == 202, text
        logged = "".join(records.lines[lines_before:])
        for secret in secret_forms():
            assert secret not in text and secret not in logged
        for proof in proofs_sent(headers, body):
            assert proof not in text, "a signature or token was echoed"

    check()
