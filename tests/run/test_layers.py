"""The domain stays free of the wire: protos and gRPC codes live only at the edges."""

from __future__ import annotations

import ast
from pathlib import Path

import rlm_service
from rlm_service.errors import STATUS
from rlm_service.run.types import ErrorKind

PACKAGE = Path(rlm_service.__file__).parent
DOMAIN = [*sorted((PACKAGE / "run").glob("*.py")), PACKAGE / "budget.py"]


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_domain_imports_no_protos_or_grpc() -> None:
    assert len(DOMAIN) > 5
    for path in DOMAIN:
        wire = {n for n in imported(path)
                if n == "grpc" or n.startswith(("grpc.", "rlm_service._gen", "google.protobuf"))}
        assert not wire, (path.name, wire)


def test_only_the_sink_builds_completion_events() -> None:
    builders = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                if "_gen" not in p.parts and "CompletionEvent(" in p.read_text()]
    assert builders == ["event_sink.py"]


def test_every_error_kind_has_a_status() -> None:
    assert set(STATUS) == set(ErrorKind)
