"""transformers backend: the embedded SmolLM2 in-process on CPU (real model, small max_tokens)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from metakl.llm import ChatRequest, get_backend

MODEL = "smollm2-135m-instruct"
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
    "additionalProperties": False,
}


def ask(text: str, **kw) -> ChatRequest:
    kw.setdefault("max_tokens", 10)
    return ChatRequest(messages=[{"role": "user", "content": text}], **kw)


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    # float32, not `auto`: greedy results equal across batch compositions (padding) hold in float32; in bfloat16 (what
    # auto picks on a CPU with AMX) the padded batch can change a token.
    with get_backend("transformers", MODEL, cache_dir=tmp_path_factory.mktemp("cache"), concurrency=4,
                     num_threads=1, dtype="float32") as backend:
        yield backend


def test_samples_greedy_json_and_stop(llm):
    requests = [
        ask("Name an animal.", n=3, temperature=1.0, seed=7),
        ask("What is the capital of France?"),
        ask("Count from 1 to 9, separated by commas.", max_tokens=30, stop=("4",)),
        ask("What is 3+4? Reply in JSON.", json_schema=SCHEMA, max_tokens=30),
    ]
    results = llm.generate_all(requests, progress=False)
    assert all(r.ok for r in results), [r.error for r in results]
    sampled = results[0].completion
    assert len(sampled.texts) == 3 and len(sampled.finish_reasons) == 3 and sampled.completion_tokens > 0
    assert len(set(sampled.texts)) > 1  # temperature 1.0: the three samples are not all identical
    assert results[1].completion.texts[0].strip()
    stopped = results[2].completion
    assert "4" not in stopped.texts[0] and stopped.finish_reasons == ["stop"] and "3" in stopped.texts[0]
    jsonschema.validate(json.loads(results[3].completion.texts[0]), SCHEMA)


def test_greedy_is_reproducible_across_batches(llm):
    alone = llm.generate_all([ask("Say hello to Ada.")], progress=False)[0]
    # The same request, now padded inside a batch with a longer prompt.
    batched = llm.generate_all([ask("Please write one short sentence about the sea and the sky."),
                                ask("Say hello to Ada.", seed=None, top_p=1.0)], progress=False)
    assert batched[1].completion.cached  # the identical request came from the cache...
    fresh = get_backend("transformers", MODEL, use_cache=False, concurrency=4, num_threads=1, dtype="float32")
    fresh._model, fresh._tokenizer, fresh._device = llm._model, llm._tokenizer, llm._device  # share the loaded weights
    again = fresh.generate_all([ask("Please write one short sentence about the sea and the sky."),
                                ask("Say hello to Ada.")], progress=False)
    assert again[1].completion.texts == alone.completion.texts  # ...and recomputed in a padded batch it agrees


def test_rerun_makes_zero_model_calls(llm, monkeypatch):
    calls = []
    original = llm._model.generate

    def counting_generate(*args, **kwargs):
        calls.append(kwargs.get("input_ids", args[0] if args else None).shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(llm._model, "generate", counting_generate)
    requests = [ask(f"Say the word {w}.", max_tokens=6) for w in ("red", "green", "blue", "gold", "grey")]
    first = llm.generate_all(requests, progress=False)
    assert sum(calls) == 5 and len(calls) == 2  # batch size 4: two generate calls for five prompts
    calls.clear()
    second = llm.generate_all(requests, progress=False)
    assert calls == [] and llm.last_run.cache_hits == 5 and llm.last_run.backend_calls == 0
    assert [r.completion.texts for r in second] == [r.completion.texts for r in first]
