"""Reading ``--context-file``: text, a .json list or object, a folder, or ``-`` for stdin."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


class ContextError(ValueError):
    """The context file could not be used; the message says which file and why."""


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ContextError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise ContextError(f"{path}: {exc.strerror or exc}") from exc


def _folder(path: Path) -> list[str]:
    # Sorted and without hidden entries (.git, editor files), so a run is repeatable.
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise ContextError(f"{path}: the folder has no files")
    return [_read_text(p) for p in files]


def load_context(name: str | None, upload_above: int | None = None) -> Any:
    """The request's context: None, a str, the list/dict of a JSON file or a folder, or
    (a text file over ``upload_above`` bytes) its Path, which the client uploads in
    chunks without reading it whole."""
    if name is None:
        return None
    if name == "-":
        return sys.stdin.read()
    path = Path(name)
    if path.is_dir():
        return _folder(path)
    if (upload_above is not None and path.suffix.lower() != ".json" and path.is_file()
            and path.stat().st_size > upload_above):
        # The server checks it is UTF-8 as it arrives.
        return path
    text = _read_text(path)
    if path.suffix.lower() != ".json":
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContextError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: "
                           f"{exc.msg}") from exc
    if not isinstance(value, list | dict | str):
        raise ContextError(f"{path}: a JSON context must be a list, an object or a string, "
                           f"not {type(value).__name__}")
    return value
