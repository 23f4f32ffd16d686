"""Inbound push webhooks: tell the forge apart, check the secret, read the refs.

Pure logic over (headers, raw body, secret) with no Flask and no I/O, so the
receiver stays a thin HTTP adapter and every forge can be tested from bytes.

Each forge is one row of `FORGES`: the header that names it, the ways its
deliveries prove the secret, its push and ping event names, where its delivery
id lives, and a reader that turns its push payload into `RefChange`s. Adding a
forge means adding a row, not another branch in a chain of ifs.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

from .payloads import (
    Malformed,
    RefChange,
    read_azure_ref_updates,
    read_bitbucket_cloud_changes,
    read_bitbucket_server_changes,
    read_top_level_ref,
)
from .signatures import BasicAuthPassword, Check, HexHmac, PrefixedHmac, Token

__all__ = [
    "FORGES",
    "Delivery",
    "DeliveryLog",
    "DeliveryRejected",
    "RefChange",
    "parse_delivery",
]


_FORM = "application/x-www-form-urlencoded"
_UNAUTHORIZED = "missing or invalid webhook signature or token"
_UNKNOWN_FORGE = "not a recognised forge webhook (no known event headers)"


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
    except Malformed as error:
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
    except Malformed:
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
        raise Malformed("form body is not url-encoded") from None
    values = fields.get("payload", [])
    if len(values) != 1:
        raise Malformed("form body has no single 'payload' field")
    return values[0].encode("utf-8")


def _json_object(document: bytes) -> dict:
    try:
        payload = json.loads(document)
    except (ValueError, RecursionError):  # ValueError covers bad JSON and bad UTF-8
        raise Malformed("body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise Malformed("body is not a JSON object")
    return payload


def _event_name(forge: Forge, headers: _Headers, payload: dict) -> str:
    if forge.event_header is not None:
        return headers.get(forge.event_header) or ""
    event = payload.get(forge.event_field) if forge.event_field else None
    if not isinstance(event, str) or not event:
        raise Malformed(f"body has no valid '{forge.event_field}'")
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
