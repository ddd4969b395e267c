"""Host side of the sandboxed REPL: launching, talking to and killing REPL processes."""

from rlm_service.repl.host_files import SandboxUnavailable
from rlm_service.repl.pool import ReplPool
from rlm_service.repl.process import ExecResult, ReplError, ReplProcess
from rlm_service.repl.sandbox import Sandbox

__all__ = ["ExecResult", "ReplError", "ReplPool", "ReplProcess", "Sandbox", "SandboxUnavailable"]
