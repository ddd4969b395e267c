"""The retry loop both backends share.

A backend turns each failed attempt into an ``AttemptError`` (what went wrong,
whether another attempt can help, how long the server asked us to wait); this
module decides whether and when to try again and turns the last failure into a
``ModelError``.

Policy: exponential backoff with full jitter (delay for retry n is uniform in
``[0, min(cap, base * 2**(n-1))]``), a server-requested delay replaces the
jittered one, at most ``max_retries`` retries, and nothing - neither a sleep nor
an attempt - runs past the caller's deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import grpc

from rlm_service.config import Settings
from rlm_service.models._base import AttemptHook, ModelError, ModelReply, RetryHook, TokenUsage
from rlm_service.models.limiter import Limiter

log = logging.getLogger(__name__)

# An empty answer is usually a transient glitch, but a prompt that reliably
# yields nothing would otherwise burn every retry; two more tries is enough to
# tell the two apart.
EMPTY_RETRY_LIMIT = 2


class AttemptError(Exception):
    """One failed attempt, already classified by the backend."""

    def __init__(self, message: str, *, kind: str, code: grpc.StatusCode, retryable: bool,
                 retry_after: float | None = None, usage: TokenUsage | None = None,
                 retry_limit: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after
        self.usage = usage
        self.retry_limit = retry_limit

    def to_model_error(self, retries: int, usage: TokenUsage) -> ModelError:
        message = self.message
        if retries:
            message = f"{message} (gave up after {retries} {_plural(retries, 'retry', 'retries')})"
        return ModelError(message, code=self.code, kind=self.kind, usage=usage, retries=retries)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int
    base_seconds: float
    max_seconds: float
    attempt_timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_retries=settings.model_max_retries,
            base_seconds=settings.model_retry_base_seconds,
            max_seconds=settings.model_retry_max_seconds,
            attempt_timeout=settings.model_timeout_seconds,
        )

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """Full-jitter delay before retry number ``retry`` (1-based)."""
        ceiling = min(self.max_seconds, self.base_seconds * (2.0 ** (retry - 1)))
        return (rng or random).uniform(0.0, ceiling)


def add_usage(a: TokenUsage, b: TokenUsage | None) -> TokenUsage:
    if b is None:
        return a
    return TokenUsage(
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        output_tokens=a.output_tokens + b.output_tokens,
        thinking_tokens=a.thinking_tokens + b.thinking_tokens,
        cached_tokens=a.cached_tokens + b.cached_tokens,
    )


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """Remove credentials from text that may reach logs, clients or the model."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text


# Statuses worth another attempt: the server or a proxy on the way failed.
RETRYABLE_STATUS = frozenset({408, 500, 502, 503, 504})
SERVER_MESSAGE_LIMIT = 300


# edge: bodies that are no provider's error message but a proxy's or framework's page
# (HTML, a traceback): shown as what they are, never quoted, since they can carry
# internals and credentials of whatever produced them.
_FOREIGN_BODY = re.compile(r"<\s*(?:!doctype|html|head|body)\b|Traceback \(most recent call",
                           re.IGNORECASE)


def server_detail(message: object, secrets: Iterable[str | None]) -> str:
    """A provider's error text, fit to show: one line, capped, no credentials."""
    text = " ".join(message.split()) if isinstance(message, str) else ""
    if _FOREIGN_BODY.search(text):
        kind = "an HTML page" if "<" in text else "a traceback"
        return f"the reply was {kind}, not the API's error JSON (a proxy or gateway failed?)"
    if len(text) > SERVER_MESSAGE_LIMIT:
        text = text[:SERVER_MESSAGE_LIMIT].rstrip() + "..."
    return scrub(text, secrets)


def status_error(status: int, what: str, detail: str, *, label: str = "",
                 retry_after: float | None = None,
                 retryable: frozenset[int] = RETRYABLE_STATUS) -> AttemptError:
    """The HTTP status ladder every provider shares. ``label`` is how the
    status is shown ("429 RESOURCE_EXHAUSTED"; the number when empty). Causes
    a provider names in its body (a content filter, a context overflow) are
    for the backend to check first."""
    label = label or str(status)
    suffix = f": {detail}" if detail else ""
    if status == 429:
        return AttemptError(f"{what} is rate limited ({label}){suffix}", kind="rate_limited",
                            code=grpc.StatusCode.RESOURCE_EXHAUSTED, retryable=True,
                            retry_after=retry_after)
    if status in retryable or status >= 500:
        return AttemptError(f"{what} is unavailable ({label}){suffix}", kind="unavailable",
                            code=grpc.StatusCode.UNAVAILABLE, retryable=True,
                            retry_after=retry_after)
    if status in (401, 403):
        return AttemptError(f"{what} refused the credentials ({label}){suffix}",
                            kind="permission_denied", code=grpc.StatusCode.PERMISSION_DENIED,
                            retryable=False)
    if status == 404:
        return AttemptError(f"{what} was not found ({label}){suffix}", kind="not_found",
                            code=grpc.StatusCode.NOT_FOUND, retryable=False)
    if status == 413:
        return prompt_too_large(what, suffix)
    return AttemptError(f"{what} rejected the request as invalid ({label}){suffix}",
                        kind="bad_request", code=grpc.StatusCode.INVALID_ARGUMENT,
                        retryable=False)


