"""Entry point of a sandboxed REPL process: ``python -m rlm_service.repl_guest --ctrl-fd N``.

The process applies its resource limits, reports ready, then serves control
frames (init, exec, get_var) until the service closes the channel. One process
serves exactly one run. The pieces: ``channel`` (frames), ``executor`` (blocks),
``functions`` (what the model's code calls), ``protocol`` (the messages).
"""

from __future__ import annotations

import json
import os
import resource
import socket
import sys

from rlm_service.repl_guest import protocol
from rlm_service.repl_guest.channel import Channel
from rlm_service.repl_guest.executor import Executor, Outcome, too_long
from rlm_service.repl_guest.framing import FrameError
from rlm_service.repl_guest.functions import NAMES, CallbackClient, ModelFunctions
from rlm_service.repl_guest.tools import ToolError, ToolModule, install

TYPE_CHECKING = False  # typing is not imported: the guest pays for every import
if TYPE_CHECKING:
    from typing import Any

# The service is the only caller, so a flat ``--name value`` list is all there is to
# read; argparse (with the shutil, locale and gettext it loads) cost every REPL 4 ms.
OPTIONS = {"--ctrl-fd": int, "--limits": str, "--max-output": int,
           "--tools-dir": str, "--tools-module": str}
DEFAULTS: dict[str, Any] = {"--limits": "{}", "--max-output": 20_000,
                            "--tools-dir": "", "--tools-module": ""}


def parse_args(argv: list[str]) -> dict[str, Any]:
    if len(argv) % 2:
        raise SystemExit(f"usage: {' '.join(f'{k} VALUE' for k in OPTIONS)}")
    values = dict(DEFAULTS)
    for key, value in zip(argv[::2], argv[1::2], strict=True):
        if key not in OPTIONS:
            raise SystemExit(f"unknown option {key}")
        values[key] = OPTIONS[key](value)
    if "--ctrl-fd" not in values:
        raise SystemExit("--ctrl-fd is required")
    return values


def apply_limits(limits: dict[str, int]) -> None:
    pairs = {
        "as_bytes": resource.RLIMIT_AS,
        "cpu_seconds": resource.RLIMIT_CPU,
        "processes": resource.RLIMIT_NPROC,
        "open_files": resource.RLIMIT_NOFILE,
        "file_bytes": resource.RLIMIT_FSIZE,
    }
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for key, which in pairs.items():
        value = limits.get(key)
        if value:
            # The hard limit too, so user code cannot raise it back.
            resource.setrlimit(which, (value, value))


class Guest:
    """Serves the service's requests on ``channel`` with one executor."""

    def __init__(self, channel: Channel, max_output: int, tools: ToolModule) -> None:
        self.channel = channel
        self.executor = Executor(max_output, NAMES)
        self.functions: ModelFunctions | None = None
        self.tools = tools
        self._tool_names: set[str] = set()

    def serve(self) -> None:
        while (request := self.channel.recv()) is not None:
            self.channel.send(self.handle(request))

    def handle(self, request: protocol.HostMessage) -> protocol.GuestMessage:
        if isinstance(request, protocol.InitRequest):
            return self.init(request)
        if isinstance(request, protocol.ExecRequest):
            return self.exec(request.code, request.timeout)
        value, error = self.executor.value_text(request.name)
        return protocol.VarReply(ok=value is not None, value=value or "", error=error)

    def init(self, request: protocol.InitRequest) -> protocol.Ack:
        with open(request.context_path, encoding="utf-8") as f:
            context: Any = f.read() if request.context_kind == "str" else json.load(f)
        client = CallbackClient(request.socket, request.secret)
        self.functions = ModelFunctions(
            self.executor, client,
            lambda text: self.channel.send(protocol.PartialPush(content=text)))
        self.functions.install(context)
        try:
            self._tool_names = install(self.executor.ns, self.tools, client,
                                       request.sandbox_tools, request.http_tools,
                                       self._tool_names)
        except ToolError as exc:
            return protocol.Ack(ok=False, error=str(exc))
        # Listed like the built-in names: not the model's variables.
        self.executor.reserved = NAMES | self._tool_names | {"ToolError"}
        return protocol.Ack(ok=True)

    def exec(self, code: str, timeout: float) -> protocol.ExecReply:
        outcome = self.executor.run_block(code, timeout)
        reply = self.reply(outcome)
        try:
            protocol.to_frame(reply)
        except FrameError as exc:
            # Only a huge output setting with a huge answer gets here: refuse the answer.
            outcome.stderr.write(f"\nThe block's answer could not be sent ({exc}); "
                                 "shorten it and answer again.\n")
            outcome.error = True
            reply = self.reply(outcome, with_answer=False)
        return reply

    def reply(self, outcome: Outcome, with_answer: bool = True) -> protocol.ExecReply:
        final, partial = outcome.final, None
        answer = self.executor.ns.get("answer")
        if final is None and isinstance(answer, dict):
            # dict's own methods: the model may have replaced ``answer`` with anything.
            text = self._text_or_note(dict.get(answer, "content", ""), outcome)
            if text is not None and dict.get(answer, "ready") is True:
                final = text
            else:
                partial = text
        if not with_answer:
            final = partial = None
        return protocol.ExecReply(
            stdout=outcome.stdout.getvalue(), stderr=outcome.stderr.getvalue(),
            stdout_total=outcome.stdout.total, stderr_total=outcome.stderr.total,
            error=outcome.error, timed_out=outcome.timed_out, duration=outcome.duration,
            final=final, partial=partial, vars=self.executor.user_vars(),
        )

    def _text_or_note(self, content: Any, outcome: Outcome) -> str | None:
        """answer["content"] as text, or None with a note when it cannot be one."""
        try:
            text = str(content or "")
        except BaseException as exc:
            outcome.stderr.write(f'\nanswer["content"] could not be turned into text: '
                                 f"{type(exc).__name__}\n")
            return None
        if len(text) > protocol.MAX_ANSWER_CHARS:
            outcome.stderr.write("\n" + too_long('answer["content"]', len(text)) + "\n")
            outcome.error = True
            return None
        return text


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    apply_limits(json.loads(args["--limits"]))
    # Model code sees no stdin; fds 1/2 stay pipes the service drains.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    channel = Channel(socket.socket(fileno=args["--ctrl-fd"]))
    # gRPC's fork handlers restart its threads in every forked child and abort when
    # pthread_create fails: a fork bomb would hang the block instead of meeting
    # RLIMIT_NPROC. A forked child cannot use the parent's channel either way.
    # (Set now: model code may fork before the first sub-call imports grpc.)
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    # Operator code, imported under the limits above, before the first run arrives.
    tools = ToolModule(args["--tools-dir"], args["--tools-module"])
    guest = Guest(channel, args["--max-output"], tools)
    guest.executor.install_timer()
    channel.send(protocol.Ready(pid=os.getpid()))
    guest.serve()


if __name__ == "__main__":
    main()
