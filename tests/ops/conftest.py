"""The ops tests' helpers live in tests/support; re-exported here for the tests that
import them from this module."""

from __future__ import annotations

from tests.support.procs import alive, cmdlines, guest_pids, wait_for
from tests.support.scrape import samples, scrape, value
from tests.support.subprocess_server import (
    PROJECT_ROOT,
    RLM_SERVER,
    SITE_PACKAGES,
    VENV,
    ServerProcess,
    StartProc,
    base_env,
    free_port,
    port_open,
    runtime_dirs,
)

__all__ = [
    "PROJECT_ROOT", "RLM_SERVER", "SITE_PACKAGES", "VENV", "ServerProcess", "StartProc",
    "alive", "base_env", "cmdlines", "free_port", "guest_pids", "port_open", "runtime_dirs",
    "samples", "scrape", "value", "wait_for",
]
