"""A session's REPL: the pool's sandboxed REPL, kept between requests.

``SessionRepls`` stands in for the pool during a session request: the request's
root run gets the session's REPL (and does not destroy it when it ends); child
runs get fresh ones from the pool as usual."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rlm_service.repl import ExecResult
from rlm_service.run.ports import Repl, ReplProvider
from rlm_service.tools import NO_TOOLS, ToolGrant

if TYPE_CHECKING:
    from rlm_service.sessions.store import Session

_ALIAS_TIMEOUT = 30.0


class SessionRepl:
    """Delegates to the pool's REPL; each load_context also keeps the new context
    as ``context_<n>``, so earlier contexts stay reachable."""

    def __init__(self, inner: Repl) -> None:
        self.inner = inner
        self.contexts = 0
        self.crashed = False

    @property
    def closed(self) -> bool:
        return self.inner.closed

    @property
    def on_partial(self) -> Callable[[str], None] | None:
        return self.inner.on_partial

    @on_partial.setter
    def on_partial(self, value: Callable[[str], None] | None) -> None:
        self.inner.on_partial = value

    async def load_context(self, context: Any, secret: str, tools: ToolGrant = NO_TOOLS) -> None:
        await self.inner.load_context(context, secret, tools)
        result = await self.inner.execute(f"context_{self.contexts} = context", _ALIAS_TIMEOUT)
        self.crashed = self.crashed or result.crashed
        self.contexts += 1

    async def execute(self, code: str, timeout: float) -> ExecResult:
        result = await self.inner.execute(code, timeout)
        self.crashed = self.crashed or result.crashed
        return result

    async def get_var(self, name: str) -> tuple[bool, str]:
        return await self.inner.get_var(name)


class SessionRepls:
    """A ReplProvider for one session request."""

    def __init__(self, session: Session, pool: ReplProvider[Any]) -> None:
        self.session = session
        self.pool = pool
        self._handed_out = False

    async def acquire(self) -> Repl:
        if self._handed_out:
            return await self.pool.acquire()  # type: ignore[no-any-return]
        if self.session.repl is None:
            self.session.repl = SessionRepl(await self.pool.acquire())
        self._handed_out = True
        return self.session.repl

    async def release(self, repl: Repl, /) -> None:
        if repl is not self.session.repl:
            await self.pool.release(repl)
            return
        self._handed_out = False
        if self.session.repl.crashed or self.session.closed:
            # Crashed: its state is gone, the next acquire starts a fresh one (the run
            # says so). Closed while this request ran: nobody will use it again.
            self.session.repl = None
            await self.pool.release(repl.inner)
