"""metakl.embed: the one embedding module (real all-MiniLM-L6-v2) and its on-disk cache."""

from __future__ import annotations

import io
import json
import os
import re
import shutil

import numpy as np
import pytest

from metakl.embed import Embedder, EmbeddingCache
from metakl.embed.cache import text_key
from metakl.errors import UserError

TEXTS = ["What is 2 + 2?", "How do I bake bread?", "What is 2 + 2?", "Name the capital of France."]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("embed-cache")


@pytest.fixture(scope="module")
def first(cache_dir):
    embed = Embedder(cache_dir=cache_dir)
    return embed, embed(TEXTS)


def test_vectors_are_unit_float32_and_repeats_encoded_once(first):
    embed, vectors = first
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[0], vectors[2])
    assert embed.stats.as_dict() == {"texts": 4, "distinct": 3, "encoded": 3, "cache_hits": 0}
    # Similar questions are closer than unrelated ones (a real model, not noise).
    more = embed(["What is two plus two?"])[0]
    assert float(more @ vectors[0]) > float(more @ vectors[1]) + 0.2


def test_rerun_encodes_nothing_and_gives_identical_vectors(first, cache_dir):
    _, vectors = first
    again = Embedder(cache_dir=cache_dir)
    calls = []
    original = again._encode
    again._encode = lambda texts: calls.append(list(texts)) or original(texts)
    out = again(TEXTS)
    assert calls == [] and again.stats.encoded == 0 and again.stats.cache_hits == 3
    assert np.array_equal(out, vectors)
    # A new text among known ones: only it is encoded.
    out2 = again(TEXTS + ["A brand new question?"])
    assert calls == [["A brand new question?"]] and np.array_equal(out2[:4], vectors)


def test_freed_heap_is_given_back_after_each_chunk_encoded(tmp_path, monkeypatch):
    """Issue 24: embedding decontaminate's full-size benchmark (64K texts) cold grew the process to 2.0 GB, glibc
    keeping the heap torch's activations were freed from; after each chunk of 512 texts the embedder now gives it
    back (1.54 GB; benchmarks/decontaminate_speed.py measures the peak). The model's encode is stubbed: what is
    pinned is the call pattern, every stage that embeds getting it, and the vectors coming back by text."""
    from metakl.embed import embedder as module

    module.release_freed_heap()  # the real call: glibc here; elsewhere it does nothing, without an error
    events: list = []
    monkeypatch.setattr(module, "release_freed_heap", lambda: events.append("trim"))
    embed = Embedder(cache_dir=tmp_path)
    embed._encode = lambda texts: events.append(len(texts)) or np.array(
        [[float(t.split()[1])] + [0.0] * 383 for t in texts], dtype=np.float32)
    texts = [f"text {i}" for i in range(1300)]
    vectors = embed(texts)
    assert events == [512, "trim", 512, "trim", 276, "trim"]
    assert vectors[:, 0].tolist() == list(range(1300))


def test_other_settings_or_weights_reembed(first, cache_dir, minilm_path, tmp_path):
    short = Embedder(cache_dir=cache_dir, max_seq_length=8)
    short(TEXTS)
    assert short.stats.encoded == 3 and short.identity != first[0].identity
    # The same weights in another folder share the cache; changed weights do not.
    copy = tmp_path / "minilm"
    shutil.copytree(minilm_path, copy)
    same = Embedder(str(copy), cache_dir=cache_dir)
    same(TEXTS)
    assert same.stats.encoded == 0
    config = copy / "config.json"
    config.write_text(config.read_text().replace("}", ', "metakl_test_marker": 1}', 1))
    changed = Embedder(str(copy), cache_dir=cache_dir)
    changed(TEXTS)
    assert changed.stats.encoded == 3


def test_no_cache_and_empty_input(cache_dir):
    embed = Embedder(cache_dir=False)
    assert embed.cache is None and embed([]).shape == (0, 384)
    embed(TEXTS[:1])
    assert embed.stats.encoded == 1


