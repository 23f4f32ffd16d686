"""Push payload readers: each forge's JSON into `RefChange`s, or `Malformed` (a 400).

Pure functions over an already verified, decoded payload; forges.py picks the reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Object ids are 40 hex digits, or 64 in SHA-256 repositories (Gitea and GitLab
# can host those); a ref deletion reports the all-zero id of either length.
_OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_ZERO_ID = re.compile(r"0{40}|0{64}")


@dataclass(frozen=True)
class RefChange:
    ref: str  # full ref name, e.g. "refs/heads/main", "refs/tags/v1"
    after: str | None  # new object id as a hint; None if unknown or deleted
    deleted: bool


class Malformed(ValueError):
    """A verified body that is not the event it claims to be (becomes a 400)."""


# --- Push payload readers -----------------------------------------------------


def _field(container: Any, key: str, kind: type, what: str) -> Any:
    """`container[key]` if it has the expected JSON type, else a 400 naming `what`."""
    value = container.get(key) if isinstance(container, dict) else None
    if not isinstance(value, kind) or (kind is str and not value):
        raise Malformed(f"push payload has no valid {what}")
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
        raise Malformed("push payload has a change without 'new' or 'old'")
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
