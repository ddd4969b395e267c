"""Request checks beyond what protobuf's parser enforces, and the spend ceilings.

Protobuf accepts NaN and ±Infinity as a context number, a context nested as deep as
its own recursion limit, and (when a message is built in-process, as the HTTP face
does) any Python string. Each of those fails later, deep in a run, as an error the
client cannot act on. Here they are refused up front with a message that names the
field. ``build_spec`` (servicer.py) calls these for both faces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from google.protobuf import struct_pb2

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.config import Settings


class Refused(ValueError):
    """The request is refused; the message names the field and what to do."""


_KEY_PREVIEW = 40


def _bad_text(text: str) -> str | None:
    """Why ``text`` cannot be sent on as UTF-8 (lone surrogates), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"contains an unpaired surrogate at character {exc.start}"
    return None


def _key_path(parent: str, key: str) -> str:
    shown = key if len(key) <= _KEY_PREVIEW else key[:_KEY_PREVIEW] + "..."
    if shown.isidentifier():
        return f"{parent}.{shown}"
    return f"{parent}[{shown.encode('utf-8', 'backslashreplace').decode()!r}]"


def check_context(value: struct_pb2.Value, max_depth: int) -> None:
    """Walks the context without recursion (a hostile depth must not cost a
    RecursionError) and refuses the first bad node."""
    todo: list[tuple[struct_pb2.Value, str, int]] = [(value, "context", 1)]
    while todo:
        node, path, depth = todo.pop()
        kind = node.WhichOneof("kind")
        if kind == "number_value":
            if not math.isfinite(node.number_value):
                raise Refused(f"{path} is {node.number_value!r}; JSON numbers must be finite "
                              "(send NaN or Infinity as a string or null)")
        elif kind == "string_value":
            problem = _bad_text(node.string_value)
            if problem:
                raise Refused(f"{path} {problem}; strings must be valid Unicode")
        elif kind in ("struct_value", "list_value"):
            if depth > max_depth:
                raise Refused(f"{path} is nested deeper than {max_depth} levels "
                              "(MAX_CONTEXT_DEPTH); flatten the context")
            if kind == "struct_value":
                for key, child in node.struct_value.fields.items():
                    problem = _bad_text(key)
                    if problem:
                        raise Refused(f"a key in {path} {problem}; keys must be valid Unicode")
                    todo.append((child, _key_path(path, key), depth + 1))
            else:
                for i, child in enumerate(node.list_value.values):
                    todo.append((child, f"{path}[{i}]", depth + 1))


def check_request(request: rlm_pb2.CompletionRequest, settings: Settings) -> None:
    """Raises Refused for values protobuf let through that a run cannot use."""
    for name in ("prompt", "root_model", "sub_model"):
        problem = _bad_text(getattr(request, name))
        if problem:
            raise Refused(f"{name} {problem}; strings must be valid Unicode")
    if request.HasField("context"):
        check_context(request.context, settings.max_context_depth)


@dataclass(frozen=True)
class Spend:
    max_llm_calls: int
    max_total_tokens: int
    max_cost_usd: float


def _ceiling(name: str, asked: float, default: float, limit: float, env: str) -> float:
    """0 asks for the server default; anything else must lie within (0, limit].
    A limit of 0 means the operator set no ceiling."""
    if asked < 0 or not math.isfinite(asked):
        raise Refused(f"{name} must be a finite number >= 0 (0 = server default {default:g})")
    if limit and asked > limit:
        raise Refused(f"{name} may be at most {limit:g} on this server ({env}); got {asked:g}. "
                      f"0 = the default {default:g}")
    return asked or default


def spend_limits(request: rlm_pb2.CompletionRequest, settings: Settings) -> Spend:
    """The run's spend caps: the request may lower the server's, never raise them past
    the ceiling (refused, like max_iterations, rather than silently clamped)."""
    s = settings
    return Spend(
        max_llm_calls=int(_ceiling("max_llm_calls", request.max_llm_calls,
                                   s.default_max_llm_calls, s.max_llm_calls_limit,
                                   "MAX_LLM_CALLS_LIMIT")),
        max_total_tokens=int(_ceiling("max_total_tokens", request.max_total_tokens,
                                      s.default_max_total_tokens, s.max_total_tokens_limit,
                                      "MAX_TOTAL_TOKENS_LIMIT")),
        max_cost_usd=_ceiling("max_cost_usd", request.max_cost_usd,
                              s.default_max_cost_usd, s.max_cost_usd_limit,
                              "MAX_COST_USD_LIMIT"),
    )
