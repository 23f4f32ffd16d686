"""Ways a webhook delivery proves it knows the secret, one small class per scheme.

Each check looks at one header and answers only True or False (comparisons are
constant-time), so no header value travels further than this module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Protocol


class HeaderView(Protocol):
    """Case-insensitive header lookup (forges._Headers): the stripped value, or None."""

    def get(self, name: str) -> str | None: ...



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

    def passes(self, headers: HeaderView, content: bytes, secret: bytes) -> bool:
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

    def passes(self, headers: HeaderView, content: bytes, secret: bytes) -> bool:
        sent = headers.get(self.header)
        if sent is None:
            return False
        expected = self.prefix.encode("ascii") + _hmac_sha256_hex(secret, content)
        return hmac.compare_digest(_header_bytes(sent.lower()), expected)


@dataclass(frozen=True)
class Token:
    """The secret itself in a header (GitLab's X-Gitlab-Token); no body binding."""

    header: str

    def passes(self, headers: HeaderView, content: bytes, secret: bytes) -> bool:
        sent = headers.get(self.header)
        return sent is not None and hmac.compare_digest(_header_bytes(sent), secret)


@dataclass(frozen=True)
class BasicAuthPassword:
    """HTTP basic auth whose password is the secret (Azure DevOps service hooks).

    The user name is not checked: Azure asks for one, but only the password is
    a shared secret.
    """

    def passes(self, headers: HeaderView, content: bytes, secret: bytes) -> bool:
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
