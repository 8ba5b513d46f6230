"""Rate limits: requests in flight follow the server's `x-ratelimit-remaining-*` headers and a 429's `retry-after`
(header names and duration format from platform.openai.com/docs/guides/rate-limits), never above `concurrency`.
No server here sends them (vLLM does not), so a loopback server replays a provider's answers with those headers."""

from __future__ import annotations

import time

import pytest
from llm_replay import ReplayServer, fixture

from metakl.llm import ChatRequest, get_backend
from metakl.llm.ratelimit import RateGate, reset_seconds


def requests(count: int) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"q{i}"}], max_tokens=100) for i in range(count)]


def test_reset_durations():
    assert reset_seconds("1s") == 1.0 and reset_seconds("6m0s") == 360.0 and reset_seconds("20ms") == 0.02
    assert reset_seconds("1h2m3.5s") == 3723.5 and reset_seconds("2") == 2.0
    assert reset_seconds(None) is None and reset_seconds("soon") is None


def test_gate_limit_follows_remaining_requests_and_tokens_within_the_cap():
    gate = RateGate(8)
    gate.observe({"x-ratelimit-remaining-requests": "3"})
    assert gate.limit == 3
    gate.observe({"x-ratelimit-remaining-requests": "500", "x-ratelimit-remaining-tokens": "1000"},
                 tokens_per_request=300)
    assert gate.limit == 3  # 1000 tokens left / 300 per request
    gate.observe({"x-ratelimit-remaining-requests": "500"})
    assert gate.limit == 8  # the cap
    before = time.monotonic()
    gate.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"})
    assert gate.limit == 1 and gate.paused_until - before == pytest.approx(2.0, rel=0.05)
    gate.observe(None)
    assert gate.limit == 1  # no headers: keep what the server said last


def test_in_flight_shrinks_to_what_the_headers_say_remains(tmp_path):
    body = fixture("openai_reasoning.json")
    answer = lambda n, req: (200, {"x-ratelimit-remaining-requests": "1", "x-ratelimit-limit-requests": "500"}, body)
    with ReplayServer(answer, delay=0.15) as server:
        with get_backend("openai", "o4-mini", base_url=server.url, cache_dir=tmp_path, concurrency=8) as backend:
            results = backend.generate_all(requests(16), progress=False)
            assert backend.gates[0].lowest_limit == 1
    assert all(r.ok for r in results)
    # The first 8 arrivals are the opening burst (concurrency 8); every later request was sent after an answer, its
    # headers, came back. (Counting from the server's first answer instead failed on a loaded CPU: a request of the
    # burst could reach the server after that answer left it.)
    later = [in_flight for _, in_flight in sorted(server.arrivals)[8:]]
    assert later and max(later) == 1  # before: refilled up to 8 as each answer came back
    assert max(in_flight for _, in_flight in server.arrivals) <= 8  # the cap


def test_a_429_holds_back_every_request_on_the_endpoint_for_retry_after(tmp_path):
    body = fixture("openai_reasoning.json")

    def answer(n, req):
        if n == 0:
            return 429, {"retry-after": "1"}, {"error": {"message": "Rate limit reached for requests",
                                                         "type": "requests", "code": "rate_limit_exceeded"}}
        time.sleep(0.2)
        return 200, {}, body

    with ReplayServer(answer) as server:
        with get_backend("openai", "o4-mini", base_url=server.url, cache_dir=tmp_path, concurrency=4,
                         backoff_base=0.01) as backend:
            results = backend.generate_all(requests(8), progress=False)
    assert all(r.ok for r in results) and len(server.bodies) == 9
    start = server.arrivals[0][0]
    first_wave = [t for t, _ in server.arrivals if t - start < 0.1]
    after = [t - start for t, _ in server.arrivals if t - start >= 0.1]
    assert len(first_wave) == 4
    assert after and min(after) >= 0.9  # before: the three others went on at 0.2 s, ignoring the server's 1 s
