"""A request's event stream, the same for every face (gRPC and HTTP).

It runs the request in a run slot, heartbeats while the stream is quiet (also while
queued), numbers and timestamps every event, and cancels the run when the consumer
closes the stream early."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator

import grpc

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.config import Settings
from rlm_service.run.engine import Engine, RunFailed, RunSpec
from rlm_service.telemetry.logs import request_id_var
from rlm_service.telemetry.tracing import error_status, tracer

log = logging.getLogger(__name__)


async def stream_events(engine: Engine, settings: Settings, slots: asyncio.Semaphore,
                        spec: RunSpec) -> AsyncGenerator[rlm_pb2.CompletionEvent, None]:
    """Runs the request and yields its events; the last one is final_answer or error.

    Both faces (gRPC and HTTP) stream through here, so every event gets its seq and
    time in this one place. Closing the iterator early cancels the run."""
    queue: asyncio.Queue[rlm_pb2.CompletionEvent | None] = asyncio.Queue()
    failure: list[RunFailed] = []

    async def runner() -> None:
        try:
            # Waiting for a slot happens here, so the stream heartbeats meanwhile.
            async with slots:
                final = await engine.run(spec, queue.put_nowait)
            queue.put_nowait(rlm_pb2.CompletionEvent(final_answer=final))
        except RunFailed as exc:
            failure.append(exc)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                raise
            failure.append(RunFailed(grpc.StatusCode.UNAVAILABLE,
                                     "the server is shutting down; the run was stopped"))
        except Exception:
            log.exception("run failed unexpectedly")
            failure.append(RunFailed(grpc.StatusCode.INTERNAL,
                                     "internal error; the run was stopped"))
        finally:
            if failure:
                queue.put_nowait(rlm_pb2.CompletionEvent(error=rlm_pb2.RunError(
                    code=failure[0].code.name, message=failure[0].message)))
            queue.put_nowait(None)

    request_id_var.set(spec.request_id)
    seq = 0
    # Nested under the face's server span, which carries the caller's traceparent.
    with tracer().start_as_current_span("rlm.request", attributes={
        "rlm.request_id": spec.request_id,
    }) as span:
        task = asyncio.create_task(runner())
        try:
            while True:
                try:
                    async with asyncio.timeout(settings.heartbeat_seconds):
                        event = await queue.get()
                except TimeoutError:
                    event = rlm_pb2.CompletionEvent(heartbeat=rlm_pb2.Heartbeat(
                        elapsed_seconds=time.monotonic() - spec.received))
                if event is None:
                    break
                seq += 1
                event.seq = seq
                event.time.GetCurrentTime()
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
        if failure:
            span.set_status(error_status(failure[0].message))
