"""Retries through a fault-injecting proxy in front of the real vLLM server, and the retry arithmetic."""

from __future__ import annotations

import random
import time

from metakl.llm import ChatRequest, get_backend
from metakl.llm.retry import backoff_delay, retry_after_seconds

MODEL = "smollm2-135m-instruct"


def _attempt_timeout(url: str, concurrency: int) -> float:
    """A per-attempt timeout for this machine: 3 s on a fast CPU, else 4x the slowest of `concurrency` requests
    like the test's sent at once straight to the server (an AVX2-only or busy CPU answers much slower)."""
    requests = [ChatRequest(messages=[{"role": "user", "content": f"Count to {i}, please."}], max_tokens=6)
                for i in range(concurrency)]
    with get_backend("openai", MODEL, base_url=url, use_cache=False, concurrency=concurrency, timeout=300,
                     max_attempts=1) as llm:
        start = time.monotonic()
        results = llm.generate_all(requests, progress=False)
        elapsed = time.monotonic() - start
    assert all(r.ok for r in results), [r.error for r in results]
    return max(3.0, 4 * elapsed)


def test_every_request_succeeds_through_faults(fault_proxy, vllm_server_url, tmp_path):
    timeout = _attempt_timeout(vllm_server_url, concurrency=8)
    # A stall outlasts the client's timeout, so that it is seen as one.
    proxy = fault_proxy(fault_rate=0.2, retry_after=1.5, stall_seconds=timeout + 5.0, seed=3)
    requests = [ChatRequest(messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=6) for i in range(40)]
    requests.append(ChatRequest(messages=[{"role": "user", "content": "Too long"}], max_tokens=4096))  # a real 400
    with get_backend("openai", MODEL, base_url=proxy.url, cache_dir=tmp_path, concurrency=8, timeout=timeout,
                     max_attempts=8, backoff_base=0.05, backoff_cap=2.0) as llm:
        results = llm.generate_all(requests, progress=False)
        stats = llm.stats
    assert all(r.ok for r in results[:40]), [r.error for r in results if not r.ok]
    assert not results[40].ok and "HTTP 400" in results[40].error
    injected = {status: len(proxy.posts(status)) for status in (429, 500, 0)}
    assert all(count >= 1 for count in injected.values()), injected  # each kind of fault really happened
    # Every attempt reached the proxy: the posts are the first tries plus the reported retries.
    assert len(proxy.posts()) == len(requests) + stats.retries
    assert stats.retries >= sum(injected.values())
    assert sum(r.attempts - 1 for r in results) == stats.retries
    assert stats.failures == 1 and stats.requests == 41
    # Retry-After was honoured: the same body came back no sooner than the server asked.
    posts = proxy.posts()
    for i, (t, _, digest, status) in enumerate(posts):
        if status == 429:
            later = [e[0] for e in posts[i + 1:] if e[2] == digest]
            assert later and later[0] - t >= 1.5 * 0.95


def test_gives_up_after_bounded_attempts(fault_proxy, tmp_path):
    proxy = fault_proxy(fault_rate=1.0, retry_after=0, stall_seconds=3.0, seed=1)
    requests = [ChatRequest(messages=[{"role": "user", "content": f"Hi {i}"}], max_tokens=4) for i in range(3)]
    with get_backend("openai", MODEL, base_url=proxy.url, cache_dir=tmp_path, timeout=1.0, max_attempts=3,
                     backoff_base=0.01, backoff_cap=0.05) as llm:
        results = llm.generate_all(requests, progress=False)
        assert llm.stats.failures == 3 and llm.stats.retries == 6
    assert all(not r.ok and r.error.startswith("gave up after 3 attempts") for r in results)
    assert len(proxy.posts()) == 9


class _Headers(dict):
    def get(self, key, default=None):
        return super().get(key.lower(), default)


def test_retry_after_parsing():
    assert retry_after_seconds(_Headers({"retry-after": "2"})) == 2.0
    assert retry_after_seconds(_Headers({"retry-after-ms": "250"})) == 0.25
    assert retry_after_seconds(_Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0  # in the past
    assert retry_after_seconds(_Headers({"retry-after": "soon"})) is None
    assert retry_after_seconds(_Headers({})) is None
    assert retry_after_seconds(None) is None


def test_backoff_is_exponential_jittered_capped_and_respects_retry_after():
    rng = random.Random(0)
    # Attempt k waits base * 2^(k-1) times a jitter factor in [0.5, 1].
    for attempt, full in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0)]:
        for _ in range(50):
            d = backoff_delay(attempt, base=0.5, cap=30.0, retry_after=None, rng=rng)
            assert full * 0.5 <= d <= full
    assert backoff_delay(20, base=0.5, cap=3.0, retry_after=None, rng=rng) <= 3.0
    assert backoff_delay(1, base=0.5, cap=30.0, retry_after=7.0, rng=rng) == 7.0
    assert backoff_delay(1, base=0.5, cap=5.0, retry_after=100.0, rng=rng) == 5.0  # a huge Retry-After is capped
