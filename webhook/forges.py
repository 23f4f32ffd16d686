"""Inbound push webhooks: tell the forge apart, check the secret, read the refs.

Pure logic over (headers, raw body, secret) with no Flask and no I/O, so the
receiver stays a thin HTTP adapter and every forge can be tested from bytes.

Each forge is one row of `FORGES`: the header that names it, the ways its
deliveries prove the secret, its push and ping event names, where its delivery
id lives, and a reader that turns its push payload into `RefChange`s. Adding a
forge means adding a row, not another branch in a chain of ifs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

__all__ = [
    "FORGES",
    "Delivery",
    "DeliveryLog",
    "DeliveryRejected",
    "RefChange",
    "parse_delivery",
]

# Object ids are 40 hex digits, or 64 in SHA-256 repositories (Gitea and GitLab
# can host those); a ref deletion reports the all-zero id of either length.
_OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_ZERO_ID = re.compile(r"0{40}|0{64}")

_FORM = "application/x-www-form-urlencoded"
_UNAUTHORIZED = "missing or invalid webhook signature or token"
_UNKNOWN_FORGE = "not a recognised forge webhook (no known event headers)"


@dataclass(frozen=True)
class RefChange:
    ref: str  # full ref name, e.g. "refs/heads/main", "refs/tags/v1"
    after: str | None  # new object id as a hint; None if unknown or deleted
    deleted: bool


@dataclass(frozen=True)
class Delivery:
    forge: str  # a name from FORGES
    kind: str  # "push", "ping" or "other"
    event: str  # the forge's own event name, for logs and metrics
    delivery_id: str | None
    changes: tuple[RefChange, ...]  # empty unless kind == "push"


class DeliveryRejected(Exception):
    """A delivery we will not act on; `reason` is safe to send back and to log.

    401 when the sender is unknown or did not prove the secret, 400 when it did
    but the body is not a usable event. The reason never quotes a header value,
    so neither the secret (GitLab sends it verbatim) nor a signature can leak.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Malformed(ValueError):
    """A verified body that is not the event it claims to be (becomes a 400)."""


class _Headers:
    """Case-insensitive, read-only view of any header mapping.

    Flask's EnvironHeaders already ignores case, but a plain dict does not, and
    HTTP/2 proxies lower-case every name; one view keeps lookups uniform.
    """

    def __init__(self, raw: Mapping[str, str]) -> None:
        self._values: dict[str, str] = {}
        for name, value in raw.items():
            self._values.setdefault(name.lower(), value)

    def get(self, name: str) -> str | None:
        """The stripped value, or None when absent or blank."""
        value = self._values.get(name.lower(), "").strip()
        return value or None


