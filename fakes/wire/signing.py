"""Signed download URLs, as a storage bucket issues them: an HMAC of the path and its expiry under
a per-server secret, valid ``URL_TTL_S``; the file routes serve them without an API key."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from aiohttp import web

URL_TTL_S = 3600


class Signer:
    """Signs paths with this server's secret and checks signed requests."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)

    def signature(self, key: str, expires: int) -> str:
        return hmac.new(self._secret, f"{key}@{expires}".encode(), hashlib.sha256).hexdigest()

    def expiry(self) -> int:
        """The expiry (Unix seconds) of a URL signed now."""
        return int(time.time()) + URL_TTL_S

    def url(self, origin: str, path: str, key: str | None = None, expires: int | None = None) -> str:
        """``origin + path`` signed for ``key`` (default: the path itself)."""
        expires = self.expiry() if expires is None else expires
        return f"{origin}{path}?expires={expires}&signature={self.signature(key or path, expires)}"

    def check(self, request: web.Request, key: str) -> None:
        """403 unless ``request`` carries a valid, unexpired signature for ``key``."""
        try:
            expires = int(request.query.get("expires", ""))
        except ValueError:
            raise web.HTTPForbidden(text="unsigned URL") from None
        valid = hmac.compare_digest(request.query.get("signature", ""), self.signature(key, expires))
        if not valid or expires < time.time():
            raise web.HTTPForbidden(text="the signed URL is invalid or has expired")
