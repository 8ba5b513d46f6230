"""The one retry policy of model requests (metakl.llm.retry): which errors are retried, how many times, and that the
server's Retry-After is waited out. The normal path runs on the real vLLM server; the answers it cannot give on demand
(a 429, a 503, a dropped connection) come from a scripted loopback server."""

from __future__ import annotations

import asyncio
import random

import httpx
import openai
import pytest
from llm_replay import ReplayServer, fixture

from metakl.llm import ChatRequest, get_backend
from metakl.llm.retry import TRANSIENT_ERRORS, retry_policy

MODEL = "smollm2-135m-instruct"
OK = fixture("openai_reasoning.json")


def _status_error(cls, status: int, headers: dict | None = None):
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx.Response(status, headers=headers or {}, request=request)
    return cls(f"HTTP {status}", response=response, body=None)


def _run_policy(errors: list[BaseException], max_attempts: int) -> tuple[int, object]:
    """Run the policy over a call that raises `errors` in turn, then returns "done": (calls made, outcome)."""
    calls = 0

    async def call():
        nonlocal calls
        calls += 1
        if calls <= len(errors):
            raise errors[calls - 1]
        return "done"

    async def run():
        async for attempt in retry_policy(max_attempts, base=0.001, cap=0.01, rng=random.Random(0)):
            with attempt:
                return await call()

    try:
        outcome = asyncio.run(run())
    except Exception as exc:  # the last error, raised again once the attempts are spent
        outcome = exc
    return calls, outcome


@pytest.mark.parametrize("error", [
    _status_error(openai.RateLimitError, 429),
    _status_error(openai.InternalServerError, 500),
    _status_error(openai.InternalServerError, 503),
    openai.APITimeoutError(httpx.Request("POST", "http://127.0.0.1/v1")),
    openai.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1/v1")),
], ids=["429", "500", "503", "timeout", "connection"])
def test_transient_errors_are_retried_up_to_max_attempts(error):
    assert isinstance(error, TRANSIENT_ERRORS)
    assert _run_policy([error], max_attempts=3) == (2, "done")  # one failure, then the answer
    calls, outcome = _run_policy([error] * 5, max_attempts=3)
    assert calls == 3 and outcome is error  # three tries, then the error itself (its type, not a text)


@pytest.mark.parametrize("error", [
    _status_error(openai.BadRequestError, 400),
    _status_error(openai.AuthenticationError, 401),
    _status_error(openai.NotFoundError, 404),
    _status_error(openai.UnprocessableEntityError, 422),
    ValueError("a malformed answer"),
], ids=["400", "401", "404", "422", "other"])
def test_other_errors_are_not_retried(error):
    calls, outcome = _run_policy([error], max_attempts=5)
    assert calls == 1 and outcome is error


def test_a_429_is_retried_after_its_retry_after_and_a_503_after_the_backoff(tmp_path):
    script = [(429, {"retry-after": "0.6"}), (503, {}), (429, {"retry-after-ms": "400"}), (200, {})]

    def answer(n, body):
        status, headers = script[n]
        return status, headers, OK if status == 200 else {"error": {"message": f"scripted {status}"}}

    with ReplayServer(answer) as server:
        with get_backend("openai", "o4-mini", base_url=server.url, cache_dir=tmp_path, max_attempts=4,
                         backoff_base=0.01, backoff_cap=5.0) as backend:
            [result] = backend.generate_all([ChatRequest(messages=[{"role": "user", "content": "q"}])], progress=False)
            assert backend.stats.retries == 3
    assert result.ok and result.attempts == 4 and len(server.bodies) == 4
    times = [t for t, _ in server.arrivals]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps[0] >= 0.6 * 0.95  # Retry-After in seconds, although the backoff asked for ~0.01 s
    assert gaps[1] < 0.3  # a 503 carries no Retry-After: the backoff alone (0.01-0.02 s, plus the round trip)
    assert gaps[2] >= 0.4 * 0.95  # retry-after-ms


def test_spent_attempts_are_an_error_value_naming_the_count_and_the_last_error(tmp_path):
    def answer(n, body):
        if n == 0:
            raise ConnectionResetError  # the server drops the connection: no answer at all
        return 503, {}, {"error": {"message": "overloaded"}}

    with ReplayServer(answer) as server:
        with get_backend("openai", "o4-mini", base_url=server.url, cache_dir=tmp_path, max_attempts=3,
                         backoff_base=0.01, backoff_cap=0.02) as backend:
            [result] = backend.generate_all([ChatRequest(messages=[{"role": "user", "content": "q"}])], progress=False)
            assert backend.stats.failures == 1 and backend.stats.retries == 2
    assert len(server.bodies) == 3 and not result.ok and result.attempts == 3
    assert result.error.startswith("gave up after 3 attempts: HTTP 503:") and "overloaded" in result.error


def test_a_400_is_sent_once(tmp_path):
    def answer(n, body):
        return 400, {}, {"error": {"message": "this prompt is not allowed"}}

    with ReplayServer(answer) as server:
        with get_backend("openai", "o4-mini", base_url=server.url, cache_dir=tmp_path, max_attempts=5) as backend:
            [result] = backend.generate_all([ChatRequest(messages=[{"role": "user", "content": "q"}])], progress=False)
    assert len(server.bodies) == 1 and result.attempts == 1 and result.error.startswith("HTTP 400")


def test_the_real_server_answers_in_one_attempt_each_and_its_400_is_not_retried(fault_proxy, tmp_path):
    proxy = fault_proxy()  # no faults: it only counts what reaches the real vLLM server
    requests = [ChatRequest(messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=6) for i in range(4)]
    requests.append(ChatRequest(messages=[{"role": "user", "content": "Too long"}], max_tokens=4096))  # over its context
    with get_backend("openai", MODEL, base_url=proxy.url, cache_dir=tmp_path, concurrency=4, max_attempts=4) as llm:
        results = llm.generate_all(requests, progress=False)
        assert llm.stats.retries == 0 and llm.stats.failures == 1
    assert all(r.ok and r.attempts == 1 and r.completion.texts[0] for r in results[:4])
    assert not results[4].ok and results[4].error.startswith("HTTP 400") and results[4].attempts == 1
    assert len(proxy.posts()) == 5
