"""Several teachers: `llm.teachers` lists models (each its own endpoint, request shape and n); generate asks each for
its n responses per prompt, records the model on every response, and the group size is the sum. Against the real vLLM
server; the slow test adds a second real server under another served name."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from conftest import run_cli
from metakl.commands._llm_options import LLMGiven
from metakl.errors import UserError
from metakl.llm import ChatRequest
from metakl.llm.options import LLMOptions
from metakl.schema import features, make_id
from metakl.stages.generate import GenerateConfig, generate

MODEL = "smollm2-135m-instruct"


def rows():
    out = []
    for q, ref in (("What is 7 + 5?", "12"), ("What is 3 times 4?", "12")):
        out.append({"id": make_id(q, "hand"), "source": "hand", "domain": "math", "question": q, "reference": ref,
                    "choices": [], "meta": json.dumps({}), "errors": []})
    return Dataset.from_list(out, features=features())


def test_two_teachers_each_give_their_n_and_the_group_is_the_sum(vllm_server_url, tmp_path):
    section = {"cache_dir": str(tmp_path), "teachers": [
        {"model": MODEL, "base_url": vllm_server_url, "n": 2},
        {"model": MODEL, "base_url": vllm_server_url, "request_preset": "deepseek"},  # n: the stage's
    ]}
    llm = LLMGiven().resolve(section, "run.yaml: llm")
    assert llm.identity == f"{MODEL} + {MODEL} (teachers)"
    with llm.build() as teachers:
        assert [t.n for t in teachers.members] == [2, None]
        result = generate(rows(), GenerateConfig(n=3, max_tokens=24, seed=1), backend=teachers)
        stats = teachers.stats
    report = result.report
    assert report["requests"] == 4 and report["failed_requests"] == 0 and report["responses_stored"] == 10
    assert report["llm"]["requests"] == 4 and report["llm"]["samples"] == 10
    assert stats.requests == 4 and report["responses_by_model"] == {MODEL: 10}
    for row in result.dataset.to_list():
        assert len(row["responses"]) == 5  # 2 + 3
        assert all(r["model"] == MODEL and r["text"] for r in row["responses"])


def test_teacher_entries_are_checked_and_other_stages_refuse_teachers(vllm_server_url, tmp_path):
    with pytest.raises(UserError, match=r"^run.yaml: llm: teachers\[1\]: 'n': expected an integer >= 1, got 0$"):
        LLMGiven().resolve({"teachers": [{"model": MODEL, "base_url": vllm_server_url},
                                         {"model": MODEL, "base_url": vllm_server_url, "n": 0}]},
                           "run.yaml: llm")
    with pytest.raises(UserError, match=r"^teachers\[0\]: unknown setting\(s\) 'temprature'"):
        LLMOptions(teachers=[{"model": MODEL, "base_url": vllm_server_url, "temprature": 1}]).build()
    with LLMOptions(cache_dir=str(tmp_path), teachers=[{"model": MODEL, "base_url": vllm_server_url}]).build() as t:
        with pytest.raises(UserError, match="only `generate` takes several teachers"):
            t.generate_all([ChatRequest(messages=[{"role": "user", "content": "hi"}])])


FEW_SHOT = [  # SmolLM2 copies this format from earlier turns (not from a system prompt alone: tried)
    {"role": "system", "content": "You always answer in two parts. First 'Here is my thought process:' followed by "
                                  "your thinking, then 'Here is my response:' followed by the answer."},
    {"role": "user", "content": "What is 1 + 1?"},
    {"role": "assistant", "content": "Here is my thought process: One plus one makes two. Here is my response: 2"},
    {"role": "user", "content": "What is 3 + 3?"},
    {"role": "assistant", "content": "Here is my thought process: Three plus three makes six. Here is my response: 6"},
]


@pytest.mark.slow
@pytest.mark.xdist_group("own_vllm_engine")
def test_two_served_models_and_a_real_reasoning_field(vllm_server_url, tmp_path):
    """A second real vLLM server serves SmolLM2 as 'smollm2-reasoner' with vLLM's text-based `granite` reasoning
    parser (SmolLM2's tokenizer has no <think> token, which the deepseek_r1 parser needs: vLLM refuses to start).
    1. Two teachers through generate: the model recorded per response, the group the sum.
    2. The reasoning field end to end: a few-shot prompt makes SmolLM2 write the parser's markers, the server splits
       them into `message.reasoning`, and the backend keeps it, fresh and from the cache."""
    from metakl.llm import get_backend
    from metakl.llm.serve import VLLMServer

    with VLLMServer(MODEL, served_name="smollm2-reasoner", extra_args=["--reasoning-parser", "granite"]) as second:
        llm = LLMOptions(cache_dir=str(tmp_path), teachers=[
            {"model": MODEL, "base_url": vllm_server_url, "n": 1},
            {"model": "smollm2-reasoner", "base_url": second.url, "n": 2},
        ])
        with llm.build() as teachers:
            result = generate(rows(), GenerateConfig(n=1, max_tokens=24, seed=0), backend=teachers)
        for row in result.dataset.to_list():
            assert [r["model"] for r in row["responses"]] == [MODEL, "smollm2-reasoner", "smollm2-reasoner"]
        assert result.report["responses_stored"] == 6 and result.report["failed_requests"] == 0
        assert result.report["responses_by_model"] == {MODEL: 2, "smollm2-reasoner": 4}

        ask = ChatRequest(messages=FEW_SHOT + [{"role": "user", "content": "What is 7 + 5?"}], max_tokens=40)
        for run in ("fresh", "cached"):
            with get_backend("openai", "smollm2-reasoner", base_url=second.url, cache_dir=tmp_path) as backend:
                [got] = backend.generate_all([ask], progress=False)
                assert backend.last_run.cache_hits == (run == "cached")
            assert got.ok, got.error
            [reasoning] = got.completion.reasoning
            assert "plus" in reasoning and "Here is my" not in got.completion.texts[0], (run, got.completion)


def test_generate_verb_takes_teachers_from_its_config(vllm_server_url, tmp_path):
    import subprocess
    import sys

    import yaml

    from metakl.io import load_stage, save_stage

    save_stage(rows(), tmp_path / "in", {})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"generate": {"n": 1, "max_tokens": 16, "llm": {
        "cache_dir": str(tmp_path / "cache"),
        "teachers": [{"model": MODEL, "base_url": vllm_server_url, "n": 2},
                     {"model": MODEL, "base_url": vllm_server_url, "request_preset": "vllm", "omit": ["seed"]}]}}}))
    proc = run_cli("generate", tmp_path / "in", "--out", tmp_path / "out", "--config", tmp_path / "run.yaml",
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "4 requests, 6 samples" in proc.stderr  # 2 rows x 2 teachers; 2 x (2 + 1) responses
    out = load_stage(tmp_path / "out")
    assert [len(r) for r in out["responses"]] == [3, 3]
