"""metakl.embed: the one embedding module (real all-MiniLM-L6-v2) and its on-disk cache."""

from __future__ import annotations

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
