"""The one retry policy for model requests (tenacity): which errors earn another attempt, and how long to wait.

Transient failures are recognised by their type: a 429, a 5xx, a timeout, a lost connection. Any other error ends
the request at once. The wait is exponential with jitter, capped, and never shorter than the server's Retry-After
(read as the openai SDK reads it: retry-after-ms, then seconds or an HTTP date). The SDK's own retries are off
(`max_retries=0` in metakl.llm.openai_backend) because each attempt must pass the endpoint's RateGate again and may
go to another endpoint of a pool; tenacity runs the loop.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from typing import Any

import openai
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

log = logging.getLogger(__name__)

# openai.APITimeoutError is an APIConnectionError; InternalServerError is any 5xx.
TRANSIENT_ERRORS = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError)


def retry_after_seconds(headers: Any) -> float | None:
    """The server's Retry-After (seconds or HTTP date, or retry-after-ms) in seconds, or None."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def error_headers(exc: BaseException | None) -> Any:
    """The HTTP headers of a failed request's response (None for a timeout or a lost connection)."""
    return getattr(getattr(exc, "response", None), "headers", None)


def backoff_delay(attempt: int, *, base: float, cap: float, retry_after: float | None, rng: random.Random) -> float:
    """Delay before retry number `attempt` (1-based): exponential with jitter, at least the server's Retry-After."""
    delay = min(cap, base * (2 ** (attempt - 1))) * (0.5 + 0.5 * rng.random())
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


def retry_policy(max_attempts: int, *, base: float, cap: float, rng: random.Random,
                 honour_retry_after: bool = True) -> AsyncRetrying:
    """At most `max_attempts` tries (the first included) of a request that raises one of TRANSIENT_ERRORS; the last
    error is raised again once they are spent. `honour_retry_after=False` for a pool of endpoints: the next attempt
    may go to another endpoint, and the one that sent the 429 is held back by its own RateGate."""

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = retry_after_seconds(error_headers(exc)) if honour_retry_after else None
        return backoff_delay(state.attempt_number, base=base, cap=cap, retry_after=retry_after, rng=rng)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.debug("%s; retry %d in %.2f s", describe_error(exc), state.attempt_number,
                  state.next_action.sleep if state.next_action else 0.0)

    return AsyncRetrying(retry=retry_if_exception_type(TRANSIENT_ERRORS), stop=stop_after_attempt(max(1, max_attempts)),
                         wait=wait, before_sleep=before_sleep, reraise=True)


def describe_error(exc: BaseException | None) -> str:
    """'HTTP 429: message' for a server's answer, 'APITimeoutError: message' for the others."""
    status = getattr(exc, "status_code", None)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"HTTP {status}: {message}" if status else f"{type(exc).__name__}: {message}"
