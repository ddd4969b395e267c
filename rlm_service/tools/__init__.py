"""Operator tools: functions the model's REPL code may call besides the built-ins.

Two kinds, declared in settings and checked once at start-up (a bad one stops it):

* sandbox tools (TOOLS_MODULE): the public documented functions of a Python module,
  mounted read-only into every sandbox and run there like the model's own code;
* HTTP tools (HTTP_TOOLS_FILE): endpoints the service itself calls for the REPL over
  the callback socket, within an allow-list, a timeout, a size cap and a per-request
  call limit (``http_call.py``).

A run gets a ``ToolGrant``: the root run all tools, or those the request named;
child runs (rlm_query) those of CHILD_RUN_TOOLS among them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rlm_service.repl_guest.functions import NAMES
from rlm_service.tools.errors import ToolCallFailed, ToolConfigError
from rlm_service.tools.http_config import AllowList, HttpTool, read_http_tools
from rlm_service.tools.sandbox_module import SandboxModule, SandboxTool, read_module

if TYPE_CHECKING:
    from rlm_service.config import Settings

__all__ = ["NO_TOOLS", "HttpTool", "SandboxModule", "SandboxTool", "ToolCallFailed",
           "ToolConfigError", "ToolGrant", "Toolbox"]
_SCHEMA_SHOWN = 1500


@dataclass(frozen=True)
class ToolGrant:
    """The tool names one run gets, by kind."""

    sandbox: tuple[str, ...] = ()
    http: tuple[str, ...] = ()

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.sandbox) | frozenset(self.http)

    def only(self, names: frozenset[str]) -> ToolGrant:
        return ToolGrant(tuple(n for n in self.sandbox if n in names),
                         tuple(n for n in self.http if n in names))


NO_TOOLS = ToolGrant()


@dataclass(frozen=True)
class Toolbox:
    """Every tool the operator declared, and which of them child runs get."""

    module: SandboxModule | None = None
    http: tuple[HttpTool, ...] = ()
    child_names: frozenset[str] | None = None  # None: the same as the root's
    max_calls: int = 0

    @classmethod
    def from_settings(cls, s: Settings) -> Toolbox:
        """Reads and checks the tool settings; raises ToolConfigError."""
        module = read_module(s.tools_module) if s.tools_module else None
        sandbox_names = {t.name for t in module.tools} if module else set()
        if clash := sorted(sandbox_names & (NAMES | {"ToolError"})):
            raise ToolConfigError(f"TOOLS_MODULE: {clash[0]!r} is a built-in REPL name; "
                                  "rename the function")
        http: dict[str, HttpTool] = {}
        if s.http_tools_file:
            http = read_http_tools(s.http_tools_file, AllowList(s.http_tools_allowed_hosts),
                                   s.http_tools_timeout_seconds,
                                   sandbox_names | NAMES | {"ToolError"})
        else:
            AllowList(s.http_tools_allowed_hosts)  # a malformed list still fails start-up
        box = cls(module, tuple(http.values()), None, s.http_tools_max_calls)
        choice = s.child_run_tools.strip()
        if choice != "*":
            child = frozenset(x.strip() for x in choice.split(",") if x.strip())
            if unknown := sorted(child - box.all.names):
                raise ToolConfigError(f"CHILD_RUN_TOOLS names {unknown}, which no tool "
                                      "declares ('*' = the root's tools, empty = none)")
            box = cls(module, box.http, child, box.max_calls)
        return box

    @property
    def all(self) -> ToolGrant:
        return ToolGrant(tuple(t.name for t in self.module.tools) if self.module else (),
                         tuple(t.name for t in self.http))

    def http_tool(self, name: str) -> HttpTool | None:
        return next((t for t in self.http if t.name == name), None)

    def grants(self, requested: frozenset[str] | None) -> tuple[ToolGrant, ToolGrant]:
        """(the root's grant, the children's), for a request naming ``requested``
        (None: all tools)."""
        root = self.all if requested is None else self.all.only(requested)
        child = root if self.child_names is None else root.only(self.child_names)
        return root, child

    def describe(self, grant: ToolGrant) -> str:
        """The system prompt's part about the tools in ``grant``; empty without any."""
        if not grant.names:
            return ""
        lines = ["Operator tools, also functions in the REPL (they return values; print "
                 "what you need to see). A tool that fails raises ToolError (also in the "
                 "REPL) with the reason:"]
        for tool in self.module.tools if self.module else ():
            if tool.name in grant.sandbox:
                doc = tool.doc.replace("\n", "\n  ")
                lines.append(f"- {tool.signature}: {doc}")
        for http in self.http:
            if http.name in grant.http:
                schema = json.dumps(http.schema.schema, separators=(",", ":"))
                if len(schema) > _SCHEMA_SHOWN:
                    schema = schema[:_SCHEMA_SHOWN] + " (cut)"
                lines.append(f"- {http.name}(**arguments): {http.description} Arguments, "
                             f"as keywords or one dict, match this JSON Schema: {schema}. "
                             "Returns the service's JSON reply (or text).")
        if grant.http and self.max_calls:
            lines.append(f"HTTP tools ({', '.join(grant.http)}) make real requests: at most "
                         f"{self.max_calls} calls per request in all, so call them only "
                         "when needed, never in a tight loop.")
        return "\n".join(lines)
