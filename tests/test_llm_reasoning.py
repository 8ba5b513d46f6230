"""Reasoning is never dropped: the message's reasoning field (`reasoning_content`: DeepSeek's API, vLLM before 0.10
with --reasoning-parser; `reasoning`: vLLM 0.10+, OpenRouter) is kept for every choice, through the request cache and
into the generate stage's `responses.reasoning`; reasoning tokens are counted apart.

What no model here can send (a reasoning model's field, a provider's usage block) is replayed by a loopback server
from bodies written by hand after the providers' documentation (tests/fixtures/llm/*.json name the page each follows).
The real vLLM server with a reasoning parser is the end-to-end test (test_llm_teachers.py, slow).
"""

from __future__ import annotations

import json

from datasets import Dataset
from llm_replay import ReplayServer, fixture

from metakl.llm import ChatRequest, get_backend
from metakl.llm.shape import parse_completion
from metakl.schema import features, make_id
from metakl.stages.generate import GenerateConfig, generate, make_response


def ask(text: str, n: int = 1) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], n=n, max_tokens=64)


def test_parse_reads_both_spellings_every_choice_in_index_order_and_reasoning_tokens():
    c = parse_completion(fixture("deepseek_reasoner.json"), "m")
    assert c.texts == ["The answer is \\boxed{4}."]
    assert c.reasoning == ["Two plus two: start at 2, count two more, 3, 4. So 4."]
    assert (c.prompt_tokens, c.completion_tokens, c.reasoning_tokens, c.model) == (17, 41, 29, "deepseek-reasoner")
    c = parse_completion(fixture("openrouter_reasoning_n2.json"), "m")
    assert c.texts == ["\\boxed{4}", "It is \\boxed{4}."]  # sorted by choice index
    assert c.reasoning == ["2 + 2 = 4, checked twice.", None]
    assert c.reasoning_tokens == 11
    c = parse_completion(fixture("openai_reasoning.json"), "m")  # o-series: tokens reported, no text
    assert c.reasoning == [] and c.reasoning_tokens == 192 and c.completion_tokens == 210


def test_reasoning_arrives_is_stored_and_comes_back_from_the_cache(tmp_path):
    with ReplayServer(lambda n, body: (200, {}, fixture("openrouter_reasoning_n2.json"))) as server:
        with get_backend("openai", "qwen/qwq-32b", base_url=server.url, cache_dir=tmp_path) as backend:
            [fresh] = backend.generate_all([ask("2+2?", n=2)], progress=False)
            assert backend.last_run.reasoning_tokens == 11
        with get_backend("openai", "qwen/qwq-32b", base_url=server.url, cache_dir=tmp_path) as backend:
            [cached] = backend.generate_all([ask("2+2?", n=2)], progress=False)
            assert backend.last_run.backend_calls == 0 and backend.last_run.cache_hits == 1
        assert len(server.bodies) == 1
    for result in (fresh, cached):
        assert result.completion.reasoning == ["2 + 2 = 4, checked twice.", None]
        assert result.completion.reasoning_tokens == 11
    assert cached.completion.cached


def _rows():
    q = "What is 2 + 2?"
    return [{"id": make_id(q, "hand"), "source": "hand", "domain": "math", "question": q, "reference": "4",
             "choices": [], "meta": json.dumps({}), "errors": []}]


def test_generate_stores_the_reasoning_field_fresh_and_cached(tmp_path):
    ds = Dataset.from_list(_rows(), features=features())
    with ReplayServer(lambda n, body: (200, {}, fixture("deepseek_reasoner.json"))) as server:
        for run in ("fresh", "cached"):
            with get_backend("openai", "deepseek-reasoner", base_url=server.url, cache_dir=tmp_path) as backend:
                result = generate(ds, GenerateConfig(n=1, max_tokens=64), backend=backend)
            [row] = result.dataset.to_list()
            [resp] = row["responses"]
            assert resp["reasoning"] == "Two plus two: start at 2, count two more, 3, 4. So 4.", run
            assert resp["text"] == "The answer is \\boxed{4}." and resp["answer"] == "4", run
            assert result.report["with_reasoning"] == 1
        assert len(server.bodies) == 1
    assert result.report["reasoning_tokens"] == 29  # counted from the cached completion too


def test_field_and_think_tags_give_the_same_reasoning_and_answer():
    # The transformers and offline vLLM backends return the raw text: a reasoning model's <think> block is split
    # there; an openai server with a reasoning parser sends the same two parts apart. Both store them alike.
    tagged = make_response("<think>2 + 2 = 4</think>\n\nSo \\boxed{4}", "math", None, "m", "stop")
    fielded = make_response("So \\boxed{4}", "math", None, "m", "stop", reasoning="2 + 2 = 4")
    assert tagged["reasoning"] == fielded["reasoning"] == "2 + 2 = 4"
    assert tagged["answer"] == fielded["answer"] == "4"


def test_the_totals_line_counts_reasoning_tokens_apart():
    from metakl.llm.options import format_stats

    line = format_stats({"requests": 1, "samples": 1, "prompt_tokens": 17, "completion_tokens": 41,
                         "reasoning_tokens": 29, "seconds": 1.0})
    assert "17 prompt + 41 completion tokens (of which 29 reasoning)," in line
    assert "reasoning" not in format_stats({"requests": 1, "completion_tokens": 41, "seconds": 1.0})
