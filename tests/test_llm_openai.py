"""openai backend against a real vLLM server serving SmolLM2 (no stubs): samples, greedy, JSON schema, cache."""

from __future__ import annotations

import json

import jsonschema
import pytest

from metakl.llm import ChatRequest, get_backend

MODEL = "smollm2-135m-instruct"
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}, "unit": {"type": "string", "enum": ["apples", "pears"]}},
    "required": ["answer", "unit"],
    "additionalProperties": False,
}


def ask(text: str, **kw) -> ChatRequest:
    kw.setdefault("max_tokens", 12)
    return ChatRequest(messages=[{"role": "user", "content": text}], **kw)


def test_samples_greedy_and_json(vllm_server_url, tmp_path):
    with get_backend("openai", MODEL, base_url=vllm_server_url, cache_dir=tmp_path, use_cache=False) as llm:
        requests = [
            ask("Name a colour.", n=3, temperature=1.0, seed=1),
            ask("What is 2+3?"),
            ask("What is 2+3?"),
            ask("I have 3 apples and buy 2 more. How many apples? Answer in JSON.", json_schema=SCHEMA, max_tokens=40),
        ]
        results = llm.generate_all(requests, progress=False)
    assert all(r.ok for r in results), [r.error for r in results]
    assert [r.index for r in results] == [0, 1, 2, 3]
    sampled = results[0].completion
    assert len(sampled.texts) == 3 and len(sampled.finish_reasons) == 3
    assert sampled.completion_tokens > 0 and sampled.prompt_tokens > 0
    # Greedy decoding is reproducible: the same request twice gives the same text.
    assert results[1].completion.texts == results[2].completion.texts
    assert results[1].completion.texts[0].strip()
    parsed = json.loads(results[3].completion.texts[0])
    jsonschema.validate(parsed, SCHEMA)
    assert llm.stats.requests == 4 and llm.stats.samples == 6 and llm.stats.failures == 0


def test_second_run_makes_zero_backend_calls(fault_proxy, tmp_path):
    proxy = fault_proxy()  # no faults: it only counts what reaches the server
    requests = [ask(f"Say the number {i}.", n=2, temperature=0.8, seed=i) for i in range(6)]
    with get_backend("openai", MODEL, base_url=proxy.url, cache_dir=tmp_path) as llm:
        first = llm.generate_all(requests, progress=False)
    assert all(r.ok and not r.completion.cached for r in first)
    assert len(proxy.posts()) == 6
    with get_backend("openai", MODEL, base_url=proxy.url, cache_dir=tmp_path) as llm:
        second = llm.generate_all(requests, progress=False)
        assert llm.stats.cache_hits == 6 and llm.stats.backend_calls == 0
    assert len(proxy.posts()) == 6  # nothing new reached the server
    assert len(proxy.log) == 8  # the six posts and one /models look-up per run (the cache identity)
    assert [r.completion.texts for r in second] == [r.completion.texts for r in first]
    assert all(r.completion.cached for r in second)
    # A changed request (other seed) is a cache miss and is asked.
    with get_backend("openai", MODEL, base_url=proxy.url, cache_dir=tmp_path) as llm:
        llm.generate_all([ask("Say the number 0.", n=2, temperature=0.8, seed=99)], progress=False)
        assert llm.stats.backend_calls == 1
    assert len(proxy.posts()) == 7


def test_bad_request_is_an_error_value(vllm_server_url, tmp_path):
    # max_tokens beyond the server's context: the real server answers 400 for this request only.
    requests = [ask("Hello"), ask("Hello", max_tokens=4096), ask("Bye")]
    with get_backend("openai", MODEL, base_url=vllm_server_url, cache_dir=tmp_path) as llm:
        results = llm.generate_all(requests, progress=False)
        assert llm.stats.failures == 1 and llm.stats.retries == 0
    assert results[0].ok and results[2].ok
    assert not results[1].ok and "400" in results[1].error and results[1].attempts == 1
    # Failures are not cached: a re-run asks for that one request again.
    with get_backend("openai", MODEL, base_url=vllm_server_url, cache_dir=tmp_path) as llm:
        llm.generate_all(requests, progress=False)
        assert llm.stats.backend_calls == 1 and llm.stats.cache_hits == 2


def test_unreachable_server_and_unknown_model(vllm_server_url, tmp_path):
    from metakl.errors import UserError
    from metakl.llm.serve import free_port

    with get_backend("openai", MODEL, base_url=f"http://127.0.0.1:{free_port()}/v1", cache_dir=tmp_path) as llm:
        with pytest.raises(UserError, match="cannot reach"):
            llm.generate_all([ask("Hi")], progress=False)
    with get_backend("openai", "no-such-model", base_url=vllm_server_url, cache_dir=tmp_path) as llm:
        with pytest.raises(UserError, match="unknown model 'no-such-model'.*smollm2-135m-instruct"):
            llm.generate_all([ask("Hi")], progress=False)


def test_api_key_comes_from_the_env_and_is_never_logged(fault_proxy, tmp_path, monkeypatch, caplog):
    import logging

    secret = "sk-metakl-test-0123456789"
    monkeypatch.setenv("METAKL_TEST_KEY", secret)
    proxy = fault_proxy(fault_rate=1.0, retry_after=0, stall_seconds=2.0, seed=5)  # every attempt fails: errors
    caplog.set_level(logging.DEBUG)
    with get_backend("openai", MODEL, base_url=proxy.url, api_key_env="METAKL_TEST_KEY", cache_dir=tmp_path,
                     timeout=1.0, max_attempts=2, backoff_base=0.01, backoff_cap=0.02) as llm:
        results = llm.generate_all([ask("Hi"), ask("Bye")], progress=False)
        stats = repr(llm.stats) + repr(vars(llm))
    assert proxy.authorizations and all(a == f"Bearer {secret}" for a in proxy.authorizations)
    assert all(not r.ok for r in results)
    assert secret not in caplog.text and secret not in stats
    assert all(secret not in r.error for r in results)
    assert secret.encode() not in (tmp_path / "requests.sqlite3").read_bytes()


def test_stopping_early_cancels_what_is_in_flight(vllm_server_url, tmp_path):
    import threading

    requests = [ask(f"Write a long story about the number {i}.", max_tokens=64) for i in range(12)]
    with get_backend("openai", MODEL, base_url=vllm_server_url, cache_dir=tmp_path, concurrency=2) as llm:
        stream = llm.generate(requests, progress=False)
        first = next(stream)
        stream.close()  # the caller stops: the worker thread must not keep generating
        assert first.ok
        assert not any(t.name == "metakl-openai" and t.is_alive() for t in threading.enumerate())
        assert 1 <= llm.stats.requests < 12
