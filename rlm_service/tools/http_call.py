"""The service's side of an HTTP tool call: check the arguments, POST them, read the reply.

What keeps a call in bounds: the arguments must match the tool's JSON Schema; the
URL comes from the operator's config (never from the model) and its host must be on
the allow-list, checked again here; no redirect is followed (a 3xx is an error, so an
allowed host cannot bounce the call elsewhere); proxies from the environment are not
used; the whole call has a timeout; a body past the size cap (after decompression) is
refused, not cut. Errors name the tool, never its URL, which may hold a token.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import aiohttp

from rlm_service.tools.errors import ToolCallFailed
from rlm_service.tools.http_config import AllowList, HttpTool

_CHUNK = 64 * 1024
_BODY_SHOWN = 300


@dataclass(frozen=True)
class ToolReply:
    text: str
    is_json: bool


class HttpToolClient:
    """One connection pool for every HTTP tool call of the process."""

    def __init__(self, allowed: AllowList, max_bytes: int) -> None:
        self.allowed = allowed
        self.max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None

    def check(self, tool: HttpTool, arguments_json: str) -> bytes:
        """The request body for ``arguments_json``; raises ToolCallFailed."""
        body = arguments_json.encode("utf-8", "replace")
        if len(body) > self.max_bytes:
            raise ToolCallFailed(f"the arguments are {len(body):,} bytes as JSON; the "
                                 f"limit is {self.max_bytes:,}")
        try:
            value = json.loads(body)
        except ValueError:
            raise ToolCallFailed("the arguments are not valid JSON") from None
        if not isinstance(value, dict):
            raise ToolCallFailed("the arguments must be keyword arguments (a JSON object)")
        if problems := tool.schema.problems(value):
            raise ToolCallFailed(f"the arguments do not match the tool's schema: {problems}")
        if not self.allowed.allows(tool.url):
            raise ToolCallFailed("the tool's host is not on the service's allow-list")
        return body

    async def post(self, tool: HttpTool, body: bytes, timeout: float,
                   request_id: str) -> ToolReply:
        """POSTs ``body`` to the tool; raises ToolCallFailed."""
        if self._session is None:
            self._session = aiohttp.ClientSession(trust_env=False)
        headers = {**tool.headers, "Content-Type": "application/json",
                   "X-RLM-Request-Id": request_id}
        try:
            async with asyncio.timeout(timeout):
                async with self._session.post(tool.url, data=body, headers=headers,
                                              allow_redirects=False) as resp:
                    data = await self._read(resp)
                    status, ctype = resp.status, resp.content_type
        except TimeoutError:
            raise ToolCallFailed(f"no reply within {timeout:.3g} s (timed out)") from None
        except aiohttp.ClientError as exc:
            raise ToolCallFailed(
                f"the endpoint could not be reached ({type(exc).__name__})") from None
        text = data.decode("utf-8", "replace")
        if 300 <= status < 400:
            raise ToolCallFailed(f"the endpoint answered HTTP {status} (a redirect), which "
                                 "is not followed")
        if not 200 <= status < 300:
            raise ToolCallFailed(f"the endpoint answered HTTP {status}: {text[:_BODY_SHOWN]}")
        if ctype == "application/json" or ctype.endswith("+json"):
            try:
                json.loads(text)
            except ValueError:
                return ToolReply(text, False)
            return ToolReply(text, True)
        return ToolReply(text, False)

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        too_big = ToolCallFailed(f"the reply is larger than {self.max_bytes:,} bytes, the "
                                 "limit; ask the endpoint for less")
        if resp.content_length is not None and resp.content_length > self.max_bytes:
            raise too_big
        parts: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > self.max_bytes:
                raise too_big
            parts.append(chunk)
        return b"".join(parts)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