def _header_bytes(value: str) -> bytes:
    """Undo WSGI's latin-1 decoding so a non-ASCII token compares byte for byte."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def _hmac_sha256_hex(secret: bytes, content: bytes) -> bytes:
    return hmac.new(secret, content, hashlib.sha256).hexdigest().encode("ascii")


# --- Ways a delivery proves it knows the secret -------------------------------
# Each check looks at one header and answers only True or False, so no header
# value can travel further than this section.


@dataclass(frozen=True)
class HexHmac:
    """Bare hex HMAC-SHA256 of the signed content (Gitea, Forgejo, Gogs)."""

    header: str

    def passes(self, headers: _Headers, content: bytes, secret: bytes) -> bool:
        sent = headers.get(self.header)
        if sent is None:
            return False
        return hmac.compare_digest(_header_bytes(sent.lower()), _hmac_sha256_hex(secret, content))


@dataclass(frozen=True)
class PrefixedHmac:
    """`sha256=<hex HMAC-SHA256>` (GitHub's X-Hub-Signature-256, Bitbucket's X-Hub-Signature).

    Only SHA-256 counts: the SHA-1 X-Hub-Signature that GitHub and Gitea also
    send fails here because its prefix is "sha1=".
    """

    header: str
    prefix: str = "sha256="

    def passes(self, headers: _Headers, content: bytes, secret: bytes) -> bool:
        sent = headers.get(self.header)
        if sent is None:
            return False
        expected = self.prefix.encode("ascii") + _hmac_sha256_hex(secret, content)
        return hmac.compare_digest(_header_bytes(sent.lower()), expected)


@dataclass(frozen=True)
class Token:
    """The secret itself in a header (GitLab's X-Gitlab-Token); no body binding."""

    header: str

    def passes(self, headers: _Headers, content: bytes, secret: bytes) -> bool:
        sent = headers.get(self.header)
        return sent is not None and hmac.compare_digest(_header_bytes(sent), secret)


@dataclass(frozen=True)
class BasicAuthPassword:
    """HTTP basic auth whose password is the secret (Azure DevOps service hooks).

    The user name is not checked: Azure asks for one, but only the password is
    a shared secret.
    """

    def passes(self, headers: _Headers, content: bytes, secret: bytes) -> bool:
        scheme, _, encoded = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        _, colon, password = decoded.partition(b":")
        return bool(colon) and hmac.compare_digest(password, secret)


Check = HexHmac | PrefixedHmac | Token | BasicAuthPassword


# --- Push payload readers -----------------------------------------------------


def _field(container: Any, key: str, kind: type, what: str) -> Any:
    """`container[key]` if it has the expected JSON type, else a 400 naming `what`."""
    value = container.get(key) if isinstance(container, dict) else None
    if not isinstance(value, kind) or (kind is str and not value):
        raise _Malformed(f"push payload has no valid {what}")
    return value


def _ref_change(ref: str, new_id: Any, deleted: bool = False) -> RefChange:
    """One ref update; an all-zero new id is how most forges spell a deletion."""
    new_id = new_id.lower() if isinstance(new_id, str) else None
    deleted = deleted or bool(new_id and _ZERO_ID.fullmatch(new_id))
    if deleted or not (new_id and _OBJECT_ID.fullmatch(new_id)):
        new_id = None
    return RefChange(ref=ref, after=new_id, deleted=deleted)


def read_top_level_ref(payload: dict) -> tuple[RefChange, ...]:
    """GitHub, Gitea, Forgejo, Gogs and GitLab: one ref per delivery in `ref`/`after`."""
    ref = _field(payload, "ref", str, "'ref'")
    return (_ref_change(ref, payload.get("after"), deleted=payload.get("deleted") is True),)


# Bitbucket Cloud names refs without their namespace; these restore it.
# Mercurial-era types ("named_branch", "bookmark") have no git ref and are skipped.
_BITBUCKET_CLOUD_NAMESPACES = {"branch": "refs/heads/", "tag": "refs/tags/"}


def read_bitbucket_cloud_changes(payload: dict) -> tuple[RefChange, ...]:
    """`push.changes[]`: each has `new` and `old` states; `new` is null on deletion."""
    push = _field(payload, "push", dict, "'push'")
    changes = _field(push, "changes", list, "'push.changes'")
    read = (_bitbucket_cloud_change(change) for change in changes)
    return tuple(change for change in read if change is not None)


def _bitbucket_cloud_change(change: Any) -> RefChange | None:
    new = change.get("new") if isinstance(change, dict) else None
    old = change.get("old") if isinstance(change, dict) else None
    state = new if new is not None else old  # a deleted ref is named only by `old`
    if not isinstance(state, dict):
        raise _Malformed("push payload has a change without 'new' or 'old'")
    kind = state.get("type")
    namespace = _BITBUCKET_CLOUD_NAMESPACES.get(kind) if isinstance(kind, str) else None
    if namespace is None:
        return None
    ref = namespace + _field(state, "name", str, "ref name in 'push.changes'")
    if new is None:
        return RefChange(ref=ref, after=None, deleted=True)
    target = state.get("target")
    return _ref_change(ref, target.get("hash") if isinstance(target, dict) else None)


def read_bitbucket_server_changes(payload: dict) -> tuple[RefChange, ...]:
    """`changes[]` with `ref.id` (or `refId`), `toHash` and type ADD/UPDATE/DELETE."""
    changes = _field(payload, "changes", list, "'changes'")
    return tuple(_bitbucket_server_change(change) for change in changes)


def _bitbucket_server_change(change: Any) -> RefChange:
    ref = change.get("ref") if isinstance(change, dict) else None
    ref_id = ref.get("id") if isinstance(ref, dict) else None
    if not isinstance(ref_id, str):
        ref_id = _field(change, "refId", str, "ref id in 'changes'")
    return _ref_change(ref_id, change.get("toHash"), deleted=change.get("type") == "DELETE")


def read_azure_ref_updates(payload: dict) -> tuple[RefChange, ...]:
    """`resource.refUpdates[]` with `name` and `newObjectId` (zeros on deletion)."""
    resource = _field(payload, "resource", dict, "'resource'")
    updates = _field(resource, "refUpdates", list, "'resource.refUpdates'")
    return tuple(_azure_ref_update(update) for update in updates)


def _azure_ref_update(update: Any) -> RefChange:
    ref = _field(update, "name", str, "ref name in 'refUpdates'")
    return _ref_change(ref, update.get("newObjectId"))


# --- The forges ---------------------------------------------------------------


@dataclass(frozen=True)
class Forge:
    """How one forge identifies, authenticates and describes its deliveries.

    `event_header` names the event and its presence identifies the forge;
    `markers`, when given, must add at least one present header, to tell apart
    forges that share an event header. Any one of `checks` passing proves the
    secret. The first of `delivery_headers` present is the delivery id. Forges
    without such headers name the event and the id in body fields instead
    (`event_field`, `delivery_field`). `signs_form_payload`: a form-encoded
    delivery is signed over its decoded `payload`, not over the raw body.
    """

    name: str
    event_header: str | None
    checks: tuple[Check, ...]
    push_events: frozenset[str]
    read_changes: Callable[[dict], tuple[RefChange, ...]]
    ping_events: frozenset[str] = frozenset()
    delivery_headers: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()
    event_field: str | None = None
    delivery_field: str | None = None
    signs_form_payload: bool = False

    def identifies(self, headers: _Headers) -> bool:
        if self.event_header is not None and headers.get(self.event_header) is None:
            return False
        return not self.markers or any(headers.get(marker) for marker in self.markers)

    def kind_of(self, event: str) -> str:
        if event in self.push_events:
            return "push"
        return "ping" if event in self.ping_events else "other"


_GITEA_STYLE_PUSH = frozenset({"push"})

# Order matters: Forgejo also sends Gitea's, Gogs' and GitHub's headers, Gitea
# sends Gogs' and GitHub's, and Gogs sends GitHub's, so the most specific event
# header is looked for first. Their X-Hub-Signature is SHA-1 and never accepted.
FORGES: tuple[Forge, ...] = (
    Forge(
        name="forgejo",
        event_header="X-Forgejo-Event",
        checks=(
            HexHmac("X-Forgejo-Signature"),
            HexHmac("X-Gitea-Signature"),
            HexHmac("X-Gogs-Signature"),
            PrefixedHmac("X-Hub-Signature-256"),
        ),
        push_events=_GITEA_STYLE_PUSH,
        read_changes=read_top_level_ref,
        delivery_headers=("X-Forgejo-Delivery", "X-Gitea-Delivery"),
        signs_form_payload=True,
    ),
    Forge(
        name="gitea",
        event_header="X-Gitea-Event",
        checks=(
            HexHmac("X-Gitea-Signature"),
            HexHmac("X-Gogs-Signature"),
            PrefixedHmac("X-Hub-Signature-256"),
        ),
        push_events=_GITEA_STYLE_PUSH,
        read_changes=read_top_level_ref,
        delivery_headers=("X-Gitea-Delivery",),
        signs_form_payload=True,
    ),
    Forge(
        name="gogs",
        event_header="X-Gogs-Event",
        checks=(HexHmac("X-Gogs-Signature"),),
        push_events=_GITEA_STYLE_PUSH,
        read_changes=read_top_level_ref,
        delivery_headers=("X-Gogs-Delivery",),
        signs_form_payload=True,
    ),
    Forge(
        name="github",
        event_header="X-GitHub-Event",
        checks=(PrefixedHmac("X-Hub-Signature-256"),),
        push_events=frozenset({"push"}),
        ping_events=frozenset({"ping"}),
        read_changes=read_top_level_ref,
        delivery_headers=("X-GitHub-Delivery",),
    ),
    Forge(
        name="gitlab",
        event_header="X-Gitlab-Event",
        checks=(Token("X-Gitlab-Token"),),
        push_events=frozenset({"Push Hook", "Tag Push Hook"}),
        read_changes=read_top_level_ref,
        # Idempotency-Key (GitLab 17.4+) is per event and kept on retries;
        # X-Gitlab-Webhook-UUID is fresh per request. X-Gitlab-Event-UUID is
        # deliberately absent: it is a recursion-detection id that GitLab
        # reuses across distinct events, so deduplicating on it can drop pushes.
        delivery_headers=("Idempotency-Key", "X-Gitlab-Webhook-UUID"),
    ),
    Forge(
        name="bitbucket-cloud",
        event_header="X-Event-Key",
        markers=("X-Hook-UUID", "X-Request-UUID"),
        checks=(PrefixedHmac("X-Hub-Signature"),),
        push_events=frozenset({"repo:push"}),
        read_changes=read_bitbucket_cloud_changes,
        delivery_headers=("X-Request-UUID",),  # X-Hook-UUID names the hook, not the delivery
    ),
    Forge(
        name="bitbucket-server",
        event_header="X-Event-Key",
        checks=(PrefixedHmac("X-Hub-Signature"),),
        push_events=frozenset({"repo:refs_changed"}),
        ping_events=frozenset({"diagnostics:ping"}),
        read_changes=read_bitbucket_server_changes,
        delivery_headers=("X-Request-Id",),
    ),
    Forge(
        name="azure-devops",
        event_header=None,
        markers=("X-VSS-ActivityId", "X-VSS-SubscriptionId"),
        checks=(BasicAuthPassword(),),
        push_events=frozenset({"git.push"}),
        read_changes=read_azure_ref_updates,
        event_field="eventType",
        delivery_field="id",  # X-VSS-SubscriptionId is constant per hook
    ),
)


# --- Parsing a delivery -------------------------------------------------------


def parse_delivery(headers: Mapping[str, str], body: bytes, secret: bytes) -> Delivery:
    """Detect the forge by its headers, verify the secret, then read the event.

    Nothing in the body is parsed before the secret is verified, except that a
    Gitea-style form delivery has to be url-decoded first because those forges
    sign the JSON inside the form rather than the form itself.
    """
    view = _Headers(headers)
    forge = _detect(view)
    _verify(forge, view, _signed_content(forge, view, body), secret)
    try:
        payload = _json_object(_json_document(view, body))
        event = _event_name(forge, view, payload)
        kind = forge.kind_of(event)
        changes = forge.read_changes(payload) if kind == "push" else ()
    except _Malformed as error:
        raise DeliveryRejected(400, str(error)) from None
    return Delivery(forge.name, kind, event, _delivery_id(forge, view, payload), changes)


def _detect(headers: _Headers) -> Forge:
    for forge in FORGES:
        if forge.identifies(headers):
            return forge
    raise DeliveryRejected(401, _UNKNOWN_FORGE)


def _verify(forge: Forge, headers: _Headers, content: bytes, secret: bytes) -> None:
    """Pass if any of the forge's own checks passes; an empty secret never does,
    since an HMAC keyed with nothing is one anybody can compute."""
    if secret and any(check.passes(headers, content, secret) for check in forge.checks):
        return
    raise DeliveryRejected(401, _UNAUTHORIZED)


def _is_form(headers: _Headers) -> bool:
    content_type = headers.get("Content-Type") or ""
    return content_type.partition(";")[0].strip().lower() == _FORM


def _signed_content(forge: Forge, headers: _Headers, body: bytes) -> bytes:
    """The bytes the forge computed its signature over."""
    if not (forge.signs_form_payload and _is_form(headers)):
        return body
    try:
        return _form_payload(body)
    except _Malformed:
        # Without the payload there is nothing to verify, so this is not yet a
        # "signed but malformed" body.
        raise DeliveryRejected(401, _UNAUTHORIZED) from None


def _json_document(headers: _Headers, body: bytes) -> bytes:
    """The JSON text itself, unwrapped from `payload=` in a form delivery."""
    return _form_payload(body) if _is_form(headers) else body


def _form_payload(body: bytes) -> bytes:
    try:
        fields = parse_qs(body.decode("ascii"), strict_parsing=True, errors="strict")
    except ValueError:  # includes UnicodeDecodeError
        raise _Malformed("form body is not url-encoded") from None
    values = fields.get("payload", [])
    if len(values) != 1:
        raise _Malformed("form body has no single 'payload' field")
    return values[0].encode("utf-8")


def _json_object(document: bytes) -> dict:
    try:
        payload = json.loads(document)
    except (ValueError, RecursionError):  # ValueError covers bad JSON and bad UTF-8
        raise _Malformed("body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise _Malformed("body is not a JSON object")
    return payload


def _event_name(forge: Forge, headers: _Headers, payload: dict) -> str:
    if forge.event_header is not None:
        return headers.get(forge.event_header) or ""
    event = payload.get(forge.event_field) if forge.event_field else None
    if not isinstance(event, str) or not event:
        raise _Malformed(f"body has no valid '{forge.event_field}'")
    return event


def _delivery_id(forge: Forge, headers: _Headers, payload: dict) -> str | None:
    for name in forge.delivery_headers:
        value = headers.get(name)
        if value:
            return value
    value = payload.get(forge.delivery_field) if forge.delivery_field else None
    return value if isinstance(value, str) and value else None


# --- Redelivery memory --------------------------------------------------------


class DeliveryLog:
    """The last `size` delivery ids, so a retried or redelivered event syncs once.

    Forges retry on timeouts and people press "redeliver". The memory is
    in-process only: after a restart one redelivery may sync again, which is
    harmless. Record only verified deliveries, or anyone could flood the log
    with made-up ids and push real ones out.
    """

    def __init__(self, size: int = 1000) -> None:
        if size < 1:
            raise ValueError("DeliveryLog size must be at least 1")
        self._size = size
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def seen_before(self, delivery_id: str | None) -> bool:
        """Record `delivery_id`; True if it was already recorded. No id is never a repeat."""
        if not delivery_id:
            return False
        with self._lock:
            if delivery_id in self._ids:
                return True
            self._ids[delivery_id] = None
            if len(self._ids) > self._size:
                self._ids.popitem(last=False)
            return False

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)
