"""The ``rlm`` command: ``rlm run`` streams a run, ``rlm replay`` shows a saved one."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import grpc
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live

from rlm_client.client import RLMClient
from rlm_client.context import ContextError, load_context
from rlm_client.events import EventFileError, read_events, status_event, to_json
from rlm_client.lines import plain_lines
from rlm_client.live import render, render_end
from rlm_client.upload import UPLOAD_ABOVE
from rlm_client.view import EXIT_BAD_INPUT, EXIT_CANCELLED, ViewState
from rlm_service._gen.rlm.v1 import rlm_pb2

EXIT_CODES = """exit codes:
  0    answered by the model
  3    answer forced (iteration limit) or partial (a budget or the timeout stopped the run)
  2    bad input: the server said INVALID_ARGUMENT, or a file could not be read
  4    the service is unavailable, the run failed, or the deadline passed
  130  cancelled with Ctrl-C (the run is cancelled on the server too)
"""

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for the same
DEFAULT_SERVER = os.environ.get("RLM_ADDR", "localhost:8080")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlm", description="Run Recursive Language Model completions on an rlm-service.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="stream one run", epilog=EXIT_CODES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("prompt")
    run.add_argument("-c", "--context-file", metavar="F",
                     help="text file; .json = a list or object; a folder = a list of its files' "
                          "texts; - = stdin")
    run.add_argument("-s", "--server", default=DEFAULT_SERVER, metavar="HOST:PORT",
                     help=f"service address (default $RLM_ADDR or localhost:8080: {DEFAULT_SERVER})")
    budget = run.add_argument_group("budgets (0 = the server's default or no cap)")
    budget.add_argument("--max-iterations", type=int, default=0)
    budget.add_argument("--max-depth", type=int, default=0)
    budget.add_argument("--max-llm-calls", type=int, default=0)
    budget.add_argument("--max-tokens", type=int, default=0, help="prompt + output + thinking")
    budget.add_argument("--max-cost", type=float, default=0.0, help="US dollars")
    budget.add_argument("--timeout", type=float, default=0.0, help="seconds for the whole run")
    run.add_argument("--detach-grace", type=float, default=0.0, metavar="S",
                     help="keep the run going S seconds if the connection drops, and "
                          "reconnect to it (0 = a drop ends the run)")
    run.add_argument("--root-model", default="")
    run.add_argument("--sub-model", default="")
    _output_flags(run)
    run.add_argument("--save", metavar="FILE", help="keep every event in FILE (JSON lines)")
    replay = sub.add_parser("replay", help="show a run saved with --save, offline",
                            epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    replay.add_argument("file")
    _output_flags(replay)
    return parser


def _output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="one JSON event per line on stdout (protobuf JSON mapping)")
    parser.add_argument("--plain", action="store_true",
                        help="plain lines even on a terminal (the default elsewhere)")


class _Output:
    """Where events go: JSON lines, plain lines, or the live view on a terminal."""

    def __init__(self, state: ViewState, args: argparse.Namespace) -> None:
        self.state = state
        self.json = args.json
        self.live = not args.json and not args.plain and sys.stdout.isatty()
        self.lock = threading.Lock()
        self.console = Console()
        self.started = time.monotonic()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        # Drawn from rich's refresh thread while events arrive on the main one.
        with self.lock:
            if not self.state.finished:
                self.state.elapsed = max(self.state.elapsed, time.monotonic() - self.started)
            yield from list(console.render(render(self.state), options))

    def show(self, events: Iterable[rlm_pb2.CompletionEvent], save: IO[str] | None) -> None:
        with ExitStack() as stack:
            if self.live:
                stack.enter_context(Live(self, console=self.console, refresh_per_second=8))
            for event in events:
                with self.lock:
                    self.state.apply(event)
                if save is not None:
                    save.write(to_json(event) + "\n")
                    save.flush()
                if self.json:
                    print(to_json(event), flush=True)
                elif not self.live:
                    for line in plain_lines(event):
                        print(line, file=sys.stderr, flush=True)

    def end(self) -> None:
        state = self.state
        if self.json:
            return
        if self.live:
            self.console.print(render_end(state))
            return
        if state.answer is not None:
            print(state.answer, flush=True)
        print(state.summary, file=sys.stderr, flush=True)


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_iterations": args.max_iterations, "max_depth": args.max_depth,
            "max_llm_calls": args.max_llm_calls, "max_total_tokens": args.max_tokens,
            "max_cost_usd": args.max_cost, "timeout_seconds": args.timeout,
            "root_model": args.root_model, "sub_model": args.sub_model,
            "detach_grace_seconds": args.detach_grace}


def _deadline(timeout: float) -> float | None:
    # The server stops a run at its timeout and then sends the partial answer;
    # the call's own deadline leaves it a moment for that.
    return timeout + max(1.0, min(5.0, timeout)) if timeout > 0 else None


def _run(args: argparse.Namespace) -> int:
    try:
        context = load_context(args.context_file, UPLOAD_ABOVE)
    except ContextError as exc:
        print(f"rlm: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    state = ViewState()
    out = _Output(state, args)
    with ExitStack() as stack:
        save: IO[str] | None = None
        if args.save:
            try:
                save = stack.enter_context(Path(args.save).open("w", encoding="utf-8"))
            except OSError as exc:
                print(f"rlm: cannot write {args.save}: {exc.strerror}", file=sys.stderr)
                return EXIT_BAD_INPUT
        client = stack.enter_context(RLMClient(args.server))
        status: tuple[str, str] | None = None
        try:
            out.show(client.stream(args.prompt, context, timeout=_deadline(args.timeout),
                                   **_fields(args)), save)
        except grpc.RpcError as exc:
            status = (exc.code().name, exc.details() or "")
        except KeyboardInterrupt:
            # Leaving the stream's iterator cancelled the call, so the server ends the run.
            status = ("CANCELLED", "cancelled with Ctrl-C")
        if status is not None and not state.finished:
            state.fail(*status)
            if save is not None:
                save.write(to_json(status_event(*status)) + "\n")
        # The live view shows the error in its own panel; elsewhere say it once, plainly.
        if status is not None and status[0] != "CANCELLED" and not state.events \
                and not out.live:
            print(f"rlm: {status[0]}: {status[1]}", file=sys.stderr)
    if state.exit_code == EXIT_CANCELLED:
        print("rlm: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    out.end()
    return state.exit_code


def _replay(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        events = list(read_events(path))
    except EventFileError as exc:
        print(f"rlm: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    state = ViewState()
    out = _Output(state, args)
    if out.live:
        # Offline there is nothing to wait for: apply everything, draw the last frame.
        for event in events:
            state.apply(event)
        out.console.print(render(state))
    else:
        out.show(events, None)
    out.end()
    return state.exit_code


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        code = _run(args) if args.command == "run" else _replay(args)
    except KeyboardInterrupt:
        # Before any call was made (reading stdin, say): nothing to cancel on the server.
        print("rlm: cancelled", file=sys.stderr)
        code = EXIT_CANCELLED
    except BrokenPipeError:
        # The reader went away (`rlm run --json | head`); the run was cancelled with it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    sys.exit(code)
