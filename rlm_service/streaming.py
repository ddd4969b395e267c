"""A request's event stream, the same for every face (gRPC and HTTP).

It runs the request in a request slot, heartbeats while the stream is quiet (also
while queued), and cancels the request when the consumer closes the stream early.
The events are built by rlm_service/event_sink.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.config import Settings
from rlm_service.event_sink import EventSink
from rlm_service.run.engine import Engine
from rlm_service.run.types import ErrorKind, RequestFailed, RequestSpec
from rlm_service.telemetry.logs import request_id_var
from rlm_service.telemetry.tracing import error_status, tracer

log = logging.getLogger(__name__)


class RequestStream:
    """One request's events; after the stream ends, ``failure`` says why it failed
    (None when it ended with a final answer)."""

    def __init__(self, engine: Engine, settings: Settings, slots: asyncio.Semaphore,
                 spec: RequestSpec,
                 observe: Callable[[rlm_pb2.CompletionEvent], None] | None = None) -> None:
        self.engine = engine
        # Sees every event as it goes out (the HTTP face books an API key's spend).
        self.observe = observe
        self.settings = settings
        self.slots = slots
        self.spec = spec
        self.failure: RequestFailed | None = None
        self._events: AsyncGenerator[rlm_pb2.CompletionEvent, None] | None = None

    async def __aenter__(self) -> AsyncGenerator[rlm_pb2.CompletionEvent, None]:
        """The events; leaving the block early closes them, which cancels the request
        now rather than whenever the generator is garbage-collected."""
        self._events = self.events()
        return self._events

    async def __aexit__(self, *exc_info: object) -> None:
        if self._events is not None:
            await self._events.aclose()

    async def _complete(self, sink: EventSink) -> None:
        try:
            # Waiting for a slot happens here, so the stream heartbeats meanwhile.
            async with self.slots:
                sink.final(await self.engine.complete(self.spec, sink))
        except RequestFailed as exc:
            self.failure = exc
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                raise
            self.failure = RequestFailed(ErrorKind.SHUTTING_DOWN,
                                         "the server is shutting down; the run was stopped")
        except Exception:
            log.exception("request failed unexpectedly")
            self.failure = RequestFailed(ErrorKind.INTERNAL,
                                         "internal error; the run was stopped")
        finally:
            if self.failure is not None:
                sink.error(self.failure)
            sink.close()

    async def events(self) -> AsyncGenerator[rlm_pb2.CompletionEvent, None]:
        """Runs the request and yields its events; the last one is final_answer or
        error. Closing the iterator early cancels the request."""
        spec = self.spec
        sink = EventSink(spec.received)
        request_id_var.set(spec.request_id)
        # Nested under the face's server span, which carries the caller's traceparent.
        with tracer().start_as_current_span("rlm.request", attributes={
            "rlm.request_id": spec.request_id,
        }) as span:
            task = asyncio.create_task(self._complete(sink))
            try:
                while (event := await sink.next(self.settings.heartbeat_seconds)) is not None:
                    if self.observe is not None:
                        self.observe(event)
                    yield event
            except (asyncio.CancelledError, GeneratorExit):
                # GeneratorExit: the interceptor closes this generator when the cancel
                # lands while it is writing an event, outside the generator.
                log.info("client cancelled the run", extra={"request_id": spec.request_id})
                span.set_status(error_status("cancelled by client"))
                raise
            finally:
                if not task.done():
                    task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            if self.failure is not None:
                span.set_status(error_status(self.failure.message))
