"""Requests in flight that follow the server's rate-limit headers, never more than a cap.

OpenAI (platform.openai.com/docs/guides/rate-limits) sends on every response `x-ratelimit-remaining-requests`,
`x-ratelimit-remaining-tokens` and `x-ratelimit-reset-requests`/`-tokens` (durations such as "1s", "6m0s", "20ms");
OpenRouter, DeepSeek and others use the same names or none. A 429 carries `retry-after` (read by
metakl.llm.retry.retry_after_seconds, which follows the openai SDK's own reading of it: retry-after-ms,
then seconds or an HTTP date). The SDK (openai._base_client) retries a 429 after its Retry-After, up to two minutes,
but only that request: the others in flight go on hitting the limit and it never lowers its concurrency. This gate
adds what it lacks: the whole endpoint waits out a Retry-After (at most the SDK's two minutes), and the number in
flight shrinks to what the server says remains.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def reset_seconds(value: str | None) -> float | None:
    """An OpenAI reset duration ("1s", "6m0s", "20ms", "0.5s", or plain seconds) in seconds, or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    return sum(float(n) * _UNIT[u] for n, u in parts) if parts else None


def _int(headers: Any, name: str) -> int | None:
    value = headers.get(name) if headers is not None else None
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


class RateGate:
    """At most `limit` requests in flight on one endpoint; `limit` follows the headers, between 1 and `cap`."""

    def __init__(self, cap: int, *, max_pause: float = 120.0) -> None:
        self.cap = max(1, int(cap))
        self.limit = self.cap
        self.in_flight = 0
        self.paused_until = 0.0
        self.max_pause = max_pause
        self.lowest_limit = self.cap  # for reports and tests: how far the headers held it back
        self._cond: asyncio.Condition | None = None

    async def acquire(self) -> None:
        if self._cond is None:
            self._cond = asyncio.Condition()
        async with self._cond:
            while True:
                wait = self.paused_until - time.monotonic()
                if wait <= 0 and self.in_flight < self.limit:
                    break
                try:
                    await asyncio.wait_for(self._cond.wait(), timeout=wait if wait > 0 else None)
                except asyncio.TimeoutError:
                    pass
            self.in_flight += 1

    async def release(self, headers: Any = None, *, tokens_per_request: int = 0, retry_after: float | None = None
                      ) -> None:
        assert self._cond is not None
        async with self._cond:
            self.in_flight -= 1
            self.observe(headers, tokens_per_request=tokens_per_request, retry_after=retry_after)
            self._cond.notify_all()

    def observe(self, headers: Any, *, tokens_per_request: int = 0, retry_after: float | None = None) -> None:
        """Set the limit from one response's headers (None: no headers, keep it)."""
        now = time.monotonic()
        if retry_after is not None:  # a 429: everyone on this endpoint waits, not just the request that got it
            self.paused_until = max(self.paused_until, now + min(retry_after, self.max_pause))
        if headers is None:
            return
        requests = _int(headers, "x-ratelimit-remaining-requests")
        tokens = _int(headers, "x-ratelimit-remaining-tokens")
        if requests is None and tokens is None:
            return
        allowed = self.cap
        if requests is not None:
            allowed = min(allowed, requests)
        if tokens is not None and tokens_per_request > 0:  # the server counts max_tokens against the budget
            allowed = min(allowed, tokens // tokens_per_request)
        if allowed <= 0:  # nothing left in this window: wait for its reset, then go on one at a time
            reset = max(reset_seconds(headers.get("x-ratelimit-reset-requests")) or 0.0,
                        reset_seconds(headers.get("x-ratelimit-reset-tokens")) or 0.0) or 1.0
            self.paused_until = max(self.paused_until, now + min(reset, self.max_pause))
        self.limit = max(1, min(self.cap, allowed))
        self.lowest_limit = min(self.lowest_limit, self.limit)
