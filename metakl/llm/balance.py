"""Spreading requests over several OpenAI-compatible endpoints that serve the same model: least outstanding requests.

A request goes to the endpoint with the fewest requests in flight; ties go round-robin, so that a run that sends one
request at a time still uses every endpoint. A slow or busy endpoint keeps its requests longer, so it is given fewer
(join-the-shortest-queue), without any knowledge of the servers' own load.
"""

from __future__ import annotations

import threading

from metakl.errors import UserError


def endpoint_list(base_url: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """`base_url` as a list of endpoints: a list as given, or one string (commas separate several); no trailing '/'."""
    if base_url is None:
        return []
    items = base_url.split(",") if isinstance(base_url, str) else list(base_url)
    urls = [str(u).strip().rstrip("/") for u in items if str(u).strip()]
    if not urls:
        raise UserError(f"base_url: no endpoint in {base_url!r}")
    if len(set(urls)) != len(urls):
        raise UserError(f"base_url: an endpoint is listed twice in {urls}")
    return urls


class LeastOutstanding:
    """Which of `n` endpoints gets the next request; thread-safe. `sent[i]`: requests endpoint i was given."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"need at least one endpoint, got {n}")
        self.outstanding = [0] * n
        self.sent = [0] * n
        self._next = 0  # where the round-robin tie-break starts
        self._lock = threading.Lock()

    def acquire(self) -> int:
        with self._lock:
            n = len(self.outstanding)
            order = [(self._next + k) % n for k in range(n)]
            best = min(order, key=lambda i: self.outstanding[i])  # min keeps the first of equals: round-robin
            self.outstanding[best] += 1
            self.sent[best] += 1
            self._next = (best + 1) % n
            return best

    def release(self, i: int) -> None:
        with self._lock:
            self.outstanding[i] -= 1
