"""benchmarks/ scripts stand alone: the annotation benchmarks start (and stop) their own vLLM server when no
--base-url is given, as `metakl demo` does, so `make bench` works on a fresh machine (issue 22)."""

from __future__ import annotations

import argparse
import importlib.util

import httpx
import pytest

from conftest import ROOT, SMOLLM2


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(**given) -> argparse.Namespace:
    return argparse.Namespace(**{"base_url": None, "model": SMOLLM2, "annotators": "embedding,guided,open",
                                 "calibrate": False, **given})


@pytest.mark.parametrize("name", ["annotate_speed", "annotate_quality"])
def test_no_server_is_started_when_one_is_given_or_none_is_needed(name):
    bench = _benchmark(name)
    for args in (_args(base_url="http://127.0.0.1:9/v1"), _args(annotators="embedding")):
        before = vars(args).copy()
        with bench.llm_server(args, bench.needs_llm(args)):
            assert vars(args) == before  # the given server (or none) is used as it is
    assert bench.needs_llm(_args()) and not bench.needs_llm(_args(annotators="embedding"))
    if name == "annotate_quality":
        assert not bench.needs_llm(_args(calibrate=True))  # --calibrate asks no model


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.xdist_group("own_vllm_engine")
def test_annotate_speed_starts_and_stops_its_own_server(smollm2_path):
    """Before issue 22 the script defaulted to http://127.0.0.1:8011/v1 and failed unless a server ran there."""
    args = _args(annotators="guided")
    bench = _benchmark("annotate_speed")
    with bench.llm_server(args, bench.needs_llm(args)):
        url = args.base_url
        assert url.startswith("http://127.0.0.1:") and args.model == SMOLLM2
        assert SMOLLM2 in [m["id"] for m in httpx.get(f"{url}/models", timeout=30).json()["data"]]
    with pytest.raises(httpx.ConnectError):  # stopped with the run
        httpx.get(f"{url}/models", timeout=5)


# ---------------------------------------------------------------- pipeline_scale (issue 26): its pieces, not a run
# (a run embeds thousands of texts: minutes, so it is not part of the suite)


def test_pipeline_scale_exponent_is_the_log_log_slope():
    fit = _benchmark("pipeline_scale").exponent
    assert fit([(10_000, 20.0), (40_000, 80.0)]) == 1.0  # 4x rows, 4x seconds
    assert fit([(1_000, 1.0), (10_000, 100.0)]) == 2.0  # 10x rows, 100x seconds
    # three points off a line: slope of the least-squares fit by hand, logs base e: x = 0, ln 2, ln 4 (mean ln 2),
    # y = 0, ln 2, 3 ln 2 (mean 4/3 ln 2): sum dx*dy = (ln2)^2 (4/3 + 0 + 5/3) = 3 (ln2)^2, sum dx^2 = 2 (ln2)^2
    assert fit([(1, 1.0), (2, 2.0), (4, 8.0)]) == 1.5
    assert fit([(10_000, 5.0)]) is None  # one size: nothing to fit


def test_pipeline_scale_standin_groups_rank_the_reference_first(tmp_path):
    """The stand-in teacher groups, imported and rewarded by the real stages: the reference solution gets the group's
    best reward and the perturbed copies less, so no stand-in group is zero-variance (filter would skip it)."""
    from metakl.stages.import_responses import ImportConfig, import_responses
    from metakl.stages.ingest import IngestConfig, ingest
    from metakl.stages.reward import RewardConfig, reward

    bench = _benchmark("pipeline_scale")
    ds = ingest(None, IngestConfig(sources=("demo-math", "demo-general", "demo-safety"))).dataset
    counts = bench.write_answer_files(ds.to_list(), tmp_path, real={})
    assert counts["rows_standin_groups"] == len(ds) and counts["real_responses"] == 0
    with_groups = import_responses(ds, ImportConfig(files=(str(tmp_path / "responses.jsonl"),),
                                                    mapping=str(tmp_path / "mapping.yaml"))).dataset
    rewarded = reward(with_groups, RewardConfig()).dataset
    for row in rewarded:
        by_model = {r["model"]: r["reward"] for r in row["responses"]}
        assert set(by_model) == {"standin-reference", "standin-wrong-answer", "standin-truncated",
                                 "standin-answer-only"}, row["question"]
        assert by_model["standin-reference"] == max(by_model.values()), (row["question"], by_model)
        assert by_model["standin-wrong-answer"] < by_model["standin-reference"], (row["question"], by_model)
        assert not row["zero_variance"]


def test_pipeline_scale_counts_a_stages_embeddings_once():
    """annotate's report nests its embedder's totals and the prompts' part of them: count the totals, not both."""
    counts = _benchmark("pipeline_scale").embedding_counts
    annotate = {"retrieval": {"embedder": {"texts": 11204, "encoded": 11202, "cache_hits": 0},
                              "prompt_embeddings": {"texts": 10000, "encoded": 10000, "cache_hits": 0}}}
    assert counts(annotate) == {"encoded": 11202, "cache_hits": 0, "counted": True}
    assert counts({"embedding": {"encoded": 1732, "cache_hits": 10000}}) == {"encoded": 1732, "cache_hits": 10000,
                                                                             "counted": True}
    assert counts({"rows_in": 5})["counted"] is False  # a stage that embeds nothing


def test_pipeline_scale_times_filter_alone_on_subsets_of_its_input(tmp_path):
    """filter_growth reads the run's filter input through the manifest, runs the run's filter config on random subsets
    (input order kept) and on all of it, and fits the exponent over the sizes (tests/test_filter.py's six prompts)."""
    import json

    from metakl.io import save_stage
    from tests.test_filter import dataset

    save_stage(dataset(), tmp_path / "09-decontaminate")
    manifest = {"config": {"filter": {"base_model": "m", "r": 0, "reminders": 1, "max_target": 3, "prior_strength": 0,
                                      "min_support": 1, "plots": False}},
                "stages": [{"stage": "decontaminate", "folder": "09-decontaminate"},
                           {"stage": "filter", "folder": "10-filter"}]}
    growth = _benchmark("pipeline_scale").filter_growth(tmp_path, json.loads(json.dumps(manifest)), [2, 4, 99],
                                                        repeats=1)
    assert [p["rows"] for p in growth["points"]] == [2, 4, 6]  # 99 is more than there is: all of it, once
    assert growth["points"][-1]["selected"] == 3 and growth["points"][-1]["stopped"] == "no_gap"  # the hand-worked 3
    assert isinstance(growth["exponent"], float)
