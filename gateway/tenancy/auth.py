"""Tenant API keys: generation, hashing and the per-request check.

Keys carry 256 bits of randomness, so a single SHA-256 is the right hash: slow password
hashes exist to protect low-entropy secrets and would cost milliseconds per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import SecretStr

from gateway.errors import AuthenticationError, PermissionDeniedError, StoreUnavailableError
from gateway.records import ApiKey
from gateway.store import Store, StoreError

KEY_PREFIX = "sk-gw-"
_DISPLAY_CHARS = len(KEY_PREFIX) + 6
# Unknown keys are cached too (a flood of bad keys must not hit the database), but boundedly.
_MAX_NEGATIVE_ENTRIES = 10_000
# After a failed lookup, known keys are answered from the cache for this long without retrying.
_STORE_RETRY_S = 1.0
# What a caller refused during a database outage (a key never seen) is told to wait.
STORE_RETRY_AFTER_S = 2.0


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly generated key: ``secret`` is shown once and never stored."""

    secret: str
    key_hash: str
    prefix: str


def generate_key() -> NewKey:
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    return NewKey(secret=secret, key_hash=hash_key(secret), prefix=secret[:_DISPLAY_CHARS])


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationError("Missing API key. Send it as 'Authorization: Bearer <key>'.")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("Malformed Authorization header. Expected 'Bearer <key>'.")
    return token


class Authenticator:
    """Turns an ``Authorization`` header into the caller's ``ApiKey``, or raises 401.

    Lookups are cached for ``ttl_s``: a revoked key stops working within that bound.
    """

    def __init__(
        self,
        store: Store,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
        lookup_timeout_s: float = 1.0,
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[ApiKey | None, float]] = {}
        self._refreshing: set[str] = set()
        self._store_down_until = 0.0
        self._lookup_timeout_s = lookup_timeout_s
        self._negatives = 0

    async def authenticate(self, authorization: str | None) -> ApiKey:
        token = bearer_token(authorization)
        digest = hash_key(token)
        now = self._clock()
        key = await self._lookup(digest, now)
        # The store matched by hash; comparing again in constant time costs nothing and keeps
        # the check independent of how a store implements its lookup.
        if key is None or not hmac.compare_digest(key.key_hash, digest):
            raise AuthenticationError("Incorrect API key provided.")
        if not key.usable_at(now):
            raise AuthenticationError("This API key has been revoked, has expired or is suspended.")
        return key

    async def _lookup(self, digest: str, now: float) -> ApiKey | None:
        cached = self._cache.get(digest)
        if cached is not None and now - cached[1] < self._ttl_s:
            return cached[0]
        # An expired entry is refreshed by one request at a time; the others (and everyone while
        # the database is failing) go on with what is known, so a slow or dead database never
        # stalls known keys. Revocation still takes effect within the TTL plus one lookup.
        if cached is not None and (digest in self._refreshing or now < self._store_down_until):
            return cached[0]
        self._refreshing.add(digest)
        try:
            key = await asyncio.wait_for(self._store.get_key_by_hash(digest), self._lookup_timeout_s)
        except (StoreError, TimeoutError) as exc:
            self._store_down_until = now + _STORE_RETRY_S
            if cached is not None:  # a key seen before keeps working as it was (expiry still checked)
                return cached[0]
            raise StoreUnavailableError(
                "The service cannot verify API keys right now; retry shortly.", STORE_RETRY_AFTER_S
            ) from exc
        finally:
            self._refreshing.discard(digest)
        if key is None:
            self._negatives += 1
            if self._negatives > _MAX_NEGATIVE_ENTRIES:
                self._evict_negatives()
        self._cache[digest] = (key, now)
        return key

    def _evict_negatives(self) -> None:
        self._cache = {d: entry for d, entry in self._cache.items() if entry[0] is not None}
        self._negatives = 0

    def forget(self, key_hash: str) -> None:
        """Drop a cached entry (after a local revoke) so it takes effect at once here."""
        self._cache.pop(key_hash, None)


async def authorize_admin(
    authorization: str | None, admin_token: SecretStr | None, authenticator: Authenticator
) -> None:
    """Let the admin token through; refuse a tenant key with 403 and anything else with 401."""
    expected = admin_token.get_secret_value() if admin_token is not None else ""
    if not expected:
        # Development without GATEWAY_ADMIN_TOKEN (production refuses to start without one).
        # 403, not 401: no credential can succeed, so inviting the caller to retry with another
        # one would be wrong; the message says how to switch the API on.
        raise PermissionDeniedError(
            "The admin API is disabled: set GATEWAY_ADMIN_TOKEN to enable it.", code="admin_api_disabled"
        )
    token = bearer_token(authorization)
    if hmac.compare_digest(token.encode(), expected.encode()):
        return
    try:
        await authenticator.authenticate(authorization)
    except (AuthenticationError, StoreUnavailableError):
        # Not a usable tenant key either (or, in a database outage, not known to be one).
        raise AuthenticationError("Incorrect admin token provided.") from None
    raise PermissionDeniedError("A tenant API key cannot call the admin API.")


def authorize_metrics(authorization: str | None, metrics_token: SecretStr | None, public: bool) -> None:
    """Let a scrape of /metrics through: with the metrics token when one is set (401 otherwise),
    else only where internals are public (403: tenant names and engine addresses are not for
    everyone; production hides them until ``GATEWAY_METRICS_TOKEN`` is set)."""
    expected = metrics_token.get_secret_value() if metrics_token is not None else ""
    if expected:
        if not hmac.compare_digest(bearer_token(authorization).encode(), expected.encode()):
            raise AuthenticationError("Incorrect metrics token provided.")
        return
    if not public:
        raise PermissionDeniedError(
            "/metrics is not public here: set GATEWAY_METRICS_TOKEN and scrape with it as a bearer token.",
            code="metrics_disabled",
        )
