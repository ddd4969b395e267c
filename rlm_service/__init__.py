"""rlm-service: Recursive Language Model runs as a streaming gRPC service.

The server API is re-exported here lazily, so that the sandboxed REPL (which
imports ``rlm_service.repl_guest``) does not load the service's modules.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: the sandboxed REPL imports this package too

__all__ = ["Settings", "serve"]

if TYPE_CHECKING:
    from typing import Any

    from rlm_service.config import Settings
    from rlm_service.server import serve

_LOCATIONS = {
    "Settings": "rlm_service.config",
    "serve": "rlm_service.server",
}


def __getattr__(name: str) -> Any:
    if name in _LOCATIONS:
        import importlib

        return getattr(importlib.import_module(_LOCATIONS[name]), name)
    raise AttributeError(name)
