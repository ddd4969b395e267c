"""Google-signed ID tokens as credentials (Cloud Run IAM, service-to-service calls).

A caller sends ``authorization: Bearer <ID token>`` minted for ``GOOGLE_ID_TOKEN_AUDIENCE``
(the service's URL). The token's signature is checked against Google's published
certificates (fetched with aiohttp, cached for an hour and re-fetched when a token names
a key we have not seen), then its audience, expiry and issuer; ``GOOGLE_ID_TOKEN_EMAILS``
may restrict which accounts get in. google-auth does the JWT checks.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import aiohttp
from google.auth import exceptions as google_exceptions
from google.auth import jwt

from rlm_service.config import Settings

ISSUERS: Final = frozenset({"accounts.google.com", "https://accounts.google.com"})
CERTS_TTL_SECONDS: Final = 3600.0
REFETCH_MIN_SECONDS: Final = 60.0


class InvalidToken(Exception):
    """The token is not a valid Google ID token for this service (message says why)."""


def looks_like_jwt(token: str) -> bool:
    return token.startswith("eyJ") and token.count(".") == 2


class GoogleIdTokens:
    def __init__(self, settings: Settings) -> None:
        assert settings.google_id_token_audience
        self.audience = settings.google_id_token_audience
        self.certs_url = settings.google_id_token_certs_url
        self.emails = frozenset(e.strip().lower() for e in
                                settings.google_id_token_emails.split(",") if e.strip())
        self._certs: dict[str, str] = {}
        self._fetched = -float("inf")
        self._lock = asyncio.Lock()

    async def _fetch(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http, \
                http.get(self.certs_url) as response:
            response.raise_for_status()
            certs = await response.json(content_type=None)
        if not isinstance(certs, dict) or not all(isinstance(v, str) for v in certs.values()):
            raise InvalidToken("Google's signing certificates could not be read")
        self._certs, self._fetched = certs, time.monotonic()

    async def _certs_for(self, kid: str | None) -> dict[str, str]:
        async with self._lock:
            age = time.monotonic() - self._fetched
            stale = age > CERTS_TTL_SECONDS
            unknown = kid is not None and kid not in self._certs and age > REFETCH_MIN_SECONDS
            if stale or unknown:
                try:
                    await self._fetch()
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    if not self._certs:
                        raise InvalidToken("Google's signing certificates are unreachable; "
                                           "try again") from exc
            return self._certs

    async def verify(self, token: str) -> str:
        """The caller's identity (email, else subject) or InvalidToken."""
        try:
            header: Any = jwt.decode_header(token)  # type: ignore[no-untyped-call]
        except (ValueError, google_exceptions.GoogleAuthError):
            raise InvalidToken("the ID token is malformed") from None
        certs = await self._certs_for(header.get("kid") if isinstance(header, dict) else None)
        try:
            claims: Any = jwt.decode(  # type: ignore[no-untyped-call]
                token, certs=certs, audience=self.audience, clock_skew_in_seconds=10)
        except (ValueError, google_exceptions.GoogleAuthError) as exc:
            # google-auth's messages name the check that failed, never key material.
            raise InvalidToken(f"the ID token is not valid: {str(exc)[:120]}") from None
        if claims.get("iss") not in ISSUERS:
            raise InvalidToken("the ID token was not issued by Google")
        email = str(claims.get("email") or "").lower()
        if self.emails and not (email in self.emails and claims.get("email_verified")):
            raise InvalidToken("this Google account may not call the service")
        return email or str(claims.get("sub") or "unknown")
