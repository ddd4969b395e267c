"""Test-wide plugins and the names tests import from here (defined in tests/support)."""
# ruff: noqa: E402

from __future__ import annotations

import os

# Before grpc is imported: the suite forks itself (pexpect's pty.fork for the CLI
# tests) while its in-process servers' gRPC threads are busy, and gRPC's fork
# handlers in such a child can abort it (SIGABRT) before it reaches exec.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import pytest

# Before the imports below, so the helpers' asserts get pytest's messages too.
pytest.register_assert_rewrite("tests.support")

from tests.support.events import collect, final_of, of_kind, repl
from tests.support.procs import process_tree, sandbox_pids
from tests.support.servers import StartServer, busy_repl_pids, open_stub, running_server
from tests.support.settings import API_KEY, ROOT_MODEL, SUB_MODEL, make_settings

pytest_plugins = [
    "tests.support.servers",  # fake_gemini, start_server, server, stub
    "tests.support.subprocess_server",  # world_tmp, server_proc
    "tests.support.watchdog",
]

__all__ = [
    "API_KEY", "ROOT_MODEL", "SUB_MODEL", "StartServer", "busy_repl_pids", "collect",
    "final_of", "make_settings", "of_kind", "open_stub", "process_tree", "repl",
    "running_server", "sandbox_pids",
]
