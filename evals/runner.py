"""Runs tasks through a live service and records what each run did."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import grpc

from evals.scoring import score
from evals.tasks import Task
from rlm_client import RLMClient
from rlm_service._gen.rlm.v1 import rlm_pb2


@dataclass
class Record:
    task_id: str
    family: str
    metric: str
    tokens: int
    score: float
    cost_usd: float
    latency_seconds: float
    iterations: int
    sub_calls: int
    stop_reason: str
    answer: str
    gold: str
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text):,} characters)"


def run_task(client: RLMClient, task: Task, fields: dict[str, Any], timeout: float) -> Record:
    started = time.monotonic()
    sub_calls = 0
    final: rlm_pb2.FinalAnswer | None = None
    error = ""
    try:
        for event in client.stream(task.prompt, task.context, timeout=timeout + 10,
                                   timeout_seconds=timeout, **fields):
            kind = event.WhichOneof("event")
            if kind == "sub_call_finished":
                sub_calls += 1
            elif kind == "final_answer":
                final = event.final_answer
            elif kind == "error":
                error = f"{event.error.code}: {event.error.message}"
    except grpc.RpcError as exc:
        error = error or f"{exc.code().name}: {exc.details()}"
    latency = time.monotonic() - started
    answer = final.answer if final is not None else ""
    return Record(
        task_id=task.task_id, family=task.family, metric=task.metric, tokens=task.tokens,
        score=round(score(task.metric, answer, task.gold), 4) if final is not None else 0.0,
        cost_usd=final.total_usage.cost_usd if final is not None else 0.0,
        latency_seconds=round(latency, 3),
        iterations=final.iterations if final is not None else 0, sub_calls=sub_calls,
        stop_reason=(rlm_pb2.StopReason.Name(final.stop_reason).removeprefix("STOP_REASON_")
                     .lower() if final is not None else "error"),
        answer=_short(answer), gold=_short(task.gold), error=error,
    )


def run_all(address: str, tasks: list[Task], fields: dict[str, Any], timeout: float,
            progress: Callable[[Record], None]) -> list[Record]:
    records = []
    with RLMClient(address) as client:
        for task in tasks:
            record = run_task(client, task, fields, timeout)
            progress(record)
            records.append(record)
    return records
