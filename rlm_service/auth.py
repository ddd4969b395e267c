"""Optional API keys: who may start runs, and how much each key may hold and spend.

Keys are stored only as SHA-256 digests, one ``id:hexdigest`` line each, optionally
followed by per-key limits (``max_runs=4 max_usd=20``), in ``API_KEYS_FILE`` (re-read
when it changes, so keys rotate without a restart) and/or the ``API_KEYS`` secret.
A request carries ``authorization: Bearer <key>`` (gRPC metadata or HTTP header).
The limits are per instance: each replica keeps its own counts.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Final

from opentelemetry import trace
from prometheus_client import Counter, Gauge

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.config import Settings
from rlm_service.google_tokens import GoogleIdTokens, InvalidToken, looks_like_jwt
from rlm_service.telemetry.logs import api_key_id_var

log = logging.getLogger(__name__)

# Bounded label values: key ids come from the operator's file, never from callers.
rlm_auth_requests = Counter(
    "rlm_auth_requests", "Authentication outcomes by API key id ('-' = no valid key).",
    ("key_id", "outcome"))
rlm_key_active_runs = Gauge("rlm_key_active_runs", "Runs in progress per API key.", ("key_id",))
rlm_key_cost_usd = Counter("rlm_key_cost_usd", "Estimated model cost per API key.", ("key_id",))

_LINE: Final = re.compile(r"([A-Za-z0-9._@-]{1,64}):([0-9a-fA-F]{64})((?:\s+\w+=\S+)*)")
RELOAD_CHECK_SECONDS: Final = 1.0


# The HTTP face's admitted run, for http/_runs.py to book its cost (gRPC books its own).
current_lease: ContextVar[Lease | None] = ContextVar("rlm_api_key_lease", default=None)


class Unauthenticated(Exception):
    """No usable credentials: UNAUTHENTICATED, HTTP 401."""


class PermissionDenied(Exception):
    """Credentials that match no key: PERMISSION_DENIED, HTTP 403."""


class OverLimit(Exception):
    """The key's concurrent-run or spend limit is reached: RESOURCE_EXHAUSTED, HTTP 429."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    digest: bytes = field(repr=False)
    max_runs: int = 0  # 0 = no limit
    max_usd: float = 0.0  # per window; 0 = no limit


def digest_of(key: str) -> str:
    """What goes in the keys file for ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_keys(text: str, settings: Settings, source: str) -> list[ApiKey]:
    """Raises ValueError naming the line; never echoes a line (it may hold a raw key)."""
    keys: dict[str, ApiKey] = {}
    for number, raw in enumerate(re.split(r"[\n,]", text), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise ValueError(f"{source}: entry {number} is not `id:sha256hex [max_runs=N] "
                             "[max_usd=X]`")
        options = dict(o.split("=", 1) for o in match.group(3).split())
        unknown = set(options) - {"max_runs", "max_usd"}
        if unknown:
            raise ValueError(f"{source}: entry {number} has unknown options {sorted(unknown)}")
        try:
            max_runs = int(options.get("max_runs", settings.api_key_max_concurrent_runs))
            max_usd = float(options.get("max_usd", settings.api_key_max_usd_per_window))
        except ValueError:
            raise ValueError(f"{source}: entry {number} has a non-numeric limit") from None
        if max_runs < 0 or not 0 <= max_usd < float("inf"):
            raise ValueError(f"{source}: entry {number} has a negative or infinite limit")
        key_id = match.group(1)
        if key_id in keys:
            raise ValueError(f"{source}: key id {key_id!r} appears twice")
        keys[key_id] = ApiKey(key_id, bytes.fromhex(match.group(2)), max_runs, max_usd)
    return list(keys.values())


def tag(key: ApiKey) -> None:
    """Puts the key id on this request's log lines and its current (server) span."""
    api_key_id_var.set(key.id)
    trace.get_current_span().set_attribute("rlm.api_key.id", key.id)


class _Usage:
    __slots__ = ("active", "spent")

    def __init__(self) -> None:
        self.active = 0
        self.spent: deque[tuple[float, float]] = deque()


class Lease:
    """One admitted run of one key; ``add_cost`` books what it spent."""

    def __init__(self, ring: KeyRing, key: ApiKey) -> None:
        self.ring = ring
        self.key = key
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.ring.release(self.key)

    def add_cost(self, usd: float) -> None:
        if usd > 0:
            self.ring.book(self.key, usd)

    async def watch(self, events: AsyncIterator[rlm_pb2.CompletionEvent]
                    ) -> AsyncIterator[rlm_pb2.CompletionEvent]:
        async for event in events:
            self.observe(event)
            yield event

    def observe(self, event: rlm_pb2.CompletionEvent) -> None:
        """Books the run's total when its last event (answer or error) goes by."""
        if event.HasField("final_answer"):
            self.add_cost(event.final_answer.total_usage.cost_usd)
        elif event.HasField("error"):
            self.add_cost(event.error.total_usage.cost_usd)


