"""Every open session of this instance: lookup by id and token, the idle TTL, the cap.

Sessions live in this process's memory; a request on a session that expired, was
closed or lives on another instance gets NOT_FOUND, never silently fresh state."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from rlm_service.budget import Limits, Usage
from rlm_service.config import Settings
from rlm_service.models import Message
from rlm_service.run.ports import ReplProvider
from rlm_service.run.types import ErrorKind, RequestFailed
from rlm_service.sessions.repl import SessionRepl, SessionRepls

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionBudget:
    """Caps on a whole session (0 = no cap)."""

    max_llm_calls: int = 0
    max_total_tokens: int = 0
    max_cost_usd: float = 0.0


class Session:
    def __init__(self, store: SessionStore, ttl: float, budget: SessionBudget) -> None:
        self.budget = budget
        self.usage = Usage()
        self.session_id = uuid.uuid4().hex
        self.token = secrets.token_urlsafe(24)
        self.ttl = ttl
        self.turns = 0
        self.busy = False
        self.closed = False
        self.history: list[Message] = []
        self.repl: SessionRepl | None = None
        self.last_used = time.monotonic()
        self._store = store

    def limits_for(self, limits: Limits) -> Limits:
        """A request's limits, lowered to what is left of the session's budget;
        RequestFailed when nothing is left."""
        b, u = self.budget, self.usage
        left: dict[str, float] = {}
        if b.max_llm_calls:
            left["max_llm_calls"] = b.max_llm_calls - u.calls
        if b.max_total_tokens:
            left["max_total_tokens"] = b.max_total_tokens - u.total_tokens
        if b.max_cost_usd:
            left["max_cost_usd"] = b.max_cost_usd - u.cost_usd
        spent = [name for name, value in left.items() if value <= 0]
        if spent:
            raise RequestFailed(ErrorKind.SESSION_LIMIT,
                                f"session {self.session_id} has used up its {spent[0]} budget; "
                                "create a new session")
        changes: dict[str, Any] = {}
        for name, value in left.items():
            mine = getattr(limits, name)
            capped = min(mine, value) if mine else value
            changes[name] = int(capped) if name != "max_cost_usd" else float(capped)
        return replace(limits, **changes)

    def repls(self, pool: ReplProvider[Any]) -> SessionRepls:
        return SessionRepls(self, pool)

    def begin_turn(self, first: Message) -> list[Message]:
        """The root history for this request's run: the earlier turns, then ``first``.
        The run appends to it in place, so the session keeps what happened."""
        if self.turns > 1:
            first = Message(first.role, (
                f"This is request {self.turns} of a session. Your REPL variables, imports "
                f"and functions from earlier requests are still there; the earlier contexts "
                f"are context_0 to context_{self.turns - 2}, and this request's context is "
                f"`context` (also context_{self.turns - 1}).\n\n{first.text}"))
        self.history.append(first)
        return self.history

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """One request on the session at a time; a second one fails at once."""
        if self.closed:
            raise RequestFailed(ErrorKind.SESSION_NOT_FOUND,
                                f"session {self.session_id} was closed or expired")
        if self.busy:
            raise RequestFailed(ErrorKind.SESSION_BUSY,
                                f"session {self.session_id} is running another request; "
                                "send the next one when it has ended")
        self.busy = True
        self.turns += 1
        try:
            yield
        finally:
            self.busy = False
            self.last_used = time.monotonic()
            self._store.touch(self)


class SessionStore:
    def __init__(self, settings: Settings, pool: ReplProvider[Any]) -> None:
        self.settings = settings
        self.pool = pool
        self._sessions: dict[str, Session] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def create(self, budget: SessionBudget | None = None) -> Session:
        if len(self._sessions) >= self.settings.max_sessions:
            raise RequestFailed(ErrorKind.SESSION_LIMIT,
                                f"this instance holds its limit of {self.settings.max_sessions} "
                                "sessions; close one or retry later")
        session = Session(self, self.settings.session_idle_ttl_seconds,
                          budget or SessionBudget())
        self._sessions[session.session_id] = session
        self.touch(session)
        return session

    def get(self, session_id: str, token: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise RequestFailed(
                ErrorKind.SESSION_NOT_FOUND,
                f"no session {session_id[:64]!r} on this instance: it was closed, expired "
                f"after {self.settings.session_idle_ttl_seconds:g} s idle, or lives on another "
                "instance; create a new session and start over")
        if not hmac.compare_digest(session.token.encode(), token.encode()):
            raise RequestFailed(ErrorKind.SESSION_ACCESS_DENIED,
                                "session_token does not match this session")
        return session

    def touch(self, session: Session) -> None:
        timer = self._timers.pop(session.session_id, None)
        if timer is not None:
            timer.cancel()
        if not session.closed:
            self._timers[session.session_id] = asyncio.get_running_loop().call_later(
                session.ttl, self._expire, session)

    def _expire(self, session: Session) -> None:
        self._timers.pop(session.session_id, None)
        if session.busy:
            self.touch(session)  # a long request keeps its session alive
            return
        log.info("session expired after %.0f s idle", session.ttl)
        task = asyncio.get_running_loop().create_task(self.close(session))
        task.add_done_callback(lambda t: t.exception())

    async def close(self, session: Session) -> None:
        """Ends the session now; a request running on it keeps its REPL until it ends."""
        session.closed = True
        self._sessions.pop(session.session_id, None)
        timer = self._timers.pop(session.session_id, None)
        if timer is not None:
            timer.cancel()
        if session.repl is not None and not session.busy:
            # (A running request's root run destroys it when it ends.)
            repl, session.repl = session.repl, None
            await self.pool.release(repl.inner)
