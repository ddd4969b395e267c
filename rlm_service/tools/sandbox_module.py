"""The operator's REPL tools module (TOOLS_MODULE), read with ``ast``.

The server never imports operator code: it reads the module's public, documented
top-level functions (name, signature, docstring) for the system prompt and mounts
the file or package read-only into the sandbox, where the guest imports it
(rlm_service/repl_guest/tools.py).
"""

from __future__ import annotations

import ast
import builtins
import keyword
import sys
from dataclasses import dataclass
from pathlib import Path

from rlm_service.tools.errors import ToolConfigError

# A docstring longer than this is cut in the system prompt.
MAX_DOC_CHARS = 2000
# Names a module may not take: it is imported by name, after the standard library and
# the guest's own packages on sys.path, so one of theirs would be imported instead.
_TAKEN_MODULES = {"rlm_service", "grpc", "google", "rlm"}


@dataclass(frozen=True)
class SandboxTool:
    name: str
    signature: str  # "name(a, b=1) -> str"
    doc: str


@dataclass(frozen=True)
class SandboxModule:
    """What the sandbox mounts (``source``, a file or a package folder) and imports
    (``name``), and the functions it offers."""

    source: Path
    name: str
    tools: tuple[SandboxTool, ...]

    @property
    def entry(self) -> str:
        """The file or folder name as mounted: ``name.py`` or ``name``."""
        return self.source.name


def read_module(path_text: str) -> SandboxModule:
    """Reads TOOLS_MODULE; raises ToolConfigError saying what is wrong."""
    path = Path(path_text).expanduser()
    try:
        path = path.resolve(strict=True)
    except OSError as exc:
        raise ToolConfigError(f"TOOLS_MODULE {path_text!r} does not exist ({exc})") from None
    if path.is_dir():
        name, source_file = path.name, path / "__init__.py"
        if not source_file.is_file():
            raise ToolConfigError(f"TOOLS_MODULE {path_text!r} is a folder without "
                                  "__init__.py; name a .py file or a package folder")
    elif path.suffix == ".py":
        name, source_file = path.stem, path
    else:
        raise ToolConfigError(f"TOOLS_MODULE {path_text!r} is neither a .py file nor a "
                              "package folder")
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ToolConfigError(f"TOOLS_MODULE {path_text!r}: {name!r} is not a valid "
                              "Python module name")
    if name in sys.stdlib_module_names or name in _TAKEN_MODULES:
        raise ToolConfigError(f"TOOLS_MODULE {path_text!r}: the name {name!r} is taken by "
                              "the standard library or the sandbox's own packages; rename it")
    try:
        text = source_file.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(source_file))
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolConfigError(f"TOOLS_MODULE {source_file} could not be read: {exc}") from None
    except SyntaxError as exc:
        raise ToolConfigError(f"TOOLS_MODULE {source_file} has a syntax error at line "
                              f"{exc.lineno}: {exc.msg}") from None
    tools = tuple(_tool(node) for node in tree.body if _public(node))
    if not tools:
        raise ToolConfigError(f"TOOLS_MODULE {source_file} defines no public function with "
                              "a docstring (top-level `def name(...)` with no leading _)")
    for tool in tools:
        if hasattr(builtins, tool.name):
            raise ToolConfigError(f"TOOLS_MODULE {source_file}: the function {tool.name!r} "
                                  "would hide Python's built-in of that name; rename it")
    return SandboxModule(path, name, tools)


def _public(node: ast.stmt) -> bool:
    return (isinstance(node, ast.FunctionDef) and not node.name.startswith("_")
            and ast.get_docstring(node) is not None)


def _tool(node: ast.stmt) -> SandboxTool:
    assert isinstance(node, ast.FunctionDef)
    signature = f"{node.name}({ast.unparse(node.args)})"
    if node.returns is not None:
        signature += f" -> {ast.unparse(node.returns)}"
    doc = (ast.get_docstring(node) or "").strip()
    if len(doc) > MAX_DOC_CHARS:
        doc = doc[:MAX_DOC_CHARS] + " (cut)"
    return SandboxTool(node.name, signature, doc)
