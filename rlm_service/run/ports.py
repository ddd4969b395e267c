"""What a run needs from the outside world, as interfaces.

The service plugs in the sandboxed REPL pool, the callback registry and the model
catalog; tests plug in an in-memory REPL (tests/support/memory_repl.py) and drive
the same loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from rlm_service.models import TokenUsage
from rlm_service.repl import ExecResult
from rlm_service.tools import NO_TOOLS, ToolGrant

if TYPE_CHECKING:
    from rlm_service.repl import ReplPool, ReplProcess
    from rlm_service.run.loop import Run


class Repl(Protocol):
    """One interpreter serving one run (rlm_service/repl/process.py ReplProcess).

    Every method but load_context reports a dead interpreter in its result
    (``crashed``, ``ok=False``) rather than raising."""

    # Called with ``answer["content"]`` whenever the running block changes it.
    on_partial: Callable[[str], None] | None
    @property
    def closed(self) -> bool:
        """True once the interpreter is gone (it died, or was closed)."""
        ...

    async def load_context(self, context: Any, secret: str, tools: ToolGrant = NO_TOOLS) -> None:
        """Makes ``context``, the sub-call functions and the run's operator tools
        available; raises ReplError."""
        ...

    async def execute(self, code: str, timeout: float) -> ExecResult: ...

    async def get_var(self, name: str) -> tuple[bool, str]:
        """(True, str(value)) or (False, why not)."""
        ...


R = TypeVar("R", bound=Repl)


class ReplProvider(Protocol[R]):
    """Hands out fresh REPLs and destroys them after use (ReplPool)."""

    async def acquire(self) -> R: ...

    async def release(self, repl: R, /) -> None: ...


class SecretRegistry(Protocol):
    """Maps the secret a REPL's sub-calls carry to their run (rlm_service/callback.py)."""

    def register(self, run: Run) -> str: ...

    def unregister(self, secret: str) -> None: ...


class Pricing(Protocol):
    """Cost and size limits of models (rlm_service/models/catalog.py)."""

    def cost_usd(self, model: str, usage: TokenUsage) -> float: ...

    def input_limit(self, model: str) -> int: ...


if TYPE_CHECKING:
    # mypy proves here that the sandboxed pool and process fit these interfaces.
    def _sandboxed(pool: ReplPool) -> ReplProvider[ReplProcess]:
        return pool
