"""Structured answers: the request's JSON Schema, what the model is told about it,
and the check of its final value (with the maintained ``jsonschema`` library)."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError

# A schema is shown to the model in full, so it must stay a small part of the prompt.
MAX_SCHEMA_CHARS = 20_000
_ERRORS_SHOWN = 5
_MESSAGE_CHARS = 300


class BadSchema(ValueError):
    """The request's answer_schema cannot be used; the message says why."""


@dataclass(frozen=True)
class Checked:
    """An answer checked against the schema: ``value`` when ``ok``, else ``error``."""

    ok: bool
    value: Any = None
    error: str = ""


def _remote_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k == "$ref" and isinstance(v, str)
                 and not v.startswith("#")]
        return found + [r for v in node.values() for r in _remote_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _remote_refs(v)]
    return []


def as_json_value(text: str) -> Any:
    """The answer as a JSON value: JSON text, or the Python literal that str() of a
    dict or list gives (FINAL_VAR of a dict). Raises ValueError."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise ValueError("it is neither JSON nor a Python literal") from exc
    try:
        # Tuples become lists; sets, bytes, NaN and the like are refused.
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"it holds a value JSON cannot represent: {exc}") from exc


class AnswerSchema:
    """A validated JSON Schema (its own $schema draft, 2020-12 by default).

    ``what`` names the schema in its errors: operator tools' argument schemas are
    checked the same way (rlm_service/tools/http_config.py)."""

    def __init__(self, schema: dict[str, Any], what: str = "answer_schema") -> None:
        text = json.dumps(schema, sort_keys=True)
        if len(text) > MAX_SCHEMA_CHARS:
            raise BadSchema(f"{what} has {len(text):,} characters as JSON; the limit "
                            f"is {MAX_SCHEMA_CHARS:,}")
        if remote := _remote_refs(schema):
            raise BadSchema(f"{what} may use only local $refs (\"#/...\"), not "
                            f"{remote[0][:80]!r}")
        cls = validators.validator_for(schema, default=Draft202012Validator)
        try:
            cls.check_schema(schema)
        except SchemaError as exc:
            raise BadSchema(f"{what} is not a valid JSON Schema: {exc.message[:300]}"
                            ) from None
        self.schema = schema
        self.text = text
        self._validator = cls(schema, format_checker=cls.FORMAT_CHECKER)

    def check(self, answer: str) -> Checked:
        try:
            value = as_json_value(answer)
        except ValueError as exc:
            return Checked(False, error=f"the answer is not a JSON value: {exc}")
        error = self.problems(value)
        return Checked(not error, value=value if not error else None, error=error)

    def problems(self, value: Any) -> str:
        """Where and how ``value`` fails the schema; empty when it matches."""
        errors = sorted(self._validator.iter_errors(value), key=lambda e: list(e.path))
        if not errors:
            return ""
        shown = "; ".join(f"at {e.json_path}: {e.message[:_MESSAGE_CHARS]}"
                          for e in errors[:_ERRORS_SHOWN])
        more = f" (and {len(errors) - _ERRORS_SHOWN} more)" if len(errors) > _ERRORS_SHOWN else ""
        return shown + more


def instructions(schema: AnswerSchema) -> str:
    """Appended to the first message: what shape the answer must have."""
    return (
        "The final answer must be a JSON value that matches this JSON Schema:\n"
        f"{schema.text}\n"
        "Build it in Python (a dict, a list, ...) and give it with FINAL_VAR(\"name\") or "
        "FINAL(json.dumps(value)). It is checked against the schema; if it does not match, "
        "you are told why and must answer again.")


def retry_message(error: str, left: int) -> str:
    return (
        f"Your final answer does not match the required JSON Schema: {error}\n"
        f"Fix the value and give the final answer again ({left} more "
        f"{'try' if left == 1 else 'tries'}).")