class KeyRing:
    """The accepted keys (reloaded when the file changes) and per-key usage."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._path = settings.api_keys_file
        self._secret = settings.api_keys.get_secret_value() if settings.api_keys else ""
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._usage: dict[str, _Usage] = {}
        self.google = GoogleIdTokens(settings) if settings.google_id_token_audience else None
        self._google_ids: dict[str, ApiKey] = {}
        # Fails start-up on a bad file or secret: a typo must not open the service.
        self._keys = self._load()
        if not self._keys and self.google is None:
            raise ValueError("API_KEYS_FILE / API_KEYS hold no keys; every call would be refused")

    @staticmethod
    def enabled(settings: Settings) -> bool:
        return bool(settings.api_keys_file or settings.api_keys
                    or settings.google_id_token_audience)

    async def identify(self, authorization: str | None) -> ApiKey:
        """Like ``authenticate``, and a Google ID token where those are accepted."""
        token = (authorization or "").strip().partition(" ")[2].strip()
        if self.google is None or not looks_like_jwt(token) or not (
                authorization or "").lower().startswith("bearer "):
            return self.authenticate(authorization)
        try:
            who = await self.google.verify(token)
        except InvalidToken as exc:
            rlm_auth_requests.labels("-", "denied").inc()
            raise PermissionDenied(str(exc)) from None
        # One identity per allowed account; without an allow-list all Google callers
        # share "google" (labels must stay bounded, and so do the limit counters).
        key_id = f"google:{who}" if self.google.emails else "google"
        key = self._google_ids.get(key_id)
        if key is None:
            key = self._google_ids[key_id] = ApiKey(
                key_id, b"", self.settings.api_key_max_concurrent_runs,
                self.settings.api_key_max_usd_per_window)
        rlm_auth_requests.labels(key_id, "ok").inc()
        return key

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if not self._path:
            return None
        st = os.stat(self._path)
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _load(self) -> list[ApiKey]:
        keys = parse_keys(self._secret, self.settings, "API_KEYS") if self._secret else []
        if self._path:
            stamp = self._file_stamp()
            with open(self._path, encoding="utf-8") as f:
                keys += parse_keys(f.read(), self.settings, "API_KEYS_FILE")
            self._stamp = stamp
        ids = [k.id for k in keys]
        if len(ids) != len(set(ids)):
            raise ValueError("a key id appears in both API_KEYS and API_KEYS_FILE")
        return keys

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if not self._path or now - self._checked < RELOAD_CHECK_SECONDS:
            return
        self._checked = now
        try:
            if self._file_stamp() == self._stamp:
                return
            keys = self._load()
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            # Keep serving with the keys we have; a half-written file must not lock
            # everyone out (write the new file elsewhere and rename it into place).
            log.warning("API keys file not reloaded, keeping %d keys: %s", len(self._keys),
                        exc if isinstance(exc, ValueError) else type(exc).__name__)
            return
        self._keys = keys
        log.info("API keys reloaded", extra={"keys": len(keys)})

    @property
    def key_ids(self) -> list[str]:
        return [k.id for k in self._keys]

    def authenticate(self, authorization: str | None) -> ApiKey:
        """The key a request's ``authorization`` value names."""
        with self._lock:
            self._maybe_reload()
            keys = self._keys
        scheme, _, token = (authorization or "").strip().partition(" ")
        if not authorization:
            rlm_auth_requests.labels("-", "unauthenticated").inc()
            raise Unauthenticated("this service needs an API key: send the header "
                                  "`authorization: Bearer <key>`")
        if scheme.lower() != "bearer" or not token.strip():
            rlm_auth_requests.labels("-", "unauthenticated").inc()
            raise Unauthenticated("the authorization header must be `Bearer <key>`")
        digest = hashlib.sha256(token.strip().encode()).digest()
        found: ApiKey | None = None
        for key in keys:  # every key compared, in constant time: no timing oracle
            if hmac.compare_digest(key.digest, digest):
                found = key
        if found is None:
            rlm_auth_requests.labels("-", "denied").inc()
            raise PermissionDenied("the API key is not valid for this service")
        rlm_auth_requests.labels(found.id, "ok").inc()
        return found

    def _window_spend(self, usage: _Usage, now: float) -> float:
        horizon = now - self.settings.api_key_window_seconds
        while usage.spent and usage.spent[0][0] < horizon:
            usage.spent.popleft()
        return sum(usd for _, usd in usage.spent)

    def admit(self, key: ApiKey) -> Lease:
        """Takes one of the key's run slots (``Lease.release`` gives it back); OverLimit
        when none is free or the key has spent its budget for the rolling window."""
        with self._lock:
            usage = self._usage.setdefault(key.id, _Usage())
            if key.max_runs and usage.active >= key.max_runs:
                raise OverLimit(f"API key {key.id!r} already has {usage.active} runs in "
                                f"progress, its limit on this instance; wait for one to end")
            spent = self._window_spend(usage, time.monotonic())
            if key.max_usd and spent >= key.max_usd:
                window = self.settings.api_key_window_seconds
                raise OverLimit(f"API key {key.id!r} has spent ${spent:.4f} in the last "
                                f"{window:g} s, its limit of ${key.max_usd:g} on this "
                                "instance; try again later")
            usage.active += 1
        rlm_key_active_runs.labels(key.id).inc()
        return Lease(self, key)

    def release(self, key: ApiKey) -> None:
        with self._lock:
            self._usage[key.id].active -= 1
        rlm_key_active_runs.labels(key.id).dec()

    def book(self, key: ApiKey, usd: float) -> None:
        with self._lock:
            self._usage.setdefault(key.id, _Usage()).spent.append((time.monotonic(), usd))
        rlm_key_cost_usd.labels(key.id).inc(usd)