def test_cache_ignores_vectors_of_another_size(tmp_path):
    cache = EmbeddingCache(tmp_path)
    key = text_key("x")
    cache.put_many("m", [key], np.ones((1, 3), dtype=np.float32))
    assert list(cache.get_many("m", [key], 3)) == [key]
    assert cache.get_many("m", [key], 4) == {} and cache.get_many("other", [key], 3) == {}
    assert cache.count("m") == 1
    cache.close()


def test_unknown_model_is_a_user_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="unknown model 'no-such-embedder'"):
        Embedder("no-such-embedder", cache_dir=False)


def test_encoding_runs_on_the_project_thread_count_and_restores_torch(monkeypatch, tmp_path):
    import torch

    from metakl import hardware

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the project's rule: OMP_NUM_THREADS first
    assert hardware.torch_threads() == 1
    embed = Embedder(cache_dir=False)
    assert embed.num_threads == 1 and Embedder(cache_dir=False, num_threads=2).num_threads == 2
    seen = []
    original = embed.model.encode
    monkeypatch.setattr(embed.model, "encode", lambda *a, **k: seen.append(torch.get_num_threads()) or original(*a, **k))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        embed(["What is 3 + 4?"])
        assert seen == [1] and torch.get_num_threads() == 2  # set for the call, restored after
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- issue 26: embed fast, embed once, threads, progress
@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "avx2-only"])
def test_auto_dtype_is_chosen_per_cpu_and_never_mixes_in_the_cache(monkeypatch, tmp_path, native):
    from metakl import hardware

    monkeypatch.setattr(hardware, "native_bf16_flags", lambda: ["amx_bf16"] if native else [])
    monkeypatch.setattr(hardware, "bf16_caps", lambda: [])
    auto = Embedder(cache_dir=tmp_path)  # the default: dtype auto
    assert auto.dtype == ("bfloat16" if native else "float32")
    assert ("native bfloat16 (amx_bf16)" if native else "emulated") in auto.dtype_reason
    vectors = auto(TEXTS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # float32 unit rows, whatever computed them
    exact = Embedder(cache_dir=tmp_path, dtype="float32")
    reference = exact(TEXTS)
    # float32 and bfloat16 are two cache entries: the float32 embedder encodes the texts again unless auto was float32
    assert (exact.identity == auto.identity) == (not native) and exact.stats.encoded == (3 if native else 0)
    assert float(np.min(np.sum(vectors * reference, axis=1))) >= 0.99


def test_a_run_embeds_each_prompt_once_on_threads_decided_when_it_starts(tmp_path, monkeypatch, capsys):
    from conftest import shared_data

    from metakl import hardware
    from metakl.embed import load_embedder
    from metakl.pipeline import load_plan, run_plan

    sources = [f"logiqa2={shared_data('logiqa2', 'dev.txt')}", f"gsm8k={shared_data('gsm8k', 'train.jsonl')}",
               f"advbench-csv={shared_data('advbench', 'harmful_behaviors.csv')}"]
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"run_dir": str(tmp_path / "run"), "ingest": {"sources": sources, "limit": 12},
                                  # 18 units: the seed taxonomy's 1,200 unit texts would take a minute to embed cold
                                  "annotate": {"annotator": "embedding", "taxonomy": "handwritten-example"},
                                  "dedup": {"keep": "first"}}))
    monkeypatch.setenv("METAKL_CACHE_DIR", str(tmp_path / "cache"))
    # stderr here is not a terminal: progress lines, one per step however fast (dedup's search of 36 rows can end
    # within a millisecond once faiss is warm: with 0.001 it printed nothing after tests/test_dedup.py)
    monkeypatch.setenv("METAKL_PROGRESS_INTERVAL", "1e-9")
    for var in ("OMP_NUM_THREADS", "METAKL_PROGRESS", hardware.RUN_THREADS_VAR):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hardware, "_local_servers", 0)
    monkeypatch.setattr(hardware, "usable_cores", lambda: 2)
    loads: list[int] = []  # idle when the run starts; then the run's own work raises the load to one core
    monkeypatch.setattr(hardware, "busy_cores", lambda: loads.append(0) or (0 if len(loads) == 1 else 1))
    seen: list[tuple[int, int]] = []
    original = Embedder._encode
    monkeypatch.setattr(Embedder, "_encode", lambda self, texts: seen.append((len(texts), self.num_threads))
                        or original(self, texts))
    load_embedder.cache_clear()
    try:
        plan = run_plan(load_plan(config), echo=lambda line: None)
    finally:
        load_embedder.cache_clear()
    annotate, dedup = plan.stages[1].report, plan.stages[2].report
    rows = annotate["rows_in"]
    assert rows == 36 and annotate["retrieval"]["prompt_embeddings"]["encoded"] == rows
    # dedup reads every prompt's vector from the cache and encodes only the endings of the long (LogiQA) prompts
    assert dedup["embedding"]["cache_hits"] == rows and 0 < dedup["embedding"]["encoded"] == dedup["long_prompts"]
    assert {threads for _, threads in seen} == {2}  # the run's decision, also after its own load went up
    assert os.environ.get(hardware.RUN_THREADS_VAR) is None  # released with the run
    from metakl.progress import closing_line

    assert f"{rows} texts embedded (0 from the cache)" in closing_line(annotate)
    assert f"{dedup['long_prompts']} texts embedded ({rows} from the cache)" in closing_line(dedup)
    err = capsys.readouterr().err.splitlines()
    assert any(re.fullmatch(r"embed all-minilm-l6-v2: \d+/\d+ texts \(\d+%\), [\d,.]+ texts/s, (ETA|done in) .+", line)
               for line in err), err
    assert any(re.match(r"dedup: \d+/36 rows \(\d+%\), ", line) for line in err), err


