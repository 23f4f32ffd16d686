"""Logins fetched from elsewhere before a sync: --askpass-url and a GitHub App's token.

Both are plain HTTP calls with short timeouts; neither knows git. `gitsync.auth` hands
what they return to git as it hands --username and the password file.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from urllib.parse import urljoin

import jwt
import requests

from .compat import GitHubApp
from .model import SyncError

log = logging.getLogger(__name__)

ASKPASS_TIMEOUT = 1.0       # git-sync's; an askpass service answers from memory
GITHUB_TIMEOUT = 10.0
JWT_LIFETIME = 600          # GitHub's upper bound for an app's JWT
REFRESH_MARGIN = 30         # a token this close to its expiry is replaced before the sync


def ask_askpass_url(url: str) -> tuple[str, str]:
    """GET the URL; it answers `username=...` and `password=...` lines."""
    try:
        response = requests.get(url, timeout=ASKPASS_TIMEOUT, allow_redirects=False)
    except requests.RequestException as err:
        raise SyncError("auth", f"--askpass-url: cannot get credentials: {type(err).__name__}") from None
    if response.status_code != 200:
        raise SyncError("auth", f"--askpass-url answered {response.status_code}")
    fields: dict[str, str] = {}
    for line in response.text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value
    return fields.get("username", ""), fields.get("password", "")


class GitHubAppToken:
    """An installation token, minted with a JWT the app's key signs, kept until near expiry."""

    def __init__(self, app: GitHubApp):
        self.app = app
        self._token: str | None = None
        self._expires = 0.0

    def needs_refresh(self) -> bool:
        return self._token is None or self._expires - time.time() < REFRESH_MARGIN

    def token(self) -> str:
        """The token to sync with; a fresh one when the kept one is gone or about to expire."""
        if self.needs_refresh():
            self._token, self._expires = self._mint()
        assert self._token is not None
        return self._token

    def _mint(self) -> tuple[str, float]:
        url = urljoin(self.app.base_url.rstrip("/") + "/",
                      f"app/installations/{self.app.installation_id}/access_tokens")
        headers = {"Authorization": f"Bearer {self._jwt()}", "Accept": "application/vnd.github+json"}
        try:
            response = requests.post(url, headers=headers, timeout=GITHUB_TIMEOUT)
        except requests.RequestException as err:
            raise SyncError("auth", f"GitHub App token: cannot reach {self.app.base_url}: "
                                   f"{type(err).__name__}") from None
        if response.status_code != 201:
            raise SyncError("auth", f"GitHub App token: {url} answered {response.status_code}")
        try:
            body = response.json()
            token = body["token"]
            expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError, AttributeError):
            raise SyncError("auth", "GitHub App token: the answer has no token and "
                                   "expires_at") from None
        log.info("GitHub App installation token refreshed (valid for %ds)", expires - time.time())
        return token, expires

    def _jwt(self) -> str:
        now = int(time.time())
        claims = {"iss": self.app.issuer, "iat": now - 30, "exp": now + JWT_LIFETIME - 30}
        try:
            return jwt.encode(claims, self.app.private_key, algorithm="RS256")
        except (ValueError, TypeError, jwt.PyJWTError) as err:
            raise SyncError("auth", f"GitHub App private key: {type(err).__name__}") from None
