"""Reading the root model's text: code blocks and final-answer tags."""

from __future__ import annotations

import re
from dataclasses import dataclass

_BLOCK = re.compile(r"```(?:repl|python|py)[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)
_FINAL_VAR = re.compile(r"^\s*FINAL_VAR\(\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)['\"]?\s*\)", re.MULTILINE)
_FINAL = re.compile(r"^\s*FINAL\(", re.MULTILINE)


def code_blocks(text: str) -> list[str]:
    """Every ```repl (or ```python) block, in order."""
    return [m.group(1) for m in _BLOCK.finditer(text) if m.group(1).strip()]


@dataclass(frozen=True)
class FinalTag:
    value: str
    is_variable: bool


def final_tag(text: str) -> FinalTag | None:
    """A ``FINAL(...)`` or ``FINAL_VAR(name)`` written as text, at the start of a line.

    The answer of FINAL runs to the last closing parenthesis of the text, so
    answers holding parentheses, quotes and newlines survive whole.
    """
    var = _FINAL_VAR.search(text)
    final = _FINAL.search(text)
    if var and (final is None or var.start() <= final.start()):
        return FinalTag(var.group(1), is_variable=True)
    if final:
        body = text[final.end():]
        end = body.rfind(")")
        if end < 0:
            return None
        value = body[:end].strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        return FinalTag(value, is_variable=False)
    return None
