"""Request shape per model: presets and options build the body each server takes; the real vLLM server answers every
preset; a server that refuses a parameter (OpenAI's reasoning models refuse max_tokens: replayed from the 400 body in
tests/fixtures/llm/openai_refuses_max_tokens.json, after platform.openai.com/docs/guides/reasoning) stops the run
with one line naming the parameter and the preset that fixes it, each request sent at most once."""

from __future__ import annotations


import pytest
from llm_replay import ReplayServer, fixture

from conftest import run_cli
from metakl.config import from_dict
from metakl.errors import UserError
from metakl.llm import ChatRequest, get_backend
from metakl.llm.options import LLMOptions
from metakl.llm.shape import make_shape, refused_parameter, request_body

MODEL = "smollm2-135m-instruct"
REQ = ChatRequest(messages=[{"role": "user", "content": "Say hi."}], n=2, temperature=0.7, top_p=0.9,
                  max_tokens=8, seed=3)


def test_presets_build_the_documented_bodies():
    default = request_body("m", REQ, make_shape())
    assert default == {"model": "m", "messages": [{"role": "user", "content": "Say hi."}], "n": 2,
                       "temperature": 0.7, "top_p": 0.9, "max_tokens": 8, "seed": 3}
    assert request_body("m", REQ, make_shape("vllm")) == default
    o = request_body("m", REQ, make_shape("openai-reasoning", reasoning_effort="high"))
    assert o["max_completion_tokens"] == 8 and o["reasoning_effort"] == "high"
    assert not {"max_tokens", "temperature", "top_p", "presence_penalty", "frequency_penalty"} & set(o)
    d = request_body("m", REQ, make_shape("deepseek"))
    assert d["max_tokens"] == 8 and "temperature" not in d and "top_p" not in d
    # Options on top of a preset win; extra body fields are added last.
    c = request_body("m", REQ, make_shape("openai-reasoning", token_param="max_tokens", omit=["seed"],
                                          extra_body={"top_k": 5}))
    assert c["max_tokens"] == 8 and "seed" not in c and c["temperature"] == 0.7 and c["top_k"] == 5


def test_wrong_shape_settings_are_one_clear_error():
    with pytest.raises(UserError, match="request_preset: expected one of default, vllm, openai-reasoning, deepseek"):
        from_dict(LLMOptions, {"request_preset": "o1"}, "run.yaml: llm")
    with pytest.raises(UserError, match="token_param: expected one of max_tokens, max_completion_tokens"):
        from_dict(LLMOptions, {"token_param": "max_output_tokens"}, "run.yaml: llm")
    with pytest.raises(UserError, match="cannot leave out 'messages'"):
        from_dict(LLMOptions, {"omit": ["messages"]}, "run.yaml: llm")
    with pytest.raises(UserError, match="the transformers backend sends none"):
        LLMOptions(request_preset="deepseek").build()


@pytest.mark.parametrize("preset, effort", [("default", None), ("vllm", None), ("deepseek", None),
                                            ("openai-reasoning", "low")])
def test_the_real_vllm_server_answers_every_preset(vllm_server_url, tmp_path, preset, effort):
    llm = LLMOptions(model=MODEL, base_url=vllm_server_url, cache_dir=str(tmp_path), request_preset=preset,
                     reasoning_effort=effort)
    with llm.build() as backend:
        [result] = backend.generate_all([REQ], progress=False)
    assert result.ok, result.error
    assert len(result.completion.texts) == 2 and all(result.completion.texts)
    assert result.completion.completion_tokens <= 2 * 8  # the token limit arrived under either name


def test_the_shape_is_part_of_the_cache_key_and_the_default_keeps_old_keys(vllm_server_url, tmp_path):
    plain = get_backend("openai", MODEL, base_url=vllm_server_url, cache_dir=tmp_path)
    same = get_backend("openai", MODEL, base_url=vllm_server_url, cache_dir=tmp_path, shape=make_shape("vllm"))
    other = get_backend("openai", MODEL, base_url=vllm_server_url, cache_dir=tmp_path, shape=make_shape("deepseek"))
    assert plain.model_identity() == same.model_identity() == f"local|{MODEL}|{plain._root()}"
    assert other.model_identity() != plain.model_identity()  # temperature left out changes the answers
    for b in (plain, same, other):
        b.close()


def test_refused_parameter_is_read_from_the_code_or_the_message():
    assert refused_parameter(fixture("openai_refuses_max_tokens.json"), "") == "max_tokens"
    msg = "Unsupported value: 'temperature' does not support 0.7 with this model. Only the default (1) value is supported."
    assert refused_parameter({}, msg) == "temperature"
    assert refused_parameter({"error": {"message": "This model's maximum context length is 2048 tokens."}},
                             "This model's maximum context length is 2048 tokens.") is None


def test_a_refused_max_tokens_stops_with_one_line_naming_it_and_the_preset(tmp_path):
    with ReplayServer(lambda n, body: (400, {}, fixture("openai_refuses_max_tokens.json"))) as server:
        requests = [ChatRequest(messages=[{"role": "user", "content": f"q{i}"}], max_tokens=8) for i in range(6)]
        with get_backend("openai", "o4-mini", base_url=server.url, cache_dir=tmp_path, concurrency=2) as backend:
            with pytest.raises(UserError) as info:
                backend.generate_all(requests, progress=False)
        message = str(info.value)
        assert "'max_tokens'" in message and "request_preset: openai-reasoning" in message and "\n" not in message
        digests = [tuple(sorted(b["messages"][0].items())) for b in server.bodies]
        assert len(digests) == len(set(digests)) <= 2  # never retried; stopped before the rest went out
        # With the preset that fixes it, the body carries max_completion_tokens and no sampling parameters.
        with get_backend("openai", "o4-mini", base_url=server.url, cache_dir=tmp_path,
                         shape=make_shape("openai-reasoning")) as backend:
            with pytest.raises(UserError):
                backend.generate_all(requests[:1], progress=False)
        assert server.bodies[-1]["max_completion_tokens"] == 8 and "temperature" not in server.bodies[-1]


@pytest.mark.slow
def test_the_cli_says_it_in_one_line_and_exits_2(tmp_path):
    import json

    from datasets import Dataset

    from metakl.io import save_stage
    from metakl.schema import features, make_id

    q = "What is 2 + 2?"
    rows = [{"id": make_id(q, "hand"), "source": "hand", "domain": "math", "question": q, "reference": "4",
             "choices": [], "meta": json.dumps({}), "errors": []}]
    save_stage(Dataset.from_list(rows, features=features()), tmp_path / "in", {})
    with ReplayServer(lambda n, body: (400, {}, fixture("openai_refuses_max_tokens.json"))) as server:
        proc = run_cli("generate", tmp_path / "in", "--out", tmp_path / "out", "--base-url", server.url,
                       "--teacher", "o4-mini", "--cache-dir", tmp_path / "cache", timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "'max_tokens'" in lines[0] and "openai-reasoning" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