def test_progress_lines_for_a_log(monkeypatch):
    from metakl import progress

    now = [0.0]
    out = io.StringIO()
    bar = progress.LogProgress(120, "embed m", "texts", interval=30, file=out, clock=lambda: now[0])
    for t, n in ((10, 10), (30, 20), (45, 30), (65, 60)):
        now[0] = t
        bar.update(n)
    bar.close()
    assert out.getvalue().splitlines() == ["embed m: 30/120 texts (25%), 1.0 texts/s, ETA 1 min 30 s",
                                           "embed m: 120/120 texts (100%), 1.8 texts/s, done in 1 min 5 s"]
    one = io.StringIO()  # one update at the end of a step longer than the interval: just the closing line
    single = progress.LogProgress(960, "embed m", "texts", interval=30, file=one, clock=lambda: now[0])
    now[0] = 106
    single.update(960)
    single.close()
    assert one.getvalue() == "embed m: 960/960 texts (100%), 23.4 texts/s, done in 41 s\n"
    quiet = io.StringIO()
    short = progress.LogProgress(5, "x", interval=30, file=quiet, clock=lambda: 0.0)
    short.update(5)
    short.close()
    assert quiet.getvalue() == ""  # a step shorter than the interval prints nothing
    monkeypatch.delenv("METAKL_PROGRESS", raising=False)
    monkeypatch.setenv(progress.INTERVAL_VAR, "5")
    assert isinstance(progress.bar(10, "x", enabled=False), progress.LogProgress)  # pytest's stderr: not a terminal
    assert progress.bar(10, "x", enabled=False).interval == 5
    monkeypatch.setenv("METAKL_PROGRESS", "0")
    assert not isinstance(progress.bar(10, "x", enabled=False), progress.LogProgress)
    monkeypatch.setenv(progress.INTERVAL_VAR, "soon")
    with pytest.raises(UserError, match="METAKL_PROGRESS_INTERVAL='soon': expected the seconds between progress lines"):
        progress.log_interval()
