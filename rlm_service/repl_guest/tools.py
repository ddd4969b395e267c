"""The operator's tools as the model's code sees them.

Sandbox tools are the public functions of the operator's module (TOOLS_MODULE),
imported here once at start: they are model-side code, with the same uid, seccomp,
rlimits and cgroup. HTTP tools are stubs that ask the service to make the call
(``CallTool`` on the callback socket); the service checks and performs it.
Which of either a run gets, the host says in its init request.
"""

from __future__ import annotations

import json
import sys

from rlm_service.repl_guest import protocol

TYPE_CHECKING = False  # typing is not imported: the guest pays for every import
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from rlm_service.repl_guest.functions import CallbackClient


class ToolError(Exception):
    """An operator tool call that was refused or failed; the message says why."""


class ToolModule:
    """The operator's module, imported once; ``error`` says why it could not be."""

    def __init__(self, folder: str, name: str) -> None:
        self.module: Any = None
        self.error = ""
        if not name:
            return
        # Appended: the module cannot shadow the standard library or the guest's own.
        sys.path.append(folder)
        try:
            self.module = __import__(name)
        except BaseException as exc:  # operator code: anything may come out of it
            self.error = f"{type(exc).__name__}: {exc}"[:2000]

    def function(self, name: str) -> Callable[..., Any]:
        fn: Callable[..., Any] | None = getattr(self.module, name, None)
        if not callable(fn):
            raise ToolError(f"the operator tools module has no function {name!r}"
                            + (f" ({self.error})" if self.error else ""))
        return fn


def http_tool(client: CallbackClient, name: str) -> Callable[..., Any]:
    """The REPL function for one HTTP tool: ``name(**arguments)`` or ``name(dict)``."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if args:
            if len(args) != 1 or kwargs or not isinstance(args[0], dict):
                raise TypeError(f"{name}() takes keyword arguments or one dict of them")
            kwargs = args[0]
        try:
            text = json.dumps(kwargs, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ToolError(f"{name}: the arguments are not JSON: {exc}") from None
        pb = client.messages()
        reply = client.call("CallTool", pb.CallToolRequest(
            name=name, arguments_json=protocol.clean_text(text)))
        if reply.error:
            raise ToolError(f"{name}: {reply.text}")
        if getattr(reply, "is_json", False):
            return json.loads(reply.text)
        return str(reply.text)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"The operator's HTTP tool {name!r} (see the system prompt)."
    return call


def install(ns: dict[Any, Any], module: ToolModule, client: CallbackClient,
            sandbox_names: list[str], http_names: list[str],
            installed: set[str]) -> set[str]:
    """Puts this run's tools into ``ns``; returns their names. ``installed`` is what an
    earlier init (a session's earlier request) put there, removed unless granted again."""
    functions = {n: module.function(n) for n in sandbox_names}
    functions.update({n: http_tool(client, n) for n in http_names})
    for stale in installed - set(functions):
        ns.pop(stale, None)
    ns.update(functions)
    if functions:
        ns["ToolError"] = ToolError
    return set(functions)