def prompt_too_large(what: str, suffix: str = "") -> AttemptError:
    return AttemptError(f"the prompt is too large for {what}{suffix}", kind="prompt_too_large",
                        code=grpc.StatusCode.INVALID_ARGUMENT, retryable=False)


def transport_error(what: str) -> AttemptError:
    return AttemptError(f"{what} could not be reached: the connection failed or was closed "
                        "before a complete answer arrived",
                        kind="unavailable", code=grpc.StatusCode.UNAVAILABLE, retryable=True)


def malformed_error(what: str) -> AttemptError:
    return AttemptError(f"{what} sent a response that could not be parsed", kind="malformed",
                        code=grpc.StatusCode.UNAVAILABLE, retryable=True)


def unexpected_error(what: str, exc: Exception) -> AttemptError:
    log.warning("unexpected error from the model client of %s", what, exc_info=exc)
    return AttemptError(f"{what} failed with an unexpected client error ({type(exc).__name__})",
                        kind="internal", code=grpc.StatusCode.INTERNAL, retryable=False)


async def run_with_retries(
    attempt: Callable[[], Awaitable[ModelReply]],
    *,
    policy: RetryPolicy,
    classify: Callable[[Exception], AttemptError],
    deadline: float | None,
    on_retry: RetryHook | None,
    what: str,
    limiter: Limiter | None = None,
    on_attempt: AttemptHook | None = None,
    rng: random.Random | None = None,
) -> ModelReply:
    """Run ``attempt`` until it succeeds or the policy says stop.

    ``what`` names the call in messages ("the Gemini model gemini-2.5-flash").
    ``limiter`` bounds concurrent attempts; waiting for it is bounded by the
    deadline but not by the per-call timeout, so a busy process does not turn
    queueing into timeouts. Cancellation of the caller propagates at once,
    also out of a wait or a sleep.
    """
    retries = 0
    spent = TokenUsage()  # tokens billed by failed attempts still count
    per_kind: dict[str, int] = {}
    while True:
        if limiter is not None and not await _acquire(limiter, deadline):
            raise ModelError(f"{what} could not be called before the deadline: too many "
                             "model calls were already running",
                             code=grpc.StatusCode.DEADLINE_EXCEEDED, kind="timeout",
                             usage=spent, retries=retries)
        try:
            remaining = math.inf if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise ModelError(f"{what} could not be called: the deadline had already passed",
                                 code=grpc.StatusCode.DEADLINE_EXCEEDED, kind="timeout",
                                 usage=spent, retries=retries)
            timeout = min(policy.attempt_timeout, remaining)
            cut_by_deadline = remaining <= policy.attempt_timeout
            if on_attempt is not None:
                on_attempt()
            async with asyncio.timeout(timeout):
                reply = await attempt()
            return dataclasses.replace(reply, usage=add_usage(reply.usage, spent), retries=retries)
        except TimeoutError:
            if cut_by_deadline:
                raise ModelError(
                    f"{what} did not answer before the deadline ({timeout:.1f} s were left)",
                    code=grpc.StatusCode.DEADLINE_EXCEEDED, kind="timeout", usage=spent,
                    retries=retries) from None
            failure = AttemptError(
                f"{what} did not answer within the per-call timeout of {timeout:.1f} s",
                kind="timeout", code=grpc.StatusCode.DEADLINE_EXCEEDED, retryable=True)
        except AttemptError as exc:
            failure = exc
        except ModelError:
            raise
        except Exception as exc:
            failure = classify(exc)
        finally:
            if limiter is not None:
                limiter.release()
        spent = add_usage(spent, failure.usage)

        per_kind[failure.kind] = per_kind.get(failure.kind, 0) + 1
        kind_exhausted = (failure.retry_limit is not None
                          and per_kind[failure.kind] > failure.retry_limit)
        if not failure.retryable or retries >= policy.max_retries or kind_exhausted:
            raise failure.to_model_error(retries, spent) from None

        retries += 1
        if failure.retry_after is not None:
            delay = max(0.0, failure.retry_after)
        else:
            delay = policy.backoff(retries, rng)
        if deadline is not None and time.monotonic() + delay >= deadline:
            raise ModelError(
                f"{failure.message}; there is no time for another attempt before the deadline",
                code=grpc.StatusCode.DEADLINE_EXCEEDED, kind="timeout", usage=spent,
                retries=retries - 1) from None
        log.info("model call failed (%s), retry %d in %.2f s", failure.kind, retries, delay)
        if on_retry is not None:
            on_retry(retries, delay, failure.kind)
        await asyncio.sleep(delay)


async def _acquire(limiter: Limiter, deadline: float | None) -> bool:
    if deadline is None:
        await limiter.acquire()
        return True
    try:
        async with asyncio.timeout_at(_loop_time(deadline)):
            await limiter.acquire()
    except TimeoutError:
        return False
    return True


def _loop_time(deadline: float) -> float:
    """Convert a time.monotonic() deadline to the running loop's clock."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


def _plural(n: int, one: str, many: str) -> str:
    return one if n == 1 else many
