"""Request cache: per-result commits survive SIGKILL; a re-run asks only for what is missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from metakl.llm import ChatRequest, Completion, get_backend
from metakl.llm.cache import RequestCache

MODEL = "smollm2-135m-instruct"
N = 24

# The child builds the same requests as the parent, prints each finished index, and is killed half-way.
CHILD = textwrap.dedent(
    """
    import sys
    from metakl.llm import ChatRequest, get_backend
    url, cache_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    requests = [ChatRequest(messages=[{"role": "user", "content": f"Write a word about {i}."}], max_tokens=24)
                for i in range(n)]
    with get_backend("openai", "smollm2-135m-instruct", base_url=url, cache_dir=cache_dir, concurrency=2) as llm:
        for result in llm.generate(requests, progress=False):
            print(result.index, flush=True)
    """
)


def make_requests() -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"Write a word about {i}."}], max_tokens=24)
            for i in range(N)]


def test_sigkill_half_way_then_rerun(fault_proxy, tmp_path):
    proxy = fault_proxy()  # no faults: it counts what reaches the server
    child = subprocess.Popen([sys.executable, "-c", CHILD, proxy.url, str(tmp_path), str(N)],
                             stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    seen = []
    deadline = time.monotonic() + 120
    while len(seen) < N // 2 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        seen.append(int(line))
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert len(seen) == N // 2, "the child ended before it was killed"

    cache = RequestCache(tmp_path)
    committed = len(cache)
    cache.close()
    assert N // 2 <= committed < N  # every printed result was committed before it was printed
    rerun_start = time.monotonic()

    requests = make_requests()
    with get_backend("openai", MODEL, base_url=proxy.url, cache_dir=tmp_path, concurrency=4) as llm:
        results = list(llm.generate(requests, progress=False))
        stats = llm.stats
    assert sorted(r.index for r in results) == list(range(N))  # every result exactly once
    assert all(r.ok for r in results)
    assert stats.cache_hits == committed and stats.backend_calls == N - committed
    # (the killed child's requests still in flight may land at the server after it died: they arrived earlier)
    assert len([e for e in proxy.posts() if e[0] >= rerun_start]) == N - committed  # only the missing ones reached the server
    cache = RequestCache(tmp_path)
    assert len(cache) == N
    cache.close()


def test_cache_roundtrip_and_key(tmp_path):
    req = ChatRequest(messages=[{"role": "user", "content": "x"}], n=2, seed=1, tag="row-1")
    same_but_other_tag = ChatRequest(messages=[{"role": "user", "content": "x"}], n=2, seed=1, tag="row-2")
    other_seed = ChatRequest(messages=[{"role": "user", "content": "x"}], n=2, seed=2)
    assert req.key("openai", "m") == same_but_other_tag.key("openai", "m")
    assert len({req.key("openai", "m"), other_seed.key("openai", "m"), req.key("vllm", "m"), req.key("openai", "m2")}) == 4
    cache = RequestCache(tmp_path)
    completion = Completion(texts=["a", "b"], finish_reasons=["stop", "length"], prompt_tokens=3, completion_tokens=5,
                            model="m")
    cache.put(req.key("openai", "m"), completion)
    got = cache.get_many([req.key("openai", "m"), other_seed.key("openai", "m")])
    assert list(got) == [req.key("openai", "m")]
    back = got[req.key("openai", "m")]
    assert back.cached and back.texts == ["a", "b"] and back.finish_reasons == ["stop", "length"]
    assert (back.prompt_tokens, back.completion_tokens, back.model) == (3, 5, "m")
    assert cache._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cache.close()


def test_model_identity_is_one_definition(tmp_path, monkeypatch):
    """The in-process backends share the base class's identity: a folder by its resolved path, a name as given."""
    from metakl.llm.base import Backend
    from metakl.llm.openai_backend import OpenAIBackend
    from metakl.llm.transformers_backend import TransformersBackend
    from metakl.llm.vllm_backend import VLLMBackend

    assert TransformersBackend.model_identity is Backend.model_identity
    assert VLLMBackend.model_identity is Backend.model_identity
    assert OpenAIBackend.model_identity is not Backend.model_identity  # what a server serves, see the next test
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    assert Backend("weights", use_cache=False).model_identity() == str(folder.resolve())
    assert Backend(MODEL, use_cache=False).model_identity() == MODEL
    assert Backend("org/not-here", use_cache=False).model_identity() == "org/not-here"
    # In-process backends add the dtype their weights run in: cached float32 answers are not served to bf16 runs.
    from metakl.llm.transformers_backend import TransformersBackend as TB

    assert TB(MODEL, use_cache=False, dtype="float32").model_identity() == f"{MODEL}|float32"
    assert TB(MODEL, use_cache=False, dtype="bfloat16").model_identity() == f"{MODEL}|bfloat16"


def test_no_cache_bypasses_the_store(vllm_server_url, tmp_path):
    req = [ChatRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=4)]
    with get_backend("openai", MODEL, base_url=vllm_server_url, cache_dir=tmp_path, use_cache=False) as llm:
        llm.generate_all(req, progress=False)
        llm.generate_all(req, progress=False)
        assert llm.stats.backend_calls == 2 and llm.stats.cache_hits == 0
    assert not (tmp_path / "requests.sqlite3").exists()


def test_server_on_another_port_hits_the_cache(vllm_server_url, fault_proxy, tmp_path):
    """The cache identity of a local server is the model it serves, not its URL (a restart may change the port)."""
    requests = make_requests()[:3]
    with get_backend("openai", MODEL, base_url=vllm_server_url, cache_dir=tmp_path) as llm:
        first = llm.generate_all(requests, progress=False)
        identity = llm.model_identity()
    assert all(r.ok for r in first) and identity.startswith(f"local|{MODEL}|")
    assert identity.split("|", 2)[2], "vLLM reports the weights it loaded (root)"
    proxy = fault_proxy()  # the same server behind another port
    with get_backend("openai", MODEL, base_url=proxy.url, cache_dir=tmp_path) as llm:
        again = llm.generate_all(requests, progress=False)
        assert llm.model_identity() == identity
    assert [r.completion.texts for r in again] == [r.completion.texts for r in first]
    assert all(r.completion.cached for r in again) and proxy.posts() == []
    remote = get_backend("openai", MODEL, base_url="https://example.org/v1", use_cache=False)
    assert remote.model_identity() == f"https://example.org/v1|{MODEL}"
