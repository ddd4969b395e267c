"""The operator's host-side HTTP tools (HTTP_TOOLS_FILE) and the hosts they may reach.

A JSON file, either a list of tools or ``{"tools": [...]}``; each tool::

    {"name": "weather", "description": "...", "url": "https://api.example.com/weather",
     "parameters": {"type": "object", "properties": {...}},   # JSON Schema of the arguments
     "timeout_seconds": 5, "headers": {"X-Api-Key": "..."}}   # both optional

Every declared URL's host must be on HTTP_TOOLS_ALLOWED_HOSTS, or the server
refuses to start: a typo in the file never becomes a call to a host nobody allowed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yarl import URL

from rlm_service.run.answer_schema import AnswerSchema, BadSchema
from rlm_service.tools.errors import ToolConfigError

_KEYS = {"name", "description", "url", "parameters", "timeout_seconds", "headers"}
MAX_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class HttpTool:
    name: str
    description: str
    url: URL
    schema: AnswerSchema = field(compare=False)
    timeout_seconds: float
    headers: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


class AllowList:
    """Hosts HTTP tools may reach: ``name`` (any port) or ``name:port`` entries."""

    def __init__(self, text: str) -> None:
        self.entries: list[tuple[str, int | None]] = []
        for raw in (x.strip() for x in text.split(",")):
            if not raw:
                continue
            try:
                entry = URL("//" + raw)
            except ValueError:
                raise ToolConfigError(f"HTTP_TOOLS_ALLOWED_HOSTS: {raw!r} is not a host "
                                      "or host:port") from None
            if not entry.host or entry.path not in ("", "/") or entry.user:
                raise ToolConfigError(f"HTTP_TOOLS_ALLOWED_HOSTS: {raw!r} is not a host "
                                      "or host:port")
            self.entries.append((entry.host.lower(), entry.explicit_port))

    def allows(self, url: URL) -> bool:
        host = (url.host or "").lower()
        return any(host == h and (p is None or p == url.port) for h, p in self.entries)


def read_http_tools(path_text: str, allowed: AllowList, default_timeout: float,
                    taken: set[str]) -> dict[str, HttpTool]:
    """The tools of HTTP_TOOLS_FILE by name; ``taken`` are names already in use.
    Raises ToolConfigError saying which tool is wrong and how."""
    where = f"HTTP_TOOLS_FILE {path_text}"
    try:
        data = json.loads(Path(path_text).expanduser().read_text(encoding="utf-8"))
    except OSError as exc:
        raise ToolConfigError(f"{where} could not be read: {exc}") from None
    except ValueError as exc:
        raise ToolConfigError(f"{where} is not valid JSON: {exc}") from None
    if isinstance(data, dict) and set(data) == {"tools"}:
        data = data["tools"]
    if not isinstance(data, list) or not data:
        raise ToolConfigError(f'{where} must hold a non-empty list of tools (or {{"tools": '
                              "[...]}})")
    tools: dict[str, HttpTool] = {}
    for i, item in enumerate(data):
        tool = _tool(item, f"{where}, tool {i + 1}", default_timeout)
        if tool.name in tools or tool.name in taken:
            raise ToolConfigError(f"{where}: the name {tool.name!r} is used twice (tools "
                                  "module and HTTP tools share one namespace)")
        if not allowed.allows(tool.url):
            raise ToolConfigError(
                f"{where}: tool {tool.name!r} calls {tool.url.host}:{tool.url.port}, which "
                "is not on HTTP_TOOLS_ALLOWED_HOSTS; add it there or fix the url")
        tools[tool.name] = tool
    return tools


def _tool(item: Any, where: str, default_timeout: float) -> HttpTool:
    if not isinstance(item, dict):
        raise ToolConfigError(f"{where} is not an object")
    if unknown := sorted(set(item) - _KEYS):
        raise ToolConfigError(f"{where}: unknown keys {unknown}; a tool has {sorted(_KEYS)}")
    name = item.get("name")
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise ToolConfigError(f"{where}: 'name' must be a Python identifier without a "
                              f"leading _ (got {name!r})")
    where = f"{where} ({name})"
    description = item.get("description")
    if not isinstance(description, str) or not description.strip():
        raise ToolConfigError(f"{where}: 'description' must be a non-empty string")
    url = _url(item.get("url"), where)
    parameters = item.get("parameters", {"type": "object"})
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        raise ToolConfigError(f"{where}: 'parameters' must be a JSON Schema with "
                              '"type": "object" (the arguments are keyword arguments)')
    try:
        schema = AnswerSchema(parameters, what=f"{name}'s parameters")
    except BadSchema as exc:
        raise ToolConfigError(f"{where}: {exc}") from None
    timeout = item.get("timeout_seconds", default_timeout)
    if (not isinstance(timeout, int | float) or isinstance(timeout, bool)
            or not 0 < timeout <= MAX_TIMEOUT_SECONDS):
        raise ToolConfigError(f"{where}: 'timeout_seconds' must be a number above 0 and at "
                              f"most {MAX_TIMEOUT_SECONDS:g}")
    headers = item.get("headers", {})
    if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ToolConfigError(f"{where}: 'headers' must map strings to strings")
    return HttpTool(name, description.strip(), url, schema, float(timeout), dict(headers))


def _url(value: Any, where: str) -> URL:
    try:
        url = URL(value) if isinstance(value, str) else None
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host or url.user:
        raise ToolConfigError(f"{where}: 'url' must be an http:// or https:// URL with a "
                              f"host and no credentials (got {str(value)[:100]!r})")
    return url
