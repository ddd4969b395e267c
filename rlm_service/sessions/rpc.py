"""The gRPC face of sessions: CreateSession and CloseSession."""

from __future__ import annotations

import math
from typing import Any

import grpc

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.errors import status_of
from rlm_service.event_sink import usage as wire_usage
from rlm_service.run.types import RequestFailed
from rlm_service.sessions.store import Session, SessionBudget, SessionStore

Context = grpc.aio.ServicerContext[Any, Any]


def session_info(session: Session, *, with_token: bool = False) -> rlm_pb2.SessionInfo:
    return rlm_pb2.SessionInfo(
        session_id=session.session_id, session_token=session.token if with_token else "",
        turns=session.turns, idle_ttl_seconds=session.ttl, closed=session.closed,
        usage=wire_usage(session.usage))


class SessionControl:
    """Mixed into the RLMServicer: the session RPCs over its SessionStore."""

    sessions: SessionStore

    async def CreateSession(self, request: rlm_pb2.CreateSessionRequest,
                            context: Context) -> rlm_pb2.SessionInfo:
        r = request
        if (r.max_llm_calls < 0 or r.max_total_tokens < 0 or not math.isfinite(r.max_cost_usd)
                or r.max_cost_usd < 0):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "session budgets must be finite numbers >= 0 (0 = no cap)")
        try:
            session = self.sessions.create(SessionBudget(
                r.max_llm_calls, r.max_total_tokens, r.max_cost_usd))
        except RequestFailed as exc:
            await context.abort(status_of(exc).grpc, exc.message)
            raise AssertionError("unreachable") from exc
        return session_info(session, with_token=True)

    async def CloseSession(self, request: rlm_pb2.SessionRef,
                           context: Context) -> rlm_pb2.SessionInfo:
        try:
            session = self.sessions.get(request.session_id, request.session_token)
        except RequestFailed as exc:
            await context.abort(status_of(exc).grpc, exc.message)
            raise AssertionError("unreachable") from exc
        await self.sessions.close(session)
        return session_info(session)
