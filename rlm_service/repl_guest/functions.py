"""The functions the model's code calls: sub-calls, answers and SHOW_VARS.

Sub-calls go to the service's LLMQuery callback over a Unix socket, carrying the
run's secret. Every string the model hands over is made valid UTF-8 first, so
odd text is an odd prompt, never a dead REPL.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable

from rlm_service.repl_guest import protocol
from rlm_service.repl_guest.executor import Executor, FinalSignal, too_long

TYPE_CHECKING = False  # typing is not imported: the guest pays for every import
if TYPE_CHECKING:
    from typing import Any

NAMES = frozenset({
    "context", "llm_query", "llm_query_batched", "rlm_query", "rlm_query_batched",
    "SHOW_VARS", "FINAL", "FINAL_VAR", "answer",
})


def _text(value: Any) -> str:
    return protocol.clean_text(str(value))


class Answer(dict[str, "Any"]):  # a string: typing is not imported at run time
    """The REPL's ``answer`` dict; setting its content also pushes it to the service."""

    def __init__(self, push: Callable[[str], None]) -> None:
        super().__init__(content="", ready=False)
        self._push = push

    def __setitem__(self, key: str, value: Any) -> None:
        if key == "content":
            text = str(value)
            if len(text) > protocol.MAX_ANSWER_CHARS:
                raise ValueError(too_long('answer["content"]', len(text)))
            super().__setitem__(key, value)
            self._push(text)
        else:
            super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value


class CallbackClient:
    """The gRPC stub of the service's LLMQuery callback, for this run.

    Connected on the first sub-call, not at start: grpcio and the generated stubs are
    over half of a REPL's start-up CPU, and many runs never make a sub-call. Model code
    that fills the host's cap on this REPL's callback connections before its first
    sub-call only makes its own sub-calls fail.
    """

    def __init__(self, socket_path: str, secret: str) -> None:
        self.socket_path = socket_path
        self.secret = secret
        self.pb: Any = None
        self._stub: Any = None
        self._lock = threading.Lock()  # model code may call from several threads

    def _connect(self) -> Any:
        with self._lock:
            if self._stub is None:
                import grpc

                from rlm_service._gen.rlm.internal.v1 import llm_query_pb2, llm_query_pb2_grpc

                channel = grpc.insecure_channel("unix://" + self.socket_path, options=[
                    ("grpc.max_send_message_length", -1),
                    ("grpc.max_receive_message_length", -1),
                ])
                with contextlib.suppress(grpc.FutureTimeoutError):
                    grpc.channel_ready_future(channel).result(timeout=10)
                self.pb = llm_query_pb2
                self._stub = llm_query_pb2_grpc.LLMQueryServiceStub(channel)
            return self._stub

    def messages(self) -> Any:
        """The generated message module (loaded with the client)."""
        self._connect()
        return self.pb

    def call(self, method: str, request: Any) -> Any:
        import grpc

        stub = self._connect()
        try:
            return getattr(stub, method)(
                request, metadata=((protocol.SECRET_METADATA_KEY, self.secret),))
        except grpc.RpcError as exc:
            details = exc.details() if hasattr(exc, "details") else str(exc)
            return self.pb.QueryResponse(text=f"Error: sub-call failed: {details}", error=True)


class ModelFunctions:
    """Bound into the namespace: what the system prompt tells the model it has."""

    def __init__(self, executor: Executor, client: CallbackClient,
                 push: Callable[[str], None]) -> None:
        self.executor = executor
        self.client = client
        self._push = push
        self._last_push = -protocol.PUSH_INTERVAL

    def install(self, context: Any) -> None:
        self.executor.ns.update(
            context=context, llm_query=self.llm_query, llm_query_batched=self.llm_query_batched,
            rlm_query=self.rlm_query, rlm_query_batched=self.rlm_query_batched,
            SHOW_VARS=self.show_vars, FINAL=self.final, FINAL_VAR=self.final_var,
            answer=Answer(self.push_partial),
        )

    def push_partial(self, content: str) -> None:
        """Tells the service about a new ``answer["content"]`` mid-block, so a budget
        stop that kills the block still has it. At most one push per PUSH_INTERVAL,
        and none over PUSH_MAX_CHARS: the block's reply always carries the latest."""
        now = time.monotonic()
        if (now - self._last_push < protocol.PUSH_INTERVAL
                or len(content) > protocol.PUSH_MAX_CHARS
                or not self.executor.in_main_thread()):
            return
        self._last_push = now
        with contextlib.suppress(ValueError, OSError):
            self._push(content)

    # --- answers ----------------------------------------------------------------
    def final(self, value: Any = "") -> None:
        text = str(value)
        if len(text) > protocol.MAX_ANSWER_CHARS:
            raise ValueError(too_long("FINAL's answer", len(text)))
        raise FinalSignal(text)

    def final_var(self, name: Any) -> None:
        if not isinstance(name, str):
            self.final(name)
        ns = self.executor.ns
        key = name.strip().strip("'\"")
        if key not in ns:
            raise NameError(f"FINAL_VAR: no variable named {protocol.clip_name(key)!r}; "
                            "assign it first")
        self.final(ns[key])

    def show_vars(self) -> None:
        names = self.executor.user_vars()
        if not names:
            print("No user variables yet.")
        for k in names:
            print(f"{k}: {type(self.executor.ns.get(k)).__name__}")

    # --- sub-calls --------------------------------------------------------------
    def llm_query(self, prompt: Any, model: str | None = None) -> str:
        pb = self.client.messages()
        request = pb.QueryRequest(prompt=_text(prompt), model=_text(model or ""))
        return str(self.client.call("Query", request).text)

    def llm_query_batched(self, prompts: Any, model: str | None = None) -> list[str]:
        pb = self.client.messages()
        request = pb.QueryBatchedRequest(prompts=[_text(p) for p in prompts],
                                         model=_text(model or ""))
        return self._texts(self.client.call("QueryBatched", request), len(request.prompts))

    def rlm_query(self, prompt: Any, context: Any = None, model: str | None = None) -> str:
        pb = self.client.messages()
        request = pb.QueryRequest(prompt=_text(prompt), model=_text(model or ""),
                                  recursive=True)
        if context is not None:
            _fill_value(request.context, context)
        return str(self.client.call("Query", request).text)

    def rlm_query_batched(self, prompts: Any, contexts: Any = None,
                          model: str | None = None) -> list[str]:
        pb = self.client.messages()
        texts = [_text(p) for p in prompts]
        request = pb.QueryBatchedRequest(prompts=texts, model=_text(model or ""),
                                         recursive=True)
        if contexts is not None:
            contexts = list(contexts)
            if len(contexts) != len(texts):
                raise ValueError("rlm_query_batched: contexts must have one item per prompt")
            for c in contexts:
                _fill_value(request.contexts.add(), c)
        return self._texts(self.client.call("QueryBatched", request), len(texts))

    def _texts(self, reply: Any, n: int) -> list[str]:
        if isinstance(reply, self.client.pb.QueryResponse):  # the whole call failed
            return [str(reply.text)] * n
        return [str(r.text) for r in reply.responses]


def _fill_value(target: Any, obj: Any) -> None:
    from google.protobuf import json_format

    if isinstance(obj, str):
        target.string_value = protocol.clean_text(obj)
        return
    try:
        data = json.loads(protocol.clean_text(json.dumps(obj, default=str, ensure_ascii=False)))
        json_format.ParseDict(data, target)
    except (TypeError, ValueError, RecursionError, json_format.ParseError):
        target.string_value = _text(obj)
